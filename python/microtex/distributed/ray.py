"""Featurization on a Ray cluster: Ray Data reads the files, actors holding a bundle featurize.

:func:`featurize_ray` writes the same sharded dataset as
:func:`microtex.features.api.featurize_dataset` (layout, manifest, resume:
:mod:`microtex.io.shards`), with the same rows. The flow:

* ``ray.data.read_binary_files(..., include_paths=True)``: the files' bytes,
  read by light tasks (``num_cpus=0``: reading is I/O, and the actors hold the
  CPUs);
* ``map_batches`` with :class:`BundleFeaturizer`, a callable class: each actor
  loads the featurizer **bundle** saved in the job's folder (never a pickled
  estimator), opens one ONNX Runtime session with intra-op threads = the
  actor's CPUs (Ray's ``OMP_NUM_THREADS`` does not bind ONNX Runtime), decodes
  with microtex's own decoder (:func:`microtex.io.decode.decode_bytes`: 16-bit,
  multi-page and info-band handling as in a local run) and pools. Decoding in
  the actor keeps compressed bytes, not float32 pixels, in the object store.
  A file that does not decode comes back as a failure with its path, not an
  error of the job; so does one the driver cannot see or read (checked before
  the job). A file a worker cannot read (another mount, an I/O error) fails
  the read task and so the job: Ray Data has no per-file error hook in
  ``read_binary_files``; rerun after fixing it, the finished shards are kept;
* the driver gathers the rows of each shard and writes it (atomically, with
  its checksum in the manifest) as soon as all its inputs are in; shards are
  small next to the images, and one writer keeps the manifest consistent.
"""

from __future__ import annotations

import os
import time

import numpy as np

from microtex.errors import ImageReadError, MicrotexError
from microtex.features.api import fitted_for_job, open_texture_job
from microtex.features.texture import TextureFeaturizer
from microtex.io.read import ReadFailure, read_image
from microtex.io.shards import ShardedJob
from microtex.io.table import FeatureTable

__all__ = ["BundleFeaturizer", "default_workers", "featurize_ray"]


def _import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise ImportError("the Ray runner needs Ray Data: pip install 'microtex[ray]'") from None
    return ray


class BundleFeaturizer:
    """A Ray Data callable class: bytes of image files in, feature rows (or failures) out.

    Parameters
    ----------
    bundle : path
        A texture-featurizer bundle (:meth:`TextureFeaturizer.save`), loaded
        and verified once per actor.
    n_threads : int
        ONNX Runtime intra-op threads (and pooling threads): the actor's CPUs.
    device : {"auto", "cpu", "cuda"}
    batch_size : int, optional
        Images per network run (default: the bundle's).
    """

    def __init__(self, bundle, n_threads: int = 1, device: str = "cpu", batch_size=None):
        from microtex.bundle import load_bundle

        self.featurizer = load_bundle(bundle).with_runtime(
            n_threads=n_threads, device=device, batch_size=batch_size
        )
        self.n_features = self.featurizer.n_features_out_

    def _rows(self, images: list) -> np.ndarray:
        return self.featurizer.transform(images)

    def __call__(self, batch: dict) -> dict:
        from microtex.io.decode import decode_bytes

        paths = [str(p) for p in batch["path"]]
        errors = [""] * len(paths)
        decoded = []
        for i, (path, data) in enumerate(zip(paths, batch["bytes"])):
            try:
                decoded.append((i, decode_bytes(bytes(data), name=path)[0]))
            except ImageReadError as exc:
                errors[i] = getattr(exc, "reason", None) or str(exc)
        features = np.zeros((len(paths), self.n_features), np.float32)
        try:
            if decoded:
                features[[i for i, _ in decoded]] = self._rows([image for _, image in decoded])
        except (MicrotexError, ValueError):  # one image the featurizer refuses: find it
            for i, image in decoded:
                try:
                    features[i] = self._rows([image])[0]
                except (MicrotexError, ValueError) as exc:
                    errors[i] = str(exc).removeprefix("array[0]: ")
        return {"path": np.array(paths, dtype=object), "features": features,
                "error": np.array(errors, dtype=object)}  # fmt: skip


def featurize_ray(images, directory, *, shard_size: int = 1000, overwrite: bool = False,
                  on_error: str = "skip", featurizer: TextureFeaturizer | None = None,
                  address: str | None = None, num_workers: int | None = None,
                  threads_per_worker: int = 1, gpus_per_worker: float = 0,
                  batch_size: int | None = None, on_open=None, **params) -> ShardedJob:  # fmt: skip
    """Featurize files on Ray Data into a sharded dataset (resumable, as a local run).

    Parameters
    ----------
    images : paths or folders
        Every worker must see them at the same paths (a shared file system).
    directory : path
        The dataset folder, written by this process (the driver).
    shard_size, overwrite, on_error, featurizer, on_open, **params
        As in :func:`microtex.features.api.featurize_dataset`; a folder made by
        one runs on the other.
    address : str, optional
        A running cluster's address (``ray start --head`` prints it; ``"auto"``:
        the one on this machine). None: the Ray instance this process already
        started, or a new local one.
    num_workers : int, optional
        Actors (default: the cluster's CPUs // ``threads_per_worker``, and no
        more than its GPUs // ``gpus_per_worker`` when GPUs are asked for).
    threads_per_worker : int
        CPUs each actor reserves, and its ONNX Runtime intra-op threads.
    gpus_per_worker : float
        GPUs each actor reserves; above 0 the actors run on CUDA.
    batch_size : int, optional
        Images per ``map_batches`` call and network run (default: the featurizer's).

    Returns
    -------
    microtex.io.shards.ShardedJob

    Raises
    ------
    ImportError
        Ray Data is not installed (the ``ray`` extra).
    microtex.errors.DatasetMismatchError
        As :func:`~microtex.features.api.featurize_dataset`.
    """
    ray = _import_ray()
    if int(threads_per_worker) < 1:
        raise ValueError(f"threads_per_worker must be at least 1, got {threads_per_worker!r}")
    # the actors' device, not the driver's, decides the rows
    featurizer, job = open_texture_job(images, directory, featurizer, params, on_error,
                                       shard_size, overwrite,
                                       device="cuda" if gpus_per_worker else "cpu")  # fmt: skip
    with job:  # the folder's lock, held by the driver until the job ends
        if on_open is not None:
            on_open(job)
        if job.done:
            return job
        fitted = fitted_for_job(job, featurizer, images, on_error=on_error, save=True)
        batch_size = batch_size or fitted.get_params()["batch_size"]
        started = not ray.is_initialized()
        if started:  # actors' logs (warnings, tracebacks) go to the driver's stderr
            ray.init(address=address, include_dashboard=False)
        try:
            _run(ray, job, fitted, on_error, num_workers, int(threads_per_worker),
                 gpus_per_worker, batch_size)  # fmt: skip
        finally:
            if started:
                ray.shutdown()
    return job


class _Shard:
    """The rows of one shard as they come back, in any order."""

    def __init__(self, inputs: list):
        self.inputs = inputs
        self.results: dict = {}
        self.start = time.perf_counter()

    def table(self, columns: list) -> FeatureTable:
        ids, rows, failures = [], [], []
        for position, path in enumerate(self.inputs):
            row, error = self.results[position]
            if error:
                failures.append(ReadFailure(path, error))
            else:
                ids.append(path)
                rows.append(row)
        features = np.stack(rows) if rows else np.zeros((0, len(columns)), np.float32)
        return FeatureTable(features.astype(np.float32), columns, ids, failures,
                            time.perf_counter() - self.start)  # fmt: skip


def _missing_reason(path: str) -> str:
    """What a local run says of a file that is not there (so both record the same)."""
    try:
        read_image(path)
    except (ImageReadError, MicrotexError) as exc:
        return getattr(exc, "reason", None) or str(exc)
    return "not a regular file"


def default_workers(resources: dict, threads_per_worker: int, gpus_per_worker: float) -> int:
    """Actors the cluster's ``resources`` hold: CPUs // threads, and GPUs // GPUs each if asked.

    Examples
    --------
    >>> default_workers({"CPU": 16, "GPU": 2}, 2, 0), default_workers({"CPU": 16, "GPU": 2}, 2, 1)
    (8, 2)
    >>> default_workers({"CPU": 16, "GPU": 2}, 2, 0.5)
    4
    """
    workers = int(resources.get("CPU", 1)) // threads_per_worker
    if gpus_per_worker:
        workers = min(workers, int(resources.get("GPU", 0) / gpus_per_worker + 1e-9))
    return max(1, workers)


def _run(ray, job: ShardedJob, featurizer, on_error, num_workers, threads, gpus, batch_size):
    columns = list(featurizer.get_feature_names_out())
    shards, where = {}, {}

    def finish(index: int) -> None:
        table = shards.pop(index).table(columns)
        if on_error == "raise" and table.failures:
            first = table.failures[0]
            raise ImageReadError(f"{first.path}: {first.reason}")
        job.write_shard(index, table)

    for index, inputs in job.pending():
        shards[index] = _Shard(inputs)
        for position, path in enumerate(inputs):
            # a file listed twice is read once, its row kept twice
            if os.path.isfile(path) and os.access(path, os.R_OK):
                where.setdefault(os.path.abspath(path), []).append((index, position))
            else:  # Ray's reader would fail the whole job on it
                shards[index].results[position] = (None, _missing_reason(path))
        if len(shards[index].results) == len(inputs):
            finish(index)
    files = list(where)
    if not files:
        return
    if num_workers is None:
        num_workers = default_workers(ray.cluster_resources(), threads, gpus)
    dataset = ray.data.read_binary_files(files, include_paths=True, num_cpus=0)
    bundle = (job.state_dir / "featurizer").resolve()  # actors may run in another folder
    dataset = dataset.map_batches(
        BundleFeaturizer,
        fn_constructor_kwargs={"bundle": str(bundle), "n_threads": threads,
                               "device": "cuda" if gpus else "cpu", "batch_size": batch_size},
        batch_size=batch_size, batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=int(num_workers)), num_cpus=threads,
        num_gpus=gpus or None,
    )  # fmt: skip
    for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
        for path, row, error in zip(batch["path"], batch["features"], batch["error"]):
            key = str(path)
            for index, position in where.get(key) or where[os.path.abspath(os.sep + key)]:
                shards[index].results[position] = (row, str(error))
                if len(shards[index].results) == len(shards[index].inputs):
                    finish(index)
    if shards:  # Ray Data returned fewer rows than it was given files
        raise RuntimeError(f"Ray Data returned no row for some inputs of shards {sorted(shards)}")
