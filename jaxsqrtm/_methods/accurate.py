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

``precision="mixed"`` (:func:`_mixed_roots`, policy :class:`jaxsqrtm._sign.MixedPrecision`):
the forward's steps take bfloat16 products for the matrices whose condition number is at
most about ``1e3`` (:func:`mixed_newton_schulz_roots`), and Newton steps with float32
residuals and bfloat16 Lyapunov solves bring them to float32 accuracy
(:func:`refined_roots`); the other matrices are computed as ``"highest"`` computes them.
The derivative's Lyapunov solves take bfloat16 products refined with float32 residuals
(:func:`jaxsqrtm._lyapunov.refined_replayed_lyapunov`) where the condition number of
``S_hat`` is at most ``300`` (that of ``A`` up to about ``1e5``), and are ``"highest"``'s
elsewhere. The step sizes of a bfloat16 schedule are replayed with a few unit steps more.
Extra residuals of reverse mode: per-matrix flags and step counts.
"""

from __future__ import annotations

import dataclasses
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
    frobenius_norm,
    matrix_scale,
    matvec,
    mm,
    normalized,
    normalized_square,
    power_iterate,
    power_start,
    product_kind,
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


def mixed_newton_schulz_roots(a_hat, *, max_iters: int, policy: _sign.MixedPrecision, a_hat2=None):
    """The bfloat16 phase of :func:`scaled_newton_schulz_roots` under the mixed policy.

    The first step (``A_hat^2`` and the first deviation) is float32, as in
    :func:`scaled_newton_schulz_roots`; then the matrices that the policy lets take
    bfloat16 steps run with bfloat16 products until their deviation falls below the
    switch or stagnates (:func:`jaxsqrtm._sign.low_precision_phase`; the power
    iterations stay float32 matrix-vector products). They come out with bfloat16-level
    errors (``1e-3`` to ``4e-2``), which :func:`refined_roots` removes. The phase serves
    a matrix if ``||Z||_2^2`` (the condition number of ``A_hat``, estimated from below
    by :func:`inverse_root_norm`) is at most ``policy.max_condition``: beyond it the
    bfloat16 errors exceed the small eigenvalues of ``Y`` and Newton's refinement no
    longer converges quickly (measured: up to 7 times float32's gradient error at
    condition number ``3e3``).

    Args:
        a_hat: ``(..., n, n)`` as for :func:`scaled_newton_schulz_roots`.
        max_iters: cap on the steps (static).
        policy: the :class:`jaxsqrtm._sign.MixedPrecision`.
        a_hat2: ``A_hat^2`` if already at hand (float32), else computed.

    Returns:
        ``(Y, Z, iterations, alphas, low, replay, low_steps)``: as
        :func:`scaled_newton_schulz_roots` for the served matrices, ``low`` the ``(...,)``
        bool of those, ``replay`` the steps of their schedule to replay (``iterations``
        plus the unit steps of :meth:`jaxsqrtm._sign.MixedPrecision.finishing`, written
        into ``alphas``, of length ``max(max_iters, policy.max_low_steps + 1) +
        policy.finishing_steps``), and ``low_steps`` the bfloat16 steps every matrix took.

    Cost: ``A_hat^2`` (float32) unless given, then 3 bfloat16 products a step.
    """
    high = policy.high
    floor = _sign.floor_for(a_hat.dtype)
    tol = _sign.tolerance_for(a_hat.dtype)
    if a_hat2 is None:
        a_hat2 = mm(a_hat, a_hat, high)
    dev, v = _sign.first_deviation(
        a_hat, a_hat2, power_start(a_hat), num_iters=_sign.WARMUP_MATVECS, precision=high
    )
    alpha = _sign.cubic_scale(dev, floor)
    y = 0.5 * alpha[..., None, None] * (3 * a_hat - alpha[..., None, None] ** 2 * a_hat2)
    z = 0.5 * alpha[..., None, None] * (3 * eye_like(a_hat) - alpha[..., None, None] ** 2 * a_hat)
    iterations = jnp.ones_like(dev, dtype=jnp.int32)
    length = max(max_iters, policy.max_low_steps + 1) + policy.finishing_steps
    index = jnp.arange(length)
    alphas = jnp.where(index == 0, alpha[..., None], 0)

    def step(k, state, precision):
        y, z, v, iterations, alphas = state
        w = mm(z, y, precision)
        dev, v = _sign.deviation(w, v, num_iters=_sign.MATVECS_PER_STEP, precision=high)
        alpha = _sign.cubic_scale(dev, floor)
        y, z = coupled_step(y, z, w, alpha[..., None, None], precision)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (y, z, v, iterations + 1, alphas), dev

    def accept(state):
        estimate = inverse_root_norm(state[1], precision=high)
        return estimate * estimate <= policy.max_condition

    (y, z, _, iterations, alphas), low, last_deviation, low_steps = _sign.low_precision_phase(
        step,
        (y, z, v, iterations, alphas),
        dev,
        policy=policy,
        tol=tol,
        start=1,
        stop=max_iters,
        accept=accept,
    )
    replay = iterations + jnp.where(low, policy.finishing(last_deviation, a_hat.dtype), 0)
    finishing = (index >= iterations[..., None]) & (index < replay[..., None])
    return y, z, iterations, jnp.where(finishing, 1, alphas), low, replay, low_steps


def refined_roots(y, z, a_hat, alphas, steps, active, *, inverse: bool, policy):
    """Refine bfloat16-accurate roots of ``A_hat`` to float32 with float32 residuals.

    Newton's method for ``Y^2 = A_hat``, and Newton–Schulz for ``Z = Y^(-1)`` with the
    inverse root::

        Y <- Y + L_Y^(-1)(A_hat - Y^2),        Z <- Z + Z (I - Y Z)

    (``L_Y(X) = Y X + X Y``). Newton converges quadratically from any error, whatever
    its direction, which the sign iteration cannot do; the residuals ``A_hat - Y^2``
    and ``I - Y Z`` are float32 products. The Lyapunov solve replays the forward's
    schedule (:func:`jaxsqrtm._lyapunov.replayed_sign_lyapunov`) with bfloat16
    products: relative error ``eta ~ 5e-3``, so a step takes an error ``e`` to about
    ``e (e + eta)``; ``Z R`` is a bfloat16 product of a small ``R``. Each matrix stops
    when :meth:`jaxsqrtm._sign.MixedPrecision.refine_again` says so (measured in
    float32: 2 steps at condition number ``1e2``, 3 to 4 at ``1e4``).

    Args:
        y, z: ``(..., n, n)`` approximations of ``A_hat^(1/2)`` and ``A_hat^(-1/2)``.
        a_hat: ``(..., n, n)``, spectrum in ``(0, 1]``.
        alphas, steps: the schedule that takes ``A_hat^(1/2)``'s spectrum to 1.
        active: ``(...,)`` bool, the matrices to refine (the others are left as they are).
        inverse: refine ``Z`` too.
        policy: the :class:`jaxsqrtm._sign.MixedPrecision`.

    Returns:
        ``(Y, Z, refinements, size)``: the refined roots, the steps taken and the relative
        size of the last step, per matrix (1 where none was taken).

    Cost per step: one float32 and ``4 s - 2`` bfloat16 products (``s = max(steps)``),
    one more of each with ``inverse``.
    """
    high, low = policy.high, policy.low
    identity = eye_like(y)
    y = jnp.where(active[..., None, None], symmetrize(y), y)
    z = jnp.where(active[..., None, None], symmetrize(z), z)

    def step(_, state):
        y, z, previous, count = state
        residual = a_hat - mm(y, y, high)
        correction = _lyapunov.replayed_sign_lyapunov(y, residual, alphas, steps, precision=low)
        size = frobenius_norm(correction) / frobenius_norm(y)
        y = symmetrize(y + correction)
        if inverse:
            correction = mm(z, identity - mm(y, z, high), low)
            size = jnp.maximum(size, frobenius_norm(correction) / frobenius_norm(z))
            z = symmetrize(z + correction)
        again = policy.refine_again(size, previous, y.dtype)
        return (y, z, size, count + 1), again

    # Built from the data, so that they vary over a shard_map mesh like it.
    ones = jnp.ones_like(active, dtype=y.dtype)
    y, z, size, count = _sign.iterate_per_matrix(
        step,
        (y, z, ones, jnp.zeros_like(active, dtype=jnp.int32)),
        active,
        start=0,
        stop=policy.max_refinements,
    )
    return y, z, count, size


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


def inverse_root_norm(z, *, precision):
    """``||Z||_2`` per matrix by ``FLOOR_MATVECS`` steps of power iteration (a lower bound).

    For ``Z = (A_hat + r I)^(-1/2)`` it is ``1 / sqrt(l_min)``, the condition number of
    ``A_hat^(1/2)`` (whose largest eigenvalue is about 1): what decides whether bfloat16
    products can represent the small eigenvalues (:class:`jaxsqrtm._sign.MixedPrecision`).
    """
    estimate, _ = power_iterate(
        lambda v: matvec(z, v, precision), power_start(z), num_iters=FLOOR_MATVECS
    )
    return estimate


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
    estimate = inverse_root_norm(z, precision=precision)
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
    # precision="mixed" only: (...,) bool, the matrices that took bfloat16 steps (their
    # schedule is replayed with the finishing steps), (...,) int32 refinement steps, and
    # (...,) bool, the matrices whose Lyapunov solves take bfloat16 products.
    low: jax.Array | None = None
    refinements: jax.Array | None = None
    # (...,) int32 products per precision kind, {"forward": {kind: ...}, "backward": ...}
    products: dict | None = None
    low_solve: jax.Array | None = None
    replay: jax.Array | None = None  # (...,) int32 steps of the replayed schedule


def _ridge(config: Config, dtype) -> float:
    """The ridge relative to the scale: machine epsilon of the compute dtype by default."""
    return _sign.floor_for(dtype) ** 2 if config.ridge is None else config.ridge


def _is_mixed(config: Config) -> bool:
    return config.precision == _validation.MIXED


def _full_precision(config: Config) -> Config:
    """``config`` with a single product precision: the mixed policy's float32 for the
    products outside its iterations (scale, ridge removal, tangents, decomposition)."""
    if _is_mixed(config):
        return dataclasses.replace(config, precision=_sign.MIXED.high)
    return config


def _scale(a, config: Config):
    """``c (1 + ridge)``: the scale of ``A_hat`` once the ridge is in."""
    c = matrix_scale(a, config.normalization, precision=_full_precision(config).precision)
    return c * (1 + _ridge(config, a.dtype))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def accurate_roots(a, config: Config) -> Accurate:
    """The accurate mode on symmetric ``a``: :class:`Accurate` (the rule in the module doc)."""
    if _is_mixed(config):
        return _mixed_roots(a, config, _sign.MIXED)
    return _single_precision_roots(a, config)[0]


def _single_precision_roots(a, config: Config):
    """:func:`accurate_roots` at ``config.precision``; also returns ``Z``, the iteration's
    ``(A_hat + r I)^(-1/2)``."""
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
    second_order = jnp.any(second_order_matters(z, ridge / (1 + ridge)))
    products = _products(config, iterations, second_order)
    result = Accurate(
        out, scale, root, inverse_root, alphas, iterations, decomposed, products=products
    )
    return result, z


def _mixed_roots(a, config: Config, policy: _sign.MixedPrecision) -> Accurate:
    """:func:`accurate_roots` under the mixed policy.

    The matrices that the bfloat16 phase serves (:func:`mixed_newton_schulz_roots`) are
    refined with float32 residuals (:func:`refined_roots`); the others (condition
    number above ``policy.max_condition``, a refinement that did not converge) are
    computed by the float32 iteration, bit for bit as ``"highest"`` computes them, run
    only when the batch has such a matrix. The Lyapunov solves of the derivative take
    bfloat16 products, refined, where ``||Z||_2 <= policy.max_solve_condition``.
    """
    ridge = _ridge(config, a.dtype)
    r = ridge / (1 + ridge)
    full = _full_precision(config)
    a_hat, c, a_hat2 = normalized_square(a, config.normalization, precision=full.precision)
    identity = eye_like(a_hat)
    a_ridged = (a_hat + ridge * identity) / (1 + ridge)
    a_ridged2 = (a_hat2 + 2 * ridge * a_hat + ridge * ridge * identity) / (1 + ridge) ** 2
    y, z, iterations, alphas, low, replay, low_steps = mixed_newton_schulz_roots(
        a_ridged, max_iters=config.max_iters, policy=policy, a_hat2=a_ridged2
    )
    y, z, refinements, size = refined_roots(
        y, z, a_ridged, alphas, replay, low, inverse=config.inverse, policy=policy
    )
    low = low & (size <= _sign.tolerance_for(a.dtype))
    # The ridge's terms are r / l_min <= 1e-4 relative where every matrix took bfloat16
    # steps (condition number up to policy.max_condition): bfloat16 products suffice.
    all_low = jnp.all(low)
    root, inverse_root = lax.cond(
        all_low,
        lambda: ridged_roots(y, z, r, inverse=config.inverse, precision=policy.low),
        lambda: ridged_roots(y, z, r, inverse=config.inverse, precision=policy.high),
    )
    scale = c * (1 + ridge)
    out = rescale(inverse_root if config.inverse else root, scale, config.inverse)
    decomposed = _needs_decomposition(root, inverse_root, z, r, iterations, full)
    second_order = jnp.any(second_order_matters(z, r))

    other, other_z = _sign.unless_all(low, lambda: _single_precision_roots(a, full), like=a)
    pad = [(0, 0)] * (other.alphas.ndim - 1) + [(0, alphas.shape[-1] - other.alphas.shape[-1])]

    def pick(mine, theirs):
        if mine is None:
            return None
        mask = low.reshape(low.shape + (1,) * (mine.ndim - low.ndim))
        return jnp.where(mask, mine, theirs)

    z = pick(z, other_z)
    low_solve = inverse_root_norm(z, precision=policy.high) <= policy.max_solve_condition
    products = _mixed_products(
        config,
        policy,
        low=low,
        iterations=iterations,
        replay=replay,
        low_steps=low_steps,
        refinements=refinements,
        low_solve=low_solve,
        ridge=(second_order, all_low),
        other=other,
    )
    iterations = pick(iterations, other.iterations)
    replay = pick(replay, other.iterations)
    return Accurate(
        out=pick(out, other.out),
        scale=pick(scale, other.scale),
        root=pick(root, other.root),
        inverse_root=pick(inverse_root, other.inverse_root),
        alphas=pick(alphas, jnp.pad(other.alphas, pad)),
        iterations=iterations,
        decomposed=pick(decomposed, other.decomposed),
        low=low,
        refinements=jnp.where(low, refinements, 0),
        products=products,
        low_solve=low_solve,
        replay=replay,
    )


def _products(config: Config, iterations, second_order):
    """Matrix products per matrix and precision kind (:func:`jaxsqrtm._matrix.product_kind`)
    of the forward call and of its reverse-mode backward, as ``(...,)`` int32 arrays:
    ``{"forward": {kind: count}, "backward": {kind: count}}``.

    The iteration's products as the batch ran them for this matrix: the normalisation
    (``"spectral_bound"``: one), the steps and the ridge removal (whose second-order
    products depend on the batch); the scale's derivative, the residual of
    ``return_info`` and an eigendecomposition fallback are not products of the
    iteration and are left out, as in :func:`jaxsqrtm.matmul_count`.
    """
    inverse = int(config.inverse)
    kind = product_kind(config.precision)
    fixed = int(config.normalization == "spectral_bound") + _ridge_products(config, second_order)
    return {
        "forward": {kind: fixed + 3 * iterations - 2},
        "backward": {kind: 4 * iterations - 2 + 2 * inverse},
    }


def _ridge_products(config: Config, second_order):
    """Products of :func:`ridged_roots`: ``Z^3`` (and ``Z^5``) where kept, ``Z^3`` always
    for the inverse root."""
    second_order = second_order.astype(jnp.int32)
    return 2 + second_order if config.inverse else 2 * second_order


def _mixed_products(
    config: Config,
    policy,
    *,
    low,
    iterations,
    replay,
    low_steps,
    refinements,
    low_solve,
    ridge,
    other,
):
    """:func:`_products` under the mixed policy.

    Served matrices: ``A_hat^2`` (float32, shared with the normalisation), ``3 (k - 1)``
    bfloat16 step products, per refinement one float32 residual and a bfloat16 replay of
    ``4 s - 2`` products (``s`` replayed steps; one more of each for the inverse root),
    and the ridge removal (bfloat16 where the whole batch was served). The others:
    ``A_hat^2``, the bfloat16 steps, refinements and ridge removal they went through,
    then the single-precision iteration's count (``other``). Backward:
    ``policy.backward_solves`` bfloat16 replays and one float32 residual per refinement
    where ``low_solve``, a float32 replay elsewhere; ``2`` float32 products more for the
    inverse root.
    """
    inverse = int(config.inverse)
    high, low_kind = product_kind(policy.high), product_kind(policy.low)
    second_order, all_low = ridge
    ridge_count = _ridge_products(config, second_order)
    ridge_low = jnp.where(all_low, ridge_count, 0)
    refine_high = refinements * (1 + inverse)
    refine_low = refinements * (4 * replay - 2 + inverse)
    served_high = 1 + ridge_count - ridge_low + refine_high
    served_low = ridge_low + 3 * (iterations - 1) + refine_low
    # the matrices not served also took the ridge removal of this path (at policy.high)
    tried_high = 1 + refine_high + ridge_count - ridge_low
    forward_high = jnp.where(low, served_high, tried_high + other.products["forward"][high])
    forward_low = jnp.where(low, served_low, 3 * low_steps + refine_low)
    replay = jnp.where(low, replay, other.iterations)
    solves = policy.backward_solves
    backward_low = jnp.where(low_solve, solves * (4 * replay - 2), 0)
    backward_high = 2 * inverse + jnp.where(low_solve, solves - 1, 4 * replay - 2)
    return {
        "forward": {low_kind: forward_low, high: forward_high},
        "backward": {low_kind: backward_low, high: backward_high},
    }


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
        low=None if result.low is None else jnp.zeros_like(result.low, dtype=jax.dtypes.float0),
        refinements=None
        if result.refinements is None
        else jnp.zeros_like(result.refinements, dtype=jax.dtypes.float0),
        products=jax.tree.map(
            lambda x: jnp.zeros_like(x, dtype=jax.dtypes.float0), result.products
        ),
        low_solve=None
        if result.low_solve is None
        else jnp.zeros_like(result.low_solve, dtype=jax.dtypes.float0),
        replay=None
        if result.replay is None
        else jnp.zeros_like(result.replay, dtype=jax.dtypes.float0),
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
        replay=None if result.replay is None else jnp.where(keep, result.replay, 1),
    )


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _root_tangents(result: Accurate, da, d_scale, config):
    """Tangents of ``out``, ``root`` and ``inverse_root``; recomputed in reverse mode, so
    that only ``result``'s arrays are kept."""
    precision = _full_precision(config).precision
    # 1 / c per matrix, 0 for a zero matrix (whose derivatives are set to 0)
    scale = result.scale[..., None, None]
    inv_c = jnp.where(scale != 0, 1 / jnp.where(scale != 0, scale, 1), 0)
    half_dc = 0.5 * d_scale[..., None, None] * inv_c

    if _is_mixed(config):
        policy = _sign.MIXED
        steps = result.replay

        def solve(rhs):
            def refined():
                return _lyapunov.refined_replayed_lyapunov(
                    result.root, rhs, result.alphas, steps, policy=policy
                )

            def plain():
                return _lyapunov.replayed_sign_lyapunov(
                    result.root, rhs, result.alphas, steps, precision=policy.high
                )

            return _sign.where_some(result.low_solve, refined, plain, like=rhs)

    else:

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
    full = _full_precision(config)
    out = lax.cond(
        jnp.any(result.decomposed),
        lambda a, out, decomposed: _decomposed_where(a, out, decomposed, full),
        lambda a, out, decomposed: out,
        a,
        result.out,
        result.decomposed,
    )
    low_steps = None if result.low is None else jnp.where(result.low, result.iterations, 0)
    return Root(
        out,
        result.scale,
        result.iterations,
        products=result.products,
        low_precision_iterations=low_steps,
        refinements=result.refinements,
    )


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
    mixed=True,
)
