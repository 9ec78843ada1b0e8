"""Test configuration.

Float64 is enabled (``jax_enable_x64``) so that float64 inputs stay float64. The roots keep
their input's floating dtype with x64 on as well: float32 inputs are computed and returned
in float32, never promoted to float64 (bfloat16 and float16 are computed in float32 and
returned in their own dtype). The tests check the dtype of every result and gradient.

Tests that need Flax or optax (the ``linen`` extra) carry the ``linen`` marker, and every
test in a module of ``LINEN_MODULES`` (modules that import Flax or optax) gets it too.
Where Flax or optax is not installed, as in the oldest-versions run of ``.ci/run``, those
modules and marked tests are reported as skipped; everything else must run without them
(a module that imports them and is not listed fails to collect).
"""

import importlib.util

import jax
import numpy as np
import pytest

jax.config.update("jax_enable_x64", True)

LINEN_MODULES = frozenset(
    {
        "test_examples.py",
        "test_linen.py",
        "test_muon.py",
        "test_nnx.py",
        "test_notebooks.py",
        "test_shampoo.py",
    }
)
LINEN_PACKAGES = ("flax", "optax")


def _missing_linen() -> str:
    """The packages of the ``linen`` extra that are not installed, ``""`` if none."""
    return ", ".join(name for name in LINEN_PACKAGES if importlib.util.find_spec(name) is None)


class _LinenModule(pytest.Module):
    """A test module that imports Flax or optax: skipped where either is not installed."""

    def collect(self):
        if missing := _missing_linen():
            pytest.skip(f"{self.path.name} needs the linen extra ({missing} missing)")
        return super().collect()


def pytest_pycollect_makemodule(module_path, parent):
    if module_path.name in LINEN_MODULES:
        return _LinenModule.from_parent(parent, path=module_path)
    return None


def pytest_collection_modifyitems(config, items):
    missing = _missing_linen()
    for item in items:
        if item.path.name in LINEN_MODULES:
            item.add_marker(pytest.mark.linen)
        if missing and item.get_closest_marker("linen"):
            item.add_marker(pytest.mark.skip(reason=f"needs the linen extra ({missing} missing)"))


def pytest_report_header(config):
    import jaxlib

    return f"jax {jax.__version__}, jaxlib {jaxlib.__version__}, numpy {np.__version__}"
