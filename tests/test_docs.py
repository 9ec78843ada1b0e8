"""The docstring examples run and print what they say."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "name",
    [
        "_api",
        "_lyapunov",
        "_distances",
        "_feature_statistics",
        "_polar_api",
        "_power_api",
        "functional",
        "linen",
        "nnx",
        "optim._muon",
        "optim._shampoo",
    ],
)
def test_docstring_examples(name):
    if name in ("linen", "nnx", "optim._muon", "optim._shampoo"):
        pytest.importorskip("flax")
        pytest.importorskip("optax")
    result = doctest.testmod(importlib.import_module(f"jaxsqrtm.{name}"))
    assert result.attempted > 0
    assert result.failed == 0
