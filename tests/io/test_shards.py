"""Sharded datasets: layout, manifest digests, resume after a crash, refusal to mix jobs."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from microtex.errors import DatasetMismatchError
from microtex.features.api import featurize, featurize_dataset
from microtex.io import FeatureTable, ReadFailure, read_features
from microtex.io.shards import MANIFEST_FILE, ShardedJob, config_hash, run_sharded

from _helpers import run_python

pytest.importorskip("pyarrow")

INPUTS = [f"img{i}.png" for i in range(7)]
CONFIG = {"kind": "test", "scale": 2.0}


def compute(paths, calls=None):
    """Two columns per input: its number and its number times 2; 'img3.png' fails."""
    if calls is not None:
        calls.append(list(paths))
    kept = [p for p in paths if p != "img3.png"]
    rows = np.array([[int(p[3:-4]), 2 * int(p[3:-4])] for p in kept], np.float32).reshape(-1, 2)
    failures = [ReadFailure(p, "broken") for p in paths if p == "img3.png"]
    return FeatureTable(rows, ["n", "twice"], kept, failures)


def manifest(folder) -> dict:
    return json.loads((folder / MANIFEST_FILE).read_text())


def test_layout_manifest_and_digests(tmp_path):
    job = run_sharded(ShardedJob(tmp_path / "d", INPUTS, CONFIG, 3), compute)
    folder = job.directory
    assert sorted(p.name for p in folder.glob("part-*")) == [
        "part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]  # fmt: skip
    m = manifest(folder)
    canonical = json.dumps(CONFIG, sort_keys=True, separators=(",", ":"))
    assert m["config_hash"] == hashlib.sha256(canonical.encode()).hexdigest()
    listing = "".join(f"{i}\n" for i in INPUTS).encode()
    assert m["inputs_digest"] == hashlib.sha256(listing).hexdigest()
    assert [m["shards"][k]["inputs"] for k in ("0", "1", "2")] == [[0, 3], [3, 6], [6, 7]]
    assert [m["shards"][k]["rows"] for k in ("0", "1", "2")] == [3, 2, 1]
    for entry in m["shards"].values():
        assert entry["sha256"] == hashlib.sha256((folder / entry["file"]).read_bytes()).hexdigest()
    assert m["shards"]["1"]["failures"] == [{"path": "img3.png", "reason": "broken"}]
    table = read_features(folder)
    assert table.ids == [p for p in INPUTS if p != "img3.png"]
    assert table.features[:, 1].tolist() == [0, 2, 4, 8, 10, 12]
    assert [(str(f.path), f.reason) for f in table.failures] == [("img3.png", "broken")]
    # readers of the folder see the rows only (manifest, inputs and state are "_" files)
    import pandas as pd

    frame = pd.read_parquet(folder)
    assert frame["image"].tolist() == table.ids and frame["twice"].tolist() == [0, 2, 4, 8, 10, 12]


def test_resume_after_a_crash_between_shards_redoes_only_what_is_missing(tmp_path):
    folder = tmp_path / "d"

    def crashing(paths):
        if paths[0] == "img4.png":
            raise RuntimeError("killed")
        return compute(paths)

    with pytest.raises(RuntimeError, match="killed"):
        run_sharded(ShardedJob(folder, INPUTS, CONFIG, 2), crashing)
    kept = {p.name: p.stat().st_mtime_ns for p in folder.glob("part-*")}
    assert sorted(kept) == ["part-00000.parquet", "part-00001.parquet"]
    assert read_features(folder).ids == ["img0.png", "img1.png", "img2.png"]  # finished so far
    calls: list = []
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 2), lambda p: compute(p, calls))
    assert calls == [["img4.png", "img5.png"], ["img6.png"]]
    assert {p: folder.joinpath(p).stat().st_mtime_ns for p in kept} == kept
    one_shot = run_sharded(ShardedJob(tmp_path / "e", INPUTS, CONFIG, 2), compute)
    np.testing.assert_array_equal(read_features(folder).features,
                                  read_features(one_shot.directory).features)  # fmt: skip
    calls.clear()
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 2), lambda p: compute(p, calls))
    assert calls == []  # all done: nothing recomputed


KILLED_INSIDE_A_SHARD = """
import os, signal, sys
import numpy as np
import pyarrow.parquet as pq
sys.path.insert(0, {tests!r})
from io_shards_compute import compute
from microtex.io.shards import ShardedJob, run_sharded

real_write, calls = pq.write_table, []
def write_table(table, where, **kwargs):
    calls.append(where)
    if len(calls) == 3:  # the third shard: half a file under its temporary name, then kill -9
        with open(where, "wb") as handle:
            handle.write(b"PAR1" + b"x" * 100)
            handle.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return real_write(table, where, **kwargs)
pq.write_table = write_table
run_sharded(ShardedJob({folder!r}, {inputs!r}, {config!r}, 2), compute)
"""


def test_kill_9_inside_a_shard_keeps_finished_shards_and_leaves_no_readable_partial(tmp_path):
    helper = tmp_path / "io_shards_compute.py"
    helper.write_text(textwrap.dedent(f"""
        import numpy as np
        from microtex.io import FeatureTable, ReadFailure
        {textwrap.indent(compute_source(), '        ').strip()}
    """))
    folder = tmp_path / "d"
    script = KILLED_INSIDE_A_SHARD.format(tests=str(tmp_path), folder=str(folder),
                                          inputs=INPUTS, config=CONFIG)  # fmt: skip
    result = run_python("-c", script)
    assert result.returncode == -signal.SIGKILL, result.stderr
    stray = [p.name for p in folder.iterdir() if p.name.startswith(".part-00002.parquet.")]
    assert len(stray) == 1 and stray[0].endswith(".tmp")  # the partial shard, hidden
    import pandas as pd

    assert pd.read_parquet(folder)["image"].tolist() == ["img0.png", "img1.png", "img2.png"]
    calls: list = []
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 2), lambda p: compute(p, calls))
    assert calls == [["img4.png", "img5.png"], ["img6.png"]]
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]  # cleaned up
    assert read_features(folder).features[:, 0].tolist() == [0, 1, 2, 4, 5, 6]


def compute_source() -> str:
    import inspect

    return inspect.getsource(compute)


def test_kill_9_between_shards_from_the_outside(tmp_path):
    folder = tmp_path / "d"
    script = textwrap.dedent(f"""
        import time
        import numpy as np
        from microtex.io import FeatureTable
        from microtex.io.shards import ShardedJob, run_sharded
        def slow(paths):
            if paths[0] == "img2.png":
                print("two shards done", flush=True)
                time.sleep(60)
            return FeatureTable(np.ones((len(paths), 1), np.float32), ["one"], list(paths))
        run_sharded(ShardedJob({str(folder)!r}, {INPUTS!r}, {{}}, 1), slow)
    """)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env,
                          text=True) as process:  # fmt: skip
        try:
            assert process.stdout.readline().strip() == "two shards done"
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
    assert read_features(folder).ids == ["img0.png", "img1.png"]
    job = ShardedJob(folder, INPUTS, {}, 1)
    assert [k for k, _ in job.pending()] == [2, 3, 4, 5, 6]


def test_a_shard_not_recorded_or_not_matching_its_checksum_is_redone(tmp_path):
    job = run_sharded(ShardedJob(tmp_path / "d", INPUTS, CONFIG, 3), compute)
    folder = job.directory
    m = manifest(folder)
    del m["shards"]["1"]  # killed between the shard's rename and the manifest's
    (folder / MANIFEST_FILE).write_text(json.dumps(m))
    with open(folder / "part-00000.parquet", "r+b") as handle:  # bit rot
        handle.seek(10)
        handle.write(b"\0\0\0\0")
    calls: list = []
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 3), lambda p: compute(p, calls))
    assert calls == [INPUTS[0:3], INPUTS[3:6]]
    assert read_features(folder).features[:, 0].tolist() == [0, 1, 2, 4, 5, 6]


def test_another_configuration_input_list_or_shard_size_is_refused(tmp_path):
    folder = tmp_path / "d"
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 3), compute)
    with pytest.raises(DatasetMismatchError, match=r"scale: 2\.0 -> 3\.0.*--overwrite"):
        ShardedJob(folder, INPUTS, {**CONFIG, "scale": 3.0}, 3)
    with pytest.raises(DatasetMismatchError, match="1 inputs added, 0 removed"):
        ShardedJob(folder, [*INPUTS, "img7.png"], CONFIG, 3)
    with pytest.raises(DatasetMismatchError, match="shards of 3 inputs, not 2"):
        ShardedJob(folder, INPUTS, CONFIG, 2)
    job = ShardedJob(folder, INPUTS, {**CONFIG, "scale": 3.0}, 2, overwrite=True)
    assert len(job.pending()) == 4 and not list(folder.glob("part-*"))
    assert manifest(folder)["config_hash"] == config_hash({**CONFIG, "scale": 3.0})


def test_a_folder_of_other_files_is_not_taken_over(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(DatasetMismatchError, match="notes.txt"):
        ShardedJob(tmp_path, INPUTS, CONFIG, 2, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "mine"


def save_images(folder, n=5, size=20):
    folder.mkdir()
    rng = np.random.default_rng(3)
    for i in range(n):
        image = rng.integers(0, 256, (size, size), dtype=np.uint8)
        Image.fromarray(image).save(folder / f"{i}.png")
    (folder / "9-bad.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    return folder


def test_featurize_dataset_rows_equal_featurize_with_vlad_across_a_resume(tmp_path):
    images = save_images(tmp_path / "images")
    params = {"taps": "raw", "pool": ("mean", "gram", "vlad"), "n_words": 2, "random_state": 0}
    expected = featurize(images, **params)
    folder = tmp_path / "out"
    job = featurize_dataset(images, folder, shard_size=2, **params)
    assert (folder / "_state" / "featurizer" / "microtex.json").is_file()  # VLAD words kept
    # a resumed run loads the words from the folder instead of refitting them
    (folder / "part-00001.parquet").unlink()
    featurize_dataset(images, folder, shard_size=2, **params)
    table = read_features(folder)
    assert table.ids == expected.ids and table.columns == expected.columns
    np.testing.assert_array_equal(table.features, expected.features)
    assert [(str(f.path), f.reason) for f in table.failures] == [
        (str(f.path), f.reason) for f in expected.failures] != []  # fmt: skip
    assert job.manifest["shards"]["2"]["failures"][0]["path"].endswith("9-bad.png")
    with pytest.raises(DatasetMismatchError, match=r"params\.n_words: 2 -> 3"):
        featurize_dataset(images, folder, shard_size=2, **{**params, "n_words": 3})
    # threads and batch size change speed, not rows: the job resumes across them
    featurize_dataset(images, folder, shard_size=2, **params, n_threads=1, batch_size=1)


def test_wide_tables_go_in_one_list_column_and_read_back_the_same(tmp_path, monkeypatch):
    import pandas as pd

    import microtex.io.shards as shards

    reference = run_sharded(ShardedJob(tmp_path / "c", INPUTS, CONFIG, 3), compute)
    assert reference.manifest["layout"] == "columns"
    monkeypatch.setattr(shards, "WIDE_MAX", 1)  # two features: "wide" here
    job = run_sharded(ShardedJob(tmp_path / "v", INPUTS, CONFIG, 3), compute)
    assert job.manifest["layout"] == "vector" and job.manifest["n_columns"] == 2
    assert json.loads((job.directory / shards.COLUMNS_FILE).read_text()) == ["n", "twice"]
    table, expected = read_features(job.directory), read_features(reference.directory)
    assert table.ids == expected.ids and table.columns == expected.columns
    np.testing.assert_array_equal(table.features, expected.features)
    frame = pd.read_parquet(job.directory)
    assert np.stack(frame["features"]).tolist() == expected.features.tolist()
