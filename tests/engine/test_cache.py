"""Per-configuration cached files (microtex.engine.cache)."""

from __future__ import annotations

import hashlib
import json
import logging

import pytest

from microtex.engine import cache

LOGGER = "microtex.engine.cache"


class Producer:
    """Writes ``content`` to the path it is given and counts its calls."""

    def __init__(self, content=b"model bytes"):
        self.content = content
        self.calls = []

    def __call__(self, path):
        self.calls.append(path)
        path.write_bytes(self.content)


def test_produces_once_then_reuses(tmp_path, caplog):
    produce = Producer()
    key = {"kind": "forest", "n_trees": 3}
    with caplog.at_level(logging.INFO, logger=LOGGER):
        path = cache.cached_path(key, "forest", produce, cache_dir=tmp_path, what="a forest")
    assert path.parent == tmp_path / "onnx" and path.read_bytes() == b"model bytes"
    assert path.name == f"forest-{cache.key_digest(key)[:24]}.onnx"
    assert "exporting a forest to" in caplog.text
    assert cache.cached_path(key, "forest", produce, cache_dir=tmp_path) == path
    assert produce.calls == [path]
    sidecar = json.loads(path.with_name(path.name + ".json").read_text())
    assert sidecar == {
        "key": cache.key_digest(key),
        "sha256": hashlib.sha256(b"model bytes").hexdigest(),
    }
    # another key -> another file
    other = cache.cached_path({**key, "n_trees": 4}, "forest", produce, cache_dir=tmp_path)
    assert other != path and len(produce.calls) == 2


def test_cache_dir_defaults_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MICROTEX_CACHE_DIR", str(tmp_path / "env"))
    path = cache.cached_path({"a": 1}, "m", Producer())
    assert path.parent == tmp_path / "env" / "onnx"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda path, sidecar: path.write_bytes(b"tampered"), "sha256 does not match"),
        (lambda path, sidecar: sidecar.unlink(), "missing or unreadable (FileNotFoundError)"),
        (lambda path, sidecar: sidecar.write_text("{"), "missing or unreadable (JSONDecodeError)"),
        (lambda path, sidecar: sidecar.write_text("[]"), "missing or unreadable (AttributeError)"),
        (
            lambda path, sidecar: sidecar.write_text(json.dumps({"key": "other"})),
            "records another configuration",
        ),
    ],
)
def test_a_damaged_file_is_produced_again(tmp_path, caplog, damage, reason):
    produce = Producer()
    key = {"kind": "pixelcnn"}
    path = cache.cached_path(key, "p", produce, cache_dir=tmp_path, record={"note": "n"})
    sidecar = path.with_name(path.name + ".json")
    damage(path, sidecar)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        again = cache.cached_path(key, "p", produce, cache_dir=tmp_path, record={"note": "n"})
    assert again == path and len(produce.calls) == 2
    records = [r for r in caplog.records if r.name == LOGGER]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "re-exporting" in records[0].getMessage() and reason in records[0].getMessage()
    recorded = json.loads(sidecar.read_text())
    assert (
        recorded["note"] == "n"
        and recorded["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    )


def test_a_failed_produce_leaves_no_sidecar(tmp_path):
    def broken(path):
        raise RuntimeError("exporter exploded")

    with pytest.raises(RuntimeError, match="exploded"):
        cache.cached_path({"a": 1}, "m", broken, cache_dir=tmp_path)
    assert list((tmp_path / "onnx").iterdir()) == []


def test_code_fingerprint_and_key_document(tmp_path):
    source = tmp_path / "graph.py"
    source.write_text("x = 1\n")
    first = cache.code_fingerprint([source])
    assert len(first) == 64 and cache.code_fingerprint([source]) == first
    source.write_text("x = 2\n")
    assert cache.code_fingerprint([source]) != first
    assert cache.code_fingerprint([tmp_path / "missing.py"]) == "unknown"
    document = cache.key_document({"kind": "backbone", "opset": 18}, "abc")
    assert document == {"kind": "backbone", "opset": 18, "graph_code_sha256": "abc"}
    assert cache.key_digest(document) != cache.key_digest({**document, "graph_code_sha256": "d"})
