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

from microtex.errors import DatasetBusyError, DatasetMismatchError
from microtex.features.api import featurize, featurize_dataset, texture_job_config
from microtex.features.texture import TextureFeaturizer
from microtex.io import FeatureTable, ReadFailure, read_features
from microtex.io.shards import LOCK_FILE, MANIFEST_FILE, ShardedJob, config_hash, run_sharded

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
    listing = "".join(f"{os.path.realpath(i)}\n" for i in INPUTS).encode()
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
    job.close()  # the folder's lock: one job at a time
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


def refit(*args, **kwargs):
    raise AssertionError("a resumed job refitted its VLAD words")


def test_featurize_dataset_rows_equal_featurize_with_vlad_across_a_resume(tmp_path, monkeypatch):
    images = save_images(tmp_path / "images")
    params = {"taps": "raw", "pool": ("mean", "gram", "vlad"), "n_words": 2, "random_state": 0}
    expected = featurize(images, **params)
    folder = tmp_path / "out"
    job = featurize_dataset(images, folder, shard_size=2, **params)
    assert (folder / "_state" / "featurizer" / "microtex.json").is_file()  # VLAD words kept
    # a resumed run loads the words from the folder instead of refitting them (a refit
    # with random_state=0 would give the same words: make one fail instead)
    (folder / "part-00001.parquet").unlink()
    with monkeypatch.context() as patch:
        patch.setattr(TextureFeaturizer, "fit", refit)
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
    for entry in job.manifest["shards"].values():  # hashed in memory: the file's own digest
        data = (job.directory / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_a_second_job_on_the_same_folder_fails_at_once_naming_it(tmp_path):
    folder = tmp_path / "d"
    first = ShardedJob(folder, INPUTS, CONFIG, 3)  # flock: per open file description
    with pytest.raises(DatasetBusyError, match=f"{folder}.*in use by another running job"):
        ShardedJob(folder, INPUTS, CONFIG, 3, overwrite=True)
    run_sharded(first, compute)
    assert len(manifest(folder)["shards"]) == 3  # the refused opening touched nothing
    first.close()
    with ShardedJob(folder, INPUTS, CONFIG, 3) as again:
        assert again.done
    # another process is refused too while one holds the folder
    holder = ShardedJob(folder, INPUTS, CONFIG, 3)
    code = (f"from microtex.io.shards import ShardedJob\n"
            f"ShardedJob({str(folder)!r}, {INPUTS!r}, {CONFIG!r}, 3)")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode != 0 and "DatasetBusyError" in result.stderr
    holder.close()
    assert (folder / LOCK_FILE).is_file() and read_features(folder).ids  # "_" file: skipped


def test_the_same_files_named_relatively_or_absolutely_resume_and_others_do_not(
        tmp_path, monkeypatch):  # fmt: skip
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    monkeypatch.chdir(tmp_path / "a")
    relative = ["img0.png", "img1.png"]
    run_sharded(ShardedJob(tmp_path / "d", relative, CONFIG, 1), compute)  # dropped: unlocked
    absolute = [str(tmp_path / "a" / p) for p in relative]
    assert ShardedJob(tmp_path / "d", absolute, CONFIG, 1).done
    monkeypatch.chdir(tmp_path / "b")  # same names, other files
    with pytest.raises(DatasetMismatchError, match="same relative paths name other files"):
        ShardedJob(tmp_path / "d", relative, CONFIG, 1)


def test_overwrite_removes_the_manifest_before_the_shards_and_state(tmp_path, monkeypatch):
    import shutil

    folder = tmp_path / "d"
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 3), compute).state_dir.mkdir()

    def killed(*args, **kwargs):  # a kill while the state is being removed
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        ShardedJob(folder, INPUTS, {**CONFIG, "scale": 3.0}, 3, overwrite=True)
    assert not (folder / MANIFEST_FILE).exists()  # no shard is listed without its state
    monkeypatch.undo()
    job = ShardedJob(folder, INPUTS, CONFIG, 3)
    assert len(job.pending()) == 3 and not list(folder.glob("part-*"))


def test_a_listed_shard_that_lost_its_bytes_is_redone(tmp_path):
    """What a power cut can do to an unsynced shard: its checksum no longer matches."""
    folder = tmp_path / "d"
    run_sharded(ShardedJob(folder, INPUTS, CONFIG, 3), compute)
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    lost = folder / manifest["shards"]["1"]["file"]
    lost.write_bytes(b"")
    job = ShardedJob(folder, INPUTS, CONFIG, 3)
    assert [k for k, _ in job.pending()] == [1]
    run_sharded(job, compute)
    again = json.loads((folder / MANIFEST_FILE).read_text())
    assert again["shards"]["1"]["sha256"] == manifest["shards"]["1"]["sha256"]


def test_stale_temporaries_of_every_file_are_swept_when_a_job_opens(tmp_path):
    from microtex._files import remove_stale_temporaries_in

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    folder = tmp_path / "d"
    folder.mkdir()
    stale = [folder / f".part-00004.parquet.{dead}.x1y2.tmp", folder / f".a.b.{dead}.zz.tmp"]
    live = folder / f".part-00005.parquet.{os.getpid()}.q.tmp"
    other = folder / ".hidden.notes"
    for path in (*stale, live, other):
        path.write_text("partial")
    assert sorted(remove_stale_temporaries_in(folder)) == sorted(stale)
    assert live.exists() and other.exists()
    live.unlink()
    stale[0].write_text("partial")
    ShardedJob(folder, INPUTS, CONFIG, 3).close()
    assert not stale[0].exists()


def test_vlad_words_are_checked_on_resume_and_a_lost_fit_is_not_silently_redone(
        tmp_path, monkeypatch):  # fmt: skip
    import shutil

    images = save_images(tmp_path / "images")
    params = {"taps": "raw", "pool": "mean,vlad", "n_words": 2, "random_state": 0}
    folder = tmp_path / "out"
    job = featurize_dataset(images, folder, shard_size=2, **params)
    digest = job.manifest["fitted_vlad_words"]
    assert len(digest) == 64 and manifest(folder)["fitted_vlad_words"] == digest
    m = manifest(folder)
    m["fitted_vlad_words"] = "0" * 64  # words replaced after the shards were made
    (folder / MANIFEST_FILE).write_text(json.dumps(m))
    monkeypatch.setattr(TextureFeaturizer, "fit", refit)
    (folder / "part-00001.parquet").unlink()  # something left to do
    with pytest.raises(DatasetMismatchError,
                       match=r"the fit \(VLAD words, int8 graph\) in .* is not the one"):
        featurize_dataset(images, folder, shard_size=2, **params)
    m["fitted_vlad_words"] = digest
    (folder / MANIFEST_FILE).write_text(json.dumps(m))
    shutil.rmtree(folder / "_state")
    with pytest.raises(DatasetMismatchError, match=r"lists 2 shards but the fit .* is missing"):
        featurize_dataset(images, folder, shard_size=2, **params)
    monkeypatch.undo()
    featurize_dataset(images, folder, shard_size=2, overwrite=True, **params)
    assert len(read_features(folder).ids) == 5


def test_the_job_configuration_is_hashed_by_value(tmp_path, monkeypatch):
    import microtex.engine.session as session

    def config(**params):
        return texture_job_config(TextureFeaturizer(**params))

    # option spellings and "auto" as this machine resolves it: the CLI's and the API's agree
    assert config(taps="raw", pool="mean,gram") == config(taps="raw", pool=("mean", "gram"),
                                                          random_state=0)  # no VLAD: no seed
    assert config(taps="raw", pool="vlad") != config(taps="raw", pool="vlad", random_state=0)
    assert config(taps="block_first", device="auto") == config(
        taps="relu1_1,relu2_1,relu3_1,relu4_1,relu5_1", device="cpu")  # fmt: skip
    cpu = config(taps="relu1_1", device="auto")["params"]
    assert (cpu["device"], cpu["conv_algorithm"]) == ("cpu", "direct")
    with monkeypatch.context() as patch:  # a machine where "auto" is CUDA: another job
        patch.setattr(session, "runs_on_cpu", lambda device="auto": device == "cpu")
        assert config(taps="relu1_1", device="auto")["params"]["device"] == "cuda"
        auto, cpu = config(taps="relu1_1"), config(taps="relu1_1", device="cpu")
        assert config_hash(auto) != config_hash(cpu)
    # the weights by their bytes: the same file elsewhere is the same job, other bytes are not
    first, copy = tmp_path / "w.pth", tmp_path / "copy.pth"
    first.write_bytes(b"weights one")
    copy.write_bytes(b"weights one")
    assert config(taps="relu1_1", weights=str(first)) == config(taps="relu1_1", weights=str(copy))
    before = config(taps="relu1_1", weights=str(first))
    first.write_bytes(b"weights two")
    assert config(taps="relu1_1", weights=str(first)) != before


def test_without_pyarrow_a_dataset_job_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails as if absent
    with pytest.raises(ImportError, match=r"pip install 'microtex\[parquet\]'"):
        ShardedJob(tmp_path / "d", INPUTS, CONFIG, 3)
    assert not (tmp_path / "d").exists()
