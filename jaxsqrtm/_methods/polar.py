"""The polar factor ``U = G (G^H G)^(-1/2)`` of ``(..., m, n)`` matrices: the method entries.

``G = U H`` with ``H = (G^H G)^(1/2)``; ``U = P Q^H`` for the thin SVD ``G = P S Q^H``. Every
method works on the side with the smaller Gram matrix (``X^H X`` for ``m > n``, ``X X^H``
for ``m <= n``; :func:`jaxsqrtm._polar.polynomial_step`), and every step maps each singular
value ``x`` of the current iterate to ``p(x)`` for an odd polynomial ``p``, keeping the
singular vectors. The entries of :data:`POLAR_TABLE` (built in
:mod:`jaxsqrtm._methods`):

* ``"auto"``, the accurate mode (:func:`accurate_polar`): ``X_0 = G / c`` with
  ``c = ||G^H G||_F^(1/2) >= sigma_max``, then optimally scaled Newton–Schulz steps
  ``X <- alpha_k X (3 I - alpha_k^2 X^H X) / 2`` (the scale ``alpha_k`` of
  :func:`jaxsqrtm._sign.cubic_scale` from a power-iteration estimate of
  ``||I - X^H X||_2``), each matrix until it has converged
  (:func:`jaxsqrtm._sign.iterate_per_matrix`), to float32 round-off. A matrix that
  reaches the noise floor (a singular value at or below :data:`NOISE_FLOOR` ``eps c``:
  the iteration, capped at ``max_iters`` (default :func:`default_max_iters`), cannot
  converge), whose result is not finite, or that is zero, is computed instead by
  :func:`svd_polar`, under ``lax.cond`` only when the batch has such a matrix.
* ``"svd"`` (:func:`svd_polar`): ``P Q^H`` from ``jnp.linalg.svd`` with the singular
  values at or below ``NOISE_FLOOR eps sigma_max`` set to zero: ``U`` is zero on the
  null space of such a rank-deficient ``G`` (a partial isometry on its range).
* ``"quintic"``, ``"polar_express"``, ``"cubic"`` and ``"polynomial"``: a fixed schedule of
  odd polynomials (:mod:`jaxsqrtm._methods.polar_schedules`; ``"polynomial"`` takes the
  user's ``coefficients``), ``max_iters`` steps. ``"quintic"`` normalises as optax does,
  by ``||G||_F + 1e-8``; the others by the tighter ``c`` above times
  :data:`~jaxsqrtm._methods.polar_schedules.NORMALIZATION_SAFETY`, with the Gram matrix of
  the normalisation reused by the first step.

Derivative of ``"auto"`` and ``"svd"`` (``jax.custom_jvp``, :func:`polar_tangent`): that of
the exact polar factor at the computed one. For ``G = U H`` with ``m >= n``
(transpose otherwise)::

    dU = U Omega + (I - U U^H) dG H^+,    H Omega + Omega H = U^H dG - dG^H U,

with ``Omega`` skew-Hermitian (the Lyapunov equation of
:func:`jaxsqrtm._lyapunov.lyapunov_inverse`, finite at repeated singular values,
where autodiff of an SVD is not: its entries are ``C_ij / (s_i + s_j)`` in ``H``'s
eigenbasis). ``H^+`` is the pseudo-inverse; the term vanishes for square full-rank ``G``.
At a rank-deficient ``G`` (``"svd"``, or ``"auto"``'s decomposed matrices) the equation
is solved on the range (``0`` where ``s_i + s_j = 0``): the derivative of the polar
factor on the manifold of matrices of that rank.

For ``"auto"``, ``H_hat = H / c`` has the singular values ``sigma / c`` that the forward
took to 1, so both solves replay the forward's step sizes with
:func:`jaxsqrtm._lyapunov.replayed_sign_lyapunov`: ``Omega`` with ``skew=True`` and
``H_hat^(-1) = L_(H_hat)^(-1)(2 I)``; no power iteration. For ``"svd"``
both are solved in the eigenbasis of ``H`` from the SVD. Both go through
:func:`jaxsqrtm._lyapunov.lyapunov_inverse`, so the rules can be differentiated again.

``precision="mixed"`` (:func:`_mixed_polar`, policy :class:`jaxsqrtm._sign.MixedPrecision`):
for ``m != n`` a float32 thin QR ``G = Q R`` first, ``U = Q polar(R)``; then bfloat16 steps
(:func:`mixed_polar_iteration`) where the condition number is at most about ``300``,
Newton refinement with float32 residuals and bfloat16 skew Lyapunov solves
(:func:`refined_polar`), and refined bfloat16 solves in the derivative up to about
``200``; ``"highest"``'s computation, bit for bit, for the other matrices.

The fixed schedules are differentiated by autodiff through their steps: the derivative of
the function they compute, which (for ``"quintic"``, tuned past convergence) is not that
of the polar factor.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsqrtm import _lyapunov, _sign, _validation
from jaxsqrtm._core import Config, Knob, Method
from jaxsqrtm._matrix import (
    adjoint,
    eye_like,
    frobenius_norm,
    mm,
    power_start,
    product_kind,
    real_dtype,
    symmetrize,
)
from jaxsqrtm._methods import polar_schedules
from jaxsqrtm._polar import (
    cubic_coefficients,
    gram_matrix,
    is_wide,
    polynomial_step,
    spectral_normalized,
)

HIGHEST = lax.Precision.HIGHEST
NOISE_FLOOR = 4.0
"""Singular values at or below ``NOISE_FLOOR * eps`` relative are treated as zero.

``eps`` is the compute dtype's (``1.2e-7`` in float32): a float32 matrix of rank ``r`` has
its other singular values at ``0.05`` to ``1.1 eps sigma_max`` after rounding from
float64 or as a float32 product of rank-``r`` factors (measured for ``m, n`` up to 1024),
while a condition number of ``1e6`` puts ``sigma_min`` at ``8.4 eps sigma_max``."""


class PolarRoot(NamedTuple):
    """What a polar entry's ``root`` returns: :class:`jaxsqrtm._core.Root`'s fields, shapes
    ``(...,)`` but ``out``, and the number of directions a decomposition set to zero."""

    out: jax.Array  # U, the shape of the input
    scale: jax.Array  # c of X_0 = G / c
    iterations: jax.Array  # int32 steps
    nullity: jax.Array  # int32 singular values set to zero (0 unless decomposed)
    # "auto" only: products per matrix and precision kind, {"forward": {kind: int32},
    # "backward": {...}}, and under precision="mixed" the bfloat16 steps and refinements
    products: dict | None = None
    low_precision_iterations: jax.Array | None = None
    refinements: jax.Array | None = None


# --- The noise floor -------------------------------------------------------------------------


def noise_floor(dtype) -> float:
    """:data:`NOISE_FLOOR` ``eps`` of the compute dtype."""
    return NOISE_FLOOR * float(jnp.finfo(dtype).eps)


# --- "svd" and the fallback ----------------------------------------------------------------


class SVDPolar(NamedTuple):
    out: jax.Array  # U
    scale: jax.Array  # sigma_max
    nullity: jax.Array  # int32: singular values set to zero


def _svd(x):
    """Thin SVD with the singular values at or below the noise floor set to zero."""
    p, s, qh = jnp.linalg.svd(x, full_matrices=False)
    kept = s > noise_floor(x.dtype) * s[..., :1]
    return p, jnp.where(kept, s, 0), qh, kept


@jax.custom_jvp
def svd_polar(x) -> SVDPolar:
    """``P Q^H`` of the thin SVD ``X = P S Q^H`` with null singular values dropped.

    Singular values at or below ``NOISE_FLOOR * eps * sigma_max`` count as zero, so a
    rank-deficient ``X`` gives the partial isometry ``U`` with ``U^H U`` the projector
    on its row space and ``U = 0`` on its null space; a zero matrix gives ``U = 0``.
    The derivative is :func:`polar_tangent`'s, solved in the SVD's basis.
    """
    p, s, qh, kept = _svd(x)
    out = mm(p * kept[..., None, :].astype(p.dtype), qh, HIGHEST)
    nullity = jnp.sum(~kept, axis=-1, dtype=jnp.int32)
    return SVDPolar(out, s[..., 0].astype(real_dtype(x.dtype)), nullity)


@svd_polar.defjvp
def _svd_polar_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    result = svd_polar(x)  # itself, so that this rule differentiates again
    wide = is_wide(x.shape)
    tall = adjoint(x) if wide else x
    _, s, qh, _ = _svd(lax.stop_gradient(tall))
    q = adjoint(qh)

    def solve(rhs):
        """``L_H^+(rhs)`` in ``H``'s eigenbasis: ``Q [(Q^H C Q) / (s_i + s_j)] Q^H``."""
        total = s[..., :, None] + s[..., None, :]
        inverse = jnp.where(total > 0, 1 / jnp.where(total > 0, total, 1), 0)
        core = mm(mm(qh, rhs, HIGHEST), q, HIGHEST) * inverse.astype(rhs.dtype)
        return mm(mm(q, core, HIGHEST), qh, HIGHEST)

    u = adjoint(result.out) if wide else result.out
    d_tall = adjoint(dx) if wide else dx
    h = symmetrize(mm(adjoint(u), tall, HIGHEST))
    du = polar_tangent(u, h, d_tall, solve, solve, inv_c=1, range_term=True, precision=HIGHEST)
    return result, SVDPolar(
        adjoint(du) if wide else du,
        jnp.zeros_like(result.scale),  # a diagnostic: polar stops its gradient
        jnp.zeros_like(result.nullity, dtype=jax.dtypes.float0),
    )


def polar_tangent(u, h_hat, dx, skew_solve, solve, *, inv_c, range_term: bool, precision):
    """``dU`` of the polar factor ``U`` of a tall ``X`` (``p >= q``) for the tangent ``dX``.

    ``dU = (U Omega + (I - U U^H) dX H_hat^+) / c`` with ``H_hat Omega + Omega H_hat =
    U^H dX - dX^H U`` (module docstring), where ``H_hat = sym(U^H X) / c`` is given and
    ``inv_c = 1 / c`` (per matrix, broadcastable). ``skew_solve`` solves that equation for
    skew-Hermitian right-hand sides and ``solve`` for ``2 I``, which gives ``H_hat^+``;
    both go through :func:`jaxsqrtm._lyapunov.lyapunov_inverse`. Without ``range_term``
    (square full-rank ``X``, where ``I - U U^H = 0``) the second term is skipped.

    Cost: ``U^H dX`` and ``U Omega`` (``p q^2`` each) and the solve; with ``range_term``
    1 more ``p q^2``, 1 ``q^3`` and the solve for ``H_hat^+`` (independent of ``dX``).
    """
    udx = mm(adjoint(u), dx, precision)
    omega = _lyapunov.lyapunov_inverse(h_hat, udx - adjoint(udx), skew_solve, precision=precision)
    if not range_term:
        return mm(u, omega, precision) * inv_c
    two = jnp.zeros_like(h_hat) + 2 * eye_like(h_hat)  # varies over a shard_map mesh like h_hat
    h_inverse = _lyapunov.lyapunov_inverse(h_hat, two, solve, precision=precision)
    inner = omega - mm(udx, h_inverse, precision)
    return (mm(u, inner, precision) + mm(dx, h_inverse, precision)) * inv_c


# --- "auto" --------------------------------------------------------------------------------


@functools.cache
def default_max_iters(dtype) -> int:
    """The step cap of ``"auto"``: the fewest steps in which a singular value at the noise
    floor could converge (17 in float32, 38 in float64).

    A singular value ``x`` of ``X_0`` grows by at most ``h(min(alpha_max x, 1))`` a step
    (``h(y) = y (3 - y^2) / 2``, ``alpha_max`` the largest step size), and a matrix stops
    only after a step that starts with ``||I - X^H X||_2 <= 4 sqrt(eps)``. A matrix that
    stopped within this cap has ``sigma_min > NOISE_FLOOR eps c``; one that did not is
    decomposed. Condition numbers up to ``1e4`` converge in 13 to 15 steps (float32).
    """
    floor = _sign.floor_for(dtype)
    alpha_max = float(np.sqrt(3 / (1 + floor + floor * floor)))
    x, steps = noise_floor(dtype), 0
    while x * x < 1 - _sign.tolerance_for(dtype):
        y = min(alpha_max * x, 1.0)
        x, steps = 0.5 * y * (3 - y * y), steps + 1
    return steps + 1


def _max_iters(config: Config, dtype) -> int:
    return default_max_iters(np.dtype(dtype)) if config.max_iters is None else config.max_iters


def scaled_polar_iteration(x0, gram0, active, *, max_iters: int, wide: bool, precision):
    """Optimally scaled Newton–Schulz steps on ``X_0`` (singular values in ``[0, 1]``).

    Step ``k`` measures ``||I - X_k^H X_k||_2`` by warm-started power iteration on the
    Gram matrix it needs anyway, takes ``alpha_k`` from :func:`jaxsqrtm._sign.cubic_scale`
    and applies ``X <- alpha_k X (3 I - alpha_k^2 X^H X) / 2``; small singular values grow
    by up to ``3 sqrt(3) / 2 ~ 2.6`` a step. A matrix stops after the step that starts
    with ``||I - X^H X||_2 <= 4 sqrt(eps)`` (an error of about ``6 eps`` left), or after
    ``max_iters`` steps; inactive ones (``active`` false) after the first.

    Returns:
        ``(U, iterations, alphas)``: the last iterate, the steps per matrix (int32) and
        the step sizes ``(..., max_iters)`` (entries from ``iterations`` on unused).

    Cost: 2 products a step (the Gram matrix, ``max(m, n) min(m, n)^2`` each), the
    first step's Gram matrix given; 2 matrix-vector products of ``min(m, n)^2`` a step.
    """
    floor = _sign.floor_for(x0.dtype)
    tol = _sign.tolerance_for(x0.dtype)
    dev, v = _sign.deviation(
        gram0, power_start(gram0), num_iters=2 * _sign.WARMUP_MATVECS, precision=precision
    )
    alpha = _sign.cubic_scale(dev, floor)
    x = polynomial_step(x0, gram0, cubic_coefficients(alpha), wide=wide, precision=precision)
    iterations = jnp.ones_like(dev, dtype=jnp.int32)
    alphas = jnp.where(jnp.arange(max_iters) == 0, alpha[..., None], 0)

    def step(k, state):
        x, v, iterations, alphas = state
        gram = gram_matrix(x, wide=wide, precision=precision)
        dev, v = _sign.deviation(gram, v, num_iters=_sign.MATVECS_PER_STEP, precision=precision)
        alpha = _sign.cubic_scale(dev, floor)
        x = polynomial_step(x, gram, cubic_coefficients(alpha), wide=wide, precision=precision)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (x, v, iterations + 1, alphas), dev > tol

    x, _, iterations, alphas = _sign.iterate_per_matrix(
        step, (x, v, iterations, alphas), active & (dev > tol), start=1, stop=max_iters
    )
    return x, iterations, alphas


class AccuratePolar(NamedTuple):
    """Everything ``"auto"`` computes; also the residuals of its reverse mode."""

    out: jax.Array  # U by the iteration (not yet the decomposition's)
    scale: jax.Array  # c with X_0 = G / c
    alphas: jax.Array  # (..., steps) step sizes (under "mixed" with the finishing steps)
    iterations: jax.Array  # (...,) steps taken
    decomposed: jax.Array  # (...,) bool: to be replaced by svd_polar
    products: dict  # per matrix and kind: {"forward": {kind: int32}, "backward": {...}}
    # precision="mixed" only: (...,) bool, the matrices served by bfloat16 steps (their
    # Lyapunov solves are refined bfloat16 ones), their refinements, the steps to replay
    low: jax.Array | None = None
    refinements: jax.Array | None = None
    replay: jax.Array | None = None
    low_solve: jax.Array | None = None  # (...,) bool: refined bfloat16 Lyapunov solves


def _is_mixed(config: Config) -> bool:
    return config.precision == _validation.MIXED


def _full_precision(config: Config) -> Config:
    """``config`` with a single product precision: the mixed policy's float32 for the
    parts it does not lower (the fallback iteration, the tangent's products)."""
    if _is_mixed(config):
        return dataclasses.replace(config, precision=_sign.MIXED.high)
    return config


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def accurate_polar(x, config: Config) -> AccuratePolar:
    """The accurate mode on ``(..., m, n)`` ``x``: :class:`AccuratePolar`."""
    if _is_mixed(config):
        return _mixed_polar(x, config, _sign.MIXED)
    return _single_precision_polar(x, config)


def _single_precision_polar(x, config: Config) -> AccuratePolar:
    wide = is_wide(x.shape)
    max_iters = _max_iters(config, x.dtype)
    x0, gram0, c = spectral_normalized(x, wide=wide, precision=config.precision)
    u, iterations, alphas = scaled_polar_iteration(
        x0, gram0, c != 0, max_iters=max_iters, wide=wide, precision=config.precision
    )
    finite = jnp.all(jnp.isfinite(u), axis=(-2, -1))
    decomposed = ~finite | (iterations >= max_iters) | (c == 0)
    products = _products(config, iterations, rectangular=x.shape[-1] != x.shape[-2])
    return AccuratePolar(u, c, alphas, iterations, decomposed, products)


def _products(config: Config, iterations, *, rectangular: bool):
    """Products of ``"auto"`` at one precision, per matrix: ``2k`` forward for ``k`` steps
    (the normalisation's Gram matrix is the first step's); backward ``4k - 2`` for the
    solve of ``Omega`` and 3 more (``4k - 2`` and 2 more again for ``H^(-1)`` when
    ``m != n``). A decomposition is not counted (:func:`polar_matmul_count`)."""
    kind = product_kind(config.precision)
    solve = 4 * iterations - 2
    backward = 2 * solve + 5 if rectangular else solve + 3
    return {"forward": {kind: 2 * iterations}, "backward": {kind: backward}}


# --- "auto" under precision="mixed" ----------------------------------------------------------


def mixed_polar_iteration(x0, gram0, *, max_iters: int, policy: _sign.MixedPrecision):
    """The bfloat16 phase of :func:`scaled_polar_iteration` under the mixed policy.

    ``X_0`` is square or tall (``p >= q``), its Gram matrix ``X_0^H X_0`` and the first
    deviation float32; every step after that takes bfloat16 products (the power
    iterations stay float32 matrix-vector products) while
    :func:`jaxsqrtm._sign.low_precision_phase` lets it. The policy's first test,
    ``1 - dev_0 >= min_smallest``, reads ``sigma_min^2 / c^2 >= 1e-5`` here: condition
    numbers up to about ``300``, which is also where bfloat16 Lyapunov solves with
    ``H`` (of the same condition number) converge when refined. The factor comes out
    with bfloat16-level errors (``2e-3`` to ``6e-3`` relative, measured), which
    :func:`refined_polar` removes.

    Returns:
        ``(U, iterations, alphas, low, replay, low_steps, dev_0)``: the iterate, the steps per
        matrix (int32), the step sizes of the schedule to replay (``iterations`` plus the
        unit steps of :meth:`jaxsqrtm._sign.MixedPrecision.finishing`, length
        ``max(max_iters, policy.max_low_steps + 1) + policy.finishing_steps``), the
        ``(...,)`` bool of the matrices the phase serves, the steps to replay, the
        bfloat16 steps every matrix took and the first deviation.

    Cost: ``2 k - 1`` bfloat16 products for ``k`` steps (the first reuses ``gram0``).
    """
    high, low = policy.high, policy.low
    floor = _sign.floor_for(x0.dtype)
    tol = _sign.tolerance_for(x0.dtype)
    dev, v = _sign.deviation(
        gram0, power_start(gram0), num_iters=2 * _sign.WARMUP_MATVECS, precision=high
    )
    alpha = _sign.cubic_scale(dev, floor)
    x = polynomial_step(x0, gram0, cubic_coefficients(alpha), wide=False, precision=low)
    length = max(max_iters, policy.max_low_steps + 1) + policy.finishing_steps
    index = jnp.arange(length)
    alphas = jnp.where(index == 0, alpha[..., None], 0)
    iterations = jnp.ones_like(dev, dtype=jnp.int32)

    def step(k, state, precision):
        x, v, iterations, alphas = state
        gram = gram_matrix(x, wide=False, precision=precision)
        dev, v = _sign.deviation(gram, v, num_iters=_sign.MATVECS_PER_STEP, precision=high)
        alpha = _sign.cubic_scale(dev, floor)
        x = polynomial_step(x, gram, cubic_coefficients(alpha), wide=False, precision=precision)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (x, v, iterations + 1, alphas), dev

    (x, _, iterations, alphas), served, last_deviation, low_steps = _sign.low_precision_phase(
        step, (x, v, iterations, alphas), dev, policy=policy, tol=tol, start=1, stop=max_iters
    )
    replay = iterations + jnp.where(served, policy.finishing(last_deviation, x0.dtype), 0)
    finishing = (index >= iterations[..., None]) & (index < replay[..., None])
    alphas = jnp.where(finishing, 1, alphas)
    return x, iterations, alphas, served, replay, low_steps, dev


def refined_polar(u, x_hat, alphas, steps, active, *, policy: _sign.MixedPrecision):
    """Refine a bfloat16-accurate polar factor of a square ``X_hat`` with float32 residuals.

    For ``U`` with orthonormal columns, ``X_hat = U M`` with ``M = U^H X_hat``, whose polar
    factor is ``I + K`` to first order, ``K`` skew with ``K H + H K = M - M^H`` for
    ``H = (M + M^H) / 2``; so a step is::

        U <- U - U (U^H U - I) / 2,   M = U^H X_hat,   U <- U (I + L_H^(-1)(M - M^H))

    (``L_H(K) = H K + K H``), a Newton step for the polar factor. ``U^H U`` and ``M`` are
    float32 products; the Lyapunov solve replays the forward's schedule
    (:func:`jaxsqrtm._lyapunov.replayed_sign_lyapunov`, ``skew=True``) with bfloat16
    products, and the products of ``U`` with the small ``U^H U - I`` and ``K`` are
    bfloat16. Measured in float32 at condition number ``1e2``: the error goes from
    ``3.6e-3`` to ``2.4e-5`` to ``6.4e-7`` (``"highest"``: ``5.5e-7``), so 2 steps;
    each matrix stops when :meth:`jaxsqrtm._sign.MixedPrecision.refine_again` says so.
    A last orthonormalisation step (the first line) follows.

    Args:
        u: ``(..., q, q)`` approximation of the polar factor of ``x_hat``.
        x_hat: ``(..., q, q)``, singular values in ``(0, 1]``.
        alphas, steps: the schedule that takes ``x_hat``'s singular values to 1.
        active: ``(...,)`` bool, the matrices to refine (the others are left as they are).
        policy: the :class:`jaxsqrtm._sign.MixedPrecision`.

    Returns:
        ``(U, refinements, size)``: the refined factor, the steps per matrix and the
        relative size of the last correction (1 where none was taken).

    Cost per step: 2 float32 products and ``4 s`` bfloat16 ones (``s = max(steps)``);
    the last orthonormalisation 1 of each.
    """
    high, low = policy.high, policy.low
    identity = eye_like(u)

    def orthonormalized(u):
        return u - 0.5 * mm(u, mm(adjoint(u), u, high) - identity, low)

    def step(_, state):
        u, previous, count = state
        u = orthonormalized(u)
        m = mm(adjoint(u), x_hat, high)
        k = _lyapunov.replayed_sign_lyapunov(
            symmetrize(m), m - adjoint(m), alphas, steps, precision=low, skew=True
        )
        correction = mm(u, k, low)
        size = frobenius_norm(correction) / frobenius_norm(u)
        again = policy.refine_again(size, previous, u.dtype)
        return (u + correction, size, count + 1), again

    # Built from the data, so that they vary over a shard_map mesh like it.
    ones = jnp.ones_like(active, dtype=u.dtype)
    u, size, count = _sign.iterate_per_matrix(
        step,
        (u, ones, jnp.zeros_like(active, dtype=jnp.int32)),
        active,
        start=0,
        stop=policy.max_refinements,
    )
    u = jnp.where(active[..., None, None], orthonormalized(u), u)
    return u, count, size


def _mixed_polar(x, config: Config, policy: _sign.MixedPrecision) -> AccuratePolar:
    """:func:`accurate_polar` under the mixed policy.

    A tall (or wide) ``G`` is first reduced to a square one by a float32 thin QR
    ``G = Q R`` (``2 p q^2 - 2 q^3 / 3`` flops, less than one ``p x q`` by ``q x q``
    product, as which it is counted), and ``U = Q polar(R)``: refining the tall factor
    itself needs the part of ``G`` outside its range, ``(I - U U^H) G``, whose float32
    cancellation the solve with ``H^(-1)`` amplifies by the condition number (measured:
    the refinement stalled at 3 times ``"highest"``'s error; through the QR 1.4 to 1.7
    times). The square factor takes bfloat16 steps (:func:`mixed_polar_iteration`) and
    float32-residual refinement (:func:`refined_polar`). The matrices these do not
    serve (condition number above about ``300``, a refinement that did not converge, a
    rank-deficient or non-finite ``G``) are computed by :func:`_single_precision_polar`,
    bit for bit as ``"highest"`` computes them, run only when the batch has one
    (:func:`jaxsqrtm._sign.unless_all`). The tangent's Lyapunov solves are refined
    bfloat16 ones for the served matrices (:func:`_accurate_tangent`).
    """
    high = policy.high
    full = _full_precision(config)
    wide = is_wide(x.shape)
    tall = adjoint(x) if wide else x
    rectangular = tall.shape[-2] != tall.shape[-1]
    basis, core = jnp.linalg.qr(tall) if rectangular else (None, tall)
    max_iters = _max_iters(config, x.dtype)
    x0, gram0, c = spectral_normalized(core, wide=False, precision=high)
    u, iterations, alphas, low, replay, low_steps, first_deviation = mixed_polar_iteration(
        x0, gram0, max_iters=max_iters, policy=policy
    )
    u, refinements, size = refined_polar(u, x0, alphas, replay, low, policy=policy)
    if rectangular:
        u = mm(basis, u, high)
    finite = jnp.all(jnp.isfinite(u), axis=(-2, -1))
    low = low & finite & (size <= _sign.tolerance_for(x.dtype))
    # 1 - dev_0 is at least sigma_min^2 / c^2 (dev_0 a power iteration's lower bound)
    low_solve = low & (1 - first_deviation >= policy.max_polar_solve_condition**-2)
    out = adjoint(u) if wide else u

    other = _sign.unless_all(low, lambda: _single_precision_polar(x, full), like=x)
    pad = [(0, 0)] * (other.alphas.ndim - 1) + [(0, alphas.shape[-1] - other.alphas.shape[-1])]

    def pick(mine, theirs):
        mask = low.reshape(low.shape + (1,) * (mine.ndim - low.ndim))
        return jnp.where(mask, mine, theirs)

    products = _mixed_products(
        policy,
        low=low,
        low_solve=low_solve,
        iterations=iterations,
        replay=replay,
        low_steps=low_steps,
        refinements=refinements,
        rectangular=rectangular,
        other=other,
    )
    return AccuratePolar(
        out=pick(out, other.out),
        scale=pick(c, other.scale),
        alphas=pick(alphas, jnp.pad(other.alphas, pad)),
        iterations=pick(iterations, other.iterations),
        decomposed=pick(jnp.zeros_like(low), other.decomposed),
        products=products,
        low=low,
        refinements=jnp.where(low, refinements, 0),
        replay=pick(replay, other.iterations),
        low_solve=low_solve,
    )


def _mixed_products(
    policy, *, low, low_solve, iterations, replay, low_steps, refinements, rectangular, other
):
    """:func:`_products` under the mixed policy, per matrix.

    Served matrices: the Gram matrix of the normalisation (float32), ``2 k - 1``
    bfloat16 step products, per refinement 2 float32 products and ``4 s`` bfloat16 ones
    (``s`` replayed steps), the last orthonormalisation (one of each), and for
    ``m != n`` the QR and ``Q polar(R)`` (float32). The others: what they tried in
    bfloat16 and float32, then the single-precision iteration's count (``other``).
    Backward: the solve of ``Omega`` (and of ``H^(-1)`` for ``m != n``) as
    ``policy.polar_solves`` bfloat16 replays of ``4 s - 2`` products and
    ``policy.polar_solves - 1`` float32 residuals where ``low_solve``, a float32 replay
    elsewhere; the tangent's other products (3, or 5 for ``m != n``) are float32.
    """
    high, low_kind = product_kind(policy.high), product_kind(policy.low)
    shape = 2 * int(rectangular)
    tried = refinements > 0
    forward_high = 1 + shape + 2 * refinements + tried
    forward_low = 2 * low_steps + 1 + 4 * refinements * replay + tried
    other_forward = other.products["forward"][high]
    solves = 1 + int(rectangular)
    replay = jnp.where(low, replay, other.iterations)
    backward_low = solves * policy.polar_solves * (4 * replay - 2)
    backward_high = solves * (policy.polar_solves - 1) + 3 + shape
    float32_solves = solves * (4 * replay - 2) + 3 + shape
    return {
        "forward": {
            low_kind: forward_low,
            high: jnp.where(low, forward_high, forward_high + other_forward),
        },
        "backward": {
            low_kind: jnp.where(low_solve, backward_low, 0),
            high: jnp.where(low_solve, backward_high, float32_solves),
        },
    }


@accurate_polar.defjvp
def _accurate_polar_jvp(config, primals, tangents):
    (x,), (dx,) = primals, tangents
    result = accurate_polar(x, config)  # itself, so that this rule differentiates again
    du = _accurate_tangent(result, x, dx, config)
    no_tangent = functools.partial(jax.tree.map, lambda v: jnp.zeros_like(v, jax.dtypes.float0))
    return result, result._replace(
        out=du,
        scale=jnp.zeros_like(result.scale),  # a diagnostic: polar stops its gradient
        alphas=jnp.zeros_like(result.alphas),
        iterations=no_tangent(result.iterations),
        decomposed=no_tangent(result.decomposed),
        products=no_tangent(result.products),
        low=no_tangent(result.low),
        refinements=no_tangent(result.refinements),
        replay=no_tangent(result.replay),
        low_solve=no_tangent(result.low_solve),
    )


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _accurate_tangent(result: AccuratePolar, x, dx, config):
    """:func:`polar_tangent` with the replayed solves; recomputed in reverse mode.

    Decomposed matrices (whose tangent :func:`svd_polar`'s replaces) get ``U = 0`` and
    ``H_hat = I`` (one unit step), so that their tangent stays finite, also under reverse
    mode, where a NaN times a zero cotangent would still be NaN.
    """
    precision = _full_precision(config).precision
    keep = ~result.decomposed
    wide = is_wide(x.shape)
    u = adjoint(result.out) if wide else result.out
    tall, d_tall = (adjoint(x), adjoint(dx)) if wide else (x, dx)
    mask = keep[..., None, None]
    u = jnp.where(mask, u, 0)
    tall = jnp.where(mask, tall, 0)
    scale = jnp.where(keep, result.scale, 1)
    alphas = jnp.where(keep[..., None], result.alphas, 1)
    steps = result.iterations if result.replay is None else result.replay
    iterations = jnp.where(keep, steps, 1)
    h_hat = symmetrize(mm(adjoint(u), tall, precision)) / scale[..., None, None].astype(x.dtype)
    h_hat = jnp.where(mask, h_hat, eye_like(h_hat))

    def replayed(rhs, skew: bool):
        def plain():
            return _lyapunov.replayed_sign_lyapunov(
                h_hat, rhs, alphas, iterations, precision=precision, skew=skew
            )

        if not _is_mixed(config):
            return plain()

        def refined():
            policy = _sign.MIXED
            return _lyapunov.refined_replayed_lyapunov(
                h_hat, rhs, alphas, iterations, policy=policy, skew=skew, solves=policy.polar_solves
            )

        return _sign.where_some(result.low_solve & keep, refined, plain, like=rhs)

    def skew_solve(rhs):
        return replayed(rhs, skew=True)

    def solve(rhs):
        return replayed(rhs, skew=False)

    du = polar_tangent(
        u,
        h_hat,
        d_tall,
        skew_solve,
        solve,
        inv_c=(1 / scale)[..., None, None].astype(x.dtype),
        range_term=x.shape[-1] != x.shape[-2],
        precision=precision,
    )
    return adjoint(du) if wide else du


def _auto_root(x, config: Config) -> PolarRoot:
    result = accurate_polar(x, config)

    def decompose(x, out, decomposed):
        return _decomposed_where(x, out, decomposed)

    def keep(x, out, decomposed):
        return out, jnp.zeros_like(decomposed, dtype=jnp.int32)

    # Outside the custom rule, so that JAX differentiates the cond (a select under vmap)
    # itself, and the decomposition's rule gives those matrices' tangents.
    out, nullity = lax.cond(
        jnp.any(result.decomposed), decompose, keep, x, result.out, result.decomposed
    )
    if result.low is None:
        return PolarRoot(out, result.scale, result.iterations, nullity, result.products)
    low_steps = jnp.where(result.low, result.iterations, 0)
    return PolarRoot(
        out,
        result.scale,
        result.iterations,
        nullity,
        products=result.products,
        low_precision_iterations=low_steps,
        refinements=result.refinements,
    )


@jax.checkpoint
def _decomposed_where(x, out, decomposed):
    """``out`` with the decomposed matrices' factors from :func:`svd_polar`; reverse mode
    keeps only ``x`` and ``decomposed`` and decomposes again."""
    svd = svd_polar(x)
    nullity = jnp.where(decomposed, svd.nullity, 0)
    return jnp.where(decomposed[..., None, None], svd.out, out), nullity


def _svd_root(x, config: Config) -> PolarRoot:
    result = svd_polar(x)
    return PolarRoot(result.out, result.scale, jnp.zeros(x.shape[:-2], jnp.int32), result.nullity)


# --- Fixed schedules -----------------------------------------------------------------------


def schedule_steps(table, steps: int):
    """The coefficients of ``steps`` steps: ``table``'s, its last row repeated."""
    return tuple(table[min(k, len(table) - 1)] for k in range(steps))


def _rows(config: Config, table):
    """The steps of a call: the entry's table or the user's ``coefficients``."""
    table = getattr(config, "coefficients", None) or table
    return schedule_steps(table, config.max_iters or len(table))


def run_schedule(x, gram, rows, *, wide: bool, precision):
    """Apply the odd-polynomial steps ``rows`` to ``x``, unrolled (as optax does, which
    composes best with ``jax.vmap``); ``gram`` is the first step's Gram matrix (``None``:
    computed)."""
    for k, row in enumerate(rows):
        if gram is None or k:
            gram = gram_matrix(x, wide=wide, precision=precision)
        x = polynomial_step(x, gram, row, wide=wide, precision=precision)
    return x


def _schedule_root(table, normalization: str):
    def root(x, config: Config) -> PolarRoot:
        rows = _rows(config, table)
        wide = is_wide(x.shape)
        if normalization == "frobenius":
            scale = frobenius_norm(x) + polar_schedules.QUINTIC_EPS
            x0, gram = x / scale[..., None, None].astype(x.dtype), None
        else:
            x0, gram, scale = spectral_normalized(
                x,
                wide=wide,
                precision=config.precision,
                safety=polar_schedules.NORMALIZATION_SAFETY,
            )
        out = run_schedule(x0, gram, rows, wide=wide, precision=config.precision)
        count = jnp.full(x.shape[:-2], len(rows), jnp.int32)
        return PolarRoot(out, scale, count, jnp.zeros(x.shape[:-2], jnp.int32))

    return root


def schedule_cost(table):
    def cost(config: Config, backward: bool) -> int:
        rows = _rows(config, table)
        forward = sum(3 if len(row) == 3 and row[2] != 0 else 2 for row in rows)
        return 3 * forward if backward else forward

    return cost


# --- Knobs and entries ---------------------------------------------------------------------


def check_coefficients(func: str, name: str, value) -> tuple[tuple[float, ...], ...]:
    """A schedule: ``(a, b, c)`` per step, or ``(a, b)`` for a cubic step; finite numbers.

    A single row is one step; arrays of shape ``(steps, 3)`` are accepted. Returned as a
    tuple of tuples of Python floats (hashable: the jitted code is specialised on it).
    """
    shape_error = ValueError(
        f"{func}: {name} must have shape (steps, 3) or (steps, 2) with steps >= 1 (per "
        f"step the coefficients of a x + b x^3 [+ c x^5]), got {value!r}"
    )
    type_error = f"{func}: {name} must be rows of real numbers (a, b, c), got {value!r}"
    try:
        table = np.asarray(value, dtype=np.float64)
    except ValueError:  # ragged: rows of different lengths, or not numbers
        table = None
    except TypeError as error:
        raise TypeError(type_error) from error
    if table is None:
        try:
            rows = [np.asarray(row, dtype=np.float64) for row in value]
        except (TypeError, ValueError) as error:
            raise TypeError(type_error) from error
    elif table.ndim in (1, 2):
        rows = [table] if table.ndim == 1 else list(table)
    else:
        raise shape_error
    if not rows or any(row.ndim != 1 or len(row) not in (2, 3) for row in rows):
        raise shape_error
    if not all(np.all(np.isfinite(row)) for row in rows):
        raise ValueError(f"{func}: {name} must be finite, got {value!r}")
    return tuple(tuple(float(v) for v in row) for row in rows)


SCHEDULE_MIXED_NOTE = (
    "a fixed schedule has no convergence measurement to switch precision on; "
    "precision='bfloat16' runs all its steps with bfloat16 products"
)


def _check_steps(func, knob, value):
    return _validation.check_count(func, knob, value, minimum=1)


def _schedule_method(name, summary, table, default_steps, normalization):
    return Method(
        name=name,
        summary=summary,
        derivative="autodiff through the steps (the derivative of the computed function)",
        knobs=(Knob("max_iters", default_steps, _check_steps),),
        root=_schedule_root(table, normalization),
        cost=schedule_cost(table),
        mixed_note=SCHEDULE_MIXED_NOTE,
    )


AUTO = Method(
    name="auto",
    summary="scaled Newton–Schulz steps per matrix to round-off, SVD at the noise floor",
    derivative="exact polar Lyapunov rule replaying the forward's step sizes (custom JVP)",
    knobs=(Knob("max_iters", None, _check_steps),),
    root=_auto_root,
    cost=lambda config, backward: None,
    mixed=True,
)
QUINTIC = _schedule_method(
    "quintic",
    "optax's Muon quintic (3.4445, -4.7750, 2.0315), 5 steps, Frobenius normalisation",
    polar_schedules.QUINTIC,
    polar_schedules.QUINTIC_STEPS,
    "frobenius",
)
POLAR_EXPRESS = _schedule_method(
    "polar_express",
    "greedy minimax odd quintics (Polar Express), 8 steps",
    polar_schedules.POLAR_EXPRESS,
    polar_schedules.POLAR_EXPRESS_STEPS,
    "spectral_bound",
)
CUBIC = _schedule_method(
    "cubic",
    f"classic Newton–Schulz X (3 I - X^T X) / 2, {polar_schedules.CUBIC_STEPS} steps",
    polar_schedules.CUBIC,
    polar_schedules.CUBIC_STEPS,
    "spectral_bound",
)
POLYNOMIAL = Method(
    name="polynomial",
    summary="the user's table of odd-polynomial coefficients",
    derivative="autodiff through the steps (the derivative of the computed function)",
    knobs=(
        Knob("coefficients", None, check_coefficients),
        Knob("max_iters", None, _check_steps),
    ),
    root=_schedule_root((), "spectral_bound"),
    cost=schedule_cost(()),
    mixed_note=SCHEDULE_MIXED_NOTE,
)
SVD = Method(
    name="svd",
    summary="jnp.linalg.svd, singular values at the noise floor set to zero",
    derivative="exact polar Lyapunov rule solved in the SVD's basis (custom JVP)",
    knobs=(),
    root=_svd_root,
    cost=lambda config, backward: None,
    mixed_note="it is not built from products",
)
METHODS = (AUTO, QUINTIC, POLAR_EXPRESS, CUBIC, POLYNOMIAL, SVD)
