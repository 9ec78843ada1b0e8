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
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _sign, _validation
from jaxsqrtm._core import Config, Knob, Method, Root, count_knob
from jaxsqrtm._matrix import (
    eye_like,
    matvec,
    mm,
    normalized,
    power_iterate,
    power_start,
    symmetrize,
)
from jaxsqrtm._methods import accurate
from jaxsqrtm._methods.eigh import eigh_root

FUNC = "fractional_matrix_power"
FLOOR_MATVECS = accurate.FLOOR_MATVECS
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
    """Products of :func:`coupled_step` (not the first)."""
    return power_cost(q - 1) + 2 if q > 1 else 2


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


class Coupled(NamedTuple):
    """The coupled iteration's results; also the residuals of its reverse mode."""

    root: jax.Array  # Z = M_0^(-1/q)
    alphas: jax.Array  # (..., max_iters) step sizes
    iterations: jax.Array  # (...,) steps taken
    decomposed: jax.Array  # (...,) bool: Z is not to be used (see _needs_decomposition)


def _ridge(dtype) -> float:
    """The ridge of ``M_0`` relative to the scale: the compute dtype's machine epsilon."""
    return _sign.floor_for(dtype) ** 2


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2, 3))
def coupled_inverse_root(m0, q: int, max_iters: int, precision) -> Coupled:
    """:func:`scaled_coupled_iteration` on ``m0``, with the matrices it cannot serve."""
    z, iterations, alphas = scaled_coupled_iteration(
        m0, q=q, max_iters=max_iters, precision=precision
    )
    r = _ridge(m0.dtype)
    decomposed = _needs_decomposition(z, r / (1 + r), iterations, q, max_iters, precision)
    return Coupled(z, alphas, iterations, decomposed)


def _needs_decomposition(z, r, iterations, q, max_iters, precision):
    """``(...,)`` bool: a spectrum that reaches the noise floor (``l_min <= 2 r`` for
    ``M_0 = A_hat + r I``, i.e. ``r ||Z||_2^q >= 1/3``, as
    :func:`jaxsqrtm._methods.accurate.reaches_noise_floor` tests for ``q = 2``), an
    iteration that did not converge within ``max_iters``, or a non-finite ``Z``."""
    estimate, _ = power_iterate(
        lambda v: matvec(z, v, precision), power_start(z), num_iters=FLOOR_MATVECS
    )
    floor = r * estimate**q >= 1 / 3
    finite = jnp.all(jnp.isfinite(z), axis=(-2, -1))
    return ~finite | (iterations >= max_iters) | floor


@coupled_inverse_root.defjvp
def _coupled_jvp(q, max_iters, precision, primals, tangents):
    (m0,), (dm0,) = primals, tangents
    result = coupled_inverse_root(m0, q, max_iters, precision)
    # Decomposed matrices replay one unit step on the identity instead, so that their
    # (unused) tangent stays finite, also under reverse mode.
    keep = ~result.decomposed
    eye = eye_like(m0)
    m0_kept = jnp.where(keep[..., None, None], m0, eye)
    z_kept = jnp.where(keep[..., None, None], result.root, eye)
    alphas = jnp.where(keep[..., None], result.alphas, 1)
    iterations = jnp.where(keep, result.iterations, 1)
    dz = _root_tangent(m0_kept, z_kept, alphas, iterations, dm0, q, precision)
    return result, Coupled(
        dz,
        jnp.zeros_like(result.alphas),
        jnp.zeros_like(result.iterations, dtype=jax.dtypes.float0),
        jnp.zeros_like(result.decomposed, dtype=jax.dtypes.float0),
    )


@functools.partial(jax.checkpoint, static_argnums=(5, 6))
def _root_tangent(m0, z, alphas, iterations, dm0, q, precision):
    """``dZ`` solving ``-sum_(k < q) Y^(k+1) dZ Y^(q-k) = dM_0`` (module doc).

    The operator is evaluated only to differentiate the solution again (second order),
    so ``Y`` and its powers are formed inside it.
    """

    def operator(dz):
        y = symmetrize(mm(m0, matrix_power(z, q - 1, precision), precision))
        powers = [y]
        for _ in range(q - 1):
            powers.append(mm(powers[-1], y, precision))
        terms = [mm(mm(powers[k], dz, precision), powers[q - 1 - k], precision) for k in range(q)]
        return -sum(terms[1:], terms[0])

    def solve(_, rhs):
        def replay(m):
            return replayed_coupled_iteration(m, alphas, iterations, q=q, precision=precision)

        # A symmetric direction: the replay symmetrises its iterates, so it is the
        # derivative only there (and the operator's inverse on symmetric matrices).
        return jax.jvp(replay, (m0,), (symmetrize(rhs),))[1]

    return lax.custom_linear_solve(operator, dm0, solve, symmetric=True)


def odd_inverse_root(b, q: int, config: Config):
    """``(B^(-1/q), iterations)`` for symmetric PSD ``b`` and odd ``q >= 3``.

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

    Cost: ``1 + 1 + (coupled_step_cost(q) - 1) + (k - 1) coupled_step_cost(q) +
    power_cost(q + 1)`` products for ``k`` steps (normalisation, ``M_0^2``, the steps,
    the ridge's removal): ``4k + 3`` for ``q = 3``.
    """
    precision = config.precision
    r = _ridge(b.dtype)
    b_hat, c = normalized(b, "spectral_bound", precision=precision)
    m0 = (b_hat + r * eye_like(b_hat)) / (1 + r)
    result = coupled_inverse_root(m0, q, config.max_iters, precision)
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
    return x, result.iterations


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _decomposed_where(b, x, decomposed, config):
    """``x`` with the decomposed matrices' roots from ``eigh``; reverse mode keeps only
    ``b`` and ``decomposed`` and decomposes again."""
    return jnp.where(decomposed[..., None, None], eigh_root(b, config)[0], x)


def _auto_root(a, config: Config) -> Root:
    j, q = split_degree(config.p)
    precision = config.precision
    iterations = jnp.zeros(a.shape[:-2], jnp.int32)
    scale = None

    def root(x, inverse: bool):
        nonlocal iterations, scale
        sqrt_config = accurate.METHOD.configure(
            FUNC, inverse=inverse, precision=precision, given={"max_iters": config.max_iters}
        )
        result = accurate.METHOD.root(x, sqrt_config)
        iterations = iterations + result.iterations
        scale = result.scale if scale is None else scale
        # The decomposition's V f(l) V^H is symmetric only up to round-off.
        return symmetrize(result.out)

    if q == 1 and j == 0:
        x = root(a, config.inverse)
        out = mm(x, x, precision)
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
        x, odd_iterations = odd_inverse_root(b, q, config)
        iterations = iterations + odd_iterations
        if direct:
            out = x
        elif config.inverse:
            out = mm(x, x, precision)
        else:
            out = mm(b, matrix_power(x, q - 2, precision), precision)
    return Root(symmetrize(out), scale, iterations)


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
    mixed_note="fractional powers run their iterations with float32 products only (sqrtm and "
    "inv_sqrtm take 'mixed')",
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
