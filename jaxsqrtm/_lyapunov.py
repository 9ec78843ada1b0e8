"""Lyapunov equation ``S X + X S = G`` by the Newton–Schulz matrix sign iteration."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _validation
from jaxsqrtm._matrix import matrix_scale, mm, symmetrize


def sign_lyapunov(b, c, *, num_iters: int, symmetric_rhs: bool, precision):
    """Solve ``B X + X B = C`` for ``B`` with spectrum in ``(0, sqrt(3))``.

    Newton–Schulz iteration for the sign of the block matrix ``M = [[B, C], [0, -B]]``,
    ``M <- M (3I - M^2) / 2``, written on ``n x n`` blocks
    (Higham, *Functions of Matrices*, 2008, §5.3 and §8.6; Song et al., TPAMI 2022)::

        B <- (3B - B^3) / 2
        C <- (3C - B^2 C - C B^2 + B C B) / 2

    and ``sign(M) = [[I, 2X], [0, -I]]``, so ``X = lim C / 2``. In the eigenbasis of
    ``B`` each entry contracts as ``C_ij <- C_ij (3 - b_i^2 - b_j^2 + b_i b_j) / 2``.

    Cost per iteration: 6 matrix products, 5 when ``C`` is symmetric (``C B^2`` is then
    ``(B^2 C)^T``). Scalar eigenvalues ``b`` of ``B`` need about ``log_{1.5}(1/b)``
    iterations to reach the quadratic phase: 8 iterations converge for
    ``b >~ 0.1`` only.
    """

    def step(_, carry):
        b, c = carry
        b2 = mm(b, b, precision)
        b2c = mm(b2, c, precision)
        cb2 = jnp.swapaxes(b2c, -1, -2) if symmetric_rhs else mm(c, b2, precision)
        bcb = mm(mm(b, c, precision), b, precision)
        c = 0.5 * (3 * c - b2c - cb2 + bcb)
        if symmetric_rhs:
            c = symmetrize(c)
        return 0.5 * (3 * b - mm(b2, b, precision)), c

    _, c = lax.fori_loop(0, num_iters, step, (b, c))
    return 0.5 * c


def lyapunov_cost(num_iters: int, symmetric_rhs: bool = True) -> int:
    """Matrix products of :func:`sign_lyapunov`."""
    return num_iters * (5 if symmetric_rhs else 6)


def solve_scaled(s, g, scale, *, num_iters: int, symmetric_rhs: bool, precision):
    """Solve ``S X + X S = G`` with ``B_0 = S / scale`` per matrix.

    ``scale`` has shape ``(...,)`` and must bound the largest eigenvalue of ``S`` (up to
    a factor ``sqrt(3)``). A zero scale (``S = 0``, no solution) gives ``X = 0``.
    """
    nonzero = scale != 0
    safe = jnp.where(nonzero, scale, 1)[..., None, None]
    x = sign_lyapunov(
        s / safe, g / safe, num_iters=num_iters, symmetric_rhs=symmetric_rhs, precision=precision
    )
    return jnp.where(nonzero[..., None, None], x, 0)


def solve_lyapunov(
    s,
    g,
    *,
    num_iters: int = 8,
    normalization: str = "frobenius",
    symmetric_rhs: bool = False,
    precision="highest",
):
    """Solve the Lyapunov (Sylvester) equation ``S X + X S = G`` for symmetric positive ``S``.

    The solution is ``X = integral_0^inf exp(-tS) G exp(-tS) dt``; in the eigenbasis of
    ``S``, ``X_ij = G_ij / (s_i + s_j)``. It is the gradient of a matrix square root:
    if ``S = A^(1/2)`` and ``G = dl/dS`` then ``dl/dA = X``. It is computed with matrix
    products only, by the Newton–Schulz sign iteration of
    ``[[S/c, G/c], [0, -S/c]]`` (:func:`sign_lyapunov`), ``c`` a per-matrix scale.

    Args:
        s: ``(..., n, n)`` symmetric positive definite matrices.
        g: ``(..., n, n)`` right-hand sides, broadcast against ``s``.
        num_iters: sign iterations (static). Eigenvalues ``s_i / c`` converge after about
            ``log_{1.5}(c / s_i)`` iterations: 8 suffice for a condition number of
            ``S`` up to about 10 with Frobenius scaling, 16 to 20 up to about ``1e4``.
        normalization: the scale ``c``: ``"frobenius"`` (``||S||_F``), ``"spectral"``
            (power-iteration estimate of ``||S||_2``) or ``"trace"``.
        symmetric_rhs: promise that ``G`` is symmetric, saving one product per iteration
            (5 instead of 6). A non-symmetric ``G`` is then read as ``(G + G^T) / 2``.
        precision: matmul precision of the iteration (``"highest"`` by default).

    Returns:
        ``X`` of the broadcast shape and ``G``'s dtype promoted with ``S``'s. A zero ``S``
        gives ``X = 0``; NaN in the input gives NaN. Not checked under ``jit``: an
        indefinite ``S`` makes the iteration converge to the solution of a different
        equation (the sign is not the identity there).

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> s = jnp.diag(jnp.array([1.0, 3.0]))
        >>> x = jaxsqrtm.solve_lyapunov(s, jnp.ones((2, 2)), num_iters=20)
        >>> print(jnp.round(x, 4))
        [[0.5   0.25  ]
         [0.25  0.1667]]
    """
    s = _validation.check_matrices(s, "solve_lyapunov", "s")
    g = _validation.check_matrices(g, "solve_lyapunov", "g")
    if s.shape[-1] != g.shape[-1]:
        raise ValueError(
            f"solve_lyapunov: s and g must have the same matrix size, got {s.shape} and {g.shape}"
        )
    num_iters = _validation.check_count(num_iters, "num_iters", minimum=0)
    normalization = _validation.check_choice(
        normalization, "normalization", _validation.NORMALIZATIONS
    )
    precision = _validation.check_precision(precision)
    if not isinstance(symmetric_rhs, bool):
        raise TypeError(f"symmetric_rhs must be a bool, got {symmetric_rhs!r}")
    return _solve_lyapunov(s, g, num_iters, normalization, symmetric_rhs, precision)


@jax.jit(static_argnums=(2, 3, 4, 5))
def _solve_lyapunov(s, g, num_iters, normalization, symmetric_rhs, precision):
    in_dtype = jnp.result_type(s, g)
    dtype = _validation.compute_dtype(in_dtype)
    shape = jnp.broadcast_shapes(s.shape, g.shape)
    s = jnp.broadcast_to(s.astype(dtype), shape)
    g = jnp.broadcast_to(g.astype(dtype), shape)
    if symmetric_rhs:
        g = symmetrize(g)
    s = symmetrize(s)
    scale = matrix_scale(s, normalization, precision=precision)
    x = solve_scaled(
        s, g, scale, num_iters=num_iters, symmetric_rhs=symmetric_rhs, precision=precision
    )
    return x.astype(in_dtype)
