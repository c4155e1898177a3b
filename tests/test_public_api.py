"""The public surface: ``import microtex`` names, its stub, and the deprecated 0.1 paths."""

from __future__ import annotations

import ast
import importlib
import pathlib
import sys

import numpy as np
import pytest

import microtex

from _helpers import run_python

STUB = pathlib.Path(microtex.__file__).with_name("__init__.pyi")


def test_import_is_cheap_and_names_resolve_lazily():
    code = (
        "import sys, microtex\n"
        "heavy = [m for m in ('torch', 'onnxruntime', 'onnx', 'sklearn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "assert 'microtex.features.api' not in sys.modules\n"
        "from microtex import featurize, TextureFeaturizer, load_bundle\n"
        "import microtex.features.api as api\n"
        "assert featurize is api.featurize\n"
        "assert 'torch' not in sys.modules\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


def test_the_stub_lists_exactly_the_public_names():
    tree = ast.parse(STUB.read_text())
    stubbed = {
        alias.asname for node in tree.body if isinstance(node, ast.ImportFrom)
        for alias in node.names
    }
    public = set(microtex.__all__) - {"__version__"}
    assert stubbed == public and len(public) == 12
    assert sorted(dir(microtex)) == sorted(microtex.__all__)
    for name in public:  # every stubbed import is where the stub says
        node = next(n for n in tree.body if isinstance(n, ast.ImportFrom)
                    and any(a.asname == name for a in n.names))
        assert getattr(importlib.import_module(node.module), name) is getattr(microtex, name)
    with pytest.raises(AttributeError, match="'featurizer_'"):
        microtex.featurizer_  # noqa: B018


def test_compiled_module_stub_matches_its_functions():
    from microtex import _kernels

    tree = ast.parse(STUB.with_name("_kernels.pyi").read_text())
    stubbed = {node.name for node in tree.body
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}  # fmt: skip
    compiled = {name for name in dir(_kernels) if not name.startswith("_")}
    assert stubbed == compiled == {"PixelCNNSampler", "gram", "mean_max_pool",
                                   "pairwise_sq_distances", "power_spectrum", "simd_level",
                                   "two_point", "vlad"}  # fmt: skip


def test_subpackages_are_attributes_imported_on_first_use():
    code = (
        "import sys, microtex\n"
        "assert 'microtex.io' not in sys.modules\n"
        "assert microtex.io.read_image is microtex.read_image\n"
        "assert microtex.engine.__name__ == 'microtex.engine' and 'torch' not in sys.modules\n"
        "assert 'microtex.featurizer' not in sys.modules\n"
    )
    result = run_python("-c", code)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("module", ["microtex.featurizer", "microtex.pooling", "microtex.runtime"])
def test_deprecated_0_1_modules_warn_and_still_work(module, monkeypatch):
    monkeypatch.delitem(sys.modules, module, raising=False)
    monkeypatch.delitem(vars(microtex), module.split(".")[1], raising=False)
    with pytest.warns(FutureWarning, match=f"{module} is deprecated and will be removed in 0.3"):
        old = getattr(microtex, module.split(".")[1])  # as 0.1's lazy attribute reached it
    assert old is importlib.import_module(module)
    images = np.random.default_rng(0).random((2, 12, 12)).astype(np.float32)
    if module == "microtex.featurizer":
        table = old.featurize(images, taps="raw", pool="mean")
        assert isinstance(table, old.FeatureTable)
        assert old.TextureFeaturizer is microtex.TextureFeaturizer
        np.testing.assert_allclose(table.features[:, 0], images.reshape(2, -1).mean(1), rtol=1e-6)
    elif module == "microtex.runtime":
        from microtex.engine import session

        assert old.Session is session.Session and old.resolve_device("cpu") == [session.CPU]
    else:
        acts = images[:, None]
        words = old.fit_vlad_dictionary(acts, n_words=2, random_state=0)
        assert old.vlad_encode(acts, words).shape == (2, 2)
        np.testing.assert_allclose(old.mean_pool(acts)[:, 0], images.reshape(2, -1).mean(1),
                                   rtol=1e-6)
