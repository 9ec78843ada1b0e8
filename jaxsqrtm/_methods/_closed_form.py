"""The differentiation rule shared by the closed-form methods (``"mpa"``, ``"mtp"``).

A closed form evaluates a rational or polynomial approximation ``f(A_hat)`` of
``A_hat^(+-1/2)`` on ``A_hat = A / c`` and rescales it. Its derivative is not that of the
truncated approximation: following Song et al. (TPAMI 2022, section 4) it is the
derivative of the exact root, evaluated at the computed one, obtained from the Lyapunov
equation with a fixed number of sign iterations (``backward_iters``).

Rule (``jax.custom_jvp``, linear in the tangent ``dA``):

* square root, ``S = A^(1/2)``: ``dS = L_S^(-1)(dA)`` with ``L_S(X) = S X + X S``,
  solved with ``B_0 = S / sqrt(c)``;
* inverse root, ``P = A^(-1/2)``: ``A^(-1) = P^2`` gives ``P dP + dP P = -P^2 dA P^2``,
  i.e. ``dP = -c_P^3 P_hat^2 L_{P_hat}^(-1)(dA) P_hat^2`` with ``P_hat = P / c_P`` for a
  per-matrix scale ``c_P`` of ``P``, which keeps every intermediate in range whatever
  the scale of ``A``.

For complex Hermitian ``A`` the rule is the same: ``S``, ``P`` and the solves are
Hermitian, the scales ``c`` and ``c_P`` real, and the Lyapunov solve transposes with
``conj(S)`` (:func:`jaxsqrtm._lyapunov.lyapunov_inverse`).

JAX transposes it for reverse mode: ``dl/dA = L_S^(-1)(G)``, and
``c_P^3 L_{P_hat}^(-1)(-P_hat^2 G P_hat^2)`` for the inverse root; the tangent map is
wrapped in ``jax.checkpoint`` so reverse mode keeps only the root and the scale and
recomputes ``P^2`` in the backward pass. The Lyapunov solve goes through
:func:`jaxsqrtm._lyapunov.lyapunov_inverse`, so the rule can be differentiated again.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsqrtm import _lyapunov
from jaxsqrtm._core import Config, Method, Root, choice_knob, count_knob
from jaxsqrtm._matrix import NORMALIZATIONS, matrix_scale, mm, normalized, rescale, spectral_bound


def closed_form_method(name: str, summary: str, *, approximant, cost, degree: int) -> Method:
    """The table entry of a closed form.

    Args:
        name, summary: the entry's name and one-line description.
        approximant: ``(a_hat, *, degree, inverse, precision) -> A_hat^(+-1/2)``.
        cost: ``degree -> products`` of ``approximant``.
        degree: the default ``degree`` knob (the paper's).

    Knobs: ``degree``, ``normalization`` (default ``"frobenius"``, the paper's) and
    ``backward_iters`` (default 8, the paper's).
    """
    return Method(
        name=name,
        summary=summary,
        derivative="exact-root Lyapunov rule, backward_iters sign iterations",
        knobs=(
            count_knob("degree", degree),
            choice_knob("normalization", "frobenius", NORMALIZATIONS),
            count_knob("backward_iters", 8, minimum=0),
        ),
        root=functools.partial(closed_form_root, approximant=approximant),
        cost=functools.partial(closed_form_cost, approximant_cost=cost),
    )


def closed_form_root(a, config: Config, approximant) -> Root:
    """``Root`` of a closed form ``approximant(a_hat, degree=, inverse=, precision=)``."""
    out, c = _closed_form(a, config, approximant)
    return Root(out, c, jnp.zeros(c.shape, jnp.int32))


def closed_form_cost(config: Config, backward: bool, approximant_cost) -> int:
    """Forward products of the approximant; backward: the Lyapunov solve, plus ``P^2``,
    ``P^2 G`` and ``(P^2 G) P^2`` for the inverse root."""
    forward = approximant_cost(config.degree)
    if not backward:
        return forward
    extra = 3 if config.inverse else 0
    return forward + extra + _lyapunov.lyapunov_cost(config.backward_iters, symmetric_rhs=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _closed_form(a, config, approximant):
    a_hat, c = normalized(a, config.normalization, precision=config.precision)
    root_hat = approximant(
        a_hat, degree=config.degree, inverse=config.inverse, precision=config.precision
    )
    return rescale(root_hat, c, config.inverse), c


@_closed_form.defjvp
def _closed_form_jvp(config, approximant, primals, tangents):
    (a,), (da,) = primals, tangents
    out, c = _closed_form(a, config, approximant)
    scale = functools.partial(
        matrix_scale, normalization=config.normalization, precision=config.precision
    )
    _, dc = jax.jvp(scale, (a,), (da,))
    tangent = _inverse_root_tangent if config.inverse else _root_tangent
    return (out, c), (tangent(out, c, da, config), dc)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _root_tangent(s, c, ds_rhs, config):
    """``L_S^(-1)(dA)``, the sign iteration started at ``S / sqrt(c)`` (``c`` real)."""

    def solve(rhs):
        return _lyapunov.solve_scaled(
            s,
            rhs,
            jnp.sqrt(jnp.maximum(c, 0)),
            num_iters=config.backward_iters,
            symmetric_rhs=True,
            precision=config.precision,
        )

    return _lyapunov.lyapunov_inverse(s, ds_rhs, solve, precision=config.precision)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _inverse_root_tangent(p, c, da, config):
    """``-c_P^3 P_hat^2 L_{P_hat}^(-1)(dA) P_hat^2``; ``c_P`` reuses ``P^2`` for the bound."""
    del c  # the scale of P is measured on P itself
    precision = config.precision
    p2 = mm(p, p, precision)
    if config.normalization == "spectral_bound":
        c_p = spectral_bound(p, square=p2)
    else:
        c_p = matrix_scale(p, config.normalization, precision=precision)
    c_p = jnp.where(c_p != 0, c_p, 1)[..., None, None]
    p_hat, p_hat2 = p / c_p, p2 / (c_p * c_p)

    def solve(rhs):
        return _lyapunov.solve_scaled(
            p_hat,
            rhs,
            jnp.ones(c_p.shape[:-2], c_p.dtype),
            num_iters=config.backward_iters,
            symmetric_rhs=True,
            precision=precision,
        )

    x = _lyapunov.lyapunov_inverse(p_hat, da, solve, precision=precision)
    return -(c_p**3) * mm(mm(p_hat2, x, precision), p_hat2, precision)
