"""Fractional powers ``A^(+-1/p)`` of symmetric PSD matrices: the method entries.

The entries of :data:`jaxsqrtm._methods.POWER_TABLE`; the exponent is the config's ``p``
knob and its sign ``config.inverse`` (``t = -1/p``). Write ``p = 2^j q`` with ``q`` odd.

* ``"auto"`` (:func:`_auto_root`), matmul-only, built on the accurate square root
  (:mod:`jaxsqrtm._methods.accurate`, whose PSD semantics, eigendecomposition fallback and
  Lyapunov derivative come along):

  - ``q = 1``: square roots composed, ``A^(1/4) = (A^(1/2))^(1/2)``,
    ``A^(-1/4) = (A^(1/2))^(-1/2)``, ..., and ``A^(+-1) = (A^(+-1/2))^2``;
  - ``q >= 3``: ``B = A^(1/2^(j+1))`` by ``j + 1`` square roots, ``X = B^(-1/q)`` by the
    coupled iteration below, and ``A^(-1/p) = X^2``, ``A^(1/p) = B X^(q-2)``
    (``A^(1/3) = A^(1/2) A^(-1/6)``); for ``t = -1/p`` with ``p`` even, directly
    ``A^(-1/p) = (A^(1/2^j))^(-1/q)`` (``A^(-1/6) = (A^(1/2))^(-1/3)``). Measured in
    float32 against the direct iteration on ``A`` (n = 64 and 256, condition numbers
    ``1e4`` and ``1e6``): the positive root ``A^(1/3)`` is 4 to 30 times more accurate
    this way, where the product ``A X^2`` of the direct route loses ``eps kappa^(2/3)``
    and a root carried through the iteration (``Y <- Y T^(q-1)``) loses accuracy in the
    directions the scaled steps shrink; the inverse root is up to 3 times more accurate
    (the iteration runs at condition number ``sqrt(kappa)``, with fewer steps). For
    ``A^(-1/6)``, ``(A^(1/2))^(-1/3)`` is as accurate as ``((A^(1/4))^(-1/3))^2`` (2 to
    2.5 times more at condition number ``1e2``) in 5 to 6 fewer steps (20 against 26 at
    ``1e6``, n = 256).

* ``"eigh"``: :func:`jaxsqrtm._methods.eigh.eigh_root` with ``f(l) = l^(+-1/p)``, the PSD
  floor and the Daleckii–Krein rule of the square roots.

The coupled iteration (:func:`scaled_coupled_iteration`; Guo & Higham, "A Schur–Newton
method for the matrix p'th root and its inverse", SIMAX 2006): for ``M_0`` with spectrum
in ``(0, 1]``, ``Z_0 = I``, and per step, with ``N = alpha_k M_k``::

    T = ((q + 1) I - N) / q,     Z <- alpha_k^(1/q) Z T,     M <- T^q N,

so that ``M_k = Z_k^q M_0`` throughout and ``Z_k -> M_0^(-1/q)`` as ``M_k -> I``. Each
eigenvalue ``m`` of ``M`` maps to ``g(alpha m)`` with ``g(x) = x ((q + 1 - x) / q)^q``,
which is at most ``g(1) = 1`` and grows small ones by up to ``(q + 1) ((q + 1) / q)^q``
(9.5 for ``q = 3``). ``alpha_k`` is the scale that equioscillates on ``[l, 1]``,
``g(alpha l) = g(alpha)`` (:func:`coupled_scale`), from a power-iteration estimate of
``1 - l = ||I - M_k||_2`` (:func:`jaxsqrtm._sign.deviation`), exactly as the square
root's sign iteration is scaled (:mod:`jaxsqrtm._sign`). Each matrix stops after the
step that starts with ``||I - M||_2 <= 4 sqrt(eps)`` (quadratic convergence:
``e <- (q + 1) e^2 / (2q)``).

Derivative of ``Z`` (``jax.custom_jvp``, :func:`_coupled_jvp`): that of the exact root at
the computed one, ``dZ = D(M_0^(-1/q))[dM_0]``. It is the solution of the linear equation
``-sum_(k < q) Y^(k+1) dZ Y^(q-k) = dM_0`` (``Y = Z^(-1) = M_0 Z^(q-1)``, symmetric),
solved by the derivative of the forward iteration replayed with its own step sizes and
step count (:func:`replayed_coupled_iteration`, forward-mode autodiff of a fixed
schedule: the Fréchet derivative of a convergent iteration converges to that of its
limit). ``lax.custom_linear_solve`` wraps the solve with that operator, so JAX transposes
it for reverse mode (the operator is self-adjoint) and differentiates it again. The
normalisation, the ridge's removal and the products around the iteration are
differentiated by JAX itself.

``precision="mixed"`` (policy :class:`jaxsqrtm._sign.MixedPrecision`): the square roots
take the accurate square root's mixed mode, and the coupled iteration
(:func:`_mixed_inverse_root`) takes bfloat16 steps where the condition number of ``M_0``
is at most :data:`MAX_CONDITION` (:func:`mixed_coupled_iteration`), then Newton steps
with float32 residuals whose Fréchet-derivative solve is conjugate gradients with
bfloat16 products on the balanced form of the equation above (:func:`balanced_solve`,
:func:`refined_inverse_root`). The derivative's solve is the same, refined with float32
residuals, where the condition number of ``M_0`` is at most :data:`SOLVE_MAX_CONDITION`
(:data:`POSITIVE_SOLVE_MAX_CONDITION` for a positive root), and the float32 replay
elsewhere, of the bfloat16 schedule with finishing unit steps
(:func:`coupled_finishing`) for the matrices that took it. The other matrices, and the
products around the iterations, are computed as ``"highest"`` computes them. Measured
against ``"highest"`` on the same input (float32, n = 16 and 64, three spectra,
``t = +-1/3, +-1/6, +-1/4``): forward and gradient errors within 1.4 times up to
condition number ``1e4``, the same at ``1e6``; 85 to 95% of the forward+backward products
bfloat16 at ``1e2``, 49 to 88% at ``1e4`` (tests/test_mixed_precision_powers.py).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _lyapunov, _sign, _validation
from jaxsqrtm._core import Config, Knob, Method, Root, count_knob
from jaxsqrtm._matrix import (
    eye_like,
    frobenius_norm,
    mm,
    normalized,
    power_start,
    product_kind,
    symmetrize,
)
from jaxsqrtm._methods import accurate
from jaxsqrtm._methods.eigh import eigh_root

FUNC = "fractional_matrix_power"
# Smallest eigenvalue l of M that a step's scale plans for. The iteration runs on square
# roots (condition number ~3e3 at most in float32), so a higher floor than the sign
# iteration's sqrt(eps) costs no step there, and keeps g(alpha) >= 0.07 for the
# largest eigenvalues, whose relative accuracy the positive root B X needs.
COUPLED_FLOOR = 1e-2


def split_degree(p: int) -> tuple[int, int]:
    """``(j, q)`` with ``p = 2^j q`` and ``q`` odd."""
    j = 0
    while p % 2 == 0:
        p //= 2
        j += 1
    return j, p


def matrix_power(x, k: int, precision):
    """``X^k`` for ``k >= 1`` by repeated squaring: ``floor(log2 k) + popcount(k) - 1``
    products."""
    result, square = None, x
    while True:
        if k & 1:
            result = square if result is None else mm(result, square, precision)
        k >>= 1
        if not k:
            return result
        square = mm(square, square, precision)


def power_cost(k: int) -> int:
    """Products of :func:`matrix_power` for ``X^k``."""
    return k.bit_length() - 1 + bin(k).count("1") - 1


def coupled_scale(dev, q: int, floor: float):
    """``alpha`` with ``g(alpha l) = g(alpha)`` on ``[l, 1]``, ``l = 1 - dev`` clipped to
    ``[floor, 1]``; ``g(x) = x ((q + 1 - x) / q)^q``.

    ``alpha = (q + 1)(1 - l^(1/q)) / (1 - l^(1 + 1/q))`` (from
    ``l^(1/q) (q + 1 - alpha l) = q + 1 - alpha``), written with ``expm1``/``log1p`` of
    ``dev`` so that it tends to 1 without cancellation as ``dev -> 0``. It maps
    ``[l, 1]`` into ``[g(alpha), 1]``; any ``alpha`` in ``[1, q + 1)`` keeps the spectrum
    in ``(0, 1]``, so an ``l`` estimated too large costs speed, never convergence.
    """
    d = jnp.clip(dev, 0, 1 - floor)
    log_l = jnp.log1p(-d)
    num = -jnp.expm1(log_l / q)
    den = -jnp.expm1(log_l * (q + 1) / q)
    positive = d > 0
    return jnp.where(positive, (q + 1) * num / jnp.where(positive, den, 1), 1)


def coupled_step(z, m, alpha, q: int, precision, *, first: bool = False):
    """One step of the module doc's iteration: ``(alpha^(1/q) Z T, T^q N)``.

    ``Z T`` is written ``Z + Z D`` with ``D = T - I = (I - N) / q``: the product's
    round-off is then relative to ``||D||``, which vanishes as the iteration converges
    (measured at n = 256 on a clustered spectrum: ``Z``'s error 4e-7 instead of 2e-6).
    ``T^q N`` is evaluated as products of ``T`` and ``N`` (``T N``, then powers of ``T``),
    not as a polynomial in ``N``: ``T`` is small where ``N`` is close to ``q + 1`` (the
    largest eigenvalues under a large ``alpha``), and a polynomial in ``N`` would lose
    those eigenvalues' relative accuracy to cancellation.

    Cost: ``power_cost(q - 1) + 2`` products (4 for ``q = 3``), one fewer for the
    first step (``Z = I``).
    """
    a = alpha[..., None, None]
    n = a * m
    eye = eye_like(m)
    d = (eye - n) / q
    scale = a ** (1 / q)
    z = scale * (eye + d) if first else scale * (z + mm(z, d, precision))
    t = eye + d
    tn = mm(t, n, precision)
    m = tn if q == 1 else mm(matrix_power(t, q - 1, precision), tn, precision)
    return z, symmetrize(m)


def coupled_step_cost(q: int) -> int:
    """Products of :func:`coupled_step` (not the first): ``Z D``, ``T^(q-1)``, ``T N`` and
    their product (4 for ``q = 3``)."""
    return power_cost(q - 1) + 3 if q > 1 else 2


def scaled_coupled_iteration(m0, *, q: int, max_iters: int, precision):
    """``Z = M_0^(-1/q)`` by the scaled coupled iteration, each matrix to convergence.

    Args:
        m0: ``(..., n, n)`` symmetric with spectrum in ``(0, 1]`` (a guaranteed upper
            bound scaled it) and smallest eigenvalue at least ``eps`` (a ridge).
        q: the odd root (static).
        max_iters: cap on the steps (static).
        precision: matmul precision.

    Returns:
        ``(Z, iterations, alphas)``: the inverse root, the steps taken per matrix
        (``(...,)`` int32) and the step sizes (``(..., max_iters)``, entries from
        ``iterations`` on unused), which :func:`replayed_coupled_iteration` replays.
    """
    tol = _sign.tolerance_for(m0.dtype)
    m0_sq = mm(m0, m0, precision)
    dev, v = _sign.first_deviation(
        m0, m0_sq, power_start(m0), num_iters=_sign.WARMUP_MATVECS, precision=precision
    )
    alpha = coupled_scale(dev, q, COUPLED_FLOOR)
    z, m = coupled_step(None, m0, alpha, q, precision, first=True)
    iterations = jnp.ones_like(dev, dtype=jnp.int32)
    alphas = jnp.where(jnp.arange(max_iters) == 0, alpha[..., None], 0)

    def step(k, state):
        z, m, v, iterations, alphas = state
        dev, v = _sign.deviation(m, v, num_iters=_sign.MATVECS_PER_STEP, precision=precision)
        alpha = coupled_scale(dev, q, COUPLED_FLOOR)
        z, m = coupled_step(z, m, alpha, q, precision)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (z, m, v, iterations + 1, alphas), dev > tol

    z, _, _, iterations, alphas = _sign.iterate_per_matrix(
        step, (z, m, v, iterations, alphas), dev > tol, start=1, stop=max_iters
    )
    return symmetrize(z), iterations, alphas


def replayed_coupled_iteration(m0, alphas, iterations, *, q: int, precision):
    """:func:`scaled_coupled_iteration`'s ``Z`` with given step sizes and step counts.

    No power iteration and no stopping test: a function of ``m0`` alone, whose
    forward-mode derivative (a fixed schedule's) is the tangent of the rule.
    Cost: ``k coupled_step_cost(q)`` products for ``k = max(iterations)``.
    """
    z = jnp.zeros_like(m0) + eye_like(m0)  # built from the data: it varies like m0

    def step(k, state):
        z, m = state
        alpha = lax.dynamic_index_in_dim(alphas, k, axis=-1, keepdims=False)
        return coupled_step(z, m, alpha, q, precision), k + 1 < iterations

    z, _ = _sign.iterate_per_matrix(
        step, (z, m0), iterations > 0, start=0, stop=jnp.max(iterations), until_all_frozen=False
    )
    return symmetrize(z)


def _unit_step(x, q: int):
    """``g(x) = x ((q + 1 - x) / q)^q``: where a step with ``alpha = 1`` maps an
    eigenvalue ``x`` of ``M``."""
    return x * ((q + 1 - x) / q) ** q


def coupled_finishing(last_deviation, q: int, policy):
    """Per matrix: the unit steps that finish a bfloat16 schedule of the coupled iteration
    whose last step started at deviation ``last_deviation``, int32 ``(...,)``.

    :meth:`jaxsqrtm._sign.MixedPrecision.finishing` for this iteration: the last step
    maps the smallest eigenvalue ``l = 1 - dev`` of ``M`` to ``g(alpha l)``
    (:func:`coupled_scale`), and each unit step then maps ``m`` to ``g(m)``, which takes
    ``1 - m = e`` to about ``(q + 1) e^2 / (2q)``. The count is the number of unit steps,
    at most ``policy.finishing_steps``, that take ``1 - m`` below
    ``policy.finish_target``: one after a step that started below the switch.
    """
    dev = jnp.clip(last_deviation, 0, 1)
    m = _unit_step(coupled_scale(dev, q, COUPLED_FLOOR) * (1 - dev), q)
    count = jnp.zeros(dev.shape, jnp.int32)
    for _ in range(policy.finishing_steps):
        short = 1 - m > policy.finish_target
        count = count + short
        m = jnp.where(short, _unit_step(m, q), m)
    return count


def condition_estimate(z, q: int, *, precision):
    """``||Z||_2^q`` per matrix (:func:`jaxsqrtm._methods.accurate.inverse_root_norm`, a
    lower bound): for ``Z = M_0^(-1/q)`` the condition number ``1 / l_min`` of ``M_0``,
    whose largest eigenvalue is about 1."""
    return accurate.inverse_root_norm(z, precision=precision) ** q


def balanced_powers(m0, z, q: int, *, precision, y_precision=None):
    """``([Z, ..., Z^a], [Y, ..., Y^(a-1)])`` with ``a = (q + 1) / 2`` and
    ``Y = M_0 Z^(q-1)`` (``Z^(-1)`` for ``Z = M_0^(-1/q)``): the coefficients of
    :func:`balanced_operator`.

    Cost: ``a - 1`` products for the powers of ``Z`` (at ``precision``), then
    :func:`y_powers_cost` for ``Y`` and its powers (at ``y_precision``, by default the
    same).
    """
    a = (q + 1) // 2
    y_precision = precision if y_precision is None else y_precision
    zs = [z]
    for _ in range(a - 1):
        zs.append(mm(zs[-1], z, precision))
    z_q1 = zs[1] if a == 2 else mm(zs[a - 1], zs[a - 3], y_precision)  # Z^(q-1)
    ys = [symmetrize(mm(m0, z_q1, y_precision))]
    for _ in range(a - 2):
        ys.append(mm(ys[-1], ys[0], y_precision))
    return zs, ys


def y_powers_cost(q: int) -> int:
    """Products of ``Y`` and its powers in :func:`balanced_powers`."""
    a = (q + 1) // 2
    return int(a > 2) + 1 + (a - 2)


def balanced_operator(zs, ys, w, precision):
    """``B(W) = W + sum_(m=1..a-1) (Y^m W Z^m + Z^m W Y^m)`` for symmetric ``W``:
    ``q - 1`` products (``Z^m W Y^m`` is the transpose of ``Y^m W Z^m``)."""
    out = w
    for z, y in zip(zs, ys, strict=False):
        t = mm(mm(y, w, precision), z, precision)
        out = out + t + jnp.swapaxes(t, -1, -2)
    return out


def balanced_solve(zs, ys, c, *, num_iters: int, precision):
    """``W`` with ``B(W) = C`` (:func:`balanced_operator`) by ``num_iters`` steps of
    conjugate gradients from ``W = 0``, per matrix.

    ``B`` is self-adjoint in the Frobenius inner product and, for ``Z = Y^(-1) =
    M_0^(-1/q)``, has the eigenvalues ``1 + sum_(m=1..a-1) (rho^m + rho^-m)`` with
    ``rho = (l_i / l_j)^(1/q)`` (``l`` the eigenvalues of ``M_0``): its condition number
    is ``(1 + kappa^(1/3) + kappa^(-1/3)) / 3`` for ``q = 3`` (``3.7`` at ``kappa = 1e3``),
    so a few steps reduce the error by orders of magnitude, with bfloat16 products too
    (measured for ``q = 3``, n = 64: 4 steps leave about ``1e-3``, at ``kappa`` from 10 to
    ``1e3``). A matrix with ``C = 0`` gets ``W = 0``.

    Cost: ``num_iters (q - 1)`` products.
    """

    def inner(u, v):
        return jnp.sum(u * v, axis=(-2, -1), keepdims=True)

    def ratio(num, den):
        return num / jnp.where(den > 0, den, 1)

    w, r, d = jnp.zeros_like(c), c, c
    rr = inner(r, r)
    for _ in range(num_iters):
        bd = balanced_operator(zs, ys, d, precision)
        step = ratio(rr, inner(d, bd))
        w = w + step * d
        r = r - step * bd
        rr, previous = inner(r, r), rr
        d = r + ratio(rr, previous) * d
    return w


BALANCED_STEPS = 4
"""Conjugate-gradient steps of one bfloat16 solve of :func:`balanced_solve`."""
MAX_CONDITION = 100.0
"""Largest condition number of ``M_0`` (:func:`condition_estimate`) served by bfloat16
coupled steps and :func:`refined_inverse_root` (:func:`mixed_coupled_iteration`)."""
SOLVE_MAX_CONDITION = 1e3
"""Largest condition number of ``M_0`` whose derivative is solved with bfloat16 products
(:func:`_root_tangent`) where ``Z`` gives an inverse root (``X^2`` or ``X``)."""
POSITIVE_SOLVE_MAX_CONDITION = 20.0
"""The same where ``Z`` gives a positive root ``B X^(q-2)`` (:func:`_root_tangent`)."""


def mixed_coupled_iteration(m0, *, q: int, max_iters: int, policy: _sign.MixedPrecision):
    """The bfloat16 phase of :func:`scaled_coupled_iteration` under the mixed policy.

    ``M_0^2`` and the first deviation are float32, as in :func:`scaled_coupled_iteration`;
    every step, the first included, takes bfloat16 products, for the matrices that the
    policy lets take them, until the deviation falls below the switch or stagnates
    (:func:`jaxsqrtm._sign.low_precision_phase`; the power iterations stay float32
    matrix-vector products). ``Z`` comes out with a bfloat16-level error (measured
    ``2e-3`` to ``1e-2`` relative for ``q = 3``, n = 64, condition numbers of ``M_0``
    from 10 to ``1e3``), which :func:`refined_inverse_root` removes. The phase serves a
    matrix if :func:`condition_estimate` is at most :data:`MAX_CONDITION`, which takes
    the place of ``policy.max_condition`` here: that error, relative to the smallest
    eigenvalue of ``Z``, grows like ``kappa^(1/q)``, and Newton's method converges from
    it only up to about ``1e2`` (measured, n = 16 and 64: 3 to 4 refinements up to
    ``1e2`` on geometric and Marchenko–Pastur spectra, 5 to 6 at ``3e2``, divergence at
    ``1e3``; on the clustered spectrum divergence from ``1e2`` at n = 64, where such a
    matrix is then computed by the float32 iteration).

    Args:
        m0: ``(..., n, n)`` as for :func:`scaled_coupled_iteration`.
        q: the odd root (static).
        max_iters: cap on the steps (static).
        policy: the :class:`jaxsqrtm._sign.MixedPrecision`.

    Returns:
        ``(Z, iterations, alphas, low, replay, low_steps)``: as
        :func:`scaled_coupled_iteration` for the served matrices, ``low`` the ``(...,)``
        bool of those, ``replay`` the steps of their schedule to replay (``iterations``
        plus the unit steps of :func:`coupled_finishing`, written into ``alphas``, of
        length ``max_iters + policy.finishing_steps``), and ``low_steps`` the bfloat16
        steps every matrix took, the first included.

    Cost: ``M_0^2`` (float32), then ``coupled_step_cost(q)`` bfloat16 products a step,
    one fewer for the first.
    """
    high, low = policy.high, policy.low
    tol = _sign.tolerance_for(m0.dtype)
    m0_sq = mm(m0, m0, high)
    dev, v = _sign.first_deviation(
        m0, m0_sq, power_start(m0), num_iters=_sign.WARMUP_MATVECS, precision=high
    )
    alpha = coupled_scale(dev, q, COUPLED_FLOOR)
    z, m = coupled_step(None, m0, alpha, q, low, first=True)
    iterations = jnp.ones_like(dev, dtype=jnp.int32)
    index = jnp.arange(max_iters + policy.finishing_steps)
    alphas = jnp.where(index == 0, alpha[..., None], 0)

    def step(k, state, precision):
        z, m, v, iterations, alphas = state
        dev, v = _sign.deviation(m, v, num_iters=_sign.MATVECS_PER_STEP, precision=high)
        alpha = coupled_scale(dev, q, COUPLED_FLOOR)
        z, m = coupled_step(z, m, alpha, q, precision)
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (z, m, v, iterations + 1, alphas), dev

    def accept(state):
        return condition_estimate(symmetrize(state[0]), q, precision=high) <= MAX_CONDITION

    (z, _, _, iterations, alphas), served, last_deviation, low_steps = _sign.low_precision_phase(
        step,
        (z, m, v, iterations, alphas),
        dev,
        policy=policy,
        tol=tol,
        start=1,
        stop=max_iters,
        accept=accept,
    )
    replay = iterations + jnp.where(served, coupled_finishing(last_deviation, q, policy), 0)
    finishing = (index >= iterations[..., None]) & (index < replay[..., None])
    alphas = jnp.where(finishing, 1, alphas)
    return symmetrize(z), iterations, alphas, served, replay, low_steps + 1


def refined_inverse_root(z, m0, active, *, q: int, policy):
    """Refine a bfloat16-accurate ``Z ~ M_0^(-1/q)`` to float32 with float32 residuals.

    Newton's method for ``f(M) = M^(-1/q)`` at ``M_0``: ``Z`` is the exact root of
    ``Z^(-q) = M_0 (I - R)^(-1)``, ``R = I - Z^q M_0``, so to first order in ``R``::

        Z <- Z + D f(M_0)[-M_0 R]

    (``M_0 R = M_0 - M_0 Z^q M_0`` is symmetric). The residual ``R`` is a float32
    product. The Fréchet derivative ``X = D f(M_0)[D]`` solves
    ``-sum_(k < q) Y^(k+1) X Y^(q-k) = D`` (module doc), whose condition number is
    ``kappa^(1 + 1/q)``; written for ``W = Y^a X Y^a``, ``a = (q + 1) / 2``, it is
    ``B(W) = -D`` (:func:`balanced_operator`), whose condition number is about
    ``kappa^((q - 1) / 2q)``: :func:`balanced_solve` with bfloat16 products
    (``BALANCED_STEPS`` steps, relative error ``eta ~ 1e-3``), then ``X = Z^a W Z^a``;
    ``M_0 R``, ``Y`` and the products with ``Z^a`` are bfloat16 products too. A step
    takes an error ``e`` to about ``e (e + eta)``. Two other corrections were measured
    (``q = 3``, n = 64): the uncoupled Newton step ``Z <- Z + (Z R + R Z) / 2q``
    multiplies the error between the eigenvectors of ``l_i`` and ``l_j`` by
    ``1 - (1 / 2q) sum_(k=1..q) (rho^k + rho^-k)``, ``rho = (l_j / l_i)^(1/q)``, which
    exceeds 1 in size from ``rho ~ 2`` on: from an error of ``1e-3`` (float64) it stalls
    at condition number 10 and grows 3 times a step at 30, 10 times at ``1e2``; the
    forward-mode derivative of the replayed schedule with bfloat16 products (the float32
    rule's solve, :func:`_root_tangent`) has ``eta = 7e-3`` at condition number 10,
    ``3e-2`` at ``1e2`` and ``0.1`` to ``0.6`` at ``1e3`` (where its refinement diverges
    on the clustered spectrum), at ``3 coupled_step_cost(q)`` products a replayed step
    (about 80 a solve for ``q = 3``, against 12 here). Each matrix stops when
    :meth:`jaxsqrtm._sign.MixedPrecision.refine_again` says so (measured: 3 steps at
    condition number 10, 3 to 4 at ``1e2``); one that does not reach
    ``jaxsqrtm._sign.tolerance_for`` is not served.

    Args:
        z: ``(..., n, n)`` approximations of ``M_0^(-1/q)``.
        m0: ``(..., n, n)``, spectrum in ``(0, 1]``.
        active: ``(...,)`` bool, the matrices to refine (the others are left as they are).
        q: the odd root (static).
        policy: the :class:`jaxsqrtm._sign.MixedPrecision`.

    Returns:
        ``(Z, refinements, size)``: the refined root, the steps taken and the relative
        size of the last step, per matrix (1 where none was taken).

    Cost per step: :func:`refinement_cost`.
    """
    high, low = policy.high, policy.low
    identity = eye_like(z)

    def step(_, state):
        z, previous, count = state
        zs, ys = balanced_powers(m0, z, q, precision=high, y_precision=low)
        residual = identity - mm(mm(zs[-1], zs[-2], high), m0, high)  # Z^q = Z^a Z^(a-1)
        w = balanced_solve(
            zs,
            ys,
            symmetrize(mm(m0, residual, low)),
            num_iters=BALANCED_STEPS,
            precision=low,
        )
        correction = mm(mm(zs[-1], w, low), zs[-1], low)
        size = frobenius_norm(correction) / frobenius_norm(z)
        z = symmetrize(z + correction)
        return (z, size, count + 1), policy.refine_again(size, previous, z.dtype)

    # Built from the data, so that they vary over a shard_map mesh like it.
    ones = jnp.ones_like(active, dtype=z.dtype)
    z, size, count = _sign.iterate_per_matrix(
        step,
        (z, ones, jnp.zeros_like(active, dtype=jnp.int32)),
        active,
        start=0,
        stop=policy.max_refinements,
    )
    return z, count, size


def refinement_cost(q: int) -> tuple[int, int]:
    """Products of a step of :func:`refined_inverse_root`, ``(float32, bfloat16)``: the
    powers of ``Z`` and the residual; ``M_0 R``, ``Y``, the solve and ``Z^a W Z^a``."""
    a = (q + 1) // 2
    return a + 1, 1 + y_powers_cost(q) + BALANCED_STEPS * (q - 1) + 2


class Coupled(NamedTuple):
    """The coupled iteration's results; also the residuals of its reverse mode."""

    root: jax.Array  # Z = M_0^(-1/q)
    alphas: jax.Array  # (..., max_iters) step sizes (+ policy.finishing_steps under mixed)
    iterations: jax.Array  # (...,) steps taken
    decomposed: jax.Array  # (...,) bool: Z is not to be used (see _needs_decomposition)
    # (...,) int32 products per precision kind, {"forward": {kind: ...}, "backward": ...}
    # (M_0^2, the steps and refinements; the derivative's solve)
    products: dict | None = None
    # precision="mixed" only: (...,) bool, the matrices that took bfloat16 steps and
    # refinements, (...,) int32 steps of the schedule to replay (the bfloat16 one with its
    # finishing steps, where low), bfloat16 steps and refinement steps, and (...,) bool,
    # the matrices whose derivative solves take bfloat16 products.
    low: jax.Array | None = None
    replay: jax.Array | None = None
    low_steps: jax.Array | None = None
    refinements: jax.Array | None = None
    low_solve: jax.Array | None = None


def _ridge(dtype) -> float:
    """The ridge of ``M_0`` relative to the scale: the compute dtype's machine epsilon."""
    return _sign.floor_for(dtype) ** 2


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3, 4))
def coupled_inverse_root(
    m0, q: int, max_iters: int, precision, solve_condition: float = SOLVE_MAX_CONDITION
) -> Coupled:
    """:func:`scaled_coupled_iteration` on ``m0``, with the matrices it cannot serve;
    :func:`_mixed_inverse_root` for ``precision="mixed"`` (``solve_condition``: the
    largest condition number of ``M_0`` whose derivative takes bfloat16 products)."""
    if precision == _validation.MIXED:
        return _mixed_inverse_root(m0, q, max_iters, _sign.MIXED, solve_condition)
    return _single_precision_inverse_root(m0, q, max_iters, precision)


def _single_precision_inverse_root(m0, q: int, max_iters: int, precision) -> Coupled:
    z, iterations, alphas = scaled_coupled_iteration(
        m0, q=q, max_iters=max_iters, precision=precision
    )
    r = _ridge(m0.dtype)
    decomposed = _needs_decomposition(z, r / (1 + r), iterations, q, max_iters, precision)
    kind = product_kind(precision)
    cost = coupled_step_cost(q)
    # M_0^2 and the first step's cost - 1 products, then cost a step; backward: the
    # replayed schedule and its tangent.
    products = {"forward": {kind: cost * iterations}, "backward": {kind: 3 * cost * iterations}}
    return Coupled(z, alphas, iterations, decomposed, products)


def _mixed_inverse_root(
    m0, q: int, max_iters: int, policy: _sign.MixedPrecision, solve_condition: float
) -> Coupled:
    """:func:`coupled_inverse_root` under the mixed policy.

    The matrices that the bfloat16 phase serves (:func:`mixed_coupled_iteration`) are
    refined with float32 residuals (:func:`refined_inverse_root`); the others
    (condition number of ``M_0`` above ``policy.max_condition``, a refinement that did
    not reach ``jaxsqrtm._sign.tolerance_for``) are computed by the float32 iteration,
    bit for bit as ``"highest"`` computes them, run only when the batch has such a
    matrix. The derivative (:func:`_root_tangent`) is :func:`balanced_solve`'s with
    bfloat16 products, refined, where the condition number of ``M_0`` is at most
    ``solve_condition``; elsewhere the float32 replay of the schedule (the bfloat16 one
    with its finishing steps for the served matrices).
    """
    high = policy.high
    r = _ridge(m0.dtype)
    z, iterations, alphas, low, replay, low_steps = mixed_coupled_iteration(
        m0, q=q, max_iters=max_iters, policy=policy
    )
    z, refinements, size = refined_inverse_root(z, m0, low, q=q, policy=policy)
    low = low & (size <= _sign.tolerance_for(m0.dtype))
    decomposed = _needs_decomposition(z, r / (1 + r), iterations, q, max_iters, high)

    other = _sign.unless_all(
        low, lambda: _single_precision_inverse_root(m0, q, max_iters, high), like=m0
    )
    pad = [(0, 0)] * (other.alphas.ndim - 1) + [(0, alphas.shape[-1] - other.alphas.shape[-1])]

    def pick(mine, theirs):
        mask = low.reshape(low.shape + (1,) * (mine.ndim - low.ndim))
        return jnp.where(mask, mine, theirs)

    z = pick(z, other.root)
    low_solve = condition_estimate(z, q, precision=high) <= solve_condition
    products = _mixed_products(
        q,
        policy,
        low=low,
        replay=replay,
        low_steps=low_steps,
        refinements=refinements,
        low_solve=low_solve,
        other=other,
    )
    return Coupled(
        root=z,
        alphas=pick(alphas, jnp.pad(other.alphas, pad)),
        iterations=pick(iterations, other.iterations),
        decomposed=pick(decomposed, other.decomposed),
        products=products,
        low=low,
        replay=pick(replay, other.iterations),
        low_steps=low_steps,
        refinements=jnp.where(low, refinements, 0),
        low_solve=low_solve,
    )


def _mixed_products(q, policy, *, low, replay, low_steps, refinements, low_solve, other):
    """Products of :func:`_mixed_inverse_root` per matrix and precision kind, forward and
    backward (the layout of :attr:`Coupled.products`).

    Served matrices: ``M_0^2`` (float32), ``coupled_step_cost(q) k - 1`` bfloat16 step
    products for ``k`` steps, and :func:`refinement_cost` a refinement; backward: the
    refined solve of :func:`_root_tangent` (:func:`tangent_solve_cost`). The others:
    ``M_0^2``, the bfloat16 steps and refinements they tried, then the
    single-precision iteration's count (``other``), forward and backward.
    """
    high, low_kind = product_kind(policy.high), product_kind(policy.low)
    refine_high, refine_low = refinement_cost(q)
    solve_high, solve_low = tangent_solve_cost(q, policy)
    other_high = jnp.where(low, 0, other.products["forward"][high])
    forward_high = 1 + refinements * refine_high + other_high
    forward_low = coupled_step_cost(q) * low_steps - 1 + refinements * refine_low
    # Elsewhere the float32 replay: of the bfloat16 schedule with its finishing steps where
    # low, else of the single-precision iteration's.
    replay = jnp.where(low, 3 * coupled_step_cost(q) * replay, other.products["backward"][high])
    return {
        "forward": {low_kind: forward_low, high: forward_high},
        "backward": {
            low_kind: jnp.where(low_solve, solve_low, 0),
            high: jnp.where(low_solve, solve_high, replay),
        },
    }


def _needs_decomposition(z, r, iterations, q, max_iters, precision):
    """``(...,)`` bool: a spectrum that reaches the noise floor (``l_min <= 2 r`` for
    ``M_0 = A_hat + r I``, i.e. ``r ||Z||_2^q >= 1/3``, as
    :func:`jaxsqrtm._methods.accurate.reaches_noise_floor` tests for ``q = 2``), an
    iteration that did not converge within ``max_iters``, or a non-finite ``Z``."""
    floor = r * condition_estimate(z, q, precision=precision) >= 1 / 3
    finite = jnp.all(jnp.isfinite(z), axis=(-2, -1))
    return ~finite | (iterations >= max_iters) | floor


@coupled_inverse_root.defjvp
def _coupled_jvp(q, max_iters, precision, solve_condition, primals, tangents):
    (m0,), (dm0,) = primals, tangents
    result = coupled_inverse_root(m0, q, max_iters, precision, solve_condition)
    # Decomposed matrices replay one unit step on the identity instead, so that their
    # (unused) tangent stays finite, also under reverse mode.
    keep = ~result.decomposed
    eye = eye_like(m0)
    m0_kept = jnp.where(keep[..., None, None], m0, eye)
    z_kept = jnp.where(keep[..., None, None], result.root, eye)
    alphas = jnp.where(keep[..., None], result.alphas, 1)
    steps = result.iterations if result.replay is None else result.replay
    iterations = jnp.where(keep, steps, 1)
    dz = _root_tangent(m0_kept, z_kept, alphas, iterations, dm0, q, precision, result.low_solve)

    def no_tangent(x):
        return jnp.zeros_like(x, dtype=jax.dtypes.float0)

    return result, Coupled(
        dz,
        jnp.zeros_like(result.alphas),
        *(jax.tree.map(no_tangent, field) for field in result[2:]),
    )


@functools.partial(jax.checkpoint, static_argnums=(5, 6))
def _root_tangent(m0, z, alphas, iterations, dm0, q, precision, low_solve=None):
    """``dZ`` solving ``-sum_(k < q) Y^(k+1) dZ Y^(q-k) = dM_0`` (module doc).

    The operator is evaluated only to differentiate the solution again (second order),
    so ``Y`` and its powers are formed inside it.

    ``precision="mixed"``: for the matrices of ``low_solve``, the equation for
    ``W = Y^a dZ Y^a`` (:func:`refined_inverse_root`) by :func:`balanced_solve` with
    bfloat16 products, refined with float32 residuals of :func:`balanced_operator`
    (``policy.backward_solves`` solves in all, as
    :func:`jaxsqrtm._lyapunov.refined_replayed_lyapunov` refines the square root's), and
    ``dZ = Z^a W Z^a`` (:func:`tangent_solve_cost`: 24 bfloat16 and 8 float32 products
    for ``q = 3``, against 12 float32 products a step of the replay). For the others the
    replay with float32 products, as ``"highest"``'s. Measured for ``q = 3``, n = 64,
    against the float32 replay, for a random cotangent: within 1.4 times up to condition
    number ``3e2`` of ``M_0``, 2.1 times at ``1e3``. The residual has to be the balanced
    one: with the residual of the equation for ``dZ`` itself the refined solve stalls at
    4 times the replay's error (condition number 10), from the round-off of
    ``Y = M_0 Z^(q-1)``. That round-off, ``eps kappa^(2/3)`` relative in the directions of
    the largest eigenvalues, still limits the balanced solve where the cotangent weighs
    those directions: ``B^T G`` of the positive root ``B X`` (3 to 36 times the replay's
    error at condition number ``1e2``, 1.4 to 2.7 at 20), whose gradient
    ``dB X + B dX`` also cancels by up to
    ``kappa^(1/2q)``; hence :data:`POSITIVE_SOLVE_MAX_CONDITION`.
    """
    mixed = precision == _validation.MIXED
    policy = _sign.MIXED
    full = policy.high if mixed else precision

    def operator(dz):
        y = symmetrize(mm(m0, matrix_power(z, q - 1, full), full))
        powers = [y]
        for _ in range(q - 1):
            powers.append(mm(powers[-1], y, full))
        terms = [mm(mm(powers[k], dz, full), powers[q - 1 - k], full) for k in range(q)]
        return -sum(terms[1:], terms[0])

    def replayed(rhs, precision):
        def replay(m):
            return replayed_coupled_iteration(m, alphas, iterations, q=q, precision=precision)

        # A symmetric direction: the replay symmetrises its iterates, so it is the
        # derivative only there (and the operator's inverse on symmetric matrices).
        return jax.jvp(replay, (m0,), (symmetrize(rhs),))[1]

    if not mixed:

        def solve(_, rhs):
            return replayed(rhs, precision)

    else:

        def solve(_, rhs):
            def refined():
                high, low_precision = policy.high, policy.low
                zs, ys = balanced_powers(m0, z, q, precision=high)
                w, _ = _lyapunov._refine(
                    lambda c: balanced_solve(
                        zs, ys, -c, num_iters=BALANCED_STEPS, precision=low_precision
                    ),
                    lambda w: -balanced_operator(zs, ys, w, high),
                    symmetrize(rhs),
                    policy.backward_solves,
                )
                return symmetrize(mm(mm(zs[-1], w, high), zs[-1], high))

            def plain():
                return replayed(rhs, policy.high)

            return _sign.where_some(low_solve, refined, plain, like=rhs)

    return lax.custom_linear_solve(operator, dm0, solve, symmetric=True)


def tangent_solve_cost(q: int, policy) -> tuple[int, int]:
    """Products of :func:`_root_tangent`'s refined solve, ``(float32, bfloat16)``: the
    powers of ``Z`` and ``Y``, a residual per refinement and ``Z^a W Z^a``; the solves."""
    a = (q + 1) // 2
    solves = policy.backward_solves
    high = a - 1 + y_powers_cost(q) + (solves - 1) * (q - 1) + 2
    return high, solves * BALANCED_STEPS * (q - 1)


def odd_inverse_root(b, q: int, config: Config, *, positive: bool = False) -> Root:
    """``B^(-1/q)`` for symmetric PSD ``b`` and odd ``q >= 3``, as a :class:`Root`
    (``scale`` that of ``B``; the counts of the coupled iteration).

    The coupled iteration runs on ``M_0 = (B_hat + r I) / (1 + r)``, ``B_hat = B / c``
    (``c`` :func:`jaxsqrtm._matrix.spectral_bound`, ``r = eps``), and the ridge is removed
    to first order, ``B_hat^(-1/q) = Z (I - r Z^q)^(-1/q) = Z + r Z^(q+1) / q + O(u^2)``
    with ``u = r / (l + r)``: here ``B`` is a square root, whose condition number is at
    most about ``1 / sqrt(2 eps)`` unless the accurate square root decomposed it (then
    ``B`` reaches the noise floor below as well), so ``u <= 3e-4`` and the second-order
    term ``(q + 1) u^2 / (2 q^2)`` is below float32 round-off.

    PSD semantics: a matrix that reaches the noise floor, did not converge or gave a
    non-finite result is computed by :func:`jaxsqrtm._methods.eigh.eigh_root` instead
    (the pseudo-inverse root of its PSD part), under ``lax.cond`` only when the batch
    has one, as the accurate square root does.

    Under ``precision="mixed"`` the iteration is :func:`_mixed_inverse_root`'s; the
    normalisation, the ridge's removal and the decomposition take float32 products.

    Cost: ``1 + 1 + (coupled_step_cost(q) - 1) + (k - 1) coupled_step_cost(q) +
    power_cost(q + 1)`` products for ``k`` steps (normalisation, ``M_0^2``, the steps,
    the ridge's removal): ``4k + 3`` for ``q = 3``.
    """
    precision = accurate._full_precision(config).precision
    r = _ridge(b.dtype)
    b_hat, c = normalized(b, "spectral_bound", precision=precision)
    m0 = (b_hat + r * eye_like(b_hat)) / (1 + r)
    solve_condition = POSITIVE_SOLVE_MAX_CONDITION if positive else SOLVE_MAX_CONDITION
    result = coupled_inverse_root(m0, q, config.max_iters, config.precision, solve_condition)
    z = result.root
    x_hat = z + (r / (1 + r) / q) * matrix_power(z, q + 1, precision)
    scale = (c * (1 + r))[..., None, None]
    nonzero = scale > 0
    x = jnp.where(nonzero, x_hat / jnp.where(nonzero, scale, 1) ** (1 / q), 0)
    eigh_config = EIGH.configure(FUNC, inverse=True, precision=precision, given={"p": q})
    x = lax.cond(
        jnp.any(result.decomposed),
        lambda b, x, decomposed: _decomposed_where(b, x, decomposed, eigh_config),
        lambda b, x, decomposed: x,
        b,
        x,
        result.decomposed,
    )
    # The normalisation and the ridge's removal (backward: its reverse mode; the scale's
    # derivative is left out, as for the square roots).
    products = _with_products(
        result.products, product_kind(precision), 1 + power_cost(q + 1), 2 * power_cost(q + 1)
    )
    low_steps = None if result.low is None else jnp.where(result.low, result.low_steps, 0)
    return Root(x, c, result.iterations, products, low_steps, result.refinements)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _decomposed_where(b, x, decomposed, config):
    """``x`` with the decomposed matrices' roots from ``eigh``; reverse mode keeps only
    ``b`` and ``decomposed`` and decomposes again."""
    return jnp.where(decomposed[..., None, None], eigh_root(b, config)[0], x)


def _with_products(products, kind: str, forward, backward):
    """``products`` (:attr:`Coupled.products`' layout) with ``forward`` and ``backward``
    products of ``kind`` added to every matrix's count."""
    out = {part: dict(counts) for part, counts in products.items()}
    for part, count in (("forward", forward), ("backward", backward)):
        out[part][kind] = out[part].get(kind, 0) + count
    return out


def _auto_root(a, config: Config) -> Root:
    j, q = split_degree(config.p)
    precision = accurate._full_precision(config).precision
    stages = []

    def root(x, inverse: bool):
        sqrt_config = accurate.METHOD.configure(
            FUNC,
            inverse=inverse,
            precision=config.precision,
            given={"max_iters": config.max_iters},
        )
        stages.append(accurate.METHOD.root(x, sqrt_config))
        # The decomposition's V f(l) V^H is symmetric only up to round-off.
        return symmetrize(stages[-1].out)

    products = 0  # outside the iterations: (X^2 or B X^(q-2)), each 2 more backward
    if q == 1 and j == 0:
        x = root(a, config.inverse)
        out = mm(x, x, precision)
        products = 1
    elif q == 1:
        x = a
        for _ in range(j - 1):
            x = root(x, inverse=False)
        out = root(x, config.inverse)
    else:
        # B = A^(1/2^j) for an inverse root of even p (then A^(-1/p) = B^(-1/q)), else
        # A^(1/2^(j+1)) (A^(-1/q) = (B^(-1/q))^2 and A^(1/p) = B B^(-(q-2)/q)).
        direct = config.inverse and j > 0
        b = a
        for _ in range(j if direct else j + 1):
            b = root(b, inverse=False)
        stages.append(odd_inverse_root(b, q, config, positive=not config.inverse))
        x = stages[-1].out
        if direct:
            out = x
        elif config.inverse:
            out = mm(x, x, precision)
            products = 1
        else:
            out = mm(b, matrix_power(x, q - 2, precision), precision)
            products = power_cost(q - 2) + 1
    return _composed(symmetrize(out), stages, products, product_kind(precision))


def _composed(out, stages, products: int, kind: str) -> Root:
    """The :class:`Root` of a composition: the first stage's scale, the stages' counts
    summed, and ``products`` products of ``kind`` outside them (twice as many more
    backward)."""
    zeros = jnp.zeros_like(stages[0].iterations)

    def total(field):
        values = (getattr(stage, field) for stage in stages)
        return sum((zeros if value is None else value for value in values), zeros)

    counts = {"forward": {}, "backward": {}}
    for stage in stages:
        for part, by_kind in stage.products.items():
            for name, count in by_kind.items():
                counts[part][name] = counts[part].get(name, zeros) + count
    counts = _with_products(counts, kind, products, 2 * products)
    return Root(
        out,
        stages[0].scale,
        total("iterations"),
        products=counts,
        low_precision_iterations=total("low_precision_iterations"),
        refinements=total("refinements"),
    )


def _eigh_root(a, config: Config) -> Root:
    out, scale = eigh_root(a, config)
    return Root(out, scale, jnp.zeros(scale.shape, jnp.int32))


def check_degree(func: str, name: str, value) -> int:
    """``p >= 1`` of ``t = +-1/p`` (the public function validates ``t`` itself)."""
    return _validation.check_count(func, name, value, minimum=1)


def _auto_cost(config: Config, backward: bool):
    return None


AUTO = Method(
    name="auto",
    summary="accurate square roots composed, and a scaled coupled Newton iteration for odd p",
    derivative="the square roots' Lyapunov rules chained, and the replayed coupled "
    "iteration's Fréchet derivative for odd p (custom JVP)",
    knobs=(Knob("p", 2, check_degree), count_knob("max_iters", _sign.MAX_ITERS)),
    root=_auto_root,
    cost=_auto_cost,
    mixed=True,
)

EIGH = Method(
    name="eigh",
    summary="eigendecomposition V l^t V^H of the PSD part, round-off-sized eigenvalues as 0",
    derivative="Daleckii–Krein divided differences of l^t (custom JVP)",
    knobs=(Knob("p", 2, check_degree),),
    root=_eigh_root,
    cost=lambda config, backward: None,
)

METHODS = (AUTO, EIGH)
