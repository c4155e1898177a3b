"""Lubbers et al.'s marble experiments: what Gram and power-spectrum embeddings recover.

Images are :func:`microtex.synth.perlin_texture` marbles
``phi = cos(2 pi k (r + A h(r)) . n_theta)``, so every generating parameter is
known. Two experiments, each returning every number it measured (the
``microtex manifold`` commands write them as JSON and plots):

* :func:`angle_experiment` -- one rotation family per amplitude ``A``
  (``theta_i = i pi / N``, fixed ``k``): a 2-D embedding should be a loop whose
  polar angle is ``2 theta``; RMSE of the recovered angle and the 2-D stress,
  Gram vs power spectrum, over seeded trials (the paper's Figs. 6-7).
* :func:`grid_experiment` -- ``theta``, ``k`` and ``A`` each over ``levels``
  values on half-open ranges (``levels**3`` images): stress vs embedding
  dimension ``D`` and the in-sample linear R² of ``k`` and ``A`` vs ``D``
  (Table I and Fig. 8), with the angle between the two regression
  directions.

Every experiment takes ``progress``: True for a progress bar on stderr, or a
callable that receives each step's message (how ``bench_manifold.py`` times
the phases).

:func:`noise_sweep` runs the grid over several noise fields, image sizes and
layer weights: whether ``A`` is recoverable depends on them, and
:data:`GRID_DEFAULTS` is the setting the sweep found to recover both ``k`` and
``A`` (benchmarks/results/manifold_sweep.json holds the run).

The paper's exact ranges are not restated here; these are microtex's choices:
``theta`` in ``[0, pi)``, ``k`` in ``[K_RANGE)`` stripes per side, ``A`` in
``[A_RANGE)`` (:func:`~microtex.synth.perlin_texture`'s units: ``A = 1`` bends
stripes gently, ``A = 4`` strongly).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import time
from collections.abc import Callable, Sequence

import numpy as np

from microtex import report, synth
from microtex._files import atomic_write_text
from microtex._validation import check_choices, check_int, check_positive_int, check_real
from microtex.analysis.manifold import (
    DESCRIPTORS,
    GRAM_TAPS,
    angle_fit,
    descriptor_distances,
    direction_angle,
    linear_r2,
    regression_direction,
    smacof,
)

__all__ = [
    "A_RANGE",
    "GRID_DEFAULTS",
    "K_RANGE",
    "TextureSetting",
    "angle_experiment",
    "grid_experiment",
    "grid_parameters",
    "marble_images",
    "noise_sweep",
    "run_angle",
    "run_grid",
    "run_sweep",
    "sweep_settings",
]

K_RANGE: tuple[float, float] = (5.0, 25.0)
A_RANGE: tuple[float, float] = (0.0, 5.0)

Progress = Callable[[str], None] | bool | None


@dataclasses.dataclass(frozen=True)
class TextureSetting:
    """How the marbles are made and described: noise field, image size, Gram layer weights.

    ``layer_weights`` are ``w_l`` for :data:`~microtex.analysis.manifold.GRAM_TAPS`
    (None: all 1).
    """

    size: int = 128
    noise_scale: float = synth.DEFAULT_NOISE_SCALE
    base_frequency: int = synth.DEFAULT_BASE_FREQUENCY
    octaves: int = synth.DEFAULT_OCTAVES
    layer_weights: tuple[float, ...] | None = None

    def __post_init__(self):
        check_int("size", self.size, 32)
        check_real("noise_scale", self.noise_scale, minimum=0.0)
        check_positive_int("base_frequency", self.base_frequency)
        check_positive_int("octaves", self.octaves)
        if self.layer_weights is not None:
            if len(self.layer_weights) != len(GRAM_TAPS):
                raise ValueError(f"layer_weights needs {len(GRAM_TAPS)} values (one per "
                                 f"{', '.join(GRAM_TAPS)}); got {self.layer_weights}")  # fmt: skip
            for tap, weight in zip(GRAM_TAPS, self.layer_weights):
                check_real(f"layer weight of {tap}", weight, minimum=0.0)
            if not any(self.layer_weights):
                raise ValueError(f"layer_weights are all zero: {self.layer_weights}")

    def label(self) -> str:
        weights = "equal" if self.layer_weights is None else ",".join(
            f"{w:g}" for w in self.layer_weights)
        return (f"size {self.size}, noise scale {self.noise_scale:g}, base frequency "
                f"{self.base_frequency}, octaves {self.octaves}, weights {weights}")

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


#: The setting of ``manifold grid`` and ``manifold angle``: of the settings
#: :func:`noise_sweep` tried, the one that recovered both k and A best (with the
#: synth defaults, 128 px, noise scale 0.01 and 4 cells per side, R²(A) stayed
#: near 0.1 at D = 4; benchmarks/results/manifold_sweep.json holds the sweep).
GRID_DEFAULTS = TextureSetting(size=256, noise_scale=0.0035, base_frequency=16)


def marble_images(k, theta, amplitude, seeds, setting: TextureSetting) -> np.ndarray:
    """One marble per row of the parameter arrays: float32 ``(n, size, size)`` in [0, 1]."""
    k, theta, amplitude, seeds = (np.asarray(v).ravel() for v in (k, theta, amplitude, seeds))
    if not (k.size == theta.size == amplitude.size == seeds.size):
        raise ValueError(f"parameter arrays differ in length: k {k.size}, theta {theta.size}, "
                         f"amplitude {amplitude.size}, seeds {seeds.size}")  # fmt: skip
    out = np.empty((k.size, setting.size, setting.size), dtype=np.float32)
    for i in range(k.size):
        out[i] = synth.perlin_texture(
            setting.size, float(k[i]), float(theta[i]), float(amplitude[i]), int(seeds[i]),
            noise_scale=setting.noise_scale, base_frequency=setting.base_frequency,
            octaves=setting.octaves,
        )
    return out


def _distances(images: np.ndarray, descriptor: str, setting: TextureSetting,
               n_threads: int | None) -> np.ndarray:  # fmt: skip
    options = {"layer_weights": setting.layer_weights} if descriptor == "gram" else {}
    return descriptor_distances(images, descriptor, n_threads=n_threads, **options)


class _Steps:
    """Progress of an experiment: a tqdm bar on stderr (``progress=True``), or each step's
    message passed to a callable (``progress=callable``), or nothing."""

    def __init__(self, progress, total: int, desc: str):
        self.call = progress if callable(progress) else None
        self.bar = None
        if progress is True:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, unit="step", leave=False)
        self.started = False

    def __call__(self, message: str) -> None:
        if self.call is not None:
            self.call(message)
        if self.bar is not None:
            if self.started:
                self.bar.update(1)
            self.started = True
            self.bar.set_postfix_str(message)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.update(self.bar.total - self.bar.n)
            self.bar.close()


def _mean_std(values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if values.size > 1
            else 0.0}  # fmt: skip


# --------------------------------------------------------------------------- angle


def angle_experiment(amplitudes: Sequence[float] = (0.0, 1.0, 2.0, 3.0, 4.0, 6.0), *,
                     n_angles: int = 48, k: float = 15.0, trials: int = 3,
                     setting: TextureSetting = GRID_DEFAULTS,
                     descriptors: Sequence[str] = DESCRIPTORS, n_init: int = 4,
                     seed: int = 0, n_threads: int | None = None,
                     progress: Progress = None) -> dict:  # fmt: skip
    """Recover the stripe angle of a rotation family from a 2-D MDS embedding.

    For each trial and amplitude ``A``: ``n_angles`` marbles with
    ``theta_i = i pi / n_angles``, wavenumber ``k``, each its own noise seed
    (the same seeds for every ``A`` of a trial, so amplitudes are compared on
    the same noise fields); per descriptor, the pairwise distances, SMACOF in
    2-D (:func:`~microtex.analysis.manifold.smacof`) and the angle RMSE
    (:func:`~microtex.analysis.manifold.angle_fit`).

    Returns
    -------
    dict
        ``"parameters"``; ``"results"``: per descriptor, per amplitude, the
        RMSE in degrees and the Kruskal stress (mean, std, every trial);
        ``"embeddings"``: the first trial's 2-D embeddings and ``theta``, for
        plots; ``"seconds"``.
    """
    start = time.perf_counter()
    descriptors = check_choices("descriptor", descriptors, DESCRIPTORS)
    amplitudes = [check_real("amplitude", a, minimum=0.0) for a in amplitudes]
    if not amplitudes:
        raise ValueError("amplitudes is empty")
    n_angles = check_int("n_angles", n_angles, 4)
    trials = check_positive_int("trials", trials)
    k = check_real("k", k, minimum=0.0, inclusive=False)
    theta = np.arange(n_angles) * math.pi / n_angles
    rmse = {d: [[] for _ in amplitudes] for d in descriptors}
    stress = {d: [[] for _ in amplitudes] for d in descriptors}
    embeddings = {d: [] for d in descriptors}
    seeds_of = np.random.default_rng(seed).integers(0, 2**31, size=(trials, n_angles))
    say = _Steps(progress, trials * len(amplitudes), "angle")
    for trial in range(trials):
        for index, amplitude in enumerate(amplitudes):
            say(f"angle: trial {trial + 1}/{trials}, A = {amplitude:g}")
            images = marble_images(np.full(n_angles, k), theta, np.full(n_angles, amplitude),
                                   seeds_of[trial], setting)  # fmt: skip
            for descriptor in descriptors:
                distances = _distances(images, descriptor, setting, n_threads)
                result = smacof(distances, 2, n_init=n_init, random_state=seed + trial)
                fit = angle_fit(result.embedding, theta)
                rmse[descriptor][index].append(math.degrees(fit.rmse))
                stress[descriptor][index].append(result.stress)
                if trial == 0:
                    embeddings[descriptor].append(result.embedding)
    say.close()
    results = {
        descriptor: [
            {"amplitude": amplitude, "rmse_degrees": _mean_std(rmse[descriptor][i]),
             "stress": _mean_std(stress[descriptor][i]),
             "rmse_degrees_trials": rmse[descriptor][i], "stress_trials": stress[descriptor][i]}
            for i, amplitude in enumerate(amplitudes)
        ]
        for descriptor in descriptors
    }  # fmt: skip
    return {
        "parameters": {"amplitudes": amplitudes, "n_angles": n_angles, "k": k, "trials": trials,
                       "setting": setting.as_dict(), "descriptors": list(descriptors),
                       "n_init": n_init, "seed": seed},  # fmt: skip
        "results": results,
        "embeddings": {"theta": theta, **embeddings},
        "seconds": time.perf_counter() - start,
    }


# --------------------------------------------------------------------------- grid


def grid_parameters(levels: int, *, k_range=K_RANGE, a_range=A_RANGE, seed: int = 0) -> dict:
    """``theta``, ``k``, ``A`` over ``levels`` values each on half-open ranges, all combinations.

    Level ``j`` of a range ``[lo, hi)`` is ``lo + j (hi - lo) / levels``;
    ``theta`` spans ``[0, pi)``. Every image has its own noise seed.

    Examples
    --------
    >>> p = grid_parameters(2, k_range=(4, 8), a_range=(0, 2))
    >>> p["k"].tolist(), p["amplitude"].tolist()
    ([4.0, 4.0, 4.0, 4.0, 6.0, 6.0, 6.0, 6.0], [0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0])
    """
    levels = check_int("levels", levels, 2)
    (k_lo, k_hi), (a_lo, a_hi) = k_range, a_range
    k_lo = check_real("k_range low", k_lo, minimum=0.0, inclusive=False)
    k_hi = check_real("k_range high", k_hi, minimum=k_lo, inclusive=False)
    a_lo = check_real("a_range low", a_lo, minimum=0.0)
    a_hi = check_real("a_range high", a_hi, minimum=a_lo, inclusive=False)
    step = np.arange(levels) / levels
    k_axis, theta_axis, a_axis = (k_lo + step * (k_hi - k_lo), step * math.pi,
                                  a_lo + step * (a_hi - a_lo))  # fmt: skip
    k, theta, amplitude = (a.ravel() for a in np.meshgrid(k_axis, theta_axis, a_axis,
                                                          indexing="ij"))  # fmt: skip
    seeds = np.random.default_rng(seed).integers(0, 2**31, size=k.size)
    return {"k": k, "theta": theta, "amplitude": amplitude, "seed": seeds}


def grid_experiment(levels: int = 8, *, dims: Sequence[int] = tuple(range(1, 11)),
                    setting: TextureSetting = GRID_DEFAULTS, k_range=K_RANGE, a_range=A_RANGE,
                    descriptors: Sequence[str] = DESCRIPTORS, n_init: int = 2, seed: int = 0,
                    n_threads: int | None = None, progress: Progress = None,
                    keep_embeddings: bool = True) -> dict:  # fmt: skip
    """Stress and linear recoverability of ``k`` and ``A`` vs embedding dimension.

    ``levels**3`` marbles (:func:`grid_parameters`); per descriptor the
    distance matrix, then for every ``D`` in ``dims`` a SMACOF embedding, its
    Kruskal stress, the in-sample R² of ``k`` and of ``A`` regressed linearly
    on it, and the angle between the two regression directions.

    Returns
    -------
    dict
        ``"parameters"``; ``"results"``: per descriptor, one row per ``D``;
        ``"embeddings"`` (with ``keep_embeddings``): per descriptor the
        largest-``D`` embedding's first three coordinates, and the generating
        parameters; ``"seconds"``.
    """
    start = time.perf_counter()
    descriptors = check_choices("descriptor", descriptors, DESCRIPTORS)
    dims = sorted({check_positive_int("D", d) for d in dims})
    if not dims:
        raise ValueError("dims is empty")
    params = grid_parameters(levels, k_range=k_range, a_range=a_range, seed=seed)
    n = params["k"].size
    if dims[-1] >= n:
        raise ValueError(f"D = {dims[-1]} needs more than {n} images")
    say = _Steps(progress, 1 + len(descriptors) * (1 + len(dims)), "grid")
    say(f"grid: making {n} marbles of {setting.size} px")
    images = marble_images(params["k"], params["theta"], params["amplitude"], params["seed"],
                           setting)  # fmt: skip
    results, embeddings = {}, {}
    for descriptor in descriptors:
        say(f"grid: {descriptor} distances of {n} images")
        distances = _distances(images, descriptor, setting, n_threads)
        rows = []
        for d in dims:
            say(f"grid: {descriptor} MDS in {d} dimension(s)")
            result = smacof(distances, d, n_init=n_init, random_state=seed)
            row = {"D": d, "stress": result.stress,
                   "r2_k": linear_r2(result.embedding, params["k"]),
                   "r2_amplitude": linear_r2(result.embedding, params["amplitude"])}  # fmt: skip
            row["angle_k_amplitude_degrees"] = direction_angle(
                regression_direction(result.embedding, params["k"]),
                regression_direction(result.embedding, params["amplitude"]),
            )
            rows.append(row)
            if d == dims[-1] and keep_embeddings:
                embeddings[descriptor] = result.embedding[:, :3]
        results[descriptor] = rows
    say.close()
    out = {
        "parameters": {"levels": levels, "n_images": n, "dims": dims, "k_range": list(k_range),
                       "a_range": list(a_range), "theta_range": [0.0, math.pi],
                       "setting": setting.as_dict(), "descriptors": list(descriptors),
                       "n_init": n_init, "seed": seed},  # fmt: skip
        "results": results,
        "seconds": time.perf_counter() - start,
    }
    if keep_embeddings:
        out["embeddings"] = {**embeddings, "k": params["k"], "theta": params["theta"],
                             "amplitude": params["amplitude"]}  # fmt: skip
    return out


# --------------------------------------------------------------------------- sweep


def sweep_settings(base: TextureSetting = GRID_DEFAULTS) -> list[TextureSetting]:
    """The settings :func:`noise_sweep` tries: ``base``, then one factor changed at a time.

    Noise scale (x0.5, x2), base frequency (x0.5, x2), octaves (1, 5), image
    size (128 for a base of 256, else 256), Gram layer weights (early
    layers only, late layers only) and, last, :func:`microtex.synth.perlin_texture`'s
    own defaults at 128 px.
    """
    variants = [base]
    replace = dataclasses.replace
    variants += [replace(base, noise_scale=base.noise_scale * f) for f in (0.5, 2.0)]
    variants += [replace(base, base_frequency=f) for f in (base.base_frequency // 2,
                                                          base.base_frequency * 2) if f >= 1]
    variants += [replace(base, octaves=o) for o in (1, 5) if o != base.octaves]
    variants += [replace(base, size=256)] if base.size != 256 else [replace(base, size=128)]
    variants += [replace(base, layer_weights=(1.0, 1.0, 1.0, 0.0, 0.0)),
                 replace(base, layer_weights=(0.0, 0.0, 1.0, 1.0, 1.0))]  # fmt: skip
    if TextureSetting() not in variants:
        variants.append(TextureSetting())  # microtex.synth's own noise, for comparison
    return variants


def noise_sweep(settings: Sequence[TextureSetting] | None = None, *, levels: int = 6,
                dims: Sequence[int] = tuple(range(1, 11)), descriptors=("gram",),
                n_init: int = 1, seed: int = 0, n_threads: int | None = None,
                progress: Progress = None) -> dict:  # fmt: skip
    """:func:`grid_experiment` for each setting; which one recovers both ``k`` and ``A`` best.

    The score of a setting is ``min(R²(k), R²(A))`` of the Gram embedding (of
    the first descriptor without ``"gram"``) at ``D = 4`` (the smallest ``D``
    in ``dims`` from 4 up); the best is reported as ``"best"``.
    """
    settings = list(sweep_settings() if settings is None else settings)
    if not settings:
        raise ValueError("settings is empty")
    descriptors = check_choices("descriptor", descriptors, DESCRIPTORS)
    scored = "gram" if "gram" in descriptors else descriptors[0]
    runs = []
    say = _Steps(progress, len(settings), "sweep")
    for index, setting in enumerate(settings):
        say(f"sweep {index + 1}/{len(settings)}: {setting.label()}")
        run = grid_experiment(levels, dims=dims, setting=setting, descriptors=descriptors,
                              n_init=n_init, seed=seed, n_threads=n_threads,
                              keep_embeddings=False)  # fmt: skip
        rows = run["results"][scored]
        at = next((row for row in rows if row["D"] >= 4), rows[-1])
        runs.append({"setting": setting.as_dict(), "label": setting.label(),
                     "score_D": at["D"], "score": min(at["r2_k"], at["r2_amplitude"]),
                     "results": run["results"], "seconds": run["seconds"]})  # fmt: skip
    say.close()
    best = max(range(len(runs)), key=lambda i: runs[i]["score"])
    return {"parameters": {"levels": levels, "dims": sorted(set(dims)),
                           "descriptors": list(descriptors), "scored": scored,
                           "n_init": n_init, "seed": seed},
            "runs": runs, "best": best}  # fmt: skip


# --------------------------------------------------------------------------- reports


def _folder(output) -> pathlib.Path:
    output = pathlib.Path(output)
    output.mkdir(parents=True, exist_ok=True)
    return output


def run_angle(output, **options) -> dict:
    """:func:`angle_experiment` with its report in ``output``.

    Writes ``angle.json`` (every number), ``angle.csv`` (one row per
    descriptor and amplitude), ``angle_rmse.png`` and ``angle_stress.png``
    (Figs. 6-7: RMSE and stress vs ``A``) and ``angle_embeddings.png`` (the
    first trial's loops, coloured by ``theta``). Returns the result with
    ``"files"``.
    """
    output = _folder(output)
    result = angle_experiment(**options)
    amplitudes = result["parameters"]["amplitudes"]
    rows = [[d, r["amplitude"], r["rmse_degrees"]["mean"], r["rmse_degrees"]["std"],
             r["stress"]["mean"], r["stress"]["std"]]
            for d, per_a in result["results"].items() for r in per_a]  # fmt: skip
    atomic_write_text(output / "angle.csv", report.csv_text(
        ["descriptor", "amplitude", "rmse_degrees_mean", "rmse_degrees_std", "stress_mean",
         "stress_std"], rows))  # fmt: skip
    names = {"gram": "Gram (VGG19)", "spectrum": "power spectrum"}
    per = result["results"]
    report.line_plot(amplitudes, {names[d]: ([r["rmse_degrees"]["mean"] for r in per[d]],
                                             [r["rmse_degrees"]["std"] for r in per[d]])
                                  for d in per},
                     output / "angle_rmse.png", xlabel="noise amplitude A",
                     ylabel="angle RMSE (degrees)",
                     title=f"angle recovered from a 2-D MDS embedding (k = "
                           f"{result['parameters']['k']:g})")  # fmt: skip
    report.line_plot(amplitudes, {names[d]: ([r["stress"]["mean"] for r in per[d]],
                                             [r["stress"]["std"] for r in per[d]])
                                  for d in per},
                     output / "angle_stress.png", xlabel="noise amplitude A",
                     ylabel="Kruskal stress (D = 2)", title="2-D embedding stress")  # fmt: skip
    theta = np.degrees(result["embeddings"]["theta"])
    panels = [(embedding, theta, f"{names[d]}, A = {a:g}", "θ (degrees)", "twilight")
              for d in per for a, embedding in zip(amplitudes, result["embeddings"][d])]
    report.value_scatters(panels, output / "angle_embeddings.png", columns=len(amplitudes))
    result["files"] = ["angle.json", "angle.csv", "angle_rmse.png", "angle_stress.png",
                       "angle_embeddings.png"]  # fmt: skip
    report.write_json(output / "angle.json", result)
    return result


def run_grid(output, **options) -> dict:
    """:func:`grid_experiment` with its report in ``output``.

    Writes ``grid.json``, ``grid.csv`` (descriptor, D, stress, R² of k and
    A, angle between their directions), ``grid_stress.png`` and
    ``grid_r2.png`` (vs D, Table I and Fig. 8), ``grid_embeddings.png`` (the
    largest-D embedding's first two principal coordinates coloured by theta,
    k and A) and ``grid_embedding.csv`` (the parameters and its first three
    coordinates, columns ``{descriptor}_D{D}_{i}``).
    """
    output = _folder(output)
    result = grid_experiment(**options)
    per = result["results"]
    atomic_write_text(output / "grid.csv", report.csv_text(
        ["descriptor", "D", "stress", "r2_k", "r2_amplitude", "angle_k_amplitude_degrees"],
        [[d, r["D"], r["stress"], r["r2_k"], r["r2_amplitude"], r["angle_k_amplitude_degrees"]]
         for d in per for r in per[d]]))  # fmt: skip
    names = {"gram": "Gram", "spectrum": "power spectrum"}
    dims = result["parameters"]["dims"]
    report.line_plot(dims, {names[d]: [r["stress"] for r in per[d]] for d in per},
                     output / "grid_stress.png", xlabel="embedding dimension D",
                     ylabel="Kruskal stress", title="stress vs dimension")  # fmt: skip
    series = {}
    for d in per:
        series[f"{names[d]}: k"] = [r["r2_k"] for r in per[d]]
        series[f"{names[d]}: A"] = [r["r2_amplitude"] for r in per[d]]
    report.line_plot(dims, series, output / "grid_r2.png", xlabel="embedding dimension D",
                     ylabel="linear R²", title="k and A recovered linearly from the embedding",
                     ylim=(0, 1.02))  # fmt: skip
    emb = result.pop("embeddings")
    panels = []
    for d in per:
        coords = emb[d][:, :2] if emb[d].shape[1] >= 2 else np.column_stack(
            [emb[d][:, 0], np.zeros(len(emb[d]))])
        for key, label in (("theta", "θ"), ("k", "k"), ("amplitude", "A")):
            values = np.degrees(emb[key]) if key == "theta" else emb[key]
            panels.append((coords, values, f"{names[d]} (D = {dims[-1]}), by {label}", label,
                           "twilight" if key == "theta" else "viridis"))  # fmt: skip
    report.value_scatters(panels, output / "grid_embeddings.png", columns=3)
    header = ["theta", "k", "amplitude"]
    columns = [emb["theta"], emb["k"], emb["amplitude"]]
    for d in per:
        header += [f"{d}_D{dims[-1]}_{i + 1}" for i in range(emb[d].shape[1])]
        columns += list(emb[d].T)
    atomic_write_text(output / "grid_embedding.csv",
                      report.csv_text(header, np.column_stack(columns).tolist()))  # fmt: skip
    result["files"] = ["grid.json", "grid.csv", "grid_stress.png", "grid_r2.png",
                       "grid_embeddings.png", "grid_embedding.csv"]  # fmt: skip
    report.write_json(output / "grid.json", result)
    return result


def run_sweep(output, **options) -> dict:
    """:func:`noise_sweep` with its report: ``sweep.json``, ``sweep.csv``, ``sweep_r2.png``."""
    output = _folder(output)
    result = noise_sweep(**options)
    descriptor = result["parameters"]["scored"]
    rows = [[i, run["label"], r["D"], r["stress"], r["r2_k"], r["r2_amplitude"]]
            for i, run in enumerate(result["runs"]) for r in run["results"][descriptor]]
    atomic_write_text(output / "sweep.csv", report.csv_text(
        ["setting", "label", "D", "stress", "r2_k", "r2_amplitude"], rows))  # fmt: skip
    dims = result["parameters"]["dims"]
    series = {f"{i}: A": [r["r2_amplitude"] for r in run["results"][descriptor]]
              for i, run in enumerate(result["runs"])}
    report.line_plot(dims, series, output / "sweep_r2.png", xlabel="embedding dimension D",
                     ylabel="R² of A", ylim=(0, 1.02),
                     title="A recovered linearly, per setting (sweep.csv names them)")
    result["files"] = ["sweep.json", "sweep.csv", "sweep_r2.png"]
    report.write_json(output / "sweep.json", result)
    return result
