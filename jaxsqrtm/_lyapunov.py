"""Lyapunov equation ``S X + X S = G`` by the Newton–Schulz matrix sign iteration.

``S`` is real symmetric or complex Hermitian positive definite; "symmetric" right-hand
sides are Hermitian ones for complex input, and every transpose is a conjugate
transpose (:func:`jaxsqrtm._matrix.adjoint`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm import _sign, _validation
from jaxsqrtm._matrix import (
    BOUNDS,
    NORMALIZATIONS,
    adjoint,
    frobenius_norm,
    matrix_scale,
    mm,
    power_start,
    symmetrize,
)


def _block_sign_step(b, c, b2, *, precision):
    """One Newton–Schulz step on ``[[B, C], [0, -B]]`` given ``B^2``: 4 products."""
    c = 0.5 * (
        3 * c - mm(b2, c, precision) - mm(c, b2, precision) + mm(mm(b, c, precision), b, precision)
    )
    return 0.5 * (3 * b - mm(b2, b, precision)), c


def _symmetric_bcb_terms(b, c, *, precision):
    """``B^2 C + C B^2 - B C B`` for symmetric (Hermitian) ``B`` and ``C``, in 2 products.

    With ``D = B C`` (so ``C B = D^H``) it is ``Y + Y^H`` for ``Y = B (D - D^H / 2)``,
    Hermitian by construction.
    """
    d = mm(b, c, precision)
    y = mm(b, d - 0.5 * adjoint(d), precision)
    return y + adjoint(y)


def _symmetric_c_step(b, c, alpha=1.0, *, precision):
    """The ``C`` half of a sign step on ``alpha [[B, C], [0, -B]]``, symmetric ``C``: 2 products.

    ``alpha`` (real) enters the elementwise update, not the products' operands.
    """
    y = _symmetric_bcb_terms(b, c, precision=precision)
    return 0.5 * alpha * (3 * c - alpha * alpha * y)


def _skew_c_step(b, c, alpha, *, precision):
    """The ``C`` half of a sign step on ``alpha [[B, C], [0, -B]]`` for skew-Hermitian ``C``.

    ``alpha (3 C - alpha^2 (B^2 C + C B^2 - B C B)) / 2`` in 2 products: with ``D = B C``
    (so ``C B = -D^H``) the bracket is ``Y - Y^H`` for ``Y = B (D + D^H / 2)``.
    """
    d = mm(b, c, precision)
    y = mm(b, d + 0.5 * adjoint(d), precision)
    return 0.5 * alpha * (3 * c - alpha * alpha * (y - adjoint(y)))


def _scaled_symmetric_step(b, c, b2, alpha, *, precision):
    """A sign step on ``alpha [[B, C], [0, -B]]`` for symmetric ``C`` given ``B^2``: 3 products."""
    c = _symmetric_c_step(b, c, alpha, precision=precision)
    b = 0.5 * alpha * (3 * b - alpha * alpha * mm(b2, b, precision))
    return b, c


def sign_lyapunov(b, c, *, num_iters: int, symmetric_rhs: bool, precision):
    """Solve ``B X + X B = C`` for symmetric (Hermitian) ``B`` with spectrum in ``(0, sqrt(3))``.

    Newton–Schulz iteration for the sign of the block matrix ``M = [[B, C], [0, -B]]``,
    ``M <- M (3I - M^2) / 2``, written on ``n x n`` blocks
    (Higham, *Functions of Matrices*, 2008, §5.3 and §8.6; Song et al., TPAMI 2022)::

        B <- (3B - B^3) / 2
        C <- (3C - B^2 C - C B^2 + B C B) / 2

    and ``sign(M) = [[I, 2X], [0, -I]]``, so ``X = lim C / 2``. In the eigenbasis of
    ``B`` each entry contracts as ``C_ij <- C_ij (3 - b_i^2 - b_j^2 + b_i b_j) / 2``.

    Cost: ``6 num_iters`` matrix products for a general ``C``. For a symmetric
    (Hermitian) ``C`` the ``C`` update takes 2 products (:func:`_symmetric_c_step`) and
    the last iteration skips the ``B`` update: ``4 num_iters - 2``
    (:func:`lyapunov_cost`). Scalar eigenvalues ``b`` of ``B`` need about
    ``log_{1.5}(1/b)`` iterations to reach the quadratic phase: 8 iterations converge
    for ``b >~ 0.1`` only.
    """
    if not symmetric_rhs:

        def step(_, carry):
            b, c = carry
            b2 = mm(b, b, precision)
            return _block_sign_step(b, c, b2, precision=precision)

        _, c = lax.fori_loop(0, num_iters, step, (b, c))
        return 0.5 * c
    c = symmetrize(c)
    if num_iters == 0:
        return 0.5 * c

    def symmetric_step(_, carry):
        b, c = carry
        c = _symmetric_c_step(b, c, precision=precision)
        return 0.5 * (3 * b - mm(mm(b, b, precision), b, precision)), c

    b, c = lax.fori_loop(0, num_iters - 1, symmetric_step, (b, c))
    return 0.5 * _symmetric_c_step(b, c, precision=precision)


def scaled_sign_lyapunov(b, c, *, max_iters: int, symmetric_rhs: bool, precision):
    """:func:`sign_lyapunov` with optimal per-step scaling, run to convergence.

    Each step scales the block matrix by the ``alpha_k`` of :mod:`jaxsqrtm._sign`
    (measured from ``B_k^2``, which the step computes anyway) and stops each matrix after
    the step that starts with ``||I - B^2||_2 <= 4 sqrt(eps)``. ``B`` must have its
    spectrum in ``(0, 1]``; eigenvalues down to ``sqrt(eps)`` converge in about 12
    (float32) or 24 (float64) steps.

    Returns:
        ``X`` with ``B X + X B = C``.
    """
    floor = _sign.floor_for(b.dtype)
    tol = _sign.tolerance_for(b.dtype)
    if symmetric_rhs:
        c = symmetrize(c)

    def scaled_step(b, c, v, num_matvecs):
        b2 = mm(b, b, precision)
        dev, v = _sign.deviation(b2, v, num_iters=num_matvecs, precision=precision)
        alpha = _sign.cubic_scale(dev, floor)[..., None, None]
        if symmetric_rhs:
            b, c = _scaled_symmetric_step(b, c, b2, alpha, precision=precision)
        else:
            b, c = _block_sign_step(alpha * b, alpha * c, alpha * alpha * b2, precision=precision)
        return (b, c, v), dev > tol

    # B^4 is not at hand here, so the warm-up runs on I - B^2 itself, twice as long.
    state, active = scaled_step(b, c, power_start(b), 2 * _sign.WARMUP_MATVECS)
    _, c, _ = _sign.iterate_per_matrix(
        lambda _, state: scaled_step(*state, _sign.MATVECS_PER_STEP),
        state,
        active,
        start=1,
        stop=max_iters,
    )
    return 0.5 * c


def replayed_sign_lyapunov(b, c, alphas, iterations, *, precision, skew: bool = False):
    """Solve ``B X + X B = C`` for symmetric (or skew) ``C`` with given sign-iteration steps.

    Runs ``iterations`` steps of :func:`scaled_sign_lyapunov`'s symmetric iteration per
    matrix with the step sizes ``alphas[..., k]`` instead of measuring them. The steps
    of :func:`jaxsqrtm._methods.accurate.scaled_newton_schulz_roots` on ``A_hat`` take
    the spectrum ``sqrt(w)`` of ``A_hat^(1/2)`` to 1, so they solve the equation of a
    square root ``B = A_hat^(1/2)``: ``B_k`` has the eigenvalues of that iteration's
    ``Z_k Y_k`` and ``C`` converges with ``B`` (in ``B``'s eigenbasis ``C_ij`` is off by
    ``(e_i + e_j) / 2`` relative when ``b_i`` and ``b_j`` are off by ``e_i`` and ``e_j``).

    Cost: ``4 k - 2`` products for ``k = max(iterations)`` (the last step needs no
    ``B``), no power iteration.

    Args:
        b: ``(..., n, n)`` symmetric (Hermitian), spectrum in ``(0, 1]``.
        c: ``(..., n, n)`` right-hand sides, read as ``(C + C^H) / 2``, or with ``skew``
            as ``(C - C^H) / 2`` (the polar factor's equation; the solution is then skew).
        alphas: ``(..., max_iters)`` step sizes.
        iterations: ``(...,)`` steps per matrix, at least 1 and at most ``max_iters``.
    """
    c_step = _skew_c_step if skew else _symmetric_c_step
    c = _skew_part(c) if skew else symmetrize(c)
    last = jnp.max(iterations) - 1

    def alpha_at(k):
        return lax.dynamic_index_in_dim(alphas, k, axis=-1, keepdims=False)[..., None, None]

    def step(k, state):
        b, c = state
        alpha = alpha_at(k)
        c_next = c_step(b, c, alpha, precision=precision)
        b_next = 0.5 * alpha * (3 * b - alpha * alpha * mm(mm(b, b, precision), b, precision))
        return (b_next, c_next), k + 1 < iterations

    b, c = _sign.iterate_per_matrix(
        step, (b, c), iterations > 0, start=0, stop=last, until_all_frozen=False
    )
    c_last = c_step(b, c, alpha_at(last), precision=precision)
    return 0.5 * jnp.where((iterations > last)[..., None, None], c_last, c)


def lyapunov_operator(s, x, precision, *, skew: bool = False):
    """``L_S(X) = S X + X S`` for symmetric (Hermitian) ``S`` and symmetric ``X`` (with
    ``skew``: skew-Hermitian ``X``, where ``X S = -(S X)^H``): one product."""
    y = mm(s, x, precision)
    return y - adjoint(y) if skew else y + adjoint(y)


def refined_replayed_lyapunov(
    b, c, alphas, iterations, *, policy, skew: bool = False, solves: int | None = None
):
    """:func:`replayed_sign_lyapunov` under the mixed policy: bfloat16 solves, refined.

    Mixed-precision iterative refinement: ``X_0 = solve(C)`` and
    ``X_(j+1) = X_j + solve(C - L_B(X_j))``, ``policy.backward_solves`` solves in all,
    where ``solve`` is the replayed sign iteration with ``policy.low`` (bfloat16)
    products and the residual ``L_B(X_j)`` a ``policy.high`` (float32) product
    (:func:`lyapunov_operator`). The bfloat16 solve has a relative error ``eta`` of
    ``4e-3`` to ``6e-3`` (measured in float32 up to a condition number ``300`` of a
    ``B`` whose schedule converges it), and each refinement multiplies the error by
    about ``eta``: three solves reach float32 round-off. Linear in ``C`` (as far as
    round-off goes), so it serves :func:`lyapunov_inverse` as the replayed solve does.

    With ``skew``, ``C`` is read as ``(C - C^H) / 2`` and the solution is skew-Hermitian,
    as for :func:`replayed_sign_lyapunov`. ``solves`` overrides ``policy.backward_solves``.

    Cost: ``policy.backward_solves (4 k - 2)`` bfloat16 products for ``k = max(iterations)``
    and ``policy.backward_solves - 1`` float32 products.
    """
    return _refined_symmetric(b, c, alphas, iterations, policy=policy, skew=skew, solves=solves)[0]


def _refined_symmetric(b, c, alphas, iterations, *, policy, skew: bool = False, solves=None):
    """:func:`refined_replayed_lyapunov` and the error its last refinements predict."""
    part = _skew_part if skew else symmetrize

    def solve(rhs):
        # Symmetrised: fused multiply-adds under jit leave the iterate's two triangles a
        # round-off apart, and the one-product residual needs a (skew-)symmetric X.
        return part(
            replayed_sign_lyapunov(b, rhs, alphas, iterations, precision=policy.low, skew=skew)
        )

    operator = functools.partial(lyapunov_operator, b, precision=policy.high, skew=skew)
    return _refine(solve, operator, part(c), solves or policy.backward_solves)


def _skew_part(x):
    return 0.5 * (x - adjoint(x))


def _refine(solve, operator, c, solves: int):
    """Iterative refinement ``X <- X + solve(C - operator(X))`` after ``X = solve(C)``,
    ``solves`` solves in all (at least 2).

    Returns ``X`` and, per matrix, the error left that the last two corrections predict
    (``d_last^2 / d_previous``, relative Frobenius sizes: each step multiplies the error
    by about their ratio).
    """
    x = solve(c)
    sizes = []
    for _ in range(solves - 1):
        correction = solve(c - operator(x))
        x = x + correction
        sizes.append(frobenius_norm(correction) / frobenius_norm(x))
    previous = sizes[-2] if len(sizes) > 1 else jnp.ones_like(sizes[-1])
    return x, sizes[-1] * sizes[-1] / jnp.maximum(previous, jnp.finfo(previous.dtype).tiny)


def replayed_block_lyapunov(b, c, alphas, iterations, *, precision):
    """:func:`replayed_sign_lyapunov` for a general ``C``: the block step of
    :func:`sign_lyapunov` (6 products a step) with the step sizes ``alphas[..., k]``."""
    stop = jnp.max(iterations)

    def step(k, state):
        b, c = state
        alpha = lax.dynamic_index_in_dim(alphas, k, axis=-1, keepdims=False)[..., None, None]
        b2 = mm(b, b, precision)
        b, c = _block_sign_step(alpha * b, alpha * c, alpha * alpha * b2, precision=precision)
        return (b, c), k + 1 < iterations

    _, c = _sign.iterate_per_matrix(
        step, (b, c), iterations > 0, start=0, stop=stop, until_all_frozen=False
    )
    return 0.5 * c


def mixed_sign_schedule(b, *, max_iters: int, policy):
    """The step sizes of :func:`scaled_sign_lyapunov` on ``B``, measured with bfloat16
    products under ``policy`` (:class:`jaxsqrtm._sign.MixedPrecision`).

    Runs the ``B`` half of the scaled iteration (``B^2`` and ``B^3``, bfloat16; the
    power iterations float32 matrix-vector products) through
    :func:`jaxsqrtm._sign.low_precision_phase`, then appends the finishing unit steps.
    A matrix whose bfloat16 steps stalled (``policy.max_low_steps`` reached) is not
    served.

    Returns:
        ``(alphas, steps, served)``: ``(..., max_iters + policy.finishing_steps)`` step
        sizes, ``(...,)`` int32 steps to replay and the ``(...,)`` bool of served matrices.

    Cost: ``2 k`` bfloat16 products for ``k`` measured steps.
    """
    floor = _sign.floor_for(b.dtype)
    tol = _sign.tolerance_for(b.dtype)
    low, high = policy.low, policy.high
    index = jnp.arange(max_iters + policy.finishing_steps)

    def step(k, state, precision, num_matvecs=_sign.MATVECS_PER_STEP):
        b, v, alphas, iterations = state
        b2 = mm(b, b, precision)
        dev, v = _sign.deviation(b2, v, num_iters=num_matvecs, precision=high)
        alpha = _sign.cubic_scale(dev, floor)
        b = (
            0.5
            * alpha[..., None, None]
            * (3 * b - alpha[..., None, None] ** 2 * mm(b2, b, precision))
        )
        alphas = lax.dynamic_update_index_in_dim(alphas, alpha, k, axis=-1)
        return (b, v, alphas, iterations + 1), dev

    # Built from the data, so that they vary over a shard_map mesh like it.
    zeros = jnp.zeros_like(b[..., 0, 0])
    alphas = jnp.zeros_like(zeros[..., None] * index, dtype=b.dtype)
    state = (b, power_start(b), alphas, jnp.zeros_like(zeros, dtype=jnp.int32))
    # B^4 is not at hand here, so the warm-up runs on I - B^2 itself, twice as long.
    state, dev = step(0, state, low, 2 * _sign.WARMUP_MATVECS)

    (_, _, alphas, iterations), served, last_deviation, _ = _sign.low_precision_phase(
        step, state, dev, policy=policy, tol=tol, start=1, stop=max_iters
    )
    steps = iterations + jnp.where(served, policy.finishing(last_deviation, b.dtype), 0)
    finishing = (index >= iterations[..., None]) & (index < steps[..., None])
    return jnp.where(finishing, 1, alphas), steps, served


def refined_block_lyapunov(b, c, alphas, iterations, *, policy):
    """:func:`refined_replayed_lyapunov` for a general ``C``: ``policy.block_solves``
    bfloat16 :func:`replayed_block_lyapunov` solves (relative error about ``1e-2``, so one
    more than the symmetric iteration needs) refined with the float32 residual
    ``C - B X - X B`` (two products); also returns the predicted error per matrix."""

    def solve(rhs):
        return replayed_block_lyapunov(b, rhs, alphas, iterations, precision=policy.low)

    def operator(x):
        return mm(b, x, policy.high) + mm(x, b, policy.high)

    return _refine(solve, operator, c, policy.block_solves)


def lyapunov_cost(num_iters: int, symmetric_rhs: bool = True) -> int:
    """Matrix products of :func:`sign_lyapunov`."""
    if not symmetric_rhs:
        return 6 * num_iters
    return max(4 * num_iters - 2, 0)


def solve_scaled(s, g, scale, *, num_iters: int | None, symmetric_rhs: bool, precision):
    """Solve ``S X + X S = G`` with ``B_0 = S / scale`` per matrix.

    ``scale`` is real, of shape ``(...,)``. With a fixed ``num_iters`` (:func:`sign_lyapunov`) it
    must bound the largest eigenvalue of ``S`` up to a factor ``sqrt(3)``; with
    ``num_iters=None`` (:func:`scaled_sign_lyapunov`, to convergence) it must bound it.
    A zero scale (``S = 0``, no solution) gives ``X = 0``.
    """
    nonzero = scale != 0
    safe = jnp.where(nonzero, scale, 1)[..., None, None]
    if precision == _validation.MIXED:
        x = _mixed_solve(s / safe, g / safe, symmetric_rhs=symmetric_rhs, policy=_sign.MIXED)
    elif num_iters is None:
        x = scaled_sign_lyapunov(
            s / safe,
            g / safe,
            max_iters=_sign.MAX_ITERS,
            symmetric_rhs=symmetric_rhs,
            precision=precision,
        )
    else:
        x = sign_lyapunov(
            s / safe,
            g / safe,
            num_iters=num_iters,
            symmetric_rhs=symmetric_rhs,
            precision=precision,
        )
    return jnp.where(nonzero[..., None, None], x, 0)


def _mixed_solve(b, c, *, symmetric_rhs: bool, policy):
    """:func:`scaled_sign_lyapunov` under the mixed policy.

    The schedule is measured with bfloat16 products (:func:`mixed_sign_schedule`) and
    replayed in bfloat16 solves with float32 refinement; a matrix is served when the
    error its last two refinements predict is at most ``policy.solve_tolerance``. The
    others (a spectrum that bfloat16 products resolve badly: on a clustered spectrum of
    condition number ``1e2``, n = 16, each refinement gains only a factor 10) are solved
    by :func:`scaled_sign_lyapunov` at ``policy.high``, only when the batch has such a
    matrix. The choice depends on ``C`` only through the sizes of corrections, and both
    branches solve the equation to float32 round-off.
    """
    alphas, steps, served = mixed_sign_schedule(b, max_iters=_sign.MAX_ITERS, policy=policy)
    if symmetric_rhs:
        c = symmetrize(c)
        x, predicted = _refined_symmetric(b, c, alphas, steps, policy=policy)
    else:
        x, predicted = refined_block_lyapunov(b, c, alphas, steps, policy=policy)
    served = served & (predicted <= policy.solve_tolerance)

    def plain():
        return scaled_sign_lyapunov(
            b, c, max_iters=_sign.MAX_ITERS, symmetric_rhs=symmetric_rhs, precision=policy.high
        )

    return _sign.where_some(served, lambda: x, plain, like=c)


def lyapunov_inverse(s, rhs, solve, *, precision):
    """``X = L_S^(-1)(rhs)`` with ``L_S(X) = S X + X S``, as a transposable linear map.

    ``solve(rhs)`` computes the solution (any sign iteration of this module);
    ``lax.custom_linear_solve`` wraps it with the operator ``L_S``, so that JAX knows
    the result is linear in ``rhs``, what its transpose is, and that its derivative in
    ``S`` is ``-L_S^(-1)(dS X + X dS)``. That is what lets a ``jax.custom_jvp`` rule
    built on it serve forward mode, reverse mode (by transposition: a solve on the
    cotangent) and higher orders without differentiating through the iteration itself.

    JAX transposes linear maps without conjugating (cotangents pair with tangents by
    ``Re sum(X * G)``), so the transpose of ``L_S`` is ``L_{S^T}``. For real symmetric
    ``S`` that is ``L_S`` itself (``symmetric=True``: the transposed solve is ``solve``).
    For complex Hermitian ``S``, ``S^T = conj(S)``, and ``L_{conj(S)}^(-1)(G) =
    conj(L_S^(-1)(conj(G)))``: the transposed solve is ``solve`` between two
    conjugations, no second iteration to write.

    Args:
        s: ``(..., n, n)`` symmetric (complex: Hermitian) positive definite.
        rhs: ``(..., n, n)`` right-hand sides of ``s``'s shape.
        solve: ``rhs -> X``, the iteration; it may close over ``s`` and other arrays.
        precision: matmul precision of ``L_S`` (used only to differentiate in ``S``).
    """

    def operator(x):
        return mm(s, x, precision) + mm(x, s, precision)

    if not jnp.iscomplexobj(s):
        return lax.custom_linear_solve(operator, rhs, lambda _, b: solve(b), symmetric=True)

    def transpose_solve(_, b):
        return jnp.conj(solve(jnp.conj(b)))

    return lax.custom_linear_solve(
        operator, rhs, lambda _, b: solve(b), transpose_solve=transpose_solve
    )


def solve_lyapunov(
    s,
    g,
    *,
    num_iters: int | None = 8,
    normalization: str | None = None,
    symmetric_rhs: bool = False,
    precision="highest",
):
    """Solve the Lyapunov (Sylvester) equation ``S X + X S = G`` for symmetric positive ``S``.

    Complex Hermitian positive definite ``S`` (complex64/complex128) and complex ``G``
    are solved the same way, with conjugate transposes in place of transposes.

    The solution is ``X = integral_0^inf exp(-tS) G exp(-tS) dt``; in the eigenbasis of
    ``S``, ``X_ij = G_ij / (s_i + s_j)``. It is the gradient of a matrix square root:
    if ``S = A^(1/2)`` and ``G = dl/dS`` then ``dl/dA = X``. It is computed with matrix
    products only, by the Newton–Schulz sign iteration of
    ``[[S/c, G/c], [0, -S/c]]`` (:func:`sign_lyapunov`), ``c`` a per-matrix scale.

    Two settings:

    * ``num_iters=k`` (default 8, the paper's): ``k`` plain iterations, ``4k - 2``
      products with ``symmetric_rhs`` and ``6k`` without, a fixed cost whatever the
      conditioning. Eigenvalues ``s_i / c`` converge after about
      ``log_{1.5}(c / s_i)`` iterations: 8 suffice for a condition number of ``S`` up
      to about 10 with Frobenius scaling, 16 to 20 up to about ``1e4``.
    * ``num_iters=None``: the accurate setting. Optimally scaled iterations
      (:func:`scaled_sign_lyapunov`) run until every matrix has converged: about 6
      iterations at condition number ``1e2``, 12 at ``1e6`` (float32). Only this setting
      takes ``precision="mixed"``.

    Differentiation: in both settings ``X`` is differentiated as the solution of the
    equation (implicitly: ``dX = L_S^(-1)(dG - dS X - X dS)``), not through the
    iterations, so every transform works (``jax.jvp``, ``jax.grad``, ``jax.hessian``,
    ``vmap``, ``shard_map``) and each derivative costs one more solve.

    Args:
        s: ``(..., n, n)`` symmetric positive definite matrices (complex: Hermitian); only
            the symmetric part ``(S + S^T) / 2`` (Hermitian part ``(S + S^H) / 2``) is used.
        g: ``(..., n, n)`` right-hand sides, broadcast against ``s``, real or complex.
        num_iters: sign iterations (static), or ``None`` to iterate to convergence.
        normalization: the scale ``c``: ``"frobenius"`` (``||S||_F``, the default for a
            fixed count), ``"spectral_bound"`` (``min(||S||_F, ||S^2||_F^(1/2))``, the
            default for ``num_iters=None``), ``"spectral"`` (power-iteration estimate of
            ``||S||_2``; it can undershoot, so only with a fixed count) or ``"trace"``.
        symmetric_rhs: promise that ``G`` is symmetric (complex: Hermitian), which takes
            a fixed-count iteration from ``6k`` to ``4k - 2`` products (and the accurate
            one from 6 to 4 a step). A non-symmetric ``G`` is then read as
            ``(G + G^T) / 2`` (``(G + G^H) / 2``).
        precision: matmul precision of the iteration (``"highest"`` by default), or
            ``"mixed"`` with ``num_iters=None`` (real float32, bfloat16 or float16
            input): step sizes measured with bfloat16 products, then bfloat16 solves
            refined with float32 residuals (three, four for a general ``G``:
            :func:`refined_replayed_lyapunov`); a matrix whose refinement does not reach
            float32 round-off (condition numbers of ``S`` above a few hundred, some
            clustered spectra) is solved at ``"highest"`` instead. Measured (float32, n =
            16 to 64): 0.3 to 1.2 times ``"highest"``'s error at condition numbers 10 and
            ``1e2``.

    Returns:
        ``X`` of the broadcast shape and ``G``'s dtype promoted with ``S``'s. A zero ``S``
        gives ``X = 0``; NaN in the input gives NaN. Not checked under ``jit``: an
        indefinite ``S`` makes the iteration converge to the solution of a different
        equation (the sign is not the identity there).

    Example:
        >>> import jax.numpy as jnp
        >>> import jaxsqrtm
        >>> s = jnp.diag(jnp.array([1.0, 3.0]))
        >>> x = jaxsqrtm.solve_lyapunov(s, jnp.ones((2, 2)), num_iters=None)
        >>> bool(jnp.allclose(x, jnp.array([[1 / 2, 1 / 4], [1 / 4, 1 / 6]]), atol=1e-6))
        True
    """
    func = "solve_lyapunov"
    s = _validation.check_matrices(func, s, "s")
    g = _validation.check_matrices(func, g, "g")
    if s.shape[-1] != g.shape[-1]:
        raise ValueError(
            f"{func}: s and g must have the same matrix size, got {s.shape} and {g.shape}"
        )
    if num_iters is not None:
        num_iters = _validation.check_count(func, "num_iters", num_iters, minimum=0)
    if normalization is None:
        normalization = "frobenius" if num_iters is not None else "spectral_bound"
    # Iterating to convergence needs a scale that bounds the spectrum.
    choices = NORMALIZATIONS if num_iters is not None else BOUNDS
    normalization = _validation.check_choice(func, "normalization", normalization, choices)
    precision = _validation.check_precision(func, precision, allow_mixed=True)
    if precision == _validation.MIXED:
        if num_iters is not None:
            raise ValueError(
                f"{func}: precision='mixed' needs num_iters=None (it measures the steps "
                f"and refines to convergence), got num_iters={num_iters}"
            )
        _validation.check_mixed_dtype(func, jnp.result_type(s, g), "s and g")
    symmetric_rhs = _validation.check_bool(func, "symmetric_rhs", symmetric_rhs)
    return _solve_lyapunov(s, g, num_iters, normalization, symmetric_rhs, precision)


@functools.partial(jax.jit, static_argnums=(2, 3, 4, 5))
def _solve_lyapunov(s, g, num_iters, normalization, symmetric_rhs, precision):
    in_dtype = jnp.result_type(s, g)
    dtype = _validation.compute_dtype(in_dtype)
    shape = jnp.broadcast_shapes(s.shape, g.shape)
    s = symmetrize(jnp.broadcast_to(s.astype(dtype), shape))
    g = jnp.broadcast_to(g.astype(dtype), shape)
    full = _sign.MIXED.high if precision == _validation.MIXED else precision
    scale = lax.stop_gradient(matrix_scale(s, normalization, precision=full))

    def solve(rhs):
        return solve_scaled(
            s, rhs, scale, num_iters=num_iters, symmetric_rhs=symmetric_rhs, precision=precision
        )

    return lyapunov_inverse(s, g, solve, precision=full).astype(in_dtype)
