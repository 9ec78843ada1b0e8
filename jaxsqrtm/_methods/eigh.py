"""``"eigh"``: the eigendecomposition baseline, ``V f(l) V^T``.

Forward: ``jnp.linalg.eigh``; negative eigenvalues are clamped to 0 for the root.
Derivative (``jax.custom_jvp``, Daleckii–Krein): ``d f(A) = V [(V^T dA V) o F] V^T``
with ``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` and ``F_ii = f'(l_i)``, written without
the cancelling difference: ``1 / (s_i + s_j)`` for the root (``s = sqrt(l)``) and
``-1 / (s_i s_j (s_i + s_j))`` for the inverse root. Finite at repeated eigenvalues; a
pair of zero eigenvalues contributes 0 (the root is not differentiable there). The rule
is linear in ``dA``, so JAX transposes it for reverse mode; its own derivative (second
order) is that of ``eigh``, finite only for distinct eigenvalues.
Cost: not a fixed number of products (``None``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from jaxsqrtm._core import Config, Method, Root
from jaxsqrtm._matrix import mm, symmetrize


def _root(a, config: Config) -> Root:
    out, scale = _eigh_root(a, config)
    return Root(out, scale, jnp.zeros(scale.shape, jnp.int32))


def _values(w, inverse):
    return lax.rsqrt(w) if inverse else jnp.sqrt(jnp.maximum(w, 0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def _eigh_root(a, config):
    w, v = jnp.linalg.eigh(a)
    return _assemble(w, v, config), jnp.max(jnp.abs(w), axis=-1)


def _assemble(w, v, config):
    f = _values(w, config.inverse)
    return mm(v * f[..., None, :], jnp.swapaxes(v, -1, -2), config.precision)


@_eigh_root.defjvp
def _eigh_root_jvp(config, primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = jnp.linalg.eigh(a)
    out, scale = _assemble(w, v, config), jnp.max(jnp.abs(w), axis=-1)
    return (out, scale), _eigh_tangents(w, v, da, config)


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _eigh_tangents(w, v, da, config):
    """Tangents of the root and of ``max |l|``; recomputed in reverse mode, which keeps
    only ``w`` and ``V``."""
    s = jnp.sqrt(jnp.maximum(w, 0))
    pair_sum = s[..., :, None] + s[..., None, :]
    if config.inverse:
        denominator = -pair_sum * s[..., :, None] * s[..., None, :]
    else:
        denominator = pair_sum
    f = jnp.where(denominator != 0, 1 / jnp.where(denominator != 0, denominator, 1), 0)
    vt = jnp.swapaxes(v, -1, -2)
    precision = config.precision
    inner = mm(mm(vt, symmetrize(da), precision), v, precision)
    d_out = mm(mm(v, inner * f, precision), vt, precision)
    # d max|l| = sign(l_k) v_k^T dA v_k at the largest |l_k|
    top = jnp.argmax(jnp.abs(w), axis=-1)[..., None]
    d_top = jnp.take_along_axis(jnp.diagonal(inner, axis1=-2, axis2=-1), top, axis=-1)
    d_scale = jnp.sign(jnp.take_along_axis(w, top, axis=-1)) * d_top
    return d_out, d_scale[..., 0]


METHOD = Method(
    name="eigh",
    summary="eigendecomposition V f(l) V^T, negative eigenvalues clamped for the root",
    derivative="Daleckii–Krein divided differences (custom JVP)",
    knobs=(),
    root=_root,
    cost=lambda config, backward: None,
)
