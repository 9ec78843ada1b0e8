"""``"eigh"``: the eigendecomposition baseline, ``V f(l) V^H``, with PSD semantics.

``f(l) = l^(+-1/p)``: ``p = 2`` for :func:`jaxsqrtm.sqrtm` / :func:`jaxsqrtm.inv_sqrtm`,
and the ``p`` knob of the fractional powers' entries (:mod:`jaxsqrtm._methods.fractional_power`),
which share this forward and rule.

Forward: ``jnp.linalg.eigh`` of the Hermitian part. Eigenvalues at or below the noise
floor ``2 n^(1/4) eps max|l|`` (:func:`noise_floor`; ``1.9e-6 max|l|`` for ``n = 256``
in float32) are treated as zero: the root is that of the PSD part
``A_+ = (A + |A|) / 2`` with round-off-sized eigenvalues set to 0, and the inverse root
is the pseudo-inverse of that root (``l^(-1/p)`` above the floor, 0 at and below it).
The floor is about 3 times the eigenvalues that ``eigh``'s own round-off gives the
null space of a float32 covariance (measured up to ``2.4, 2.1, 3.4, 3.6 eps l_max`` at
``n = 64, 256, 1024, 2048``), whose roots would otherwise add ``sqrt(eps l_max)`` each
to a trace. Eigenvalues genuinely below the floor are lost: float32 cannot tell them
from round-off.

Derivative (``jax.custom_jvp``, Daleckii–Krein): ``d f(A) = V [(V^H dA V) o F] V^H``
with ``F_ij = (f(l_i) - f(l_j)) / (l_i - l_j)`` of the function above, written without
the cancelling difference in ``s = l^(1/p)`` (``l_i - l_j = (s_i - s_j) sum_k s_i^k
s_j^(p-1-k)``): ``1 / sigma_ij`` for the root, ``sigma_ij = sum_k s_i^k s_j^(p-1-k)``
(``s_i + s_j`` for ``p = 2``), and ``-x_i x_j / sigma_ij`` for the inverse root
(``x = f(l)``), with a null eigenvalue read as 0 (``F_ij = x_j^(p+1)`` between a null
``i`` and a kept ``j``). Finite at repeated and zero eigenvalues; a pair of null
eigenvalues contributes 0. The rule is linear in
``dA``, so JAX transposes it for reverse mode; its own derivative (second order) is
that of ``eigh``, finite only for distinct eigenvalues.
Cost: not a fixed number of products (``None``).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxsqrtm._core import Config, Method, Root
from jaxsqrtm._matrix import adjoint, mm, symmetrize


def noise_floor(w):
    """``2 n^(1/4) eps max|l|`` per matrix, ``(...,)``: eigenvalues at or below it count
    as zero."""
    eps = float(jnp.finfo(w.dtype).eps)
    return 2 * w.shape[-1] ** 0.25 * eps * jnp.max(jnp.abs(w), axis=-1)


def _root(a, config: Config) -> Root:
    out, scale = eigh_root(a, config)
    return Root(out, scale, jnp.zeros(scale.shape, jnp.int32))


def degree(config: Config) -> int:
    """The ``p`` of ``f(l) = l^(+-1/p)``: the config's ``p`` knob, 2 (square roots) without."""
    return getattr(config, "p", 2)


def _kept_roots(w, p=2):
    """``(kept, s)``: which eigenvalues are above the noise floor, and ``l^(1/p)`` there
    (0 elsewhere)."""
    floor = noise_floor(w)[..., None]
    kept = w > floor
    w_kept = jnp.where(kept, w, 0)
    if p == 1:
        s = w_kept
    elif p == 2:
        s = jnp.sqrt(w_kept)
    elif p == 3:
        s = jnp.cbrt(w_kept)
    else:
        s = jnp.power(w_kept, 1 / p)
    return kept, jnp.where(jnp.isfinite(floor), s, jnp.nan)  # NaN or Inf input: NaN


def _values(w, inverse, p=2):
    kept, s = _kept_roots(w, p)
    if not inverse:
        return s
    # NaN or Inf input: NaN (s is NaN throughout), not the 0 of a null eigenvalue
    return jnp.where(kept, 1 / jnp.where(kept, s, 1), jnp.where(jnp.isnan(s), s, 0))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def eigh_root(a, config):
    """``(f(A), max|l|)`` for Hermitian ``a`` (:data:`METHOD`'s forward; also the
    decomposition that the accurate mode falls back to)."""
    w, v = jnp.linalg.eigh(a)
    return _assemble(w, v, config), jnp.max(jnp.abs(w), axis=-1)


def _assemble(w, v, config):
    f = _values(w, config.inverse, degree(config)).astype(v.dtype)
    return mm(v * f[..., None, :], adjoint(v), config.precision)


@eigh_root.defjvp
def _eigh_root_jvp(config, primals, tangents):
    (a,), (da,) = primals, tangents
    w, v = jnp.linalg.eigh(a)
    out, scale = _assemble(w, v, config), jnp.max(jnp.abs(w), axis=-1)
    return (out, scale), _eigh_tangents(w, v, da, config)


def _pair_sums(s, p):
    """``sigma_ij = sum_(k < p) s_i^k s_j^(p-1-k)`` of the module doc, ``(..., n, n)``."""
    if p == 2:
        return s[..., :, None] + s[..., None, :]
    si, sj = s[..., :, None], s[..., None, :]
    terms = [jnp.ones_like(si * sj)]
    for _ in range(p - 1):
        terms = [t * si for t in terms] + [terms[-1] * sj]
    return sum(terms[1:], terms[0])


def _divided_differences(w, inverse, p=2):
    """``F_ij`` of the module doc, ``(..., n, n)``."""
    kept, s = _kept_roots(w, p)
    pair_sum = _pair_sums(s, p)
    if p == 1:  # sigma = 1: a pair of null eigenvalues still contributes 0
        pair_sum = jnp.where(kept[..., :, None] | kept[..., None, :], pair_sum, 0)
    safe_sum = jnp.where(pair_sum != 0, pair_sum, 1)
    if not inverse:
        return jnp.where(pair_sum != 0, 1 / safe_sum, 0)
    x = _values(w, True, p)
    both = kept[..., :, None] & kept[..., None, :]
    one = kept[..., :, None] != kept[..., None, :]
    x_power = x ** (p + 1) if p != 2 else x * x * x
    null_to_kept = x_power[..., :, None] + x_power[..., None, :]  # one of the two terms is 0
    return jnp.where(both, -x[..., :, None] * x[..., None, :] / safe_sum, 0) + jnp.where(
        one, null_to_kept, 0
    )


@functools.partial(jax.checkpoint, static_argnums=(3,))
def _eigh_tangents(w, v, da, config):
    """Tangents of the root and of ``max |l|``; recomputed in reverse mode, which keeps
    only ``w`` and ``V``."""
    f = _divided_differences(w, config.inverse, degree(config)).astype(v.dtype)
    vh = adjoint(v)
    precision = config.precision
    inner = mm(mm(vh, symmetrize(da), precision), v, precision)
    d_out = mm(mm(v, inner * f, precision), vh, precision)
    # d max|l| = sign(l_k) v_k^H dA v_k at the largest |l_k|
    top = jnp.argmax(jnp.abs(w), axis=-1)[..., None]
    d_top = jnp.take_along_axis(jnp.real(jnp.diagonal(inner, axis1=-2, axis2=-1)), top, axis=-1)
    d_scale = jnp.sign(jnp.take_along_axis(w, top, axis=-1)) * d_top
    return d_out, d_scale[..., 0]


METHOD = Method(
    name="eigh",
    summary="eigendecomposition V f(l) V^H of the PSD part, round-off-sized eigenvalues as 0",
    derivative="Daleckii–Krein divided differences (custom JVP)",
    knobs=(),
    root=_root,
    cost=lambda config, backward: None,
)
