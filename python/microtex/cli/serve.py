"""``microtex serve``: bundles behind an HTTP service (FastAPI + uvicorn, the serve extra)."""

from __future__ import annotations

from microtex.cli._types import positive


def add_parser(subparsers) -> None:
    s = subparsers.add_parser("serve", help="serve bundles over HTTP (KServe v2 protocol)")
    s.add_argument("bundles", nargs="+", metavar="[NAME=]BUNDLE",
                   help="bundle folders; served under NAME or the folder's name")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default: this machine)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-batch-size", type=positive, default=8)
    s.add_argument("--max-delay-ms", type=float, default=2.0,
                   help="longest a request waits for others of its shape")
    s.add_argument("--max-queue", type=positive, default=64,
                   help="waiting requests beyond which the service answers 503")
    s.add_argument("--max-upload-mb", type=float, default=32.0)
    s.add_argument("--timeout-s", type=float, default=30.0, help="answer 504 after this")
    s.add_argument("--token-file", default=None,
                   help="file holding a bearer token every route but /v2/health needs")  # fmt: skip


def parse_bundles(items) -> dict:
    """``[NAME=]PATH`` arguments -> {name: path}; each must be a verified bundle."""
    import pathlib

    from microtex.bundle import open_bundle

    bundles: dict = {}
    for item in items:
        name, _, path = item.rpartition("=") if "=" in item else ("", "", item)
        path = pathlib.Path(path)
        name = name or path.absolute().name
        if name in bundles:
            raise ValueError(f"two bundles are called {name!r}; name them NAME=PATH")
        open_bundle(path)  # a missing or tampered bundle fails here, before the server starts
        bundles[name] = path
    return bundles


def run(args) -> int:
    import pathlib

    try:
        import uvicorn

        from microtex.serve.app import create_app
    except ImportError:
        raise ImportError("microtex serve needs the serve extra: pip install 'microtex[serve]'") \
            from None  # fmt: skip
    bundles = parse_bundles(args.bundles)
    token = None
    if args.token_file:
        token = pathlib.Path(args.token_file).read_text().strip()
        if not token:
            raise ValueError(f"token file {args.token_file!r} is empty")
    app = create_app(bundles, max_batch_size=args.max_batch_size, max_delay_ms=args.max_delay_ms,
                     max_queue=args.max_queue, max_upload_bytes=int(args.max_upload_mb * 2**20),
                     timeout_s=args.timeout_s, token=token)  # fmt: skip
    level = "info" if args.verbose else "warning"
    print(f"microtex: serving {', '.join(bundles)} on http://{args.host}:{args.port}", flush=True)
    # uvicorn handles SIGTERM itself: it stops accepting and lets requests in flight finish
    uvicorn.run(app, host=args.host, port=args.port, log_level=level,
                timeout_graceful_shutdown=args.timeout_s)  # fmt: skip
    return 0
