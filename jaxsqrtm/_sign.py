"""Step sizes and stopping rule of the adaptively scaled Newton–Schulz sign iteration.

Both the accurate forward (the sign of ``[[0, A_hat], [I, 0]]``, whose eigenvalues are
``+-sqrt(w)``) and the accurate Lyapunov backward (the sign of ``[[B, C], [0, -B]]``)
apply the cubic ``h(y) = y (3 - y^2) / 2`` to ``alpha_k X_k``. If the eigenvalues ``x``
of ``X_k`` lie in ``[l, 1]``, the ``alpha`` that makes ``h(alpha x)`` the best cubic
approximation of 1 on that interval (Chen & Chou, 2014; it equioscillates,
``h(alpha l) = h(alpha)``) is::

    alpha^2 = 3 / (1 + l + l^2),

which maps ``[l, 1]`` into ``[h(alpha l), 1]``: small eigenvalues grow by
``3 sqrt(3) / 2 ~ 2.6`` per step instead of 1.5, and the last steps are ordinary
quadratically convergent Newton–Schulz (``alpha -> 1``). Any ``alpha`` in ``[1, sqrt 3)``
keeps ``[0, 1]`` inside ``[0, 1]``, so an inexact ``l`` costs speed, never convergence.

The matrices are real symmetric or complex Hermitian; the step sizes and deviations are
real either way.

``l`` is measured, not assumed: ``1 - l^2 = ||I - X_k^2||_2`` is estimated by power
iteration on ``I - X_k^2`` (a product every step computes anyway), warm-started from the
previous step's vector because the slowest eigenvector does not change between steps.
The estimate is a lower bound of the deviation, so ``l`` is over-estimated and the step
errs on the cautious side. The first step has no previous vector; it starts with
``WARMUP_MATVECS`` steps on ``(I - X_0)^2``, formed from the ``X_0^2`` that step computes
(:func:`first_deviation`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm._matrix import eye_like, matvec, power_iterate, symmetrize

WARMUP_MATVECS = 4  # on (I - X_0)^2: as good as 8 on I - X_0
MATVECS_PER_STEP = 2
MAX_ITERS = 40


def floor_for(dtype) -> float:
    """Smallest ``l`` the schedule plans for: ``sqrt(eps)``, i.e. condition ``1/eps``."""
    return float(jnp.finfo(dtype).eps) ** 0.5


def tolerance_for(dtype) -> float:
    """Stop after the step that starts with ``||I - X^2||_2 <= 4 sqrt(eps)``.

    Newton–Schulz converges quadratically there (``e <- 1.5 e^2``), so that last step
    leaves an error of about ``6 eps``.
    """
    return 4 * float(jnp.finfo(dtype).eps) ** 0.5


def deviation(x_squared, v, *, num_iters, precision):
    """Estimate ``||I - X^2||_2`` per matrix by warm-started power iteration."""
    return power_iterate(lambda u: u - matvec(x_squared, u, precision), v, num_iters=num_iters)


def first_deviation(x, x_squared, v, *, num_iters, precision):
    """Estimate ``||I - X||_2`` per matrix from ``(I - X)^2 = I - 2X + X^2``.

    For the first step, where ``X^2`` is a product the step needs anyway: ``num_iters``
    power-iteration steps on ``(I - X)^2`` converge like ``2 num_iters`` on ``I - X``.
    The form ``I - 2X + X^2`` cancels where ``X`` is close to ``I``: the squared
    deviation carries an absolute round-off of about ``n eps``, which matters only below
    a deviation of about ``sqrt(n eps)``. A first step rarely starts there: ``A_hat``
    is scaled by a bound that exceeds its largest eigenvalue by ``n^(1/4)`` when all
    eigenvalues are equal, and is close to it only when one eigenvalue dominates.
    """
    deviation_squared = symmetrize(eye_like(x) - 2 * x + x_squared)
    dev2, v = power_iterate(
        lambda u: matvec(deviation_squared, u, precision), v, num_iters=num_iters
    )
    return jnp.sqrt(dev2), v


def cubic_scale(dev, floor):
    """``alpha`` of the optimal scaled cubic on ``[l, 1]`` with ``l^2 = 1 - dev``."""
    l2 = jnp.clip(1 - dev, floor * floor, 1)
    return jnp.sqrt(3 / (1 + jnp.sqrt(l2) + l2))


def _freeze(active, new, old):
    """``new`` where ``active`` (batch shape ``(...)``) is true, else ``old``, leaf by leaf."""

    def select(n, o):
        mask = active.reshape(active.shape + (1,) * (n.ndim - active.ndim))
        return jnp.where(mask, n, o)

    return jax.tree.map(select, new, old)


def iterate_per_matrix(step, state, active, *, start, stop, until_all_frozen=True):
    """Run ``step`` while some matrix is active; a finished matrix keeps its state.

    The one loop of every adaptive iteration: ``(new_state, still_active) =
    step(k, state)`` for ``k = start, start + 1, ...`` while ``k < stop`` and (with
    ``until_all_frozen``) any ``active``; each leaf of ``state`` has the batch shape
    ``(...)`` of ``active`` as its leading axes and is frozen where ``active`` is false,
    so a matrix's result does not depend on how long its neighbours iterate.
    ``lax.while_loop``: differentiable in forward mode; the methods give reverse mode
    their own rules.

    Under ``jax.shard_map`` each device stops when its own matrices have converged (the
    ``jnp.any`` is over the local batch); under plain ``jit`` with a batch sharded
    over devices it is an all-reduce per step. A loop whose ``stop`` already is the
    last step anyone needs (the replayed backward) passes ``until_all_frozen=False``
    and tests only ``k < stop``.

    Returns:
        The final ``state``.
    """

    def keep_going(carry):
        k, _, active = carry
        return (k < stop) & jnp.any(active) if until_all_frozen else k < stop

    def body(carry):
        k, state, active = carry
        new, still = step(k, state)
        return k + 1, _freeze(active, new, state), active & still

    _, state, _ = lax.while_loop(keep_going, body, (start, state, active))
    return state
