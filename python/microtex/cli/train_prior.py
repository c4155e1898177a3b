"""``microtex train-prior RUN_DIR``: the PixelCNN prior of a VQ-VAE run, then its generator.

Reads the run folder that ``microtex train-vqvae`` wrote (``data.json`` and the
last checkpoint in ``vqvae/``), cuts the same patches with the same split,
trains the prior with checkpoints in ``prior/`` and, when done, writes the
``generator`` bundle (encoder, decoder, PixelCNN, weights for the sampler) to
``RUN_DIR/generator``.
"""

from __future__ import annotations

import sys

from microtex.cli._types import positive, real
from microtex.cli.train_vqvae import DATA_NAME, VQVAE_FOLDER, add_common_options, epoch_line

PRIOR_FOLDER = "prior"
GENERATOR_FOLDER = "generator"
_RECORD_KEYS = ("images", "conditions", "condition_names", "patch_size", "stride", "flips",
                "crop_bottom", "sources", "n_patches")  # fmt: skip


def add_parser(subparsers) -> None:
    t = subparsers.add_parser(
        "train-prior",
        help="train the conditional PixelCNN prior of a train-vqvae run and write its generator",
    )
    t.add_argument("run", help="the run folder of microtex train-vqvae")
    t.add_argument("--epochs", type=positive, default=50)
    t.add_argument("--lr", type=real("--lr", minimum=0.0, inclusive=False), default=3e-4)
    t.add_argument("--layers", type=positive, default=15, help="gated layers")
    t.add_argument("--hidden", type=positive, default=64, help="channels of both stacks")
    t.add_argument("--embedding", type=positive, default=64, help="embedding of an index")
    t.add_argument("--head", type=positive, default=256, help="channels of the output head")
    t.add_argument("--first-kernel", type=positive, default=7, help="kernel side of layer 1")
    t.add_argument("--kernel", type=positive, default=3, help="kernel side of the other layers")
    t.add_argument("--seed", type=int, default=None, help="default: the VQ-VAE run's seed")
    t.add_argument("--no-generator", action="store_true",
                   help="do not write RUN_DIR/generator at the end")
    add_common_options(t)


def _read_run(run_dir):
    """The run's data record and its VQ-VAE checkpoint."""
    import json

    from microtex.generative.train import load_checkpoint

    path = run_dir / DATA_NAME
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{str(run_dir)!r} is not a train-vqvae run folder: cannot read "
                         f"{str(path)!r} ({exc})") from None  # fmt: skip
    missing = [key for key in _RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing:
        raise ValueError(f"{str(path)!r} is not a train-vqvae data record: no {missing}")
    checkpoint = load_checkpoint(run_dir / VQVAE_FOLDER)
    if checkpoint.kind != "vqvae-checkpoint":
        raise ValueError(f"{str(checkpoint.path)!r} holds a {checkpoint.kind}, not a VQ-VAE")
    return record, checkpoint


def _patches(record):
    """The train-vqvae run's patch set, split as it was."""
    from microtex.generative.data import load_patch_set

    patches = load_patch_set(
        record["conditions"], record["condition_names"], image_dir=record["images"],
        patch_size=record["patch_size"], stride=record["stride"], flips=record["flips"],
        crop_bottom=record["crop_bottom"],
    )  # fmt: skip
    held = [source["path"] for source in record["sources"] if source["side"] == "validation"]
    return patches.split(held)


def run(args) -> int:
    import dataclasses
    import pathlib

    from microtex.cli.featurize import report_failures
    from microtex.engine.export import require_onnx
    from microtex.generative import export
    from microtex.generative.pixelcnn import PixelCNNConfig
    from microtex.generative.train import history_summary, latest_checkpoint, train_prior

    run_dir = pathlib.Path(args.run)
    checkpoints = run_dir / PRIOR_FOLDER
    if not args.resume and latest_checkpoint(checkpoints) is not None:
        raise FileExistsError(f"{str(run_dir)!r} already holds a prior checkpoint: pass "
                              f"--resume, or train a new VQ-VAE run")  # fmt: skip
    # the generator is exported when it is available (its ONNX export needs the onnx package)
    save_generator = None if args.no_generator else getattr(export, "save_generator", None)
    if save_generator is not None:
        require_onnx("writing the generator of microtex train-prior")  # before the work
    record, vqvae = _read_run(run_dir)
    vq_epochs = vqvae.document.get("epochs", vqvae.epoch)
    if vqvae.epoch < vq_epochs:
        print(f"microtex: warning: the VQ-VAE run stopped at epoch {vqvae.epoch} of {vq_epochs} "
              f"(microtex train-vqvae --resume finishes it); training the prior on it",
              file=sys.stderr)  # fmt: skip
    patches = _patches(record)
    report_failures(patches.failures)
    vq_config = vqvae.model.config
    config = PixelCNNConfig(
        n_codes=vq_config.n_codes, embedding_dim=args.embedding, hidden_channels=args.hidden,
        n_layers=args.layers, first_kernel_size=args.first_kernel, kernel_size=args.kernel,
        head_channels=args.head, n_conditions=patches.n_conditions,
        latent_size=vq_config.latent_size,
    )  # fmt: skip
    seed = record.get("seed", 0) if args.seed is None else args.seed
    print(f"{len(patches)} patches from {len(patches.sources)} images "
          f"({len(patches.validation_sources)} held out for validation)", file=sys.stderr)
    result = train_prior(
        patches, vqvae.model, config, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        seed=seed, device=args.device, checkpoint_dir=checkpoints, resume=args.resume,
        progress=not args.no_progress and sys.stderr.isatty(),
        callback=lambda r: print(epoch_line("prior", r, args.epochs, ("nll",)), file=sys.stderr),
    )  # fmt: skip
    last = result.history[-1]
    print(f"trained the prior for {args.epochs} epochs: validation NLL "
          f"{last['validation']['nll']:.4g} nats per position -> {checkpoints}")
    if save_generator is None:
        return 0
    training = {
        "data": {key: record[key] for key in ("images", "conditions", "patch_size", "stride",
                                              "flips", "crop_bottom", "n_patches")},
        "sources": [{"path": s["path"], "conditions": s["conditions"], "side": s["side"]}
                    for s in record["sources"]],
        "vqvae": {"checkpoint": str(vqvae.path), **vqvae.document["settings"],
                  **history_summary(vqvae.history, "reconstruction")},
        "prior": {"checkpoint": str(result.checkpoint), **dataclasses.asdict(config),
                  "seed": seed, "batch_size": args.batch_size, "lr": args.lr,
                  **history_summary(result.history, "nll")},
    }  # fmt: skip
    destination = save_generator(
        run_dir / GENERATOR_FOLDER, vqvae.model, result.model.cpu(),
        condition_names=patches.condition_names, condition_range=patches.condition_range(),
        training=training, overwrite=True,
    )  # fmt: skip
    print(f"generator -> {destination}")
    return 0
