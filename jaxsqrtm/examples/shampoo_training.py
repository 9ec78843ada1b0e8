"""Shampoo against AdamW on scikit-learn's digits, with Shampoo's discarded roots counted.

The runs use the training loop of :mod:`jaxsqrtm.examples.optimisers` (a whole run is one
jitted ``lax.scan``; same initialisation and batches for every optimiser given a seed).
That loop keeps the optimiser state inside the jitted run, so :func:`count_discarded`
reads :attr:`jaxsqrtm.optim.ShampooState.discarded_roots` after every update with an
ordered host callback.

Example:
    >>> from jaxsqrtm.examples.shampoo_training import compare
    >>> results = compare(epochs=2, seeds=(0,))  # doctest: +SKIP
    >>> sorted(results)  # doctest: +SKIP
    ['adamw', 'shampoo']
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
import optax

from jaxsqrtm.examples import optimisers
from jaxsqrtm.optim import shampoo


def count_discarded(optimizer: optax.GradientTransformation, log: list):
    """``optimizer`` that appends its state's ``discarded_roots`` to ``log`` on every update.

    The callback is ordered, so ``log`` holds the running count of each update in turn,
    runs one after another.
    """

    def update(updates, state, params=None):
        updates, state = optimizer.update(updates, state, params)
        discarded = optax.tree.get(state, "discarded_roots")
        jax.debug.callback(lambda d: log.append(int(d)), discarded, ordered=True)
        return updates, state

    return optax.GradientTransformation(optimizer.init, update)


def compare(
    *,
    learning_rate: float = 3e-3,
    weight_decay: float = 1e-4,
    model: str = "cnn",
    epochs: int = 10,
    batch_size: int = 128,
    seeds: Sequence[int] = (0, 1, 2),
    **shampoo_options,
) -> dict:
    """AdamW and :func:`jaxsqrtm.optim.shampoo` (grafted to Adam), same schedule and steps.

    Both use the learning rate ``learning_rate`` with a cosine decay to 0 over the run,
    momentum 0.9 and decoupled weight decay ``weight_decay``.

    Args:
        learning_rate: peak learning rate of both optimisers.
        weight_decay: decoupled weight decay of both.
        model, epochs, batch_size, seeds: as in :func:`jaxsqrtm.examples.optimisers.train`.
        **shampoo_options: keyword arguments of :func:`jaxsqrtm.optim.scale_by_shampoo`.

    Returns:
        ``{"adamw": result, "shampoo": result}``, the results of
        :func:`jaxsqrtm.examples.optimisers.train`; Shampoo's also has ``discarded``,
        ``(seeds, steps)`` int, the running count of discarded roots after each update.
    """
    log: list[int] = []

    def adamw(steps):
        schedule = optax.cosine_decay_schedule(learning_rate, steps)
        return optax.adamw(schedule, weight_decay=weight_decay)

    def shampoo_factory(steps):
        schedule = optax.cosine_decay_schedule(learning_rate, steps)
        optimizer = shampoo(schedule, weight_decay=weight_decay, **shampoo_options)
        return count_discarded(optimizer, log)

    options = dict(model=model, epochs=epochs, batch_size=batch_size, seeds=tuple(seeds))
    results = optimisers.compare({"adamw": adamw, "shampoo": shampoo_factory}, **options)
    jax.effects_barrier()
    steps = results["shampoo"]["step_loss"].shape[1]
    results["shampoo"]["discarded"] = np.asarray(log, np.int64).reshape(len(seeds), steps)
    return results


def main() -> None:
    """Print the comparisons of ``notebooks/shampoo.ipynb`` (the CNN, seeds 0 to 2: 10
    epochs of batch 128, and 2 epochs of batch 16, whose first statistics are
    rank-deficient) as Markdown tables with the discarded-root counts."""
    for batch_size, epochs in ((128, 10), (16, 2)):
        results = compare(batch_size=batch_size, epochs=epochs)
        steps = results["shampoo"]["step_loss"].shape[1]
        print(f"\nbatch {batch_size}, {epochs} epochs ({steps} steps), seeds 0, 1, 2\n")
        print(optimisers.markdown_table(results))
        discarded = results["shampoo"]["discarded"][:, -1]
        print(f"\ndiscarded roots per run: {discarded.tolist()}")


if __name__ == "__main__":
    main()
