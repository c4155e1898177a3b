#!/usr/bin/env python
"""Check an exported backbone against PyTorch: max relative error per output.

Builds the torch module and the ONNX file for the same configuration, runs both
on random noise, a smooth random field and stripes (and on --images, read as
grayscale in [0, 1]) at several sizes, and prints, per output, the max relative
error max|onnx - torch| / max|torch| of every case. Exit status 1 if any error
exceeds --tolerance (default 1e-4 for fp32, 5e-3 for --precision fp16, where
both sides run the float16 trunk). --device cuda runs ONNX Runtime's CUDA
provider and the torch module on the GPU.

Examples
--------
python export/validate_onnx.py
python export/validate_onnx.py --taps block_last --heads mean,max,gram --sizes 67x45,224x224
python export/validate_onnx.py --images micrographs/some.png
python export/validate_onnx.py --device cuda --precision fp16 --heads mean,gram
python export/validate_onnx.py --conv-algorithm winograd --heads mean,gram
"""

from __future__ import annotations

import argparse
import pathlib
import runpy
import sys
import tempfile

import numpy as np

_SHARED = runpy.run_path(str(pathlib.Path(__file__).with_name("export_backbone.py")))
add_backbone_arguments = _SHARED["add_backbone_arguments"]
config_and_heads = _SHARED["config_and_heads"]
conv_algorithm = _SHARED["conv_algorithm"]


def parse_size(text: str) -> tuple[int, int]:
    """'HxW' -> (height, width)."""
    try:
        height, width = (int(part) for part in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 67x45, not {text!r}") from None
    return height, width


def synthetic_inputs(batch: int, height: int, width: int, seed: int) -> dict[str, np.ndarray]:
    """Noise, a smooth random field and oriented stripes: (batch, 1, height, width) in [0, 1]."""
    rng = np.random.default_rng(seed)
    noise = rng.random((batch, 1, height, width), dtype=np.float32)
    smooth = noise.astype(np.float64)
    for _ in range(6):
        smooth = (
            smooth
            + np.roll(smooth, 1, -1)
            + np.roll(smooth, -1, -1)
            + np.roll(smooth, 1, -2)
            + np.roll(smooth, -1, -2)
        ) / 5
    low = smooth.min(axis=(-2, -1), keepdims=True)
    high = smooth.max(axis=(-2, -1), keepdims=True)
    smooth = (smooth - low) / np.maximum(high - low, 1e-12)
    rows, cols = np.mgrid[0:height, 0:width]
    stripes = []
    for _ in range(batch):
        angle, period = rng.uniform(0, np.pi), rng.uniform(4, 16)
        phase = (rows * np.sin(angle) + cols * np.cos(angle)) * 2 * np.pi / period
        stripes.append(0.5 + 0.5 * np.cos(phase))
    return {
        "random": noise,
        "smooth": smooth.astype(np.float32),
        "stripes": np.stack(stripes)[:, None].astype(np.float32),
    }


def read_gray(path: str, crop: int) -> np.ndarray:
    """An image as (1, 1, h, w) float32 in [0, 1], center-cropped to at most crop x crop."""
    from PIL import Image

    with Image.open(path) as image:
        mode = image.mode
        image = image.convert("I;16" if mode in ("I;16", "I;16B", "I") else "L")
        array = np.asarray(image, dtype=np.float32)
    array /= 65535.0 if array.max() > 255 else 255.0
    height, width = array.shape
    top, left = max((height - crop) // 2, 0), max((width - crop) // 2, 0)
    array = array[top : top + crop, left : left + crop]
    return np.ascontiguousarray(array[None, None])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_backbone_arguments(parser)
    parser.add_argument(
        "--sizes",
        default="67x45,96x128",
        type=lambda text: [parse_size(part) for part in text.split(",") if part],
        help="comma-separated HxW sizes (include one that is not a multiple of 32)",
    )
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--images", nargs="*", default=[], help="real images to run as well")
    parser.add_argument("--crop", type=int, default=256, help="center crop of --images")
    parser.add_argument(
        "--tolerance", type=float, default=None, help="default 1e-4 (fp32), 5e-3 (fp16)"
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--onnx", default=None, help="validate this file instead of a fresh export")
    args = parser.parse_args(argv)

    import torch

    from microtex import backbones
    from microtex.engine.metadata import read_metadata
    from microtex.engine.session import CUDA, Session, available_providers
    from microtex.errors import DeviceError

    try:
        config, heads = config_and_heads(args)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.tolerance is None:
        args.tolerance = 5e-3 if config.precision == "fp16" else 1e-4
    names = backbones.output_names(config, heads)
    module = backbones.build_torch_module(config, heads).to(args.device)
    if args.device == "cuda" and CUDA not in available_providers():
        print("--device cuda: this onnxruntime has no CUDA provider (install onnxruntime-gpu)")
        return 1
    cases: dict[str, np.ndarray] = {}
    for height, width in args.sizes:
        for kind, images in synthetic_inputs(args.batch, height, width, args.seed).items():
            cases[f"{kind} {height}x{width}"] = images
    for path in args.images:
        image = read_gray(path, args.crop)
        cases[f"{pathlib.Path(path).name} {image.shape[2]}x{image.shape[3]}"] = image

    with tempfile.TemporaryDirectory() as directory:
        if args.onnx:
            onnx_path = args.onnx
            algorithm = read_metadata(onnx_path).get("conv_algorithm", "direct")
        else:
            algorithm = conv_algorithm(args, config, args.device)
            onnx_path = backbones.export_onnx(
                config, pathlib.Path(directory) / "b.onnx", heads, conv_algorithm=algorithm
            )
        try:
            session = Session(onnx_path, device=args.device)
        except DeviceError as exc:
            print(f"ONNX Runtime could not start {args.device}: {exc}")
            return 1
        if session.output_names != names:
            print(f"output names differ: onnx {list(session.output_names)}, expected {list(names)}")
            return 1
        errors = {name: {} for name in names}
        for case, images in cases.items():
            onnx_outputs = list(session.run(images).values())
            with torch.no_grad():
                torch_outputs = [
                    t.cpu().numpy() for t in module(torch.from_numpy(images).to(args.device))
                ]
            for name, ours, reference in zip(names, onnx_outputs, torch_outputs, strict=True):
                if ours.shape != reference.shape:
                    errors[name][case] = float("inf")
                    continue
                scale = max(float(np.abs(reference).max()), 1e-30)
                errors[name][case] = (
                    float(np.abs(ours.astype(np.float64) - reference).max()) / scale
                )

    width = max(len(name) for name in names) + 2
    columns = list(cases)
    print(
        f"{config.arch} taps={','.join(config.taps)} block_pooling={config.block_pooling} "
        f"precision={config.precision} conv_algorithm={algorithm} heads={heads} "
        f"device={args.device}"
    )
    print(
        "output".ljust(width)
        + "".join(c[:22].rjust(24) for c in columns)
        + "max rel. error".rjust(16)
    )
    worst = 0.0
    for name in names:
        row_max = max(errors[name].values())
        worst = max(worst, row_max)
        flag = "" if row_max <= args.tolerance else "  FAIL"
        cells = "".join(f"{errors[name][c]:24.2e}" for c in columns)
        print(f"{name.ljust(width)}{cells}{row_max:16.2e}{flag}")
    verdict = "ok" if worst <= args.tolerance else "FAILED"
    print(f"worst max relative error {worst:.2e} (tolerance {args.tolerance:.0e}): {verdict}")
    return 0 if worst <= args.tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
