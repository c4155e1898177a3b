"""``microtex train-vqvae``: micrograph patches with conditions → a VQ-VAE in a run folder.

The run folder (``-o RUN_DIR``) receives ``data.json`` (how the patches were
made, the split by source image, each image's conditions) and ``vqvae/``
(a checkpoint per epoch, the latest kept, and ``history.json``);
``microtex train-prior RUN_DIR`` reads both.
"""

from __future__ import annotations

import argparse
import sys

from microtex.cli._types import crop_bottom, positive, real
from microtex.engine.session import DEVICES

#: The run folder's record of the data (read by ``microtex train-prior``).
DATA_NAME = "data.json"
VQVAE_FOLDER = "vqvae"


def validation_spec(text: str):
    """A fraction in (0, 1), or comma-separated names of the validation images."""
    try:
        fraction = float(text)
    except ValueError:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"--validation wants a fraction or image names, "
                                             f"got {text!r}") from None  # fmt: skip
        return names
    if not 0.0 < fraction < 1.0:
        raise argparse.ArgumentTypeError(f"--validation fraction must be in (0, 1), got {text}")
    return fraction


def channels(text: str) -> tuple[int, ...]:
    """Comma-separated positive integers, e.g. ``32,64``."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, "
                                         f"got {text!r}")  # fmt: skip
    return values


def add_common_options(parser) -> None:
    """Options every generative training command has."""
    parser.add_argument("--batch-size", type=positive, default=32)
    parser.add_argument("--device", default="auto", choices=DEVICES,
                        help="cuda when available (auto), else the CPU")  # fmt: skip
    parser.add_argument("--resume", action="store_true",
                        help="continue from the run folder's last checkpoint up to --epochs")
    parser.add_argument("--no-progress", action="store_true")


def add_parser(subparsers) -> None:
    t = subparsers.add_parser(
        "train-vqvae",
        help="train the VQ-VAE of a generator on micrograph patches with process conditions",
    )
    t.add_argument("images", help="folder of grayscale micrographs")
    t.add_argument("--conditions", required=True,
                   help="CSV with a path column (relative to IMAGES, or absolute) and the "
                        "condition columns; give conditions on a scale of order one "
                        "(ln cooling rate, temperature in 1000 K)")  # fmt: skip
    t.add_argument("--columns", required=True,
                   help="the CSV's condition columns, comma-separated (e.g. ln_t or T_kK,ln_t)")
    t.add_argument("-o", "--output", required=True, help="the run folder")
    t.add_argument("--patch", type=positive, default=128, help="patch side in pixels")
    t.add_argument("--stride", type=positive, default=64, help="step between patches")
    t.add_argument("--no-flips", action="store_true", help="no horizontal mirror images")
    t.add_argument("--crop-bottom", type=crop_bottom, default=None,
                   help="rows to remove at the bottom of each image, or auto (SEM info band)")
    t.add_argument("--validation", type=validation_spec, default=0.2,
                   help="fraction of the source images held out for validation, or their "
                        "file names, comma-separated (default 0.2)")  # fmt: skip
    t.add_argument("--epochs", type=positive, default=50)
    t.add_argument("--lr", type=real("--lr", minimum=0.0, inclusive=False), default=2e-4)
    t.add_argument("--codes", type=positive, default=512, help="codebook size K")
    t.add_argument("--dim", type=positive, default=128, help="codebook vector dimension D")
    t.add_argument("--hidden", type=channels, default=(32, 64),
                   help="channels of the strided convolutions before the last (default 32,64)")
    t.add_argument("--residual-channels", type=positive, default=32)
    t.add_argument("--no-code-restarts", action="store_true",
                   help="leave dead codebook vectors where they are (default: move each to "
                        "an encoder output after every epoch)")  # fmt: skip
    t.add_argument("--seed", type=int, default=0)
    add_common_options(t)


def epoch_line(kind: str, record: dict, epochs: int, terms: tuple[str, ...]) -> str:
    """One line per epoch on stderr: the loss ``terms`` of both sides, codebook usage, time."""
    sides = [f"{side} " + ", ".join(f"{term} {record[side][term]:.5g}" for term in terms)
             for side in ("train", "validation")]  # fmt: skip
    line = f"{kind} epoch {record['epoch']}/{epochs}: " + "; ".join(sides)
    if "validation_codebook" in record:
        usage = record["validation_codebook"]
        line += f"; perplexity {usage['perplexity']:.1f}, dead codes {usage['dead_codes']}"
    if record.get("restarted_codes"):
        line += f", {record['restarted_codes']} codes restarted"
    return line + f" ({record['seconds']:.1f} s)"


def run(args) -> int:
    import json
    import os
    import pathlib

    from microtex import _files
    from microtex.cli.featurize import report_failures
    from microtex.errors import NoImagesError
    from microtex.generative.data import load_patch_set
    from microtex.generative.train import latest_checkpoint, train_vqvae
    from microtex.generative.vqvae import VQVAEConfig

    run_dir = pathlib.Path(args.output)
    checkpoints = run_dir / VQVAE_FOLDER
    if not args.resume and latest_checkpoint(checkpoints) is not None:  # before reading images
        raise FileExistsError(f"{str(run_dir)!r} already holds a VQ-VAE checkpoint: pass "
                              f"--resume, or choose another run folder")  # fmt: skip
    if run_dir.exists() and not run_dir.is_dir():
        raise NotADirectoryError(f"the run folder {str(run_dir)!r} is a file")
    config = VQVAEConfig(image_size=args.patch, hidden_channels=args.hidden, embedding_dim=args.dim,
                         n_codes=args.codes, residual_channels=args.residual_channels)  # fmt: skip
    try:
        patches = load_patch_set(args.conditions, args.columns, image_dir=args.images,
                                 patch_size=args.patch, stride=args.stride,
                                 flips=not args.no_flips, crop_bottom=args.crop_bottom)  # fmt: skip
    except NoImagesError as exc:
        report_failures(exc.failures)
        print(f"microtex: error: {exc}", file=sys.stderr)
        return 1
    report_failures(patches.failures)
    patches = patches.split(args.validation, seed=args.seed)
    record = {
        "images": os.path.abspath(args.images),
        "conditions": os.path.abspath(args.conditions),
        "seed": args.seed,
        **patches.describe(),
    }
    record = json.loads(json.dumps(record))  # as it reads back: tuples become lists
    data_file = run_dir / DATA_NAME
    if args.resume and data_file.is_file():
        earlier = json.loads(data_file.read_text(encoding="utf-8"))
        changed = sorted(key for key in set(record) | set(earlier)
                         if record.get(key) != earlier.get(key))  # fmt: skip
        if changed:
            raise ValueError(f"cannot resume: the data differ from {str(data_file)!r} in "
                             f"{changed}; resume with the run's images and options")  # fmt: skip
    _files.atomic_write_text(data_file, json.dumps(record, indent=1))
    n_held = len(patches.validation_sources)
    print(f"{len(patches)} patches from {len(patches.sources)} images "
          f"({n_held} held out for validation, {len(patches.failures)} skipped)", file=sys.stderr)
    result = train_vqvae(
        patches, config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=args.seed, device=args.device, checkpoint_dir=checkpoints, resume=args.resume,
        progress=not args.no_progress and sys.stderr.isatty(),
        restart_dead=not args.no_code_restarts,
        callback=lambda r: print(epoch_line("vqvae", r, args.epochs, ("total", "reconstruction")),
                                 file=sys.stderr),
    )  # fmt: skip
    last = result.history[-1] if result.history else None
    summary = ("" if last is None else
               f": validation reconstruction {last['validation']['reconstruction']:.4g}, "
               f"perplexity {last['validation_codebook']['perplexity']:.1f}")  # fmt: skip
    print(f"trained the VQ-VAE for {args.epochs} epochs{summary} -> {checkpoints}")
    return 0
