"""Fixed polynomial schedules of the polar factor, as data.

A schedule is a tuple of steps, each the coefficients ``(a, b)`` or ``(a, b, c)`` of an
odd polynomial ``p(s) = a s + b s^3 + c s^5`` applied to the singular values of ``X``
(:func:`jaxsqrtm._polar.polynomial_step`); a run of ``k`` steps uses the first ``k`` and
repeats the last one beyond the table. Every table here is built in float64 NumPy at
import, from its definition:

* :data:`QUINTIC`: optax's ``orthogonalize_via_newton_schulz`` step
  ``(3.4445, -4.7750, 2.0315)``, 5 steps after Frobenius normalisation. Its slope at 0 is
  tuned past convergence: singular values end in about ``[0.7, 1.2]``, not at 1.
* :data:`POLAR_EXPRESS`: the greedy minimax schedule of Amsel, Persson, Musco & Gower,
  "The Polar Express" (2025), 8 steps from :data:`POLAR_EXPRESS_LOWER` (see
  :func:`polar_express`).
* :data:`CUBIC`: the classic Newton–Schulz step ``X (3 I - X^H X) / 2``,
  :data:`CUBIC_STEPS` steps.
"""

from __future__ import annotations

import numpy as np

QUINTIC = ((3.4445, -4.7750, 2.0315),)
QUINTIC_STEPS = 5
QUINTIC_EPS = 1e-8  # optax's: X / (||X||_F + eps)

CUBIC = ((1.5, -0.5),)
# x -> x (3 - x^2) / 2 takes 8.6e-5 to within 5e-3 of 1 (|x^2 - 1| <= 1e-2) in 26 steps
# (from 1e-3 in 20): the guarantee of POLAR_EXPRESS, at 52 products instead of 24.
CUBIC_STEPS = 26

POLAR_EXPRESS_LOWER = 1e-4
POLAR_EXPRESS_STEPS = 8
# The design interval of a step is [max(l, CUSHION u), u]: for a smaller l the optimal
# polynomial hardly changes (slope at 0: 8.47 at l = 1e-3, 8.23 at l = 1 / 32) but it
# maps [l, u] closer to 0 at its left end.
POLAR_EXPRESS_CUSHION = 1 / 32
# Every step but the last evaluates p(x / SAFETY): a singular value pushed above the
# design interval by round-off (bfloat16 products: 0.4 %) stays where p is at most its
# design maximum, instead of being amplified from step to step. Measured with bfloat16
# products on 9999 gradient-like matrices (testing.gradient_like, 64x128, 128x64, 96x96):
# without it 2107 results are non-finite (700 with only the normalisation's factor below),
# with it none, top singular value 1.0062 (1.0063 with both factors).
POLAR_EXPRESS_SAFETY = 1.01
# The normalisation's bound (a guaranteed one, but computed with the steps' products) is
# multiplied by this.
NORMALIZATION_SAFETY = 1.01


def _value(coefficients, x):
    a, b, c = coefficients
    return x * (a + x * x * (b + c * x * x))


def _critical_points(coefficients, lower, upper) -> list[float]:
    """Positive roots of ``p'(x) = a + 3 b x^2 + 5 c x^4`` inside ``(lower, upper)``."""
    a, b, c = coefficients
    roots = np.roots([5 * c, 3 * b, a]) if c else np.roots([3 * b, a])
    squares = [float(r.real) for r in np.atleast_1d(roots) if abs(r.imag) == 0 and r.real > 0]
    return sorted(float(x) for x in np.sqrt(squares) if lower < x < upper)


def image(coefficients, lower: float, upper: float) -> tuple[float, float]:
    """``(min, max)`` of ``p`` on ``[lower, upper]``."""
    points = [lower, upper, *_critical_points(coefficients, lower, upper)]
    values = [_value(coefficients, x) for x in points]
    return min(values), max(values)


def minimax_odd_quintic(lower: float, upper: float) -> tuple[float, float, float]:
    """The odd quintic ``p`` minimising ``max |1 - p(x)|`` over ``[lower, upper]``.

    By the Remez exchange: ``p - 1`` equioscillates at ``lower``, the two critical points
    of ``p`` and ``upper`` (``p(lower) = 1 - E``, a maximum ``1 + E``, a minimum
    ``1 - E``, ``p(upper) = 1 + E``). An interval narrower than ``1e-3 upper`` gets the
    limit of those polynomials, the Newton–Schulz quintic ``(15 x - 10 x^3 + 3 x^5) / 8``
    rescaled to ``upper`` (its error there is below ``1e-9``).

    Returns:
        ``(a, b, c)`` as Python floats.
    """
    if not 0 < lower < upper:
        raise ValueError(f"need 0 < lower < upper, got {lower!r}, {upper!r}")
    if upper - lower <= 1e-3 * upper:
        return (15 / 8 / upper, -10 / 8 / upper**3, 3 / 8 / upper**5)
    x = lower + (upper - lower) * np.array([0.0, 0.25, 0.75, 1.0])
    signs = np.array([1.0, -1.0, 1.0, -1.0])
    for _ in range(100):
        system = np.stack([x, x**3, x**5, signs], axis=1)
        a, b, c, _ = np.linalg.solve(system, np.ones(4))
        inner = _critical_points((a, b, c), lower, upper)
        if len(inner) != 2:
            raise RuntimeError(f"Remez exchange failed on [{lower}, {upper}]")
        new = np.array([lower, *inner, upper])
        done = np.max(np.abs(new - x)) <= 4 * np.finfo(np.float64).eps * upper
        x = new
        if done:
            break
    return float(a), float(b), float(c)


def polar_express(
    lower: float = POLAR_EXPRESS_LOWER,
    steps: int = POLAR_EXPRESS_STEPS,
    *,
    cushion: float = POLAR_EXPRESS_CUSHION,
    safety: float = POLAR_EXPRESS_SAFETY,
) -> tuple[tuple[float, float, float], ...]:
    """The greedy minimax schedule for singular values in ``[lower, 1]``.

    Step ``t`` knows that the singular values lie in ``[l_t, u_t]`` (``[lower, 1]`` at
    first) and applies the odd quintic closest to 1 in the maximum norm there
    (:func:`minimax_odd_quintic`; the composition of such greedy choices is the optimal
    composition, Amsel et al. 2025, Theorem 4.1), designed on
    ``[max(l_t, cushion u_t), u_t]`` and scaled so that ``p(l_t)`` and ``p(u_t)`` lie
    equally far below and above 1. All steps but the last are then evaluated at
    ``x / safety``. The next interval is the exact image of ``[l_t, u_t safety]``
    (``[l_t, u_t]`` for the last step) under the step.

    Returns:
        ``steps`` coefficient triples ``(a, b, c)``.
    """
    low, high, table = lower, 1.0, []
    for t in range(steps):
        coefficients = minimax_odd_quintic(max(low, cushion * high), high)
        recentre = 2 / (_value(coefficients, low) + _value(coefficients, high))
        a, b, c = (recentre * v for v in coefficients)
        last = t == steps - 1
        if not last:
            a, b, c = a / safety, b / safety**3, c / safety**5
        table.append((float(a), float(b), float(c)))
        low, high = image((a, b, c), low, high if last else high * safety)
    return tuple(table)


def schedule_image(table, lower: float, upper: float = 1.0) -> tuple[float, float]:
    """Bounds ``(min, max)`` of the singular values after ``table``, from ``[lower, upper]``."""
    for row in table:
        low, high = image(tuple(row) + (0.0,) * (3 - len(row)), lower, upper)
        lower, upper = low, high
    return lower, upper


POLAR_EXPRESS = polar_express()
