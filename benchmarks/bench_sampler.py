"""PixelCNN sampling: the cached C++ sampler vs the naive one (an ONNX Runtime pass per position).

    python benchmarks/bench_sampler.py [--repeats 3] [--images 1000]

Noguchi & Inoue's configuration (PixelCNN: 512 codes, embedding 64, 15 layers of
64 channels, 16x16 maps, one condition; VQ-VAE: 128x128 images, 512 x 128
codebook), seeded random weights: the time to sample does not depend on what
the weights learned. Rows:

* samples/s of both samplers at batch 1 and 64. The naive sampler's cost is
  the same at every position (one full forward pass of the same size), so it
  is timed over ``--naive-positions`` positions of a batch and scaled to the
  256 positions of a map; the ratio is paired turn by turn;
* generating and decoding ``--images`` images for one condition with the
  cached sampler (``Generator.generate``), end to end.

Writes benchmarks/results/sampler.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, time_turns, write_results  # noqa: E402


def build_generator(folder: Path):
    import torch

    from microtex.generative.export import save_generator
    from microtex.generative.pixelcnn import GatedPixelCNN, PixelCNNConfig
    from microtex.generative.sample import load_generator
    from microtex.generative.vqvae import VQVAE, VQVAEConfig

    torch.manual_seed(0)
    vqvae, prior = VQVAE(VQVAEConfig()).eval(), GatedPixelCNN(PixelCNNConfig()).eval()
    save_generator(folder / "generator", vqvae, prior, condition_names=["ln_t"],
                   condition_range=[[0.0, 5.0]])  # fmt: skip
    return load_generator(folder / "generator", device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--naive-positions", type=int, default=4)
    args = parser.parse_args()

    results = {"machine": machine(), "configuration": "Noguchi & Inoue (PixelCNN 512 codes, "
               "15 layers x 64, 16x16; VQ-VAE 128x128, 512 x 128)", "batches": {}}  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        generator = build_generator(Path(tmp))
        session = generator._sessions["pixelcnn"]
        side = generator.latent_size
        positions = side * side
        for batch in (1, 64):
            conditions = np.full((batch, 1), 2.5, np.float32)
            maps = np.zeros((batch, side, side), np.int64)

            def cached(batch=batch):
                return generator.sample_indices(2.5, batch, seed=1, batch_size=batch)

            def naive_part(conditions=conditions, maps=maps):
                for _ in range(args.naive_positions):
                    session.run({"indices": maps, "conditions": conditions}, outputs=["logits"])

            turns = time_turns({"cached": cached, "naive": naive_part}, repeats=args.repeats,
                               warmup=1, block=1, settle=0.3)  # fmt: skip
            scale = positions / args.naive_positions
            ratios = [statistics.median(n) * scale / statistics.median(c)
                      for c, n in zip(turns["cached"], turns["naive"])]  # fmt: skip
            cached_s = statistics.median(t for turn in turns["cached"] for t in turn)
            naive_s = statistics.median(t for turn in turns["naive"] for t in turn) * scale
            entry = {"cached_samples_per_s": batch / cached_s,
                     "naive_samples_per_s": batch / naive_s,
                     "speedup": statistics.median(ratios), "bar": 30, "aim": 100}  # fmt: skip
            entry["met"] = entry["speedup"] >= 30
            results["batches"][str(batch)] = entry
            rows.append([batch, f"{entry['cached_samples_per_s']:.1f}",
                         f"{entry['naive_samples_per_s']:.3f}",
                         f"{entry['speedup']:.0f}x"])  # fmt: skip
            print(markdown_table(["batch", "cached samples/s", "naive samples/s", "speedup"],
                                 rows[-1:]), flush=True)  # fmt: skip
        start = time.perf_counter()
        indices = generator.sample_indices(2.5, args.images, seed=2, batch_size=64)
        sampled = time.perf_counter() - start
        images = np.concatenate([generator.decode(indices[lo:lo + 64])
                                 for lo in range(0, args.images, 64)])  # fmt: skip
        total = time.perf_counter() - start
        results["generate"] = {"images": args.images, "sampling_s": sampled,
                               "decoding_s": total - sampled, "total_s": total, "goal_s": 60,
                               "met": total <= 60,
                               "image_shape": list(images.shape[1:])}  # fmt: skip
        print(f"{args.images} images generated and decoded in {total:.1f} s "
              f"(sampling {sampled:.1f} s, decoding {total - sampled:.1f} s)")
    path = write_results("sampler", results)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
