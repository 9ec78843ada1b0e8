"""``"auto"``: the accurate mode, the library's default.

Forward: optimally scaled coupled Newton–Schulz steps (:func:`scaled_newton_schulz_roots`)
on ``A_hat + r I``, run until each matrix has converged, then the ridge ``r`` removed by a
series (:func:`ridged_roots`). Both roots come out of one iteration.

PSD semantics: a matrix whose spectrum reaches the noise floor (``l_min <= 2 r``,
:func:`reaches_noise_floor`: rank-deficient or slightly indefinite input), whose
iteration did not converge within ``max_iters`` (a ridge too small) or whose result is
not finite (negative eigenvalues beyond the ridge) is computed instead by the
eigendecomposition of :mod:`jaxsqrtm._methods.eigh`: the root of the PSD part with
round-off-sized eigenvalues set to 0, and the pseudo-inverse of it for the inverse
root. There the series cannot remove the ridge (a zero eigenvalue would come out near
``0.375 sqrt(r)``, a bias that a trace sums over the whole null space), and matrix
products cannot do better: their round-off is of the size ``sqrt(eps c)`` of the roots
of the null space's round-off eigenvalues, whichever formula is used. The
decomposition runs only when some matrix of the batch needs it (``lax.cond``; under
``jax.vmap`` both branches run) and replaces only those matrices.

Derivative (``jax.custom_jvp``, :func:`_accurate_jvp`): that of the exact roots at the
computed ones. With ``S = A^(1/2) = sqrt(c) S_hat``, ``P = A^(-1/2) = P_hat / sqrt(c)``
and ``X = L_{S_hat}^(-1)(dA)`` (``L_B(X) = B X + X B``)::

    dS     = X / sqrt(c)                      dS_hat = X / c - S_hat dc / (2c)
    dP     = -P_hat X P_hat / c^(3/2)         dP_hat = -P_hat X P_hat / c + P_hat dc / (2c)

``S_hat`` has the spectrum ``sqrt(w)`` that the forward iteration took to 1, so ``X`` is
solved by replaying the forward's step sizes and step count
(:func:`jaxsqrtm._lyapunov.replayed_sign_lyapunov`): ``4k - 2`` products for ``k`` steps,
no power iteration. JAX transposes the rule for reverse mode (``dl/dA =
L_{S_hat}^(-1)(G) / sqrt(c)``, or ``L_{S_hat}^(-1)(-P_hat G P_hat) / c^(3/2)`` for the
inverse root, 2 more products), and since the rule calls :func:`_accurate` itself for
the roots it differentiates, it can be differentiated again: reverse-over-reverse,
forward-over-reverse and ``jax.hessian`` all work without differentiating the loop.

For decomposed matrices the replay runs on the identity instead, so that it stays
finite; their tangent is the decomposition's Daleckii–Krein one, which JAX takes through
the ``lax.cond`` that selects them (outside this rule, so that the cond and its
``jax.vmap`` form, a select, are differentiated by JAX itself).

Residuals of reverse mode: ``S_hat`` (and ``P_hat`` for the inverse root), the step sizes
(``max_iters`` per matrix), the step count and the scale.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _lyapunov, _sign, _validation
from jaxsqrtm._core import Config, Knob, Method, Root, choice_knob, count_knob
from jaxsqrtm._matrix import (
    BOUNDS,
    eye_like,
    matrix_scale,
    matvec,
    mm,
    normalized,
    power_iterate,
    power_start,
    rescale,
    symmetrize,
)
from jaxsqrtm._methods.eigh import eigh_root
from jaxsqrtm._methods.newton_schulz import coupled_step

FLOOR_MATVECS = 8


def scaled_newton_schulz_roots(a_hat, *, max_iters: int, precision):
    """Coupled Newton–Schulz with optimal per-step scaling, run to convergence.

    The coupled iteration of :func:`jaxsqrtm._methods.newton_schulz.newton_schulz_root`
    is the sign iteration on ``M = [[0, A_hat], [I, 0]]`` (eigenvalues ``+-sqrt(w)``)
    written on its blocks, ``M_k = [[0, Y_k], [Z_k, 0]]``. Each step scales ``M_k`` by the
    ``alpha_k`` of :mod:`jaxsqrtm._sign` before the cubic::

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
        the spectrum of ``A_hat^(1/2)`` to its sign, which is what the Lyapunov rule
        replays (:func:`jaxsqrtm._lyapunov.replayed_sign_lyapunov`).

    Cost: ``3 k - 2`` products for ``k`` steps (the first needs one, ``Z_0 = I``) plus
    two matrix-vector products a step; ``k`` is about 6 at condition number ``1e2``,
    9 at ``1e4`` and 12 at ``1e6`` (float32).
    """
    floor = _sign.floor_for(a_hat.dtype)
    tol = _sign.tolerance_for(a_hat.dtype)

    # The first step of coupled_step with Y = W = A_hat and Z = I, in one product.
    a_hat2 = mm(a_hat, a_hat, precision)
    dev, v = _sign.first_deviation(
        a_hat, a_hat2, power_start(a_hat), num_iters=_sign.WARMUP_MATVECS, precision=precision
    )
    alpha = _sign.cubic_scale(dev, floor)
    y = 0.5 * alpha[..., None, None] * (3 * a_hat - alpha[..., None, None] ** 2 * a_hat2)
    z = 0.5 * alpha[..., None, None] * (3 * eye_like(a_hat) - alpha[..., None, None] ** 2 * a_hat)
    # Built from the data, so that they vary over a shard_map mesh and keep an explicit
    # sharding like it.
    iterations = jnp.ones_like(dev, dtype=jnp.int32)
    alphas = jnp.where(jnp.arange(max_iters) == 0, alpha[..., None], 0)

    def step(k, state):
        y, z, v, iterations, alphas = state
        w = mm(z, y, precision)
        dev, v = _sign.deviation(w, v, num_iters=_sign.MATVECS_PER_STEP, precision=precision)
        alpha = _sign.cubic_scale(dev, floor)
        y, z = coupled_step(y, z, w, alpha[..., None, None], precision)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (y, z, v, iterations + 1, alphas), dev > tol

    y, z, _, iterations, alphas = _sign.iterate_per_matrix(
        step, (y, z, v, iterations, alphas), dev > tol, start=1, stop=max_iters
    )
    return y, z, iterations, alphas


def second_order_matters(z, r):
    """Whether the ``r^2`` terms of :func:`ridged_roots` can exceed round-off, per matrix.

    ``u = r min(||Z||_F^2, ||Z||_inf^2)`` bounds the series variable ``r ||Z||_2^2`` in
    every direction (``||Z||_2 <= ||Z||_inf`` for symmetric ``Z``; measured 2 to 30
    times too large for n = 8 to 512), and the second-order terms are at most
    ``3 u^2 / 8`` relative, so they are kept where ``u > sqrt(eps) / 2``. In float32 that
    keeps them from condition number ``1e3`` to ``1e4`` on, and drops them at ``1e2``
    up to n = 64 to 512, depending on the spectrum.
    """
    eps = float(jnp.finfo(z.dtype).eps)
    frobenius2 = jnp.sum(_abs2(z), axis=(-2, -1))
    row_sum = jnp.max(jnp.sum(jnp.abs(z), axis=-1), axis=-1)
    u = r * jnp.minimum(frobenius2, row_sum * row_sum)
    return u > 0.5 * eps**0.5


def _abs2(z):
    return jnp.real(z * jnp.conj(z)) if jnp.iscomplexobj(z) else z * z


def reaches_noise_floor(z, r, *, precision):
    """Whether the smallest eigenvalue of ``A_hat`` is at most ``2 r``, per matrix.

    ``Z = (A_hat + r I)^(-1/2)`` has ``r ||Z||_2^2 = r / (l_min + r)``, which is at
    least ``1/3`` exactly when ``l_min <= 2 r``: the spectrum reaches the round-off
    level of the ridge (``2 eps c``, with the default ridge), where the series of
    :func:`ridged_roots` no longer removes the ridge and a null eigenvalue would come
    out near ``0.375 sqrt(r)``. ``||Z||_2`` is estimated by ``FLOOR_MATVECS`` steps of
    power iteration (a lower bound; a null space or an isolated smallest eigenvalue
    dominates ``Z`` and is found within a few steps).
    """
    estimate, _ = power_iterate(
        lambda v: matvec(z, v, precision), power_start(z), num_iters=FLOOR_MATVECS
    )
    return r * estimate * estimate >= 1 / 3


def ridged_roots(y, z, r, *, inverse: bool, precision):
    """Roots of ``A_hat`` from those of ``A_hat + r I``, the ridge removed by a series.

    The coupled iteration delivers both ``Y = (A_hat + r I)^(1/2)`` and
    ``Z = (A_hat + r I)^(-1/2)``; with ``u = r Z^2``::

        A_hat^(1/2)  = Y (I - u)^(1/2)  = Y - r Z / 2 - r^2 Z^3 / 8 + O(u^3)
        A_hat^(-1/2) = Z (I - u)^(-1/2) = Z + r Z^3 / 2 + 3 r^2 Z^5 / 8 + O(u^3)

    The relative error left at an eigenvalue ``l`` is about ``(r / l)^3 / 16`` for the
    root and ``5 (r / l)^3 / 16`` for the inverse, instead of ``r / (2 l)`` for a plain
    ridge. At condition number ``1e6`` in float32 ``r / l ~ 0.1``: the root's
    second-order term (``(r / l)^2 / 8 ~ 2e-3`` there) matters for the gradient, whose
    error is largest in those directions. Per matrix, the second-order term is dropped
    where :func:`second_order_matters` shows it is below round-off in every direction.

    Cost: the root takes 2 products (``Z^3``) and the inverse root 3 (``Z^3``, ``Z^5``)
    when some matrix of the batch needs its second-order term; otherwise the root takes
    none and the inverse root 2 (and keeps the root's ``r^2`` term, free there).

    Returns:
        ``(root, inverse_root)``, symmetric; ``inverse_root`` is ``None`` unless
        ``inverse``.
    """
    keep = second_order_matters(z, r)[..., None, None]
    if inverse:  # Z^3 is needed either way
        z2 = mm(z, z, precision)
        z3 = mm(z2, z, precision)

    def removed(second_order: bool):
        """The roots with the ridge removed, with or without the ``r^2`` terms (static).

        Each branch yields the finished sums: the skipped term costs no pass over zeros.
        """

        def branch():
            if not inverse:
                root = y - 0.5 * r * z
                if second_order:
                    cube = mm(mm(z, z, precision), z, precision)
                    root = root - jnp.where(keep, 0.125 * r * r * cube, 0)
                return root, root
            inverse_root = z + 0.5 * r * z3
            if second_order:
                inverse_root = inverse_root + jnp.where(
                    keep, 0.375 * r * r * mm(z3, z2, precision), 0
                )
            return y - 0.5 * r * z - 0.125 * r * r * z3, inverse_root

        return branch

    root, inverse_root = lax.cond(jnp.any(keep), removed(True), removed(False))
    return symmetrize(root), symmetrize(inverse_root) if inverse else None


class Accurate(NamedTuple):
    """Everything the accurate mode computes; also the residuals of its reverse mode."""

    out: jax.Array  # A^(1/2) or A^(-1/2) by the iteration (not yet the decomposition's)
    scale: jax.Array  # c, with A_hat = A / c (the ridge's (1 + ridge) included)
    root: jax.Array  # S_hat = A_hat^(1/2)
    inverse_root: jax.Array | None  # P_hat = A_hat^(-1/2), inv_sqrtm only
    alphas: jax.Array  # (..., max_iters) step sizes of the forward iteration
    iterations: jax.Array  # (...,) steps taken
    decomposed: jax.Array  # (...,) bool: ``out`` is the eigendecomposition's


def _ridge(config: Config, dtype) -> float:
    """The ridge relative to the scale: machine epsilon of the compute dtype by default."""
    return _sign.floor_for(dtype) ** 2 if config.ridge is None else config.ridge


def _scale(a, config: Config):
    """``c (1 + ridge)``: the scale of ``A_hat`` once the ridge is in."""
    c = matrix_scale(a, config.normalization, precision=config.precision)
    return c * (1 + _ridge(config, a.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def accurate_roots(a, config: Config) -> Accurate:
    """The accurate mode on symmetric ``a``: :class:`Accurate` (the rule in the module doc)."""
    ridge = _ridge(config, a.dtype)
    a_hat, c = normalized(a, config.normalization, precision=config.precision)
    y, z, iterations, alphas = scaled_newton_schulz_roots(
        (a_hat + ridge * eye_like(a_hat)) / (1 + ridge),
        max_iters=config.max_iters,
        precision=config.precision,
    )
    root, inverse_root = ridged_roots(
        y, z, ridge / (1 + ridge), inverse=config.inverse, precision=config.precision
    )
    scale = c * (1 + ridge)
    out = rescale(inverse_root if config.inverse else root, scale, config.inverse)
    decomposed = _needs_decomposition(
        root, inverse_root, z, ridge / (1 + ridge), iterations, config
    )
    return Accurate(out, scale, root, inverse_root, alphas, iterations, decomposed)


def _needs_decomposition(root, inverse_root, z, r, iterations, config: Config):
    """Matrices the iteration cannot serve, ``(...,)`` bool: a spectrum that reaches the
    noise floor (rank-deficient or indefinite input, :func:`reaches_noise_floor`), an
    iteration that did not converge within ``max_iters`` (a ridge too small for the
    input), or a non-finite result (negative eigenvalues beyond the ridge, NaN input)."""
    finite = jnp.all(jnp.isfinite(root), axis=(-2, -1))
    if inverse_root is not None:
        finite = finite & jnp.all(jnp.isfinite(inverse_root), axis=(-2, -1))
    converged = iterations < config.max_iters
    return ~finite | ~converged | reaches_noise_floor(z, r, precision=config.precision)


@accurate_roots.defjvp
def _accurate_jvp(config, primals, tangents):
    (a,), (da,) = primals, tangents
    result = accurate_roots(a, config)  # itself, so that this rule differentiates again
    _, d_scale = jax.jvp(functools.partial(_scale, config=config), (a,), (da,))
    d_out, d_root, d_inverse_root = _root_tangents(_replayable(result), da, d_scale, config)
    return result, Accurate(
        out=d_out,
        scale=d_scale,
        root=d_root,
        inverse_root=d_inverse_root,
        alphas=jnp.zeros_like(result.alphas),
        iterations=jnp.zeros_like(result.iterations, dtype=jax.dtypes.float0),
        decomposed=jnp.zeros_like(result.decomposed, dtype=jax.dtypes.float0),
    )


def _replayable(result: Accurate) -> Accurate:
    """``result`` with the iteration's state of decomposed matrices replaced by that of
    the identity (one unit step), so that the Lyapunov tangent, which the
    decomposition's replaces there, stays finite (also under reverse mode, where a NaN
    times a zero cotangent would still be NaN)."""
    keep = ~result.decomposed

    def identity_where_decomposed(x):
        if x is None:
            return None
        return jnp.where(keep[..., None, None], x, eye_like(x))

    return result._replace(
        root=identity_where_decomposed(result.root),
        inverse_root=identity_where_decomposed(result.inverse_root),
        alphas=jnp.where(keep[..., None], result.alphas, 1),
        iterations=jnp.where(keep, result.iterations, 1),
    )


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _root_tangents(result: Accurate, da, d_scale, config):
    """Tangents of ``out``, ``root`` and ``inverse_root``; recomputed in reverse mode, so
    that only ``result``'s arrays are kept."""
    precision = config.precision
    # 1 / c per matrix, 0 for a zero matrix (whose derivatives are set to 0)
    scale = result.scale[..., None, None]
    inv_c = jnp.where(scale != 0, 1 / jnp.where(scale != 0, scale, 1), 0)
    half_dc = 0.5 * d_scale[..., None, None] * inv_c

    def solve(rhs):
        return _lyapunov.replayed_sign_lyapunov(
            result.root, rhs, result.alphas, result.iterations, precision=precision
        )

    x = _lyapunov.lyapunov_inverse(result.root, da, solve, precision=precision)
    d_root = x * inv_c - result.root * half_dc
    if not config.inverse:
        return x * jnp.sqrt(inv_c), d_root, None
    p = result.inverse_root
    pxp = mm(mm(p, x, precision), p, precision)
    d_inverse_root = p * half_dc - pxp * inv_c
    return pxp * -(inv_c * jnp.sqrt(inv_c)), d_root, d_inverse_root


def _root(a, config: Config) -> Root:
    result = accurate_roots(a, config)
    # Outside the custom rule, so that JAX differentiates the cond (and its select
    # under vmap) itself: the decomposition's own rule gives those matrices' tangents.
    out = lax.cond(
        jnp.any(result.decomposed),
        lambda a, out, decomposed: _decomposed_where(a, out, decomposed, config),
        lambda a, out, decomposed: out,
        a,
        result.out,
        result.decomposed,
    )
    return Root(out, result.scale, result.iterations)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _decomposed_where(a, out, decomposed, config):
    """``out`` with the decomposed matrices' roots from ``eigh``; reverse mode keeps only
    ``a`` and ``decomposed`` and decomposes again, when the batch has such a matrix."""
    return jnp.where(decomposed[..., None, None], eigh_root(a, config)[0], out)


METHOD = Method(
    name="auto",
    summary="optimally scaled coupled Newton–Schulz, iterated per matrix to convergence",
    derivative="exact-root Lyapunov rule replaying the forward's step sizes (custom JVP)",
    knobs=(
        choice_knob("normalization", "spectral_bound", BOUNDS),
        count_knob("max_iters", _sign.MAX_ITERS),
        Knob("ridge", None, _validation.check_fraction),
    ),
    root=_root,
    cost=lambda config, backward: None,
)
