"""``"mpa"``: the matrix Padé approximant of Song et al. (TPAMI 2022), the paper's default.

Forward: ``A_hat^(1/2) ~ Q(A_hat)^(-1) P(A_hat)``, ``A_hat^(-1/2) ~ P(A_hat)^(-1) Q(A_hat)``.
Derivative: the exact root's, by the Lyapunov equation (:mod:`._closed_form`).
Cost: :func:`pade_cost` products and one batched LU solve forward; the Lyapunov solve
(``4 backward_iters - 2`` products) backward.
"""

from __future__ import annotations

import dataclasses

import jax.scipy.linalg

from jaxsqrtm import _coefficients, _validation
from jaxsqrtm._matrix import polyval, polyval_cost, symmetrize
from jaxsqrtm._methods._closed_form import closed_form_method


def pade_root(a_hat, *, degree: int, inverse: bool, precision):
    """Matrix Padé approximant (MPA) of ``A_hat^(+-1/2)``.

    ``A_hat^(1/2) ~ Q(A_hat)^(-1) P(A_hat)`` and ``A_hat^(-1/2) ~ P(A_hat)^(-1) Q(A_hat)``
    with the ``[m/m]`` polynomials of :func:`jaxsqrtm._coefficients.pade_sqrt`. ``P`` and
    ``Q`` commute, have positive coefficients, and are evaluated with shared powers. The
    quotient is symmetric (Hermitian for complex ``A_hat``) up to round-off, which the
    returned symmetric (Hermitian) part removes.

    Cost: :func:`pade_cost` matrix products (4 for ``m = 5``) and one batched LU solve.
    Accuracy: relative error ``~2 r^(2m+1)`` at an eigenvalue ``w``, with
    ``r = |1 - sqrt(w)| / (1 + sqrt(w))``; a zero eigenvalue maps to ``1 / (2m + 1)``.
    """
    p, q = polyval(_coefficients.pade_sqrt(degree), a_hat, precision=precision)
    numerator, denominator = (q, p) if inverse else (p, q)
    # LU factor + triangular solves directly: the custom_linear_solve wrapper of
    # jnp.linalg.solve is only needed to differentiate through the solve, which the
    # Lyapunov rule never does.
    return symmetrize(jax.scipy.linalg.lu_solve(jax.scipy.linalg.lu_factor(denominator), numerator))


def pade_cost(degree: int) -> int:
    """Matrix products of :func:`pade_root` (the solve excluded)."""
    return polyval_cost(degree, num_polys=2)


METHOD = dataclasses.replace(
    closed_form_method(
        "mpa",
        "matrix Padé approximant Q(A_hat)^-1 P(A_hat) of degree [m/m]",
        approximant=pade_root,
        cost=pade_cost,
        degree=5,
    ),
    mixed_note=_validation.MIXED_CLOSED_FORM_NOTE,
)
