"""Model bundles and fitted-state files (DESIGN §9)."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

import microtex
from microtex import bundle
from microtex.bundle import (
    MANIFEST_NAME,
    load_bundle,
    load_npz,
    open_bundle,
    register_kind,
    save_bundle,
    save_npz,
)
from microtex.errors import BundleError

KIND = "test-model"
CONFIG = {
    "backbone": {
        "arch": "vgg19",
        "weights": None,
        "taps": ["relu1_1", "relu2_1"],
        "pooling": "avg",
    },
    "pooling": {"pools": ["gram", "vlad"], "gram_normalization": "lubbers", "n_words": 32},
    "preprocessing": {"crop": [0, 0, 768, 1024], "scale": 0.5},
}


@pytest.fixture
def sources(tmp_path):
    """Files to bundle: one on disk, one as bytes, one in a sub-directory."""
    onnx_file = tmp_path / "src" / "backbone.onnx"
    onnx_file.parent.mkdir()
    onnx_file.write_bytes(b"\x08\x07fake onnx bytes" * 100)
    state = bundle.npz_bytes(
        {"centers": np.arange(12.0).reshape(3, 4), "labels": np.array(["a", "b"])}
    )
    return {"backbone.onnx": onnx_file, "state/vlad.npz": state, "notes.txt": b"hello"}


@pytest.fixture
def saved(tmp_path, sources):
    return save_bundle(tmp_path / "model", sources, CONFIG, kind=KIND)


def manifest_of(path):
    return json.loads((path / MANIFEST_NAME).read_text())


def test_round_trip(tmp_path, sources, saved):
    assert saved == (tmp_path / "model").absolute()
    manifest = manifest_of(saved)
    assert manifest["format_version"] == 2 == bundle.FORMAT_VERSION
    assert manifest["kind"] == KIND and manifest["kind_version"] == 1
    assert manifest["microtex_version"] == microtex.__version__
    assert manifest["config"] == CONFIG
    assert manifest["files"] == {
        "backbone.onnx": hashlib.sha256(sources["backbone.onnx"].read_bytes()).hexdigest(),
        "notes.txt": hashlib.sha256(b"hello").hexdigest(),
        "state/vlad.npz": hashlib.sha256(sources["state/vlad.npz"]).hexdigest(),
    }

    loaded = open_bundle(saved)
    assert loaded.path == saved and loaded.config == CONFIG
    assert loaded.microtex_version == microtex.__version__
    assert set(loaded.files) == {"backbone.onnx", "notes.txt", "state/vlad.npz"}
    assert all(path.is_absolute() and path.is_file() for path in loaded.files.values())
    assert loaded.file("backbone.onnx").read_bytes() == sources["backbone.onnx"].read_bytes()
    state = load_npz(loaded.file("state/vlad.npz"))
    np.testing.assert_array_equal(state["centers"], np.arange(12.0).reshape(3, 4))
    np.testing.assert_array_equal(state["labels"], ["a", "b"])
    with pytest.raises(BundleError, match="'scaler.npz'"):
        loaded.file("scaler.npz")
    # nothing but the bundle itself was left next to it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "src"]


def test_tampered_file_is_refused_naming_it(saved):
    target = saved / "state" / "vlad.npz"
    expected = hashlib.sha256(target.read_bytes()).hexdigest()
    target.write_bytes(target.read_bytes() + b"!")
    actual = hashlib.sha256(target.read_bytes()).hexdigest()
    with pytest.raises(BundleError) as info:
        open_bundle(saved)
    message = str(info.value)
    assert "'state/vlad.npz'" in message and expected in message and actual in message
    assert open_bundle(saved, verify=False).file("state/vlad.npz") == target


def test_missing_file(saved):
    (saved / "notes.txt").unlink()
    with pytest.raises(BundleError, match="'notes.txt'.*missing"):
        open_bundle(saved)


@pytest.mark.parametrize("version", [3, 0, "1", None, True])
def test_bad_format_version(saved, version):
    manifest = manifest_of(saved)
    manifest["format_version"] = version
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as info:
        open_bundle(saved)
    assert "format_version expected 2 (or 1)" in str(info.value)
    assert f"found {version!r}" in str(info.value)


def test_missing_or_corrupt_manifest(tmp_path, saved):
    with pytest.raises(BundleError, match="no bundle at .*nowhere.*: no such folder"):
        open_bundle(tmp_path / "nowhere")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(BundleError, match="no bundle at .*a-file.*: it is a file, not a folder"):
        open_bundle(tmp_path / "a-file")
    (saved / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        open_bundle(saved)
    (saved / MANIFEST_NAME).write_text(json.dumps({"format_version": 1, "files": [], "config": {}}))
    with pytest.raises(BundleError, match="'files' expected a dict"):
        open_bundle(saved)
    (saved / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="no manifest"):
        open_bundle(saved)


def test_manifest_names_cannot_escape_the_bundle(saved):
    manifest = manifest_of(saved)
    manifest["files"]["../src/backbone.onnx"] = "0" * 64
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="bad bundle file name"):
        open_bundle(saved)


@pytest.mark.parametrize("name", ["../up.txt", "/abs.txt", "a//b", "a\\b", MANIFEST_NAME, ""])
def test_bad_file_names_are_refused(tmp_path, name):
    with pytest.raises(BundleError):
        save_bundle(tmp_path / "model", {name: b"x"}, {}, kind=KIND)
    assert list(tmp_path.iterdir()) == []


def test_overwrite_rules(tmp_path, saved):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_bundle(saved, {"a.txt": b"a"}, {}, kind=KIND)
    replaced = save_bundle(saved, {"a.txt": b"a"}, {"new": True}, kind=KIND, overwrite=True)
    assert replaced == saved
    assert sorted(p.name for p in saved.iterdir()) == ["a.txt", MANIFEST_NAME]
    assert open_bundle(saved).config == {"new": True}

    other = tmp_path / "results"
    other.mkdir()
    (other / "precious.csv").write_text("1,2,3")
    with pytest.raises(FileExistsError, match="not a microtex bundle"):
        save_bundle(other, {"a.txt": b"a"}, {}, kind=KIND, overwrite=True)
    assert (other / "precious.csv").read_text() == "1,2,3"

    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    with pytest.raises(FileExistsError, match="not a directory"):
        save_bundle(a_file, {"a.txt": b"a"}, {}, kind=KIND, overwrite=True)

    empty = tmp_path / "empty"
    empty.mkdir()
    assert open_bundle(save_bundle(empty, {"a.txt": b"a"}, {}, kind=KIND)).config == {}


def test_no_half_written_bundle_after_a_failure(tmp_path, saved):
    before = {p.name for p in tmp_path.iterdir()}
    # a source that does not exist, after others were copied
    with pytest.raises(FileNotFoundError):
        save_bundle(
            tmp_path / "new", {"a.txt": b"a", "z.onnx": tmp_path / "missing.onnx"}, {}, kind=KIND
        )
    assert {p.name for p in tmp_path.iterdir()} == before

    # a failed overwrite keeps the old bundle intact
    old_manifest = manifest_of(saved)
    with pytest.raises(FileNotFoundError):
        save_bundle(
            saved, {"a.txt": b"a", "z.onnx": tmp_path / "missing.onnx"}, {}, kind=KIND,
            overwrite=True,
        )
    assert {p.name for p in tmp_path.iterdir()} == before
    assert manifest_of(saved) == old_manifest
    open_bundle(saved)

    # a config that is not JSON is refused before anything is written
    with pytest.raises(TypeError, match="JSON"):
        save_bundle(tmp_path / "new", {"a.txt": b"a"}, {"array": np.zeros(2)}, kind=KIND)
    with pytest.raises(TypeError, match="paths or bytes"):
        save_bundle(tmp_path / "new", {"a.txt": np.zeros(2)}, {}, kind=KIND)
    assert {p.name for p in tmp_path.iterdir()} == before


def test_npz_helpers(tmp_path):
    path = save_npz(tmp_path / "state.npz", {"scale": np.float32(2.5), "mean": [1.0, 2.0]})
    state = load_npz(path)
    assert set(state) == {"scale", "mean"}
    assert state["scale"].dtype == np.float32 and state["scale"] == 2.5
    np.testing.assert_array_equal(state["mean"], [1.0, 2.0])
    assert [p.name for p in tmp_path.iterdir()] == ["state.npz"]

    with pytest.raises(TypeError, match="'objects'"):
        save_npz(tmp_path / "bad.npz", {"objects": np.array([{"a": 1}], dtype=object)})
    assert not (tmp_path / "bad.npz").exists()

    pickled = tmp_path / "pickled.npz"
    np.savez(pickled, objects=np.array([{"a": 1}], dtype=object))
    with pytest.raises(BundleError, match="pickled.npz"):
        load_npz(pickled)
    with pytest.raises(BundleError, match="missing.npz"):
        load_npz(tmp_path / "missing.npz")
    (tmp_path / "junk.npz").write_bytes(b"junk")
    with pytest.raises(BundleError, match="junk.npz"):
        load_npz(tmp_path / "junk.npz")


# ================================================================== kinds
def test_load_bundle_builds_the_model_its_kind_registered(saved, monkeypatch):
    monkeypatch.setattr(bundle, "_KINDS", dict(bundle._KINDS))
    register_kind(KIND, lambda opened: ("model", opened.kind, opened.config["pooling"]["n_words"]))
    assert load_bundle(saved) == ("model", KIND, 32)
    assert KIND in bundle.kinds() and "texture-featurizer" in bundle.kinds()
    # a layout newer than the registered loader reads is refused, naming both
    manifest = manifest_of(saved)
    manifest["kind_version"] = 2
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="layout version 2 is newer than this microtex reads"):
        load_bundle(saved)


def test_unknown_kind_and_wrong_kind_are_refused(saved):
    with pytest.raises(BundleError, match="unknown kind 'test-model'.*texture-featurizer"):
        load_bundle(saved)
    with pytest.raises(BundleError, match="holds a 'test-model', not a 'classifier'"):
        open_bundle(saved, kind="classifier")
    assert open_bundle(saved, kind=KIND).kind == KIND


@pytest.mark.parametrize("kind", ["", "Texture", "a b", None, "x/y"])
def test_bad_kind_names_are_refused(tmp_path, kind):
    with pytest.raises(ValueError, match="lower-case words"):
        save_bundle(tmp_path / "model", {"a.txt": b"a"}, {}, kind=kind)
    with pytest.raises(ValueError, match="lower-case words"):
        register_kind(kind, lambda opened: None)
    assert list(tmp_path.iterdir()) == []


def test_a_file_name_that_is_another_files_folder_is_refused(tmp_path):
    with pytest.raises(BundleError, match="'state' is also the folder of another file"):
        save_bundle(tmp_path / "model", {"state": b"x", "state/vlad.npz": b"y"}, {}, kind=KIND)
    assert list(tmp_path.iterdir()) == []


def test_overwriting_a_link_to_a_bundle_replaces_the_link_and_leaves_no_debris(tmp_path, saved):
    link = tmp_path / "link"
    link.symlink_to(saved, target_is_directory=True)
    save_bundle(link, {"a.txt": b"new"}, {"new": True}, kind=KIND, overwrite=True)
    assert open_bundle(link).config == {"new": True} and not link.is_symlink()
    assert open_bundle(saved).config == CONFIG  # what the link pointed to is left as it was
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link", "model", "src"]


def test_format_1_bundle_is_read_with_the_kind_its_config_named(saved):
    manifest = manifest_of(saved)
    del manifest["kind"], manifest["kind_version"]
    manifest["format_version"] = 1
    manifest["config"] = {**manifest["config"], "kind": "TextureFeaturizer"}
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    opened = open_bundle(saved)
    assert opened.format_version == 1 and opened.kind == "texture-featurizer"
    assert opened.kind_version == 1
    del manifest["config"]["kind"]
    (saved / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="format-1 bundle whose config names no kind"):
        open_bundle(saved)


def test_an_edit_in_place_that_keeps_size_and_mtime_is_still_caught(saved):
    # the checksum cache must not trust (path, size, mtime): a user can set mtime back
    import os

    open_bundle(saved)  # hashes every file once
    target = saved / "notes.txt"
    stat = target.stat()
    target.write_bytes(b"HELLO")  # same size
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert target.stat().st_size == stat.st_size and target.stat().st_mtime_ns == stat.st_mtime_ns
    with pytest.raises(BundleError, match="checksum mismatch for 'notes.txt'"):
        open_bundle(saved)
