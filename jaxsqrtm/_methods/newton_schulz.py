"""``"ns"``: the coupled Newton–Schulz iteration of iSQRT-COV, the paper's baseline.

Forward: ``num_iters`` unscaled coupled steps on the trace-normalised matrix.
Derivative: JAX's own autodiff through the (unrolled) steps, in every mode.
Cost: :func:`newton_schulz_cost` products forward; reverse mode costs two products per
forward product.
"""

from __future__ import annotations

import jax.numpy as jnp

from jaxsqrtm._core import Config, Method, Root, choice_knob, count_knob
from jaxsqrtm._matrix import NORMALIZATIONS, eye_like, mm, normalized, rescale


def coupled_step(y, z, w, alpha, precision):
    """``alpha (3Y - alpha^2 Y W) / 2`` and ``alpha (3Z - alpha^2 W Z) / 2``, 2 products.

    The coupled Newton–Schulz step ``Y T, T Z`` with ``T = alpha (3I - alpha^2 W) / 2``
    and ``W = Z Y``, written without ``T``: no identity array, and less round-off on
    clustered spectra. ``alpha = 1`` is the plain step; the accurate mode scales it.
    """
    y = 0.5 * alpha * (3 * y - alpha * alpha * mm(y, w, precision))
    z = 0.5 * alpha * (3 * z - alpha * alpha * mm(w, z, precision))
    return y, z


def newton_schulz_root(a_hat, *, num_iters: int, inverse: bool, precision):
    """Coupled Newton–Schulz iteration (iSQRT-COV) for ``A_hat^(+-1/2)``.

    ``Y_0 = A_hat, Z_0 = I``; ``T_k = (3I - Z_k Y_k) / 2``, ``Y_{k+1} = Y_k T_k``,
    ``Z_{k+1} = T_k Z_k``; ``Y_k -> A_hat^(1/2)`` and ``Z_k -> A_hat^(-1/2)`` quadratically
    once the spectrum is near 1, for a spectrum in ``(0, 3)``. Real symmetric and complex
    Hermitian ``A_hat`` alike (``Y_k``, ``Z_k`` are polynomials in ``A_hat``).

    Cost: :func:`newton_schulz_cost` matrix products (12 for 5 iterations): the first
    iteration needs one product (``Z_0 = I``), the last only the requested root.
    Accuracy: an eigenvalue ``w`` needs about ``log2(1/w) / 2`` iterations before the
    quadratic phase, so a fixed 5 iterations leave small eigenvalues unconverged.
    """
    z = 0.5 * (3 * eye_like(a_hat) - a_hat)
    if num_iters == 1:
        return z if inverse else mm(a_hat, z, precision)
    y = 0.5 * (3 * a_hat - mm(a_hat, a_hat, precision))

    # Unrolled: reverse mode through a loop would stack Y, Z and W of every step.
    for _ in range(num_iters - 2):
        y, z = coupled_step(y, z, mm(z, y, precision), 1.0, precision)
    w = mm(z, y, precision)
    if inverse:
        return 0.5 * (3 * z - mm(w, z, precision))
    return 0.5 * (3 * y - mm(y, w, precision))


def newton_schulz_cost(num_iters: int, inverse: bool = False) -> int:
    """Matrix products of :func:`newton_schulz_root`."""
    if num_iters == 1:
        return 0 if inverse else 1
    return 1 + 3 * (num_iters - 2) + 2


def _root(a, config: Config) -> Root:
    a_hat, c = normalized(a, config.normalization, precision=config.precision)
    root_hat = newton_schulz_root(
        a_hat, num_iters=config.num_iters, inverse=config.inverse, precision=config.precision
    )
    iterations = jnp.full(c.shape, config.num_iters, jnp.int32)
    return Root(rescale(root_hat, c, config.inverse), c, iterations)


def _cost(config: Config, backward: bool) -> int:
    forward = newton_schulz_cost(config.num_iters, config.inverse)
    return 3 * forward if backward else forward


METHOD = Method(
    name="ns",
    summary="coupled Newton–Schulz (iSQRT-COV), num_iters unscaled steps",
    derivative="autodiff through the unrolled iterations",
    knobs=(count_knob("num_iters", 5), choice_knob("normalization", "trace", NORMALIZATIONS)),
    root=_root,
    cost=_cost,
    mixed_note=(
        "its fixed, unscaled steps are differentiated by autodiff; a bfloat16 step leaves "
        "an error of about 1e-3 that no later step removes, and there is no convergence "
        "measurement to switch precision on"
    ),
)
