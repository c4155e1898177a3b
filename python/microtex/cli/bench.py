"""``microtex bench``: latency and throughput of a bundle on this machine, or of a service."""

from __future__ import annotations

import argparse


def _ints(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") \
            from None  # fmt: skip
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def add_parser(subparsers) -> None:
    b = subparsers.add_parser("bench", help="latency and throughput of a bundle or a service")
    b.add_argument("bundle", nargs="?", default=None,
                   help="a bundle to time in-process (default: the default featurizer)")
    b.add_argument("--sizes", type=_ints, default=(224,), help="image sides, e.g. 224,512")
    b.add_argument("--batch-sizes", type=_ints, default=(1, 8))
    b.add_argument("--threads", type=_ints, default=None, help="e.g. 1,2 (default: all)")
    b.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    b.add_argument("--runs", type=int, default=20, help="timed calls per setting")
    b.add_argument("--url", default=None, help="time a running microtex serve instead")
    b.add_argument("--model", default=None, help="the served model's name (with --url)")
    b.add_argument("--concurrency", type=_ints, default=(1, 8), help="with --url")
    b.add_argument("--requests", type=int, default=40, help="uploads per concurrency level")
    b.add_argument("-o", "--output", default=None, help="also write the rows as JSON")  # fmt: skip


def _table(rows) -> str:
    keys = [k for k in ("mode", "size", "batch_size", "concurrency", "threads", "device",
                        "p50_ms", "p90_ms", "p99_ms", "images_per_s", "errors")
            if any(k in r for r in rows)]  # fmt: skip

    def cell(value):
        return f"{value:.1f}" if isinstance(value, float) else str(value)

    lines = [" | ".join(keys), " | ".join("---" for _ in keys)]
    lines += [" | ".join(cell(r.get(k, "")) for k in keys) for r in rows]
    return "\n".join(lines)


def run(args) -> int:
    from microtex.serve.bench import bench_in_process, bench_service

    if args.runs < 1 or args.requests < 1:
        raise ValueError("--runs and --requests must be at least 1")
    if args.url:
        if not args.model:
            raise ValueError("--url needs --model, the served model's name")
        rows = bench_service(args.url, args.model, sizes=args.sizes,
                             concurrency=args.concurrency, requests=args.requests)  # fmt: skip
    else:
        from microtex.bundle import load_bundle
        from microtex.features.texture import TextureFeaturizer

        if args.bundle:
            model = load_bundle(args.bundle)
        else:
            model = TextureFeaturizer(device=args.device).fit(None)
        rows = bench_in_process(model, sizes=args.sizes, batch_sizes=args.batch_sizes,
                                threads=args.threads or (None,), runs=args.runs)  # fmt: skip
    print(_table(rows))
    if args.output:
        from microtex.report import write_json

        write_json(args.output, {"rows": rows})
    return 0
