"""Exact coefficients and the shared polynomial evaluator."""

import math
from fractions import Fraction

import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from jaxsqrtm import _coefficients
from jaxsqrtm._matrix import polyval, polyval_cost


def test_taylor_sqrt_first_terms():
    assert _coefficients.taylor_sqrt(4) == (
        1,
        Fraction(-1, 2),
        Fraction(-1, 8),
        Fraction(-1, 16),
        Fraction(-5, 128),
    )


def test_taylor_inv_sqrt_first_terms():
    assert _coefficients.taylor_inv_sqrt(3) == (1, Fraction(1, 2), Fraction(3, 8), Fraction(5, 16))


@pytest.mark.parametrize("degree", [3, 10, 20])
def test_taylor_series_square_to_the_right_function(degree):
    """(sum a_k z^k)^2 = 1 - z and (sum d_k z^k)^2 (1 - z) = 1, to order ``degree``."""
    a = _coefficients.taylor_sqrt(degree)
    d = _coefficients.taylor_inv_sqrt(degree)

    def square(c):
        return [sum(c[i] * c[k - i] for i in range(k + 1)) for k in range(degree + 1)]

    assert square(a) == [1, -1] + [0] * (degree - 1)
    d2 = square(d)
    assert [d2[k] - (d2[k - 1] if k else 0) for k in range(degree + 1)] == [1] + [0] * degree


def test_pade_degree_5_matches_design():
    p, q = _coefficients.pade_sqrt(5)
    assert [x * 1024 for x in p] == [1, 55, 330, 462, 165, 11]
    assert [x * 1024 for x in q] == [11, 165, 462, 330, 55, 1]


@pytest.mark.parametrize("degree", [1, 5, 9])
def test_pade_is_binomial_split(degree):
    """(1 + sqrt(w))^(2m+1) = 4^m (P(w) + sqrt(w) Q(w)), checked at a rational square."""
    p, q = _coefficients.pade_sqrt(degree)
    root = Fraction(3, 7)
    w = root * root
    lhs = (1 + root) ** (2 * degree + 1)
    rhs = 4**degree * (
        sum(c * w**k for k, c in enumerate(p)) + root * sum(c * w**k for k, c in enumerate(q))
    )
    assert lhs == rhs


@pytest.mark.parametrize(
    ("degree", "num_polys", "expected"), [(10, 1, 5), (5, 2, 4), (1, 1, 0), (2, 1, 1), (16, 2, 9)]
)
def test_polyval_cost(degree, num_polys, expected):
    assert polyval_cost(degree, num_polys) == expected


@pytest.mark.parametrize("degree", [0, 1, 2, 5, 10, 13])
def test_polyval_matches_eigenvalue_evaluation(degree):
    rng = np.random.default_rng(degree)
    lam = rng.uniform(-1, 1, 6)
    u = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    x = (u * lam) @ u.T
    coeffs = [rng.standard_normal(degree + 1), rng.standard_normal(max(degree, 1))]
    got = polyval([c.tolist() for c in coeffs], jnp.asarray(x), precision=lax.Precision.HIGHEST)
    for c, value in zip(coeffs, got, strict=True):
        expected = (u * np.polynomial.polynomial.polyval(lam, c)) @ u.T
        np.testing.assert_allclose(value, expected, atol=1e-12)
    assert math.isfinite(float(jnp.sum(got[0])))
