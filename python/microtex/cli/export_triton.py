"""``microtex export-triton``: a Triton model repository from a featurizer or classifier bundle."""

from __future__ import annotations

from microtex.cli._types import positive


def add_parser(subparsers) -> None:
    t = subparsers.add_parser("export-triton", help="a Triton model repository from a bundle")
    t.add_argument("bundle",
                   help="a texture-featurizer or classifier bundle (mean/max/Gram pooling)")
    t.add_argument("-o", "--output", required=True, help="the model repository folder")
    t.add_argument("--name", default=None, help="model name (default: the bundle's folder name)")
    t.add_argument("--max-batch-size", type=positive, default=8)
    t.add_argument("--max-queue-delay-us", type=int, default=2000)
    t.add_argument("--instances", type=positive, default=1)
    t.add_argument("--kind", default="gpu", choices=["gpu", "cpu"])
    t.add_argument("--tensorrt-fp16", action="store_true",
                   help="ask Triton's ONNX Runtime backend for TensorRT at fp16")  # fmt: skip


def run(args) -> int:
    from microtex.serve.triton import export_triton

    if args.max_queue_delay_us < 0:
        raise ValueError(f"--max-queue-delay-us must be >= 0, got {args.max_queue_delay_us}")
    root = export_triton(args.bundle, args.output, name=args.name,
                         max_batch_size=args.max_batch_size,
                         max_queue_delay_us=args.max_queue_delay_us, instances=args.instances,
                         kind=args.kind, tensorrt_fp16=args.tensorrt_fp16)  # fmt: skip
    print(f"wrote {root}/config.pbtxt and {root}/1/model.onnx")
    return 0
