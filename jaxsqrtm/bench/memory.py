"""Memory of reverse mode: what a compiled program needs and what ``jax.vjp`` keeps.

Two figures make a change to the backward pass comparable before and after: the buffers
XLA assigns to the compiled forward+backward program (``compiled.memory_analysis()``),
and the residuals that ``jax.vjp`` stores between the forward and the backward pass (the
arrays held by the function it returns), which a training step keeps alive from the
forward to the backward pass of the whole network.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax

# JSON key: attribute of the object returned by ``compiled.memory_analysis()``.
COMPILED_FIELDS = {
    "temp_bytes": "temp_size_in_bytes",
    "argument_bytes": "argument_size_in_bytes",
    "output_bytes": "output_size_in_bytes",
    "alias_bytes": "alias_size_in_bytes",
    "generated_code_bytes": "generated_code_size_in_bytes",
    "peak_bytes": "peak_memory_in_bytes",
}


def compiled_memory(compiled: Any) -> dict | None:
    """Bytes of the buffers XLA assigned to a compiled program.

    Args:
        compiled: the result of ``jax.jit(f).lower(*args).compile()``.

    Returns:
        ``{key: bytes}`` for the keys of :data:`COMPILED_FIELDS` (``None`` for a field the
        backend does not report), or ``None`` when the backend has no memory analysis.
    """
    try:
        analysis = compiled.memory_analysis()
    except (AttributeError, NotImplementedError, RuntimeError):
        return None
    if analysis is None:
        return None
    fields = COMPILED_FIELDS.items()
    return {key: _int_or_none(getattr(analysis, name, None)) for key, name in fields}


def residual_bytes(fn: Callable, *primals) -> int:
    """Bytes of the residuals ``jax.vjp(fn, *primals)`` keeps for its backward pass.

    The sum of ``leaf.nbytes`` over ``jax.tree_util.tree_leaves(vjp_fn)``, taken from the
    leaves' shapes and dtypes (``jax.eval_shape``) without running the forward pass.
    """
    pullback = jax.eval_shape(lambda *args: jax.vjp(fn, *args)[1], *primals)
    return sum(
        math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree_util.tree_leaves(pullback)
    )


def _int_or_none(value) -> int | None:
    return None if value is None else int(value)
