"""Trace-time checks of arrays and static knobs.

Every check takes the public function's name first and raises with one message format,
``"{func}: {name} must ..., got {value!r}"``, so a mistake is reported where the user
made it, never as an XLA traceback from deep inside an iteration.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
from jax import lax

_PRECISIONS = {
    "default": lax.Precision.DEFAULT,
    "high": lax.Precision.HIGH,
    "highest": lax.Precision.HIGHEST,
}


def check_matrices(func: str, a, name: str = "a", *, square: bool = True):
    """Return ``a`` as a JAX array of floating matrices ``(..., n, n)`` (``(..., m, n)``
    with ``square=False``).

    Real (float16, bfloat16, float32, float64) and complex (complex64, complex128)
    dtypes are accepted; integer and boolean ones are not. The functions that take
    square matrices use only their symmetric part ``(A + A^T) / 2``, or their Hermitian
    part ``(A + A^H) / 2`` for complex input.
    """
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        a = np.asarray(a)
    dtype = np.dtype(a.dtype)
    if not jnp.issubdtype(dtype, jnp.inexact):
        raise TypeError(
            f"{func}: {name} must have a floating dtype (float16, bfloat16, float32, "
            f"float64) or a complex one (complex64, complex128), got {dtype}"
        )
    shape = "(..., n, n)" if square else "(..., m, n)"
    if a.ndim < 2:
        raise ValueError(
            f"{func}: {name} must have shape {shape} with at least 2 dimensions, "
            f"got shape {tuple(a.shape)}"
        )
    if square and a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"{func}: {name} must be square in its last two dimensions, got shape {tuple(a.shape)}"
        )
    return jnp.asarray(a)


def check_count(func: str, name: str, value, *, minimum: int = 1) -> int:
    """A static integer knob (degree, iteration count)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(
            f"{func}: {name} must be a Python int, got {value!r} of type {type(value).__name__}"
        )
    if value < minimum:
        raise ValueError(f"{func}: {name} must be >= {minimum}, got {value}")
    return int(value)


def check_choice(func: str, name: str, value, choices):
    """A static string knob."""
    if value not in choices:
        raise ValueError(f"{func}: {name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_bool(func: str, name: str, value) -> bool:
    """A static flag."""
    if not isinstance(value, bool):
        raise TypeError(f"{func}: {name} must be a bool, got {value!r}")
    return value


def check_fraction(func: str, name: str, value) -> float:
    """A static real number in ``[0, 1)`` (a ridge relative to the scale)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
        raise TypeError(f"{func}: {name} must be a Python float, got {value!r}")
    if not 0 <= value < 1:
        raise ValueError(f"{func}: {name} must be in [0, 1), got {value!r}")
    return float(value)


MIXED = "mixed"
"""The precision policy of the adaptive iterations: bfloat16 products where the
convergence measurement allows them, float32 residuals and refinement
(:class:`jaxsqrtm._sign.MixedPrecision`)."""


def check_precision(func: str, precision, *, allow_mixed: bool = False):
    """``"default" | "high" | "highest"`` or a :class:`jax.lax.Precision`.

    With ``allow_mixed``, also :data:`MIXED` (returned as that string), for the entries
    that implement the mixed policy.
    """
    if isinstance(precision, lax.Precision):
        return precision
    if isinstance(precision, str) and precision.lower() in _PRECISIONS:
        return _PRECISIONS[precision.lower()]
    if allow_mixed and isinstance(precision, str) and precision.lower() == MIXED:
        return MIXED
    choices = (*_PRECISIONS, MIXED) if allow_mixed else tuple(_PRECISIONS)
    raise ValueError(
        f"{func}: precision must be one of {choices} or a jax.lax.Precision, got {precision!r}"
    )


MIXED_CLOSED_FORM_NOTE = (
    "a closed form evaluates fixed polynomials, where a bfloat16 product leaves an error "
    "of about 1e-3 that nothing removes, and its fixed-step Lyapunov backward has no "
    "convergence measurement to switch precision on"
)
"""Why the closed forms (``"mpa"``, ``"mtp"``) reject :data:`MIXED`."""


def check_mixed_dtype(func: str, dtype, name: str = "a") -> None:
    """``precision="mixed"`` computes in float32: real float32, bfloat16 or float16 input.

    Its refinement reaches float32 round-off; bfloat16 products have no complex form here,
    and float64 would need float64 residuals and several more refinement steps.
    """
    if compute_dtype(dtype) != jnp.float32:
        raise ValueError(
            f"{func}: precision='mixed' needs real float32, bfloat16 or float16 {name}, "
            f"got {jnp.dtype(dtype)}"
        )


def compute_dtype(dtype):
    """Half-precision inputs are computed in float32; float32/float64 and
    complex64/complex128 as they are."""
    return jnp.float32 if jnp.finfo(dtype).bits < 32 else dtype
