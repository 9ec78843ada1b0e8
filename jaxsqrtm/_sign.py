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

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm._matrix import BFLOAT16, eye_like, matvec, power_iterate, symmetrize

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


def iterate_per_matrix(
    step, state, active, *, start, stop, until_all_frozen=True, return_active=False
):
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
        The final ``state``; with ``return_active``, ``(state, active)``, where ``active``
        marks the matrices still running when ``stop`` ended the loop.
    """

    def keep_going(carry):
        k, _, active = carry
        return (k < stop) & jnp.any(active) if until_all_frozen else k < stop

    def body(carry):
        k, state, active = carry
        new, still = step(k, state)
        return k + 1, _freeze(active, new, state), active & still

    _, state, active = lax.while_loop(keep_going, body, (start, state, active))
    return (state, active) if return_active else state


@dataclasses.dataclass(frozen=True)
class MixedPrecision:
    """The ``precision="mixed"`` policy: which products of an adaptive sign iteration take
    bfloat16 operands (float32 accumulation), decided per matrix from the iteration's
    own measurements, and how float32 accuracy is recovered.

    What bfloat16 products do to a sign iteration (measured in float32 on the accurate
    square root, n = 64): rounding an operand ``X`` to bfloat16 perturbs it by about
    ``u ||X||`` (``u = 2^-8``) in every direction, and the iteration carries that
    perturbation to its limit instead of correcting it. One bfloat16 step anywhere in
    the forward iteration, early or late, leaves a relative error of ``1e-3`` at
    condition number ``1e2`` and up to ``2e-2`` at ``1e4``, whatever the float32 steps
    after it; only the step sizes correct themselves. So the policy does not finish with
    float32 steps but with float32 residuals, the way mixed-precision iterative
    refinement does: Newton steps for the root and refinement steps for the Lyapunov
    solves, each one float32 residual product plus bfloat16 work. The Lyapunov sign
    iteration with bfloat16 products solves ``S X + X S = C`` to a relative error of
    ``4e-3`` to ``6e-3`` (condition number of ``S`` up to ``300``), so each refinement
    step gains that factor.

    The measurements and what they decide (for an iteration on a matrix scaled to
    spectrum ``(0, 1]``):

    * the first deviation ``dev_0 = ||I - X_0||_2`` (:meth:`low_precision`): bfloat16
      steps only if ``1 - dev_0`` (an upper bound of the smallest eigenvalue of
      ``X_0^2``) is at least ``min_smallest``;
    * the deviation of each bfloat16 step (:meth:`keep_low`): the steps stop after the
      one that starts below ``switch``, or once the deviation stagnates at the bfloat16
      noise level (above ``stagnation`` times the previous one below ``0.3``), at most
      ``max_low_steps``; the replayed schedule then appends the unit steps of
      :meth:`finishing`;
    * the condition number, from an estimate the caller makes after the bfloat16 steps
      (the accurate square root: ``||Z||_2^2``): a matrix above ``max_condition`` is
      not served by the bfloat16 steps (beyond about ``1e3`` their errors exceed the
      small eigenvalues and the refinement stalls: measured up to 7 times float32's
      gradient error at ``3e3``), and bfloat16 Lyapunov solves need a condition number
      of the coefficient matrix of at most ``max_solve_condition`` (measured: refined
      solves fail at ``1e3`` on clustered spectra);
    * the size of each refinement step (:meth:`refine_again`): another one follows while
      the size times the observed contraction predicts an error above
      ``refine_target`` machine epsilons and the steps still contract by
      ``stagnation``, at most ``max_refinements``; a refined Lyapunov solve whose last
      corrections predict an error above ``solve_tolerance`` is not served.

    A batched product has one precision, so the per-matrix choice maps onto separate
    passes: the bfloat16 loop iterates the matrices that take bfloat16 steps, each
    frozen once done (:func:`low_precision_phase`), and the single-precision iteration
    computes the matrices it does not serve, run only when the batch has some
    (:func:`where_some`).

    Attributes:
        low: the precision of the bfloat16 products (:data:`jaxsqrtm._matrix.BFLOAT16`).
        high: that of the float32 steps and residuals (``HIGHEST``).
        min_smallest: smallest ``1 - dev_0`` that takes bfloat16 steps.
        switch: deviation below which the bfloat16 steps stop.
        stagnation: contraction factor below which a deviation or a refinement counts
            as progress.
        finishing_steps: most unit steps appended to a bfloat16 schedule.
        finish_target: distance from 1 of the smallest eigenvalue that the finishing
            steps reach.
        max_low_steps: most bfloat16 steps; a matrix that needs more is not served.
        max_condition: largest condition number served by bfloat16 iteration steps.
        max_solve_condition: largest condition number of a Lyapunov coefficient matrix
            solved with bfloat16 products.
        solve_tolerance: largest error that the last corrections of a served refined
            Lyapunov solve predict.
        max_refinements: most refinement (Newton) steps of a root.
        refine_target: predicted relative error, in machine epsilons, at which the
            refinement of a root stops.
        backward_solves: bfloat16 Lyapunov solves of a refined solve (one, then one
            refinement step with a float32 residual after each further solve).
        block_solves: the same for a general (non-symmetric) right-hand side.
        polar_solves: the same for the polar factor's derivative, whose ``H`` has the
            condition number of ``G`` itself (the square root's ``S_hat`` has the square
            root of ``A``'s): measured in float32 on clustered spectra at condition number
            ``1e2``, three solves left 3.7 times ``"highest"``'s gradient error, four 0.9
            times with jax 0.10.2 but 4.1 times with jax 0.7.1 (48 x 24), five 1.1 times
            (at ``200``: 0.95 times; at ``300``: 1.65 times, four 11 times).
        max_polar_solve_condition: largest condition number of ``G`` (estimated from the
            first deviation) whose polar derivative takes the refined bfloat16 solves.
    """

    low: Any = BFLOAT16
    high: Any = lax.Precision.HIGHEST
    min_smallest: float = 1e-5
    switch: float = 0.05
    stagnation: float = 0.5
    finishing_steps: int = 3
    finish_target: float = 1e-6
    max_low_steps: int = 9
    max_condition: float = 1e3
    max_solve_condition: float = 300.0
    solve_tolerance: float = 1e-6
    max_refinements: int = 6
    refine_target: float = 4.0
    backward_solves: int = 3
    block_solves: int = 4
    polar_solves: int = 5
    max_polar_solve_condition: float = 200.0

    def low_precision(self, first_deviation):
        """Per matrix: whether its steps take :attr:`low` products, from ``dev_0``."""
        return 1 - first_deviation >= self.min_smallest

    def keep_low(self, dev, previous):
        """Per matrix: whether the bfloat16 steps go on after a step that started at
        deviation ``dev`` (``previous``: that of the step before)."""
        stagnating = (dev < 0.3) & (dev > self.stagnation * previous)
        return (dev > self.switch) & ~stagnating

    def finishing(self, last_deviation, dtype):
        """Per matrix: the unit steps that finish a bfloat16 schedule whose last step
        started at deviation ``last_deviation``, int32 ``(...,)``.

        The last step maps the smallest eigenvalue ``l = sqrt(1 - dev)`` (of the sign
        iterate) to ``h(alpha l)``, ``h(x) = x (3 - x^2) / 2``; each unit step then maps
        ``x`` to ``h(x)``. The count is the number of unit steps, at most
        ``finishing_steps``, that take ``1 - x`` below ``finish_target``: one after a
        step that started below the switch.
        """
        dev = jnp.clip(last_deviation, 0, 1)
        x = jnp.sqrt(1 - dev)
        x = _cubic(cubic_scale(dev, floor_for(dtype)) * x)
        count = jnp.zeros(dev.shape, jnp.int32)
        for _ in range(self.finishing_steps):
            short = 1 - x > self.finish_target
            count = count + short
            x = jnp.where(short, _cubic(x), x)
        return count

    def refine_again(self, size, previous, dtype):
        """Per matrix: whether another refinement step is worth it after one of relative
        size ``size`` (``previous``: the size of the step before, 1 before the first)."""
        eps = float(jnp.finfo(dtype).eps)
        contracting = size < self.stagnation * previous
        return contracting & (size * size > self.refine_target * eps * previous)


def _cubic(x):
    return 0.5 * x * (3 - x * x)


MIXED = MixedPrecision()
"""The policy of ``precision="mixed"``."""


def low_precision_phase(step, state, first_deviation, *, policy, tol, start, stop, accept=None):
    """The bfloat16 steps of an adaptive iteration under ``policy`` (:class:`MixedPrecision`).

    ``step(k, state, precision) -> (new_state, dev)`` takes one step with products of
    ``precision`` and returns the deviation it started with. The matrices that
    :meth:`MixedPrecision.low_precision` allows (and that have not converged,
    ``dev_0 > tol``) take ``policy.low`` steps while :meth:`MixedPrecision.keep_low`
    says so, at most ``policy.max_low_steps`` and while ``k < stop``, each frozen once
    done (:func:`iterate_per_matrix`); the loop stops when none is left.
    ``accept(state) -> (...,) bool``, if given, then checks their results: a matrix it
    rejects, or that ran out of steps, is not served.

    A batched product has one precision, so the matrices this phase does not serve are
    the caller's to compute at ``policy.high``, as the single-precision iteration does
    (for instance by running it on the batch, under ``lax.cond`` when some matrix needs
    it, and selecting per matrix).

    Returns:
        ``(state, low, last_deviation, steps)``, per matrix: the state after the phase,
        ``low`` (bool) for the matrices it serves, the deviation their last step started
        with (for :meth:`MixedPrecision.finishing`), and the bfloat16 steps each matrix
        took, served or not (int32).
    """
    low = policy.low_precision(first_deviation) & (first_deviation > tol)
    # Built from the data, so that they vary over a shard_map mesh like it.
    steps = jnp.zeros_like(first_deviation, dtype=jnp.int32)

    def low_step(k, carry):
        state, previous, steps = carry
        state, dev = step(k, state, policy.low)
        return (state, dev, steps + 1), policy.keep_low(dev, previous)

    (state, last_deviation, steps), running = iterate_per_matrix(
        low_step,
        (state, first_deviation, steps),
        low,
        start=start,
        stop=min(stop, start + policy.max_low_steps),
        return_active=True,
    )
    served = low & ~running
    if accept is not None:
        served = served & accept(state)
    return state, served, last_deviation, steps


def where_some(mask, if_true, if_false, *, like):
    """``where(mask, if_true(), if_false())`` per matrix for results shaped ``like``, each
    branch computed only when some matrix of the batch takes it (``lax.cond``; under
    ``jax.vmap`` both are)."""

    def zeros():
        return jnp.zeros_like(like)

    true = lax.cond(jnp.any(mask), if_true, zeros)
    false = lax.cond(jnp.all(mask), zeros, if_false)
    return jnp.where(mask.reshape(mask.shape + (1,) * (like.ndim - mask.ndim)), true, false)


def unless_all(mask, compute, *, like):
    """``compute()``, run only when some matrix of the batch has ``mask`` false
    (``lax.cond``; under ``jax.vmap`` it always runs); otherwise zeros of its shapes.

    The zeros are built from ``like`` (``(..., n, n)``, the batch of ``mask``), so that
    they vary over a ``shard_map`` mesh as the data does.
    """
    zero = jnp.zeros_like(like[..., 0, 0])

    def zeros():
        def fill(x):
            batch = zero.reshape(zero.shape + (1,) * (len(x.shape) - zero.ndim))
            return jnp.broadcast_to(batch, x.shape).astype(x.dtype)

        return jax.tree.map(fill, jax.eval_shape(compute))

    return lax.cond(jnp.all(mask), zeros, compute)
