"""Differentiable matrix square root and inverse square root for JAX.

Matrix Taylor polynomial (MTP) and matrix Padé approximant (MPA) forward passes with a
Lyapunov derivative solved by the matrix sign function (Song, Sebe & Wang, "Fast
Differentiable Matrix Square Root and Inverse Square Root", TPAMI 2022), an accurate
adaptive mode (the default), and Newton–Schulz and eigendecomposition baselines. Every
routine is batched over leading axes and works under ``jit``, ``vmap``, forward and
reverse differentiation and ``shard_map``.
"""

from importlib import metadata as _metadata

from jaxsqrtm._api import METHODS, RootInfo, inv_sqrtm, matmul_count, sqrtm
from jaxsqrtm._distances import (
    bures_wasserstein,
    fidelity,
    frechet_distance,
    frechet_distance_from_features,
    trace_sqrtm_product,
)
from jaxsqrtm._feature_statistics import FeatureStatistics, frechet_distance_from_statistics
from jaxsqrtm._lyapunov import solve_lyapunov
from jaxsqrtm._polar_api import POLAR_METHODS, PolarInfo, polar, polar_matmul_count
from jaxsqrtm._power_api import (
    POWER_METHODS,
    PowerInfo,
    fractional_matrix_power,
    power_matmul_count,
)

__all__ = [
    "METHODS",
    "POLAR_METHODS",
    "POWER_METHODS",
    "FeatureStatistics",
    "PolarInfo",
    "PowerInfo",
    "RootInfo",
    "bures_wasserstein",
    "fidelity",
    "fractional_matrix_power",
    "frechet_distance",
    "frechet_distance_from_features",
    "frechet_distance_from_statistics",
    "inv_sqrtm",
    "matmul_count",
    "polar",
    "polar_matmul_count",
    "power_matmul_count",
    "solve_lyapunov",
    "sqrtm",
    "trace_sqrtm_product",
]

try:
    __version__ = _metadata.version("jaxsqrtm")
except _metadata.PackageNotFoundError:  # imported from a source tree that is not installed
    __version__ = "0+unknown"
