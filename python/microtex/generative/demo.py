"""An offline demonstration that the generator follows its condition: Perlin stripes of scale k.

Marble textures (:func:`microtex.synth.perlin_texture`) with ``k`` stripes per
image side have a dominant wavelength of ``size / k`` pixels. A VQ-VAE and a
conditional PixelCNN are trained on textures of a few ``k`` values with the
condition ``ln k`` (of order one: 0.7 to 2.1 for the default ``k`` of 2 to 8),
one ``k`` held out of training entirely. Images are then generated for every
``k``, the held-out one included (it lies inside the training range, so this
is interpolation), and the dominant wavelength of generated and real images is
measured per ``k`` (:func:`dominant_wavelength`). If the condition is used,
the generated wavelength falls with ``k`` and the held-out ``k``'s lies
between its neighbours'.

Choices (all parameters of :func:`run_perlin_demo`)
-------------------------------------------------
* Images are ``size x size`` (32) textures, one training patch each (plus its
  mirror image), stripes normal to x (``theta = 0``, so a mirror image is the
  same kind of texture) bent by Perlin noise of amplitude 1; every texture has
  its own noise seed. For integer ``k`` the stripes are periodic in the image,
  so the real textures' measured wavelength is ``size / k`` exactly.
* The default run took 150 s on two CPU cores shared with another job (default
  models small enough for that:
  VQ-VAE with two hidden strided convolutions (16, 32 channels; 32 x 32
  images to a 4 x 4 map of 64 codes of dimension 16, and a 6-layer PixelCNN
  with 32 channels); ``small=True`` takes seconds.
* One texture of each seen ``k`` is held out as the validation side of the
  split (by source image), so every seen ``k`` is on both sides.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from collections.abc import Sequence

import numpy as np

from microtex._validation import check_bool, check_int, check_positive_int
from microtex.features.spectra import power_spectrum
from microtex.report import csv_text, write_json
from microtex.synth import perlin_texture

__all__ = ["DEFAULT_KS", "DEFAULT_HELD_OUT", "dominant_wavelength", "radial_power_spectrum",
           "perlin_images", "run_perlin_demo"]  # fmt: skip

#: Stripes per image side seen in training by default.
DEFAULT_KS: tuple[int, ...] = (2, 3, 4, 6, 8)
#: The ``k`` held out of training by default (between 4 and 6).
DEFAULT_HELD_OUT = 5
_AMPLITUDE = 1.0  # Perlin displacement amplitude A of the textures (gentle waves)


def _square_images(images) -> np.ndarray:
    array = np.asarray(images, dtype=np.float64)
    if array.ndim == 2:
        array = array[None]
    if array.ndim != 3 or array.shape[1] != array.shape[2] or array.shape[1] < 4:
        raise ValueError(f"images must be square, (size, size) or (n, size, size) with size "
                         f">= 4, got shape {np.shape(images)}")  # fmt: skip
    if not np.isfinite(array).all():
        raise ValueError("images contain NaN or infinite values")
    return array


def radial_power_spectrum(images, *, window: bool = True) -> np.ndarray:
    """Radially averaged power spectra of square images, in integer bins of cycles per side.

    Each image has its mean removed and is optionally multiplied by a 2-D Hann
    window (the outer product of two periodic Hann windows), then
    ``|FFT|^2`` is averaged over the frequencies whose radius
    ``sqrt(fx^2 + fy^2)`` (cycles per image side) rounds to each integer.

    Parameters
    ----------
    images : array_like
        ``(size, size)`` or ``(n, size, size)``, finite.
    window : bool
        Apply the Hann window (less leakage from the image edges; a pure
        stripe pattern's peak stays in its own bin).

    Returns
    -------
    numpy.ndarray
        float64 ``(n, size // 2 + 1)``: entry ``b`` is the mean power at radius
        ``b`` cycles per side (``b = 0`` is the zero frequency, which is about 0
        after the mean is removed). Radii above ``size / 2`` (the corners past
        Nyquist) are left out.

    Examples
    --------
    >>> import numpy as np
    >>> stripes = np.cos(2 * np.pi * 4 * np.arange(16) / 16)[None, :].repeat(16, 0)
    >>> int(radial_power_spectrum(stripes).argmax())
    4
    """
    array = _square_images(images)
    n, size, _ = array.shape
    array = array - array.mean(axis=(1, 2), keepdims=True)
    if check_bool("window", window):
        hann = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(size) / size)
        array = array * np.outer(hann, hann)
    # the ring means of |FFT|^2 / size^2, rings r = rint(|q|) up to size // 2
    return power_spectrum(array, rescale="none", radial=True) * float(size * size)


def dominant_wavelength(images, *, window: bool = True) -> np.ndarray:
    """Per image, the wavelength in pixels of the peak of its radially averaged power spectrum.

    The peak is searched over the bins ``1 .. size // 2`` cycles per side of
    :func:`radial_power_spectrum` (the zero frequency is excluded), and its bin
    ``b`` gives the wavelength ``size / b``. Stripes of period ``size / k``
    pixels with integer ``k`` give exactly ``size / k``; other periods give
    the nearest bin's wavelength.

    Parameters
    ----------
    images : array_like
        ``(size, size)`` or ``(n, size, size)``, finite, square.
    window : bool
        Apply a Hann window first (:func:`radial_power_spectrum`).

    Returns
    -------
    numpy.ndarray
        float64 ``(n,)`` wavelengths in pixels, in ``[2, size]``.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.arange(32)
    >>> stripes = np.cos(2 * np.pi * x / 8)[None, :].repeat(32, 0)  # period 8 pixels
    >>> dominant_wavelength(stripes).tolist()
    [8.0]
    """
    array = _square_images(images)
    size = array.shape[1]
    spectra = radial_power_spectrum(array, window=window)
    peak = 1 + np.argmax(spectra[:, 1:], axis=1)
    return size / peak.astype(np.float64)


def perlin_images(k: float, n: int, size: int, *, seed: int = 0) -> np.ndarray:
    """``n`` marble textures of ``k`` stripes per side, float32 ``(n, size, size)`` in [0, 1].

    Stripes normal to x (``theta = 0``), Perlin amplitude 1; image ``i`` has
    the noise seed drawn from ``numpy.random.SeedSequence([seed, round(1000 k), i])``,
    so each ``k`` and each image has its own noise.

    Examples
    --------
    >>> perlin_images(4, 2, 16).shape
    (2, 16, 16)
    """
    n = check_positive_int("n", n)
    seeds = [np.random.SeedSequence([int(seed), int(round(1000 * k)), i]).generate_state(1)[0]
             for i in range(n)]  # fmt: skip
    return np.stack([perlin_texture(size, k, 0.0, _AMPLITUDE, int(s)) for s in seeds])


def _patch_set(images_by_k: dict, condition, patch_size: int):
    """A PatchSet of whole textures (and mirror images); the last texture of each k validates."""
    from microtex.generative.data import PatchSet, patches_from_image

    chunks, sources, values, held = [], [], [], []
    for k, images in images_by_k.items():
        for i, image in enumerate(images):
            if i == len(images) - 1:
                held.append(len(sources))
            chunks.append(patches_from_image(image, patch_size, patch_size, flips=True))
            sources.append(pathlib.Path(f"perlin_k{k:g}_{i}.png"))
            values.append([condition(k)])
    counts = [len(chunk[0]) for chunk in chunks]
    source = np.repeat(np.arange(len(sources), dtype=np.int64), counts)
    source_conditions = np.asarray(values, dtype=np.float32)
    patch_set = PatchSet(
        patches=np.concatenate([c[0] for c in chunks])[:, None],
        conditions=source_conditions[source], source=source,
        origins=np.concatenate([c[1] for c in chunks]),
        flipped=np.concatenate([c[2] for c in chunks]),
        sources=tuple(sources), source_conditions=source_conditions,
        condition_names=("ln_k",), patch_size=patch_size, stride=patch_size,
        settings={"flips": True, "crop_bottom": None},
    )  # fmt: skip
    return patch_set.split(held)


def _configs(size: int):
    """The demo's VQ-VAE (``size`` to a ``size / 8`` map of 64 codes) and PixelCNN (6 layers)."""
    from microtex.generative.pixelcnn import PixelCNNConfig
    from microtex.generative.vqvae import VQVAEConfig

    vq = VQVAEConfig(image_size=size, hidden_channels=(16, 32), embedding_dim=16, n_codes=64,
                     residual_channels=16)  # fmt: skip
    prior = PixelCNNConfig(n_codes=64, embedding_dim=32, hidden_channels=32, n_layers=6,
                           head_channels=64, latent_size=vq.latent_size)  # fmt: skip
    return vq, prior


def _pearson(x, y) -> float:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def _plots(output: pathlib.Path, rows: list[dict], real: dict, generated: dict) -> list[str]:
    from microtex.report import _pyplot, _save

    plt = _pyplot()
    shown = 4
    fig, axes = plt.subplots(2 * len(rows), shown, figsize=(1.2 * shown, 2.4 * len(rows)))
    for r, row in enumerate(rows):
        for j in range(shown):
            for line, (images, what) in enumerate(((real, "real"), (generated, "gen."))):
                ax = axes[2 * r + line, j]
                if j < len(images[row["k"]]):
                    ax.imshow(images[row["k"]][j], cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
                if j == 0:
                    held = " (held out)" if row["held_out"] else ""
                    ax.set_ylabel(f"k={row['k']:g}{held}\n{what}", fontsize=7)
    _save(fig, output / "perlin_samples.png")
    fig, ax = plt.subplots(figsize=(5.0, 4.0))
    ks = np.array([row["k"] for row in rows])
    fine = np.linspace(ks.min(), ks.max(), 100)
    ax.plot(fine, rows[0]["size"] / fine, color="gray", lw=1, label="size / k")
    for key, marker, label in (("real", "o", "real"), ("generated", "s", "generated")):
        ax.errorbar(ks, [row[f"{key}_mean"] for row in rows],
                    yerr=[row[f"{key}_std"] for row in rows], fmt=marker, capsize=3,
                    label=label, alpha=0.8)  # fmt: skip
    held = [row for row in rows if row["held_out"]]
    if held:
        ax.axvline(held[0]["k"], color="tab:red", ls=":", lw=1, label="held-out k")
    ax.set_xlabel("k (stripes per image side)")
    ax.set_ylabel("dominant wavelength (pixels)")
    ax.legend(fontsize=8, frameon=False)
    _save(fig, output / "perlin_wavelength.png")
    return ["perlin_samples.png", "perlin_wavelength.png"]


def _between(rows: list[dict], held_out: float) -> bool | None:
    """The held-out k's generated mean wavelength lies strictly between its neighbours'."""
    seen = sorted((row["k"], row["generated_mean"]) for row in rows if not row["held_out"])
    below = [w for k, w in seen if k < held_out]
    above = [w for k, w in seen if k > held_out]
    if not below or not above:
        return None
    value = next(row["generated_mean"] for row in rows if row["held_out"])
    low, high = sorted((below[-1], above[0]))
    return bool(low < value < high)


def run_perlin_demo(output: str | os.PathLike, *, ks: Sequence[float] = DEFAULT_KS,
                    held_out: float | None = DEFAULT_HELD_OUT, size: int = 32,
                    n_per_k: int = 64, n_generated: int = 64, epochs_vqvae: int = 40,
                    epochs_prior: int = 40, seed: int = 0, small: bool = False,
                    overwrite: bool = False, progress: bool = False) -> dict:  # fmt: skip
    """Train a generator on Perlin textures of some ``k``, generate all ``k``, compare wavelengths.

    See the module docstring. The condition is ``ln k``. Everything is written
    to ``output``: ``generator/`` (the bundle), ``perlin_demo.json`` (the
    returned record), ``perlin_demo.csv`` (one row per ``k``),
    ``perlin_samples.png`` (real and generated images per ``k``) and
    ``perlin_wavelength.png`` (wavelength against ``k``).

    Parameters
    ----------
    output : path-like
        Folder for the results (created).
    ks : sequence of float
        The ``k`` values trained on (at least two, each > 0 and below ``size / 2``).
    held_out : float or None
        A ``k`` left out of training and generated all the same; None for none.
    size : int
        Image side (and patch side): a multiple of the VQ-VAE's downsampling (8).
    n_per_k : int
        Textures per seen ``k`` (>= 2; the last of each is the validation side).
    n_generated : int
        Generated images (and real ones for the comparison) per ``k``.
    epochs_vqvae, epochs_prior : int
    seed : int
        Seeds the textures, the training and the sampling.
    small : bool
        The test-suite version (seconds): at most 8 textures per ``k``, 32
        images per ``k`` and 20 + 20 epochs (smaller values given are kept).
        Over seeds 0-7 it still gave a Pearson correlation between ``k`` and
        the generated wavelength of -0.89 to -0.97, a generated wavelength
        falling with ``k`` over the seen values, and the held-out ``k``'s
        between its neighbours'.
    overwrite : bool
        Replace a generator bundle already in ``output``.
    progress : bool
        Training progress bars.

    Returns
    -------
    dict
        ``"per_k"``: one record per ``k`` (sorted), with ``k``, ``condition``,
        ``held_out``, ``expected`` (``size / k``), ``real_mean``/``real_std``
        and ``generated_mean``/``generated_std`` of the dominant wavelength;
        ``"pearson_k_generated_wavelength"`` and
        ``"pearson_k_generated_frequency"`` (``1 / wavelength``), over all
        ``k``; the same over the real images; ``"held_out_between_neighbours"``
        (None without a held-out ``k`` inside the seen range);
        ``"generated_monotone_seen"``: the generated mean wavelength falls
        strictly with ``k`` over the seen values; settings, losses, seconds and
        the file names.
    """
    from microtex import _files
    from microtex.generative.export import save_generator
    from microtex.generative.sample import load_generator
    from microtex.generative.train import history_summary, train_prior, train_vqvae

    start = time.perf_counter()
    small = check_bool("small", small)
    size = check_positive_int("size", size)
    seed = check_int("seed", seed, 0)
    if small:
        n_per_k, n_generated = min(n_per_k, 8), min(n_generated, 32)
        epochs_vqvae, epochs_prior = min(epochs_vqvae, 20), min(epochs_prior, 20)
    n_per_k = check_int("n_per_k", n_per_k, 2)
    n_generated = check_positive_int("n_generated", n_generated)
    seen = sorted({float(k) for k in ks})
    if len(seen) < 2 or not all(0 < k < size / 2 for k in seen):
        raise ValueError(f"ks must hold at least two values in (0, size / 2 = {size / 2:g}), "
                         f"got {list(ks)}")  # fmt: skip
    every = list(seen)
    if held_out is not None:
        held_out = float(held_out)
        if held_out in seen or not 0 < held_out < size / 2:
            raise ValueError(f"held_out must be a k in (0, {size / 2:g}) not in ks, got "
                             f"{held_out}")  # fmt: skip
        every = sorted(seen + [held_out])
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    vq_config, prior_config = _configs(size)

    train_images = {k: perlin_images(k, n_per_k, size, seed=seed) for k in seen}
    patch_set = _patch_set(train_images, math.log, size)
    common = {"batch_size": 32, "seed": seed, "device": "cpu", "progress": progress}
    vqvae = train_vqvae(patch_set, vq_config, epochs=epochs_vqvae, lr=2e-3, **common)
    prior = train_prior(patch_set, vqvae.model, prior_config, epochs=epochs_prior, lr=3e-3,
                        **common)  # fmt: skip
    trained = time.perf_counter()
    bundle = save_generator(output / "generator", vqvae.model.cpu(), prior.model.cpu(),
                            condition_names=["ln_k"],
                            condition_range=patch_set.condition_range(),
                            training={"demo": "perlin", "ks": seen, "held_out": held_out,
                                      "seed": seed},
                            overwrite=overwrite)  # fmt: skip
    generator = load_generator(bundle, device="cpu")

    rows, real, generated = [], {}, {}
    for k in every:
        # fresh real textures (another seed stream than the training ones)
        real[k] = perlin_images(k, n_generated, size, seed=seed + 1_000_003)
        generated[k] = generator.generate(math.log(k), n_generated, seed=seed)
        measured = {"real": dominant_wavelength(real[k]),
                    "generated": dominant_wavelength(generated[k])}  # fmt: skip
        row = {"k": k, "condition": math.log(k), "held_out": k == held_out, "size": size,
               "expected": size / k}  # fmt: skip
        for key, values in measured.items():
            row[f"{key}_mean"] = float(values.mean())
            row[f"{key}_std"] = float(values.std())
        rows.append(row)
    ks_all = [row["k"] for row in rows]
    seen_generated = [row["generated_mean"] for row in rows if not row["held_out"]]
    record = {
        "demo": "perlin",
        "condition": "ln_k",
        "per_k": rows,
        "pearson_k_generated_wavelength": _pearson(ks_all, [r["generated_mean"] for r in rows]),
        "pearson_k_generated_frequency": _pearson(ks_all,
                                                  [1 / r["generated_mean"] for r in rows]),
        "pearson_k_real_wavelength": _pearson(ks_all, [r["real_mean"] for r in rows]),
        "held_out": held_out,
        "held_out_between_neighbours": None if held_out is None else _between(rows, held_out),
        "generated_monotone_seen": bool(np.all(np.diff(seen_generated) < 0)),
        "settings": {"ks": seen, "size": size, "n_per_k": n_per_k, "n_generated": n_generated,
                     "epochs_vqvae": epochs_vqvae, "epochs_prior": epochs_prior, "seed": seed,
                     "small": small, "amplitude": _AMPLITUDE, "window": "hann",
                     "vqvae": vq_config.to_dict(), "pixelcnn": prior_config.to_dict()},
        "losses": {"vqvae": history_summary(vqvae.history, "reconstruction"),
                   "prior": history_summary(prior.history, "nll")},
        "seconds": {"training": trained - start},
        "files": {"bundle": "generator", "json": "perlin_demo.json", "csv": "perlin_demo.csv"},
    }  # fmt: skip
    record["files"]["plots"] = _plots(output, rows, real, generated)
    columns = ["k", "condition", "held_out", "expected", "real_mean", "real_std",
               "generated_mean", "generated_std"]  # fmt: skip
    _files.atomic_write_text(output / "perlin_demo.csv",
                             csv_text(columns, [[row[c] for c in columns] for row in rows]))
    record["seconds"]["total"] = time.perf_counter() - start
    write_json(output / "perlin_demo.json", record)
    return record
