"""``featurize``: a folder (or arrays) in, a feature table out, bad files reported and skipped."""

from __future__ import annotations

import hashlib
import time

import numpy as np

from microtex import io as mio
from microtex._validation import check_on_error
from microtex.errors import DatasetMismatchError, NoImagesError
from microtex.features.plan import INT8, make_plan
from microtex.features.stream import all_paths
from microtex.features.texture import TextureFeaturizer
from microtex.io.shards import ShardedJob, run_sharded
from microtex.io.table import FeatureTable

__all__ = ["featurize", "featurize_dataset", "feature_rows", "texture_job_config",
           "vlad_words_digest"]


def featurize(images, *, on_error: str = "skip", progress: bool = False, fit_images=None,
              featurizer: TextureFeaturizer | None = None, tile: int | None = None,
              tile_stride: int | None = None, **params) -> FeatureTable:
    """Featurize images (arrays, files or directories) into a :class:`~microtex.io.FeatureTable`.

    Parameters
    ----------
    images : array (n, h, w), list of 2-D arrays, or paths / directories
    on_error : {"skip", "raise"}
        A file that cannot be read (or is too small) is reported in the
        table's ``failures`` and skipped, or raises.
    progress : bool
        Show a progress bar (tqdm, on stderr).
    fit_images : optional
        Images to fit VLAD dictionaries on (default: ``images``).
    featurizer : TextureFeaturizer, optional
        A fitted featurizer to use instead of building one from ``params``.
    tile : int, optional
        Cut every image (after cropping and resizing) into ``tile`` x ``tile``
        patches and featurize each: one row per patch, with the id
        ``"{image id}@{row},{column}"`` (its top-left pixel). An image smaller
        than one tile is reported and skipped. VLAD words are fitted on patches too.
    tile_stride : int, optional
        Step between patch origins (default ``tile``: patches do not overlap).
    **params
        :class:`TextureFeaturizer` parameters.

    Raises
    ------
    microtex.errors.NoImagesError
        Images were given but none could be featurized (all were skipped);
        its ``failures`` lists the files and why.

    Examples
    --------
    >>> import numpy as np
    >>> table = featurize(np.ones((2, 16, 16), np.float32), taps="raw", pool="mean,max")
    >>> table.columns, table.features.tolist()
    (['raw/mean/0', 'raw/max/0'], [[1.0, 1.0], [1.0, 1.0]])
    """
    check_on_error(on_error)
    start = time.perf_counter()
    _check_featurizer_args(featurizer, params)
    if featurizer is None:
        # images are read here only to fit VLAD words; unreadable ones are skipped as below
        featurizer = TextureFeaturizer(**params).fit(
            images if fit_images is None else fit_images, on_error=on_error, tile=tile,
            tile_stride=tile_stride,
        )
    bar = None
    if progress:
        from tqdm import tqdm

        total = len(mio.expand_paths(images)) if tile is None and all_paths(images) else None
        bar = tqdm(total=total, unit="img" if tile is None else "tile", desc="featurize",
                   leave=False)
    try:
        table = feature_rows(featurizer, images, on_error=on_error, tile=tile,
                             tile_stride=tile_stride, bar=bar)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    if not table.ids and table.failures:
        raise NoImagesError(
            f"no image could be featurized; {len(table.failures)} skipped, the first "
            f"{str(table.failures[0].path)!r}: {table.failures[0].reason}",
            failures=table.failures,
        )
    table.seconds = time.perf_counter() - start
    return table


def feature_rows(featurizer: TextureFeaturizer, images, *, on_error: str = "skip", tile=None,
                 tile_stride=None, bar=None) -> FeatureTable:  # fmt: skip
    """The table of a fitted featurizer over ``images``: no rows is not an error here.

    What :func:`featurize` and each shard of :func:`featurize_dataset` compute.
    """
    start = time.perf_counter()
    failures: list = []
    cropped: dict = {}
    ids, rows = [], []
    for batch_ids, features in featurizer.iter_features(
        images, on_error=on_error, tile=tile, tile_stride=tile_stride, failures=failures,
        cropped=cropped,
    ):
        rows.append(features)
        ids.extend(batch_ids)
        if bar is not None:
            bar.update(len(batch_ids))
    features = (np.concatenate(rows, axis=0) if rows
                else np.zeros((0, featurizer.n_features_out_), dtype=np.float32))
    return FeatureTable(features, list(featurizer.get_feature_names_out()), ids, failures,
                        time.perf_counter() - start, cropped)


#: Parameters that change how fast rows come, not their values: a job resumes across them.
_RUNTIME_PARAMS = ("batch_size", "n_threads")


def texture_job_config(featurizer: TextureFeaturizer, tile=None, tile_stride=None, *,
                       device: str | None = None) -> dict:  # fmt: skip
    """What decides the rows of a featurization job: the parameters (and fitted VLAD words).

    The configuration a sharded dataset is checked against on resume, by value:
    ``taps`` and ``pool`` as the plan spells them (``"mean,gram"`` is
    ``("mean", "gram")``), ``device`` and ``conv_algorithm`` resolved on this
    machine (``"auto"`` on a CPU is ``"cpu"``, a CUDA run is another job), and
    ``weights`` by the sha256 of the file's bytes, not its path; ``random_state``
    only with VLAD, the one thing it seeds. ``device``
    ("cpu" or "cuda", taken as is) overrides the featurizer's: the Ray
    runner's actors run on their own device, which the driver may not have.
    """
    from microtex._files import sha256_file
    from microtex.backbones import resolve_conv_algorithm
    from microtex.engine.session import runs_on_cpu
    from microtex.features.plan import make_plan

    params = {k: v for k, v in featurizer.get_params().items() if k not in _RUNTIME_PARAMS}
    if device is not None:
        params["device"] = device
    plan = make_plan(**{k: v for k, v in params.items() if k not in ("random_state", "pooling")})
    on_cpu = plan.device == "cpu" if device is not None else runs_on_cpu(plan.device)
    params.update(taps=list(plan.taps), pool=list(plan.pools), device="cpu" if on_cpu else "cuda",
                  conv_algorithm=None if plan.config is None else resolve_conv_algorithm(
                      plan.conv_algorithm, plan.config, on_cpu=on_cpu))  # fmt: skip
    if "vlad" not in plan.pools:  # the seed seeds only the VLAD fit (CLI: 0, API: None)
        params.pop("random_state", None)
    if params.get("weights") is not None:
        params["weights"] = "sha256:" + sha256_file(params["weights"])  # memoized per file state
    config = {"kind": "texture-features", "params": params, "tile": tile,
              "tile_stride": tile_stride}  # fmt: skip
    if getattr(featurizer, "vlad_dictionaries_", None):
        config["vlad_words"] = vlad_words_digest(featurizer)
    if getattr(featurizer, "int8_report_", None) is not None:  # fitted already (a bundle)
        config["int8_graph"] = sha256_file(featurizer.pipeline_.onnx_path)
    return config


def vlad_words_digest(featurizer: TextureFeaturizer) -> str:
    """sha256 of a fitted featurizer's VLAD words (tap names and float bytes, in tap order)."""
    digest = hashlib.sha256()
    for tap, words in sorted((getattr(featurizer, "vlad_dictionaries_", None) or {}).items()):
        digest.update(tap.encode() + np.ascontiguousarray(words).tobytes())
    return digest.hexdigest()


def fitted_state_digest(featurizer: TextureFeaturizer) -> str:
    """What a fit made that a job's rows depend on: the VLAD words and, for int8, the graph."""
    digest = vlad_words_digest(featurizer)
    if getattr(featurizer, "int8_report_", None) is not None:
        from microtex._files import sha256_file

        digest += "+int8:" + sha256_file(featurizer.pipeline_.onnx_path)
    return digest


#: The manifest entry that holds the digest of the fitted state a job's rows came from
#: (:func:`fitted_state_digest`; named when VLAD words were the only such state).
_FITTED_KEY = "fitted_vlad_words"


def fitted_for_job(
    job: ShardedJob, featurizer: TextureFeaturizer, images, *, on_error="skip", tile=None,
    tile_stride=None, save: bool = False,
) -> TextureFeaturizer:  # fmt: skip
    """``featurizer`` fitted once per job: a resumed job loads the fit from the job's folder.

    Fitting (VLAD words) reads every image; the fit is saved as a bundle in
    ``job.state_dir`` when it needs one (or ``save``: Ray actors load it), and
    the digest of its words goes in the manifest before any shard is written.
    A resumed job checks the words it loads against that digest, and refuses
    to refit when shards are listed but the saved fit is gone (their rows came
    from words it no longer has).

    Raises
    ------
    microtex.errors.DatasetMismatchError
        The saved fit is missing or does not match the manifest's digest.
    """
    state = job.state_dir / "featurizer"
    where = f"dataset {str(job.directory)!r}"
    hint = "; pass --overwrite (overwrite=True) to start the job over"
    if hasattr(featurizer, "feature_names_out_"):
        if save and not state.is_dir():
            featurizer.save(state)
        return featurizer
    recorded = job.manifest.get(_FITTED_KEY)
    if (state / "microtex.json").is_file():
        params = featurizer.get_params()
        loaded = TextureFeaturizer.load(state).with_runtime(
            **{"n_threads": params["n_threads"], "device": params["device"],
               "batch_size": params["batch_size"]}  # fmt: skip
        )
        digest = fitted_state_digest(loaded)
        if recorded is None and not job.manifest["shards"]:  # killed between save and record
            job.record(_FITTED_KEY, digest)
        elif digest != recorded:
            raise DatasetMismatchError(
                f"{where}: the fit (VLAD words, int8 graph) in {str(state)!r} is not the one its "
                "shards were made "
                f"with (sha256 {digest[:12]}..., manifest {str(recorded)[:12]}...){hint}"
            )
        return loaded
    params = featurizer.get_params()
    needs_fit = "vlad" in make_plan(taps="raw", pool=params["pool"]).pools or (
        params["precision"] == INT8
    )
    if job.manifest["shards"] and (recorded is not None or needs_fit):
        raise DatasetMismatchError(
            f"{where} lists {len(job.manifest['shards'])} shards but the fit they were made "
            f"with ({str(state)!r}) is missing; refitting would mix rows of other VLAD "
            f"words or another int8 calibration{hint}"
        )
    featurizer.fit(images, on_error=on_error, tile=tile, tile_stride=tile_stride)
    if save or needs_fit:
        featurizer.save(state)
        job.record(_FITTED_KEY, fitted_state_digest(featurizer))
    return featurizer


def dataset_inputs(images) -> list[str]:
    """The input list of a dataset job: files and folders expanded, in order."""
    if not all_paths(images):
        raise TypeError("a dataset is written from image files and folders, not arrays")
    return [str(p) for p in mio.expand_paths(images)]


def featurize_dataset(images, directory, *, shard_size: int = 1000, overwrite: bool = False,
                      on_error: str = "skip", progress: bool = False,
                      featurizer: TextureFeaturizer | None = None, tile: int | None = None,
                      tile_stride: int | None = None, on_open=None,
                      **params) -> ShardedJob:  # fmt: skip
    """Featurize files into a sharded Parquet dataset in ``directory``, resuming a killed run.

    The rows are those of :func:`featurize` on the same inputs; the layout,
    the manifest and what resuming keeps are :mod:`microtex.io.shards`'.
    Read it back with :func:`microtex.io.read_features`.

    Parameters
    ----------
    images : paths or folders
    directory : path
        The dataset folder.
    shard_size : int
        Images per shard (a shard is the unit of work a kill can lose).
    overwrite : bool
        Start over in a folder that holds another job's dataset.
    on_error, progress, featurizer, tile, tile_stride, **params
        As in :func:`featurize`.
    on_open : callable, optional
        Called with the opened job before any work (e.g. to see what is pending).

    Returns
    -------
    microtex.io.shards.ShardedJob
        The finished job (``n_rows()``, ``failures()``, ``manifest``).

    Raises
    ------
    microtex.errors.DatasetMismatchError
        ``directory`` holds a dataset of another configuration or input list.

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from PIL import Image
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> for i in range(3):
    ...     Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(folder / f"{i}.png")
    >>> job = featurize_dataset(folder, folder / "features", shard_size=2, taps="raw",
    ...                         pool="mean")
    >>> table = mio.read_features(folder / "features")
    >>> [round(float(v), 3) for v in table.features[:, 0]], job.manifest["shards"]["1"]["inputs"]
    ([0.0, 0.235, 0.471], [2, 3])
    """
    featurizer, job = open_texture_job(images, directory, featurizer, params, on_error,
                                       shard_size, overwrite, tile=tile,
                                       tile_stride=tile_stride)  # fmt: skip
    with job:  # the folder's lock, held until the job ends
        _featurize_job(job, featurizer, images, on_error, progress, tile, tile_stride, on_open)
    return job


def _check_featurizer_args(featurizer, params: dict) -> None:
    if featurizer is not None and params:
        raise TypeError(
            f"pass either a fitted featurizer or featurizer parameters, not both: {sorted(params)}"
        )


def open_texture_job(images, directory, featurizer, params: dict, on_error: str,
                     shard_size: int, overwrite: bool, *, tile=None, tile_stride=None,
                     device: str | None = None) -> tuple:
    """``(featurizer, ShardedJob)`` of a featurization dataset: what every runner opens with.

    ``featurizer`` or ``params`` (not both) give the featurizer; the job is
    checked against its configuration (:func:`texture_job_config`).
    """
    check_on_error(on_error)
    _check_featurizer_args(featurizer, params)
    featurizer = TextureFeaturizer(**params) if featurizer is None else featurizer
    config = texture_job_config(featurizer, tile, tile_stride, device=device)
    job = ShardedJob(directory, dataset_inputs(images), config, shard_size, overwrite=overwrite)
    return featurizer, job


def _featurize_job(job, featurizer, images, on_error, progress, tile, tile_stride, on_open):
    if on_open is not None:
        on_open(job)
    if job.done:
        return
    featurizer = fitted_for_job(job, featurizer, images, on_error=on_error, tile=tile,
                                tile_stride=tile_stride)  # fmt: skip
    bar = None
    if progress:
        from tqdm import tqdm

        pending = sum(len(inputs) for _, inputs in job.pending())
        bar = tqdm(total=pending, unit="img", desc="featurize", leave=False)
    try:
        run_sharded(
            job,
            lambda paths: feature_rows(featurizer, paths, on_error=on_error, tile=tile,
                                       tile_stride=tile_stride),  # fmt: skip
            on_shard=None if bar is None else lambda index, entry: bar.update(
                len(job.shard_inputs(index))),
        )
    finally:
        if bar is not None:
            bar.close()
