"""Forward passes: pure functions of a normalised matrix ``A_hat = A / c``.

Each function takes ``(..., n, n)`` symmetric matrices whose spectrum lies in ``(0, ~1]``
and returns ``A_hat^(1/2)`` or ``A_hat^(-1/2)``; the caller rescales by ``c^(+-1/2)``.
None of them knows about gradients: :mod:`jaxsqrtm._api` wires the backward passes.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg
from jax import lax

from jaxsqrtm import _coefficients, _sign
from jaxsqrtm._matrix import eye_like, mm, polyval, polyval_cost, power_start, symmetrize


def taylor_root(a_hat, *, degree: int, inverse: bool, precision):
    """Matrix Taylor polynomial (MTP) of ``A_hat^(+-1/2)`` around the identity.

    ``A_hat^(1/2) ~ sum_{k<=K} a_k Z^k`` and ``A_hat^(-1/2) ~ sum_{k<=K} d_k Z^k`` with
    ``Z = I - A_hat`` (coefficients in :mod:`jaxsqrtm._coefficients`).

    Cost: :func:`taylor_cost` matrix products (5 for ``K = 10``, Paterson–Stockmeyer).
    Accuracy: the truncation error at an eigenvalue ``w`` of ``A_hat`` is the tail of the
    series at ``z = 1 - w``: small for ``w`` near 1, and ``O(1)`` as ``w -> 0`` (a zero
    eigenvalue maps to ``0.176`` for the root with ``K = 10``); the inverse root's series
    diverges at ``w = 0``.
    """
    coeffs = _coefficients.taylor_inv_sqrt(degree) if inverse else _coefficients.taylor_sqrt(degree)
    (root,) = polyval([coeffs], eye_like(a_hat) - a_hat, precision=precision)
    return root


def taylor_cost(degree: int) -> int:
    """Matrix products of :func:`taylor_root`."""
    return polyval_cost(degree)


def pade_root(a_hat, *, degree: int, inverse: bool, precision):
    """Matrix Padé approximant (MPA) of ``A_hat^(+-1/2)``.

    ``A_hat^(1/2) ~ Q(A_hat)^(-1) P(A_hat)`` and ``A_hat^(-1/2) ~ P(A_hat)^(-1) Q(A_hat)``
    with the ``[m/m]`` polynomials of :func:`jaxsqrtm._coefficients.pade_sqrt`. ``P`` and
    ``Q`` commute, have positive coefficients, and are evaluated with shared powers.

    Cost: :func:`pade_cost` matrix products (4 for ``m = 5``) and one batched LU solve.
    Accuracy: relative error ``~2 r^(2m+1)`` at an eigenvalue ``w``, with
    ``r = |1 - sqrt(w)| / (1 + sqrt(w))``; a zero eigenvalue maps to ``1 / (2m + 1)``.
    """
    p, q = polyval(_coefficients.pade_sqrt(degree), a_hat, precision=precision)
    numerator, denominator = (q, p) if inverse else (p, q)
    # LU factor + triangular solves directly: the custom_linear_solve wrapper of
    # jnp.linalg.solve is only needed to differentiate through the solve, which the
    # Lyapunov backward never does.
    return symmetrize(jax.scipy.linalg.lu_solve(jax.scipy.linalg.lu_factor(denominator), numerator))


def pade_cost(degree: int) -> int:
    """Matrix products of :func:`pade_root` (the solve excluded)."""
    return polyval_cost(degree, num_polys=2)


def _coupled_step(y, z, w, alpha, precision):
    """``alpha (3Y - alpha^2 Y W) / 2`` and ``alpha (3Z - alpha^2 W Z) / 2``, 2 products.

    The coupled Newton–Schulz step ``Y T, T Z`` with ``T = alpha (3I - alpha^2 W) / 2``,
    written without ``T``: no identity array, and less round-off on clustered spectra.
    """
    y = 0.5 * alpha * (3 * y - alpha * alpha * mm(y, w, precision))
    z = 0.5 * alpha * (3 * z - alpha * alpha * mm(w, z, precision))
    return y, z


def newton_schulz_root(a_hat, *, num_iters: int, inverse: bool, precision):
    """Coupled Newton–Schulz iteration (iSQRT-COV) for ``A_hat^(+-1/2)``.

    ``Y_0 = A_hat, Z_0 = I``; ``T_k = (3I - Z_k Y_k) / 2``, ``Y_{k+1} = Y_k T_k``,
    ``Z_{k+1} = T_k Z_k``; ``Y_k -> A_hat^(1/2)`` and ``Z_k -> A_hat^(-1/2)`` quadratically
    once the spectrum is near 1, for a spectrum in ``(0, 3)``.

    Cost: :func:`newton_schulz_cost` matrix products (12 for 5 iterations): the first
    iteration needs one product (``Z_0 = I``), the last only the requested root.
    Accuracy: an eigenvalue ``w`` needs about ``log2(1/w) / 2`` iterations before the
    quadratic phase, so a fixed 5 iterations leave small eigenvalues unconverged.
    """
    z = 0.5 * (3 * eye_like(a_hat) - a_hat)
    if num_iters == 1:
        return z if inverse else mm(a_hat, z, precision)
    y = 0.5 * (3 * a_hat - mm(a_hat, a_hat, precision))

    # Unrolled: reverse-mode through a loop would stack Y, Z and W of every step.
    for _ in range(num_iters - 2):
        y, z = _coupled_step(y, z, mm(z, y, precision), 1.0, precision)
    w = mm(z, y, precision)
    if inverse:
        return 0.5 * (3 * z - mm(w, z, precision))
    return 0.5 * (3 * y - mm(y, w, precision))


def newton_schulz_cost(num_iters: int, inverse: bool = False) -> int:
    """Matrix products of :func:`newton_schulz_root`."""
    if num_iters == 1:
        return 0 if inverse else 1
    return 1 + 3 * (num_iters - 2) + 2


def scaled_newton_schulz_roots(a_hat, *, max_iters: int, precision):
    """Coupled Newton–Schulz with optimal per-step scaling, run to convergence.

    The coupled iteration of :func:`newton_schulz_root` is the sign iteration on
    ``M = [[0, A_hat], [I, 0]]`` (eigenvalues ``+-sqrt(w)``) written on its blocks,
    ``M_k = [[0, Y_k], [Z_k, 0]]``. Each step scales ``M_k`` by the ``alpha_k`` of
    :mod:`jaxsqrtm._sign` before the cubic::

        W = Z_k Y_k,   Y <- alpha_k (3 Y_k - alpha_k^2 Y_k W) / 2,
                       Z <- alpha_k (3 Z_k - alpha_k^2 W Z_k) / 2

    Small eigenvalues grow by 2.6 per step until the quadratic phase. Each matrix stops
    after the step that starts with ``||I - W||_2 <= 4 sqrt(eps)`` (then it is frozen
    while the rest of the batch continues), or after ``max_iters`` steps.

    Args:
        a_hat: ``(..., n, n)`` with spectrum in ``(0, 1]`` (a guaranteed upper bound was
            used to scale it) and smallest eigenvalue ``>= eps`` (add a ridge).
        max_iters: cap on the steps (static).
        precision: matmul precision.

    Returns:
        ``(Y, Z, iterations, alphas)``: ``A_hat^(1/2)``, ``A_hat^(-1/2)``, the steps taken
        per matrix, shape ``(...,)`` int32, and the step sizes, shape ``(..., max_iters)``
        (entries from ``iterations`` on are unused). The same steps take any matrix with
        the spectrum of ``A_hat^(1/2)`` to its sign, which is what the Lyapunov backward
        replays (:func:`jaxsqrtm._lyapunov.replayed_sign_lyapunov`).

    Cost: ``3 k - 2`` products for ``k`` steps (the first needs one, ``Z_0 = I``) plus
    two matrix-vector products a step; ``k`` is about 6 at condition number ``1e2``,
    9 at ``1e4`` and 12 at ``1e6`` (float32).
    """
    floor = _sign.floor_for(a_hat.dtype)
    tol = _sign.tolerance_for(a_hat.dtype)

    # The first step of _coupled_step with Y = W = A_hat and Z = I, in one product.
    a_hat2 = mm(a_hat, a_hat, precision)
    dev, v = _sign.first_deviation(
        a_hat, a_hat2, power_start(a_hat), num_iters=_sign.WARMUP_MATVECS, precision=precision
    )
    alpha = _sign.cubic_scale(dev, floor)[..., None, None]
    y = 0.5 * alpha * (3 * a_hat - alpha * alpha * a_hat2)
    z = 0.5 * alpha * (3 * eye_like(a_hat) - alpha * alpha * a_hat)
    active = dev > tol
    iterations = jnp.ones(a_hat.shape[:-2], jnp.int32)
    alphas = jnp.zeros((*a_hat.shape[:-2], max_iters), a_hat.dtype)
    alphas = alphas.at[..., 0].set(alpha[..., 0, 0])

    def keep_going(state):
        k, *_, active, _, _ = state
        return (k < max_iters) & jnp.any(active)

    def step(state):
        k, y, z, v, active, iterations, alphas = state
        w = mm(z, y, precision)
        dev, v = _sign.deviation(w, v, num_iters=_sign.MATVECS_PER_STEP, precision=precision)
        alpha = _sign.cubic_scale(dev, floor)[..., None, None]
        y_next, z_next = _coupled_step(y, z, w, alpha, precision)
        update = active[..., None, None]
        y = jnp.where(update, y_next, y)
        z = jnp.where(update, z_next, z)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha[..., 0, 0], k, axis=-1)
        return k + 1, y, z, v, active & (dev > tol), iterations + active, alphas

    state = (1, y, z, v, active, iterations, alphas)
    _, y, z, _, _, iterations, alphas = lax.while_loop(keep_going, step, state)
    return y, z, iterations, alphas
