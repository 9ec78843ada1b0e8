"""Polar factor and nuclear norm of rectangular matrices by scaled Newton–Schulz steps.

For ``M = U H`` (``U`` a partial isometry on the range of ``M^H``, ``H = (M^H M)^(1/2)``)
the nuclear norm is ``||M||_* = sum sigma_i = Re tr(U^H M)``. The Newton–Schulz iteration
for ``U`` (Higham, *Functions of Matrices*, 2008, §8.3), with step sizes::

    X_0 = M / c,   X_{k+1} = alpha_k X_k (3 I - alpha_k^2 X_k^H X_k) / 2,

maps every singular value ``x`` of ``X_k`` to ``h(alpha_k x)``, ``h(y) = y (3 - y^2) / 2``,
and keeps the singular vectors. A guaranteed bound ``c >= sigma_max`` puts the singular
values in ``[0, 1]``; ``alpha_k`` is the optimal scale of the cubic on ``[l_k, 1]``
(:func:`jaxsqrtm._sign.cubic_scale`, ``alpha^2 = 3 / (1 + l + l^2)``), which maps
``[l_k, 1]`` into ``[l_{k+1}, 1]`` with ``l_{k+1} = h(alpha_k l_k)``: small singular values
grow by ``3 sqrt(3) / 2 ~ 2.6`` a step instead of 1.5.

``M`` is often rank-deficient (a product of centred features has rank ``N - 1``, a product
of covariance roots the smaller of their ranks), so a stop on ``||I - X^H X||`` would never
fire. The schedule is deterministic instead: ``l_0`` is a floor (:func:`default_floor`,
``eps / 16``) and ``l_k`` is tracked in Python until it is within round-off of 1, which fixes
the step count and every ``alpha_k`` at trace time (:func:`schedule`). A singular value
below ``l_0 c`` goes only part of the way to 1 (an exact zero stays 0), so it adds between
0 and itself to ``Re tr(U^H M)``: the nuclear norm's error from the schedule is at most the
sum of the singular values below ``l_0 c``.

The building blocks, :func:`spectral_normalized`, :func:`gram_matrix` and the odd-polynomial
step :func:`polynomial_step` (of which the scaled Newton–Schulz step is the cubic case),
are also those of :func:`jaxsqrtm.polar`'s methods (:mod:`jaxsqrtm._methods.polar`).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsqrtm import _sign
from jaxsqrtm._matrix import adjoint, frobenius_norm, mm, real_dtype


class Polar(NamedTuple):
    """What :func:`polar_factor` returns."""

    factor: jax.Array  # U, the shape and dtype of M
    scale: jax.Array  # (...,) c >= sigma_max(M), real; 0 for a zero matrix


def default_floor(dtype) -> float:
    """The schedule's floor ``l_0``: ``eps / 16`` of ``dtype``'s real part.

    Chosen by measurement on FID from float32 features of real images, where ``M`` has
    a continuous tail of genuine singular values down to ``1e-8 sigma_max`` and below:
    relative FID errors ``1.7e-5`` (floor ``eps``, 20 steps), ``3.8e-6`` (``eps / 4``,
    22), ``2.6e-6`` (``eps / 16``, 23) and ``2.3e-6`` (``eps / 64``, 25) on a
    2048-dimensional case with 1200 samples per set; a floor of ``1e-6`` (18 steps) is
    10 to 100 times less accurate than ``eps``.
    """
    return float(jnp.finfo(dtype).eps) / 16


@functools.cache
def schedule(dtype, floor: float) -> tuple[float, ...]:
    """Step sizes ``alpha_k`` taking singular values in ``[floor, 1]`` to within round-off of 1.

    ``alpha_k`` is the optimal scale for ``[max(l_k, sqrt(eps)), 1]``
    (:func:`jaxsqrtm._sign.cubic_scale` with :func:`jaxsqrtm._sign.floor_for`). The
    optimal ``alpha`` for ``l`` maps ``x = 1`` to ``h(alpha) = h(alpha l)``, which a step
    computes from ``3 - alpha^2 x^2``, a cancellation with relative error ``eps / l``;
    capping ``alpha`` at the value for ``sqrt(eps)`` bounds that error by ``sqrt(eps)``
    and costs no step (below ``sqrt(eps)``, ``l`` grows by ``1.5 alpha ~ 2.6`` either way).
    The bound is tracked as ``l_{k+1} = min(h(alpha_k l_k), h(alpha_k))``, the two ends of
    the image of ``[l_k, 1]``, from ``l_0 = floor`` until ``1 - l_k <= eps``.

    Steps: 23 in float32 from ``eps / 16`` (20 from ``eps``, 13 from ``1e-4``), 45 in
    float64 from ``eps / 16``.

    Args:
        dtype: real dtype of the iteration (its epsilon sets the cap and the stop).
        floor: ``l_0`` in ``(0, 1)``.

    Returns:
        The ``alpha_k`` as Python floats.
    """
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), got {floor!r}")
    eps = float(jnp.finfo(dtype).eps)
    cap = _sign.floor_for(dtype)
    alphas, low = [], floor
    with jax.ensure_compile_time_eval():
        while 1 - low > eps:
            alpha = float(_sign.cubic_scale(np.float64(1 - low * low), cap))
            alphas.append(alpha)
            low = min(_cubic(alpha * low), _cubic(alpha))
    return tuple(alphas)


def _cubic(y: float) -> float:
    return 0.5 * y * (3 - y * y)


def is_wide(shape) -> bool:
    """Whether ``(..., p, q)`` matrices are worked on from the left, ``X X^H`` (``p <= q``).

    Square matrices count as wide, as in optax's ``orthogonalize_via_newton_schulz``.
    """
    return shape[-2] <= shape[-1]


def gram_matrix(x, *, wide: bool, precision):
    """The smaller Gram matrix: ``X X^H`` (``p x p``) if ``wide``, else ``X^H X`` (``q x q``).

    One product of ``max(p, q) min(p, q)^2`` multiply-adds; Hermitian, of ``x``'s dtype.
    """
    return mm(x, adjoint(x), precision) if wide else mm(adjoint(x), x, precision)


def _per_matrix(c):
    """A scalar, or a ``(...,)`` array of per-matrix scalars broadcast over matrices."""
    return c[..., None, None] if jnp.ndim(c) else c


def polynomial_step(x, gram, coefficients, *, wide: bool, precision):
    """One odd-polynomial step ``X <- a X + b X (X^H X) + c X (X^H X)^2`` on its Gram side.

    The polynomial ``p(s) = a s + b s^3 + c s^5`` acts on every singular value of ``X``
    and keeps the singular vectors. With ``wide`` the step is written on the left,
    ``a X + (b W + c W^2) X`` with ``W = X X^H``, otherwise on the right,
    ``a X + X (b W + c W^2)`` with ``W = X^H X``; both are the same matrix.

    Args:
        x: ``(..., p, q)`` matrices.
        gram: their Gram matrix :func:`gram_matrix` (``wide`` as for ``x``).
        coefficients: ``(a, b)`` (cubic) or ``(a, b, c)`` (quintic); each a Python
            scalar or a ``(...,)`` array of per-matrix values. A cubic (``c`` left out
            or a Python ``0``) takes 1 product, a quintic 2 (``W^2`` and the product with
            ``X``); the Gram matrix is one more, made by the caller.
        wide: the side of ``gram``.
        precision: matmul precision (a :class:`jax.lax.Precision` or
            :data:`jaxsqrtm._matrix.BFLOAT16`).
    """
    a, b, *rest = coefficients
    c = rest[0] if rest else 0
    if isinstance(c, (int, float)) and c == 0:
        poly = _per_matrix(b) * gram
    else:  # as (c W) W, the order of optax's step
        poly = _per_matrix(b) * gram + mm(_per_matrix(c) * gram, gram, precision)
    product = mm(poly, x, precision) if wide else mm(x, poly, precision)
    return _per_matrix(a) * x + product


def cubic_coefficients(alpha):
    """``(a, b)`` of the scaled Newton–Schulz step ``alpha X (3 I - alpha^2 X^H X) / 2``."""
    return 1.5 * alpha, -0.5 * alpha * alpha * alpha


def _safe(c):
    return jnp.where(c != 0, c, 1)[..., None, None]


def spectral_normalized(x, *, wide: bool, precision, safety: float = 1.0):
    """``(X / c, gram(X / c), c)`` with ``c = safety ||X^H X||_F^(1/2) >= safety sigma_max``.

    ``||X^H X||_F^(1/2) = (sum sigma^4)^(1/4)``: loose by at most ``rank^(1/4)``, close to
    ``sigma_max`` for decaying spectra, never below it. ``X`` is divided by ``||X||_F``
    first, so the Gram matrix neither overflows nor underflows; it costs the one product
    that the first step needs anyway. A zero matrix gives ``c = 0`` and zeros.
    """
    f = frobenius_norm(x)
    x = x / _safe(f).astype(x.dtype)
    gram = gram_matrix(x, wide=wide, precision=precision)
    g = safety * jnp.sqrt(frobenius_norm(gram))
    scale = _safe(g)
    return x / scale.astype(x.dtype), gram / (scale * scale).astype(x.dtype), f * g


def polar_cost(dtype, floor: float | None = None) -> int:
    """Matrix products of :func:`polar_factor`: two a step (``X^H X`` and ``X`` times the
    cubic's factor), each ``max(p, q) x min(p, q)`` by ``min(p, q) x min(p, q)``."""
    dtype = np.dtype(real_dtype(dtype))
    return 2 * len(schedule(dtype, default_floor(dtype) if floor is None else floor))


def polar_factor(m, *, floor: float | None = None, precision=lax.Precision.HIGHEST) -> Polar:
    """Polar factor ``U`` of ``(..., p, q)`` real or complex matrices by Newton–Schulz steps.

    The iteration of the module docstring, run on the side with the smaller Gram matrix:
    for ``p < q`` on ``M^H``, whose factor's adjoint is returned. The scale is
    ``c = min(||M||_F, ||M^H M||_F^(1/2)) >= sigma_max`` per matrix (loose by at most
    ``rank^(1/4)``); its Gram matrix is the first step's.

    Args:
        m: ``(..., p, q)`` matrices, any batch shape, float32/float64/complex64/complex128.
        floor: ``l_0`` of the :func:`schedule`, relative to ``c``; default
            :func:`default_floor`.
        precision: matmul precision of the steps.

    Returns:
        :class:`Polar`: ``U``, of the shape and dtype of ``m``, and ``c``. Singular values
        of ``M`` above ``floor * c`` map to 1 within round-off, zero ones stay 0 and those
        in between end in ``[0, 1]``. A zero matrix gives ``U = 0`` and ``c = 0``; NaN
        entries give NaN.

    Cost: :func:`polar_cost` products of ``max(p, q) min(p, q)^2`` multiply-adds, 46 in
    float32 and 90 in float64. Differentiating ``U`` differentiates the iterations.
    """
    floor = default_floor(m.dtype) if floor is None else floor
    wide = m.shape[-2] < m.shape[-1]
    x = adjoint(m) if wide else m
    x, gram, scale = spectral_normalized(x, wide=False, precision=precision)
    alphas = schedule(np.dtype(real_dtype(m.dtype)), floor)
    x = polynomial_step(x, gram, cubic_coefficients(alphas[0]), wide=False, precision=precision)
    table = jnp.asarray(alphas, real_dtype(m.dtype))

    def step(k, x):
        coefficients = cubic_coefficients(table[k])
        return polynomial_step(
            x,
            gram_matrix(x, wide=False, precision=precision),
            coefficients,
            wide=False,
            precision=precision,
        )

    x = lax.fori_loop(1, len(alphas), step, x)
    return Polar(adjoint(x) if wide else x, scale)


def pairwise_sum(x):
    """Sum over the last axis by halving: error ``O(eps log n)``.

    A plain float32 reduction of the ``p q`` terms of ``Re tr(U^H M)`` was measured 10
    times less accurate than the polar factor itself (``2.7e-7`` against ``3e-8``,
    64 x 64).
    """
    while x.shape[-1] > 1:
        if x.shape[-1] % 2:
            x = jnp.concatenate([x, jnp.zeros_like(x[..., :1])], axis=-1)
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0] if x.shape[-1] else jnp.zeros(x.shape[:-1], x.dtype)


def real_inner(u, m):
    """``Re tr(U^H M) = Re sum(conj(U) * M)`` per matrix, ``(...,)``, summed pairwise."""
    if jnp.iscomplexobj(u) or jnp.iscomplexobj(m):
        prod = lax.real(u) * lax.real(m) + lax.imag(u) * lax.imag(m)
    else:
        prod = u * m
    return pairwise_sum(prod.reshape(*prod.shape[:-2], prod.shape[-2] * prod.shape[-1]))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _nuclear_norm(m, floor, precision):
    return real_inner(polar_factor(m, floor=floor, precision=precision).factor, m)


@_nuclear_norm.defjvp
def _nuclear_norm_jvp(floor, precision, primals, tangents):
    """``d ||M||_* = Re tr(U^H dM)`` (Watson, 1992).

    At a rank-deficient ``M`` the norm is not differentiable; ``U``, zero on the null
    space, is the element of smallest norm of its subdifferential
    ``{U + W : U^H W = 0, W V = 0, ||W||_2 <= 1}``, so the derivative is finite everywhere.
    """
    (m,), (dm,) = primals, tangents
    u = polar_factor(m, floor=floor, precision=precision).factor
    return real_inner(u, m), real_inner(u, dm)


def nuclear_norm(m, *, floor: float | None = None, precision=lax.Precision.HIGHEST):
    """Nuclear norm ``||M||_* = Re tr(U^H M)`` of ``(..., p, q)`` matrices, shape ``(...,)``.

    ``U`` from :func:`polar_factor`; a ``jax.custom_jvp`` gives the tangent
    ``Re tr(U^H dM)`` (gradient ``U``), finite at rank-deficient ``M``. Real output.

    Accuracy: the singular values above ``floor * c`` contribute to round-off (measured
    ``3e-8`` relative in float32 on products of image-feature factors, like float32
    ``svd``); the error from the others is at most their sum (``<= rank * floor * c``).
    A computed ``M`` whose exact singular values are zero adds its round-off singular
    values, ``O(eps ||M||_2)`` each.
    """
    floor = default_floor(m.dtype) if floor is None else floor
    return _nuclear_norm(m, floor, precision)
