"""Differentiable matrix square root and inverse square root for JAX.

Matrix Taylor polynomial (MTP) and matrix Padé approximant (MPA) forward passes with a
Lyapunov backward solved by the matrix sign function (Song, Sebe & Wang, "Fast
Differentiable Matrix Square Root and Inverse Square Root", TPAMI 2022), plus
Newton–Schulz and eigendecomposition baselines. Every routine is batched over leading
axes and works under ``jit``, ``vmap`` and ``grad``.
"""

from jaxsqrtm._api import METHODS, RootInfo, inv_sqrtm, matmul_count, sqrtm
from jaxsqrtm._lyapunov import solve_lyapunov

__all__ = ["METHODS", "RootInfo", "inv_sqrtm", "matmul_count", "solve_lyapunov", "sqrtm"]
__version__ = "0.1.0"
