"""Trace-time checks of shapes, dtypes and static knobs, with messages that name them."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsqrtm._matrix import NORMALIZATIONS

__all__ = ["NORMALIZATIONS"]

_PRECISIONS = {
    "default": lax.Precision.DEFAULT,
    "high": lax.Precision.HIGH,
    "highest": lax.Precision.HIGHEST,
}


def check_matrices(a, func: str, arg: str = "a"):
    """Return ``a`` as a JAX array of real floating square matrices ``(..., n, n)``."""
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    dtype = np.dtype(a.dtype)
    if jnp.issubdtype(dtype, jnp.complexfloating):
        raise TypeError(
            f"{func}: {arg} must be real (symmetric matrices); got complex dtype {dtype}"
        )
    if not jnp.issubdtype(dtype, jnp.floating):
        raise TypeError(
            f"{func}: {arg} must have a floating dtype (float16, bfloat16, float32, float64); "
            f"got {dtype}"
        )
    if a.ndim < 2:
        raise ValueError(
            f"{func}: {arg} must have shape (..., n, n) with at least 2 dimensions; "
            f"got shape {tuple(a.shape)}"
        )
    if a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"{func}: {arg} must be square in its last two dimensions; got shape {tuple(a.shape)}"
        )
    return jnp.asarray(a)


def check_count(value, name: str, *, minimum: int = 1) -> int:
    """A static integer knob (degree, iteration count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{name} must be a Python int, got {value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(value, name: str, choices):
    """A static string knob."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_precision(precision) -> lax.Precision:
    """``"default" | "high" | "highest"`` or a :class:`jax.lax.Precision`."""
    if isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str) and precision.lower() in _PRECISIONS:
        return _PRECISIONS[precision.lower()]
    raise ValueError(
        f"precision must be one of {tuple(_PRECISIONS)} or a jax.lax.Precision, got {precision!r}"
    )


def compute_dtype(dtype):
    """Half-precision inputs are computed in float32; float32/float64 as they are."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
