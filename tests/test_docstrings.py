"""Every example in the package's docstrings runs and prints what it shows."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import microtex

DEPRECATED = {"microtex.featurizer", "microtex.pooling", "microtex.runtime"}  # they warn
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(microtex.__path__, "microtex.")
    if info.name not in DEPRECATED and not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", ["microtex", *MODULES])
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"


def test_the_examples_are_many():
    attempted = sum(
        doctest.testmod(importlib.import_module(name), report=False).attempted for name in MODULES
    )
    assert attempted >= 80
