"""``microtex COMMAND ...``: the parser, logging and the one place errors become exit codes.

Errors a user can cause print one line (``microtex: error: ...``) and exit 2;
a batch command exits 0 while at least one image was processed, 1 when none was.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

from microtex.cli import (
    bench,
    calibrate,
    demo,
    embed,
    evaluate_generated,
    explain,
    export_triton,
    featurize,
    generate,
    manifold,
    mks,
    perlin_demo,
    predict,
    serve,
    stereology,
    study,
    synthesize,
    train,
    train_prior,
    train_vqvae,
)

__all__ = ["main"]

#: One module per command: each has ``add_parser(subparsers)`` and ``run(args) -> int``.
COMMANDS = {"demo": demo, "featurize": featurize, "study": study, "train": train,
            "predict": predict, "serve": serve, "bench": bench, "export-triton": export_triton,
            "stereology": stereology, "mks": mks, "train-vqvae": train_vqvae,
            "train-prior": train_prior, "generate": generate,
            "evaluate-generated": evaluate_generated, "perlin-demo": perlin_demo,
            "manifold": manifold, "embed": embed, "explain": explain,
            "synthesize": synthesize, "calibrate": calibrate}


def _parser() -> argparse.ArgumentParser:
    from microtex import __version__

    parser = argparse.ArgumentParser(
        prog="microtex", description="Inference engine for materials micrographs."
    )
    parser.add_argument("--version", action="version", version=f"microtex {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS.values():
        command.add_parser(subparsers)
    return parser


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    """Run ``microtex`` with ``argv`` (default: ``sys.argv[1:]``); return the exit code."""
    args = _parser().parse_args(argv)
    ours = not logging.getLogger().handlers  # basicConfig leaves a caller's set-up alone
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="microtex: %(levelname)s: %(message)s",
    )
    from microtex.io.read import SKIPPED_FILE

    for handler in logging.getLogger().handlers if ours else ():
        # each command reports the files it skipped itself
        handler.addFilter(lambda record: not getattr(record, SKIPPED_FILE, False))
    from microtex.errors import MicrotexError

    # batch schedulers stop a job with SIGTERM: unwind as for Ctrl-C, so that
    # temporary files are removed on the way out
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _interrupt) if on_main_thread else None
    try:
        return COMMANDS[args.command].run(args)
    except (MicrotexError, ValueError, TypeError, OSError, ImportError) as exc:
        print(f"microtex: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("microtex: interrupted", file=sys.stderr)
        return 130
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
