"""Exact coefficients of the Taylor and Padé approximations of ``sqrt``.

All coefficients are exact rationals built with :mod:`fractions` at trace time and
converted to Python floats only when they are multiplied into an array, so the same
tables serve float32 and float64 without any loss beyond the final rounding.
"""

from __future__ import annotations

import functools
import math
from fractions import Fraction


@functools.cache
def taylor_sqrt(degree: int) -> tuple[Fraction, ...]:
    """Coefficients ``a_k`` of ``sqrt(1 - z) = sum_k a_k z^k`` up to ``z**degree``.

    ``a_0 = 1`` and ``a_k = -C(2k, k) / (4^k (2k - 1))`` for ``k >= 1``
    (``-1/2, -1/8, -1/16, -5/128, ...``).
    """
    return tuple(
        Fraction(1) if k == 0 else Fraction(-math.comb(2 * k, k), 4**k * (2 * k - 1))
        for k in range(degree + 1)
    )


@functools.cache
def taylor_inv_sqrt(degree: int) -> tuple[Fraction, ...]:
    """Coefficients ``d_k`` of ``(1 - z)^(-1/2) = sum_k d_k z^k`` up to ``z**degree``.

    ``d_k = C(2k, k) / 4^k`` (``1, 1/2, 3/8, 5/16, ...``).
    """
    return tuple(Fraction(math.comb(2 * k, k), 4**k) for k in range(degree + 1))


@functools.cache
def pade_sqrt(degree: int) -> tuple[tuple[Fraction, ...], tuple[Fraction, ...]]:
    """Numerator and denominator of the ``[m/m]`` Padé approximant of ``sqrt(w)`` at 1.

    From ``(1 + sqrt(w))^(2m+1) = P(w) + sqrt(w) Q(w)``:
    ``P(w) = sum_k C(2m+1, 2k) w^k`` and ``Q(w) = sum_k C(2m+1, 2k+1) w^k``, and
    ``sqrt(w) ~ P(w) / Q(w)``, exact to order ``2m`` in ``1 - w``. Writing
    ``r = (1 - sqrt(w)) / (1 + sqrt(w))`` the relative error is exactly
    ``2 r^(2m+1) / (1 - r^(2m+1))``, so it depends only on how far ``w`` is from 1 on a
    logarithmic scale. Both polynomials have positive coefficients: for ``w`` in
    ``(0, 1]`` they are positive and well conditioned. Scaled by ``2^(-2m)`` so that
    ``P(1) = Q(1) = 1``.

    Returns:
        ``(p, q)``, each a tuple of ``m + 1`` coefficients in increasing powers of ``w``.
    """
    n = 2 * degree + 1
    scale = Fraction(1, 4**degree)
    p = tuple(math.comb(n, 2 * k) * scale for k in range(degree + 1))
    q = tuple(math.comb(n, 2 * k + 1) * scale for k in range(degree + 1))
    return p, q
