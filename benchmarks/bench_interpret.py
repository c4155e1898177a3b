"""Interpretation: time to one filter texture, and the forward pass in torch vs ONNX Runtime.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_interpret.py

* **Filter textures** (``microtex.interpret.filter_texture``, default settings:
  128², 192 Adam steps, fourier parametrization, uncached): seconds for one
  filter at each ``block_first`` layer, one call each, with the gain of the
  filter's mean activation over the starting noise.
* **Forward pass of a heat map** (activations of every ``block_first`` tap for
  one ``--side``² image): PyTorch eager (the module activation maximization
  differentiates) against ONNX Runtime on the exported graph, direct and
  Winograd (what ``microtex.interpret.heatmap`` runs), in alternating turns
  (``_common.time_turns``); the ratio is paired over turns. Report only, no bar.

Writes benchmarks/results/interpret.json and the textures to results/filter_textures.png.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine, markdown_table, medians, paired_ratio, time_turns, write_results  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=512, help="heat-map image side")
    parser.add_argument("--filter", type=int, default=7, help="filter rendered at each layer")
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()

    import torch

    from microtex.backbones import BackboneConfig, cached_onnx
    from microtex.backbones.vgg import build_torch_module
    from microtex.engine.session import Session, default_threads
    from microtex.interpret.filters import TextureSettings, filter_texture, texture_grid

    threads = default_threads()
    torch.set_num_threads(threads)
    settings = TextureSettings()
    textures, rendered = [], []
    for layer in BackboneConfig().taps:
        start = time.perf_counter()
        texture = filter_texture(layer, args.filter, settings=settings, cache=False)
        seconds = time.perf_counter() - start
        rendered.append(texture)
        # the gain is infinite when the starting noise leaves the filter silent
        gain = round(texture.gain, 1) if texture.start > 0 else None
        textures.append({"layer": layer, "filter": args.filter, "seconds": round(seconds, 2),
                         "activation_noise": texture.start, "activation_texture": texture.final,
                         "gain": gain})  # fmt: skip
        print(f"texture {layer} #{args.filter}: {seconds:.1f} s, activation {texture.start:.3g} "
              f"-> {texture.final:.3g}", flush=True)  # fmt: skip

    grid = Path(__file__).resolve().parent / "results" / "filter_textures.png"
    texture_grid(rendered, grid, columns=len(rendered))
    config = BackboneConfig()
    image = np.random.default_rng(0).random((1, 1, args.side, args.side), dtype=np.float32)
    module = build_torch_module(config)
    tensor = torch.from_numpy(image)
    sessions = {algorithm: Session(cached_onnx(config, conv_algorithm=algorithm), device="cpu",
                                   n_threads=threads)
                for algorithm in ("direct", "winograd")}  # fmt: skip

    def eager():
        with torch.no_grad():
            module(tensor)

    funcs = {"torch eager": eager,
             "onnx direct": lambda: sessions["direct"].run(image),
             "onnx winograd": lambda: sessions["winograd"].run(image)}  # fmt: skip
    with torch.no_grad():
        reference = [t.numpy() for t in module(tensor)]
    onnx_out = sessions["winograd"].run(image)
    errors = {tap: float(np.max(np.abs(onnx_out[tap] - ref)) / np.max(np.abs(ref)))
              for tap, ref in zip(config.taps, reference)}  # fmt: skip
    turns = time_turns(funcs, repeats=args.repeats, warmup=1, block=1, settle=0.5)
    times = medians(turns)
    forward = {name: {"seconds": round(t, 4),
                      "speedup_over_torch": round(paired_ratio(turns, "torch eager", name), 2)}
               for name, t in times.items()}  # fmt: skip
    payload = {
        "machine": machine(),
        "threads": threads,
        "torch": torch.__version__,
        "texture_settings": settings.to_dict(),
        "filter_textures": textures,
        "forward": {"side": args.side, "taps": list(config.taps), "candidates": forward,
                    "max_relative_error_winograd_vs_torch": errors},  # fmt: skip
    }
    path = write_results("interpret", payload)
    print(markdown_table(["layer", "seconds", "activation noise → texture"],
                         [[t["layer"], t["seconds"],
                           f"{t['activation_noise']:.3g} → {t['activation_texture']:.3g}"]
                          for t in textures]))  # fmt: skip
    rows = [[k, v["seconds"], v["speedup_over_torch"]] for k, v in forward.items()]
    print(markdown_table(["forward", "seconds", "× torch eager"], rows))
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
