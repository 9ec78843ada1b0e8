"""``"mtp"``: the matrix Taylor polynomial of Song et al. (TPAMI 2022).

Forward: ``A_hat^(+-1/2) ~ sum_{k<=K} a_k Z^k`` with ``Z = I - A_hat``.
Derivative: the exact root's, by the Lyapunov equation (:mod:`._closed_form`).
Cost: :func:`taylor_cost` products forward (Paterson–Stockmeyer); the Lyapunov solve
(``4 backward_iters - 2`` products) backward.
"""

from __future__ import annotations

import dataclasses

from jaxsqrtm import _coefficients, _validation
from jaxsqrtm._matrix import eye_like, polyval, polyval_cost
from jaxsqrtm._methods._closed_form import closed_form_method


def taylor_root(a_hat, *, degree: int, inverse: bool, precision):
    """Matrix Taylor polynomial (MTP) of ``A_hat^(+-1/2)`` around the identity.

    ``A_hat^(1/2) ~ sum_{k<=K} a_k Z^k`` and ``A_hat^(-1/2) ~ sum_{k<=K} d_k Z^k`` with
    ``Z = I - A_hat`` (coefficients in :mod:`jaxsqrtm._coefficients`), real or complex
    Hermitian ``A_hat`` alike.

    Cost: :func:`taylor_cost` matrix products (5 for ``K = 10``, Paterson–Stockmeyer).
    Accuracy: the truncation error at an eigenvalue ``w`` of ``A_hat`` is the tail of the
    series at ``z = 1 - w``: small for ``w`` near 1, and ``O(1)`` as ``w -> 0`` (a zero
    eigenvalue maps to ``0.176`` for the root with ``K = 10``); the inverse root's series
    diverges at ``w = 0``.
    """
    coeffs = _coefficients.taylor_inv_sqrt(degree) if inverse else _coefficients.taylor_sqrt(degree)
    (root,) = polyval([coeffs], eye_like(a_hat) - a_hat, precision=precision)
    return root


def taylor_cost(degree: int) -> int:
    """Matrix products of :func:`taylor_root`."""
    return polyval_cost(degree)


METHOD = dataclasses.replace(
    closed_form_method(
        "mtp",
        "matrix Taylor polynomial of degree K in I - A_hat",
        approximant=taylor_root,
        cost=taylor_cost,
        degree=10,
    ),
    mixed_note=_validation.MIXED_CLOSED_FORM_NOTE,
)
