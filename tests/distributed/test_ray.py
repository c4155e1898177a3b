"""The Ray runner: the same rows, layout and manifest as a local run, bad files reported."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from microtex.cli.main import main
from microtex.features.api import featurize, featurize_dataset
from microtex.io import read_features
from microtex.io.shards import MANIFEST_FILE

ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")
pytest.importorskip("pyarrow")

# Ray 2.60's DataContext warns about its own deprecated fields when Ray Data copies it
pytestmark = pytest.mark.filterwarnings(
    r"ignore:`[\w.]+` (is deprecated|using substring):DeprecationWarning"
)

PARAMS = {"taps": "relu1_1", "pool": ("mean", "gram", "vlad"), "n_words": 2, "random_state": 0,
          "device": "cpu"}  # fmt: skip


@pytest.fixture(scope="module")
def local_ray():
    """A local Ray instance of 2 CPUs for the module (the runner leaves it running)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def images(tmp_path):
    """Seven random 20 x 20 textures, one 16-bit, one corrupt file (decoded on a worker)."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(7)
    for i in range(6):
        Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8)).save(folder / f"{i}.png")
    Image.fromarray(rng.integers(0, 65536, (20, 20), dtype=np.uint16)).save(folder / "6.png")
    (folder / "3-bad.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return folder


@pytest.mark.torch
def test_ray_local_and_in_memory_rows_are_identical_and_a_bad_file_is_reported(
    local_ray, images, tmp_path
):
    from microtex.distributed import featurize_ray

    expected = featurize(images, **PARAMS)
    local = tmp_path / "local"
    featurize_dataset(images, local, shard_size=3, **PARAMS)
    # a local run killed after its first shard, finished by Ray in the same folder
    folder = tmp_path / "ray"
    assert featurize_dataset(images, folder, shard_size=3, **PARAMS).n_shards == 3
    first = (folder / "part-00000.parquet").stat().st_mtime_ns
    for name in ("part-00001.parquet", "part-00002.parquet"):
        (folder / name).unlink()
    job = featurize_ray(images, folder, shard_size=3, num_workers=2, threads_per_worker=1,
                        batch_size=2, **PARAMS)  # fmt: skip
    assert (folder / "part-00000.parquet").stat().st_mtime_ns == first  # kept, not redone
    for table in (read_features(folder), read_features(local)):
        assert table.ids == expected.ids and table.columns == expected.columns
        np.testing.assert_array_equal(table.features, expected.features)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["shards"]["1"]["failures"] == [
        {"path": str(images / "3-bad.png"), "reason": expected.failures[0].reason}]  # fmt: skip
    assert manifest == json.loads((local / MANIFEST_FILE).read_text()) | {
        "shards": {k: v | {"seconds": manifest["shards"][k]["seconds"]}
                   for k, v in json.loads((local / MANIFEST_FILE).read_text())["shards"].items()}
    }  # fmt: skip
    assert job.done


def test_cli_runner_ray_writes_the_dataset_a_local_run_would(local_ray, images, tmp_path, capsys):
    # a file listed twice gets two rows, as locally (Ray Data reads it once)
    argv = ["featurize", str(images), str(images / "0.png"), "--raw", "--pool", "mean,gram",
            "--shard-size", "4", "--no-progress"]  # fmt: skip
    assert main([*argv, "-o", f"{tmp_path / 'ray'}/", "--runner", "ray", "--num-workers", "2"]) == 0
    out, err = capsys.readouterr()
    assert "featurized 8 rows (1 skipped) in 3 shards (3 written now, 0 kept)" in out
    assert f"skipped {images / '3-bad.png'}:" in err
    assert main([*argv, "-o", str(tmp_path / "local.npz")]) == 0
    table, reference = read_features(tmp_path / "ray"), read_features(tmp_path / "local.npz")
    assert table.ids == reference.ids and table.ids[-1] == table.ids[0]
    np.testing.assert_array_equal(table.features, reference.features)
    # resuming a finished Ray job starts no cluster and writes nothing
    assert main([*argv, "-o", str(tmp_path / "ray"), "--runner", "ray"]) == 0
    assert "(0 written now, 3 kept)" in capsys.readouterr().out
    assert main([*argv, "-o", str(tmp_path / "f.npz"), "--runner", "ray"]) == 2
    assert "--runner ray writes a dataset folder" in capsys.readouterr().err


def test_the_driver_holds_the_folder_and_hands_actors_an_absolute_bundle(
        local_ray, images, tmp_path, monkeypatch):  # fmt: skip
    from microtex.distributed import featurize_ray
    from microtex.errors import DatasetBusyError
    from microtex.io.shards import ShardedJob

    params = {"taps": "raw", "pool": ("mean", "vlad"), "n_words": 2, "random_state": 0}
    monkeypatch.chdir(tmp_path)
    with ShardedJob("held", [str(images / "0.png")], {}, 1):  # another job has the folder
        with pytest.raises(DatasetBusyError, match="held"):
            featurize_ray([images / "0.png"], "held", **params)
    seen = {}
    map_batches = ray.data.Dataset.map_batches

    def spy(self, fn, *args, **kwargs):
        seen.update(kwargs["fn_constructor_kwargs"])
        return map_batches(self, fn, *args, **kwargs)

    monkeypatch.setattr(ray.data.Dataset, "map_batches", spy)
    job = featurize_ray([images / "0.png", images / "1.png"], "relative", shard_size=1,
                        num_workers=1, **params)  # fmt: skip
    assert job.done and job.n_rows() == 2
    assert seen["bundle"] == str(tmp_path / "relative" / "_state" / "featurizer")


def test_default_workers_respect_gpus_per_worker():
    from microtex.distributed.ray import default_workers

    cluster = {"CPU": 32.0, "GPU": 4.0}
    assert default_workers(cluster, 4, 0) == 8
    assert default_workers(cluster, 4, 1) == 4 and default_workers(cluster, 1, 0.5) == 8
    assert default_workers({"CPU": 2.0}, 1, 1) == 1  # none to be had: Ray will say so


def test_a_ray_instance_the_runner_starts_shows_actor_logs(images, tmp_path, monkeypatch):
    from microtex.distributed import featurize_ray

    seen = {}

    class Started(Exception):
        pass

    def init(**kwargs):  # stop before a cluster starts: only its options are checked
        seen.update(kwargs)
        raise Started

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", init)
    with pytest.raises(Started):
        featurize_ray([images / "0.png"], tmp_path / "out", taps="raw", pool="mean")
    assert seen.get("log_to_driver", True) is True and seen["include_dashboard"] is False
