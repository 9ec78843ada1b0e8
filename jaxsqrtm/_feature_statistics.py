"""Streaming feature statistics: count, mean and a triangular factor of the scatter matrix.

For evaluation loops that never hold all features at once (FID over a data set, across
devices and hosts). The state is ``(N, mu, R)`` with ``R`` upper triangular ``d x d`` and
``R^T R = sum_i (x_i - mu)(x_i - mu)^T``, the centred scatter matrix. Two states merge
exactly (the matrix form of Chan, Golub & LeVeque's pairwise variance update)::

    N = N_a + N_b,   mu = mu_a + (N_b / N) (mu_b - mu_a),
    R = qr([R_a; R_b; sqrt(N_a N_b / N) (mu_a - mu_b)^T]).R

since the scatter of the union is ``R_a^T R_a + R_b^T R_b + (N_a N_b / N) dd^T``. A batch
of features is a state whose factor is its centred rows. No covariance is formed, so
float32 keeps the accuracy that ``X^T X`` would square away, and
:func:`frechet_distance_from_statistics` takes the factors as they are.

Measured in float32 on 1200 image patches (64 pixels) against float64 moments of the same
data: one update, or 4 simulated devices with 3 batches each and :meth:`all_merge`, give the
mean to ``5e-8`` and the covariance to ``2e-7`` (relative); the streamed FID against a
second image is ``2e-7`` from the float64 value (``8e-7`` with 40 samples, ``N < d``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxsqrtm import _validation
from jaxsqrtm._distances import centred, factor_bures, feature_factor, squared_norm
from jaxsqrtm._matrix import mm


class FeatureStatistics(NamedTuple):
    """Count, mean and scatter factor of ``d``-dimensional features; a pytree.

    Attributes:
        count: ``()`` int32, the number of features seen.
        mean: ``(d,)`` their mean.
        factor: ``(d, d)`` upper triangular ``R`` with ``R^T R`` the centred scatter
            matrix ``sum_i (x_i - mean)(x_i - mean)^T``.

    One state describes one set of features (use ``jax.vmap`` over stacked states for
    several). Start with :meth:`create`, add batches with :meth:`update`, combine partial
    statistics with :meth:`merge` (or :meth:`all_merge` across the devices of a
    ``jax.shard_map``/``jax.pmap`` axis), then read :meth:`covariance` or compare two with
    :func:`frechet_distance_from_statistics`. Every method is a pure function of the
    state (it returns a new one), jit-compiled once per batch shape, and works inside
    ``jit``, ``vmap``, ``lax.scan`` and ``shard_map``.

    Example:
        >>> import jax, jax.numpy as jnp
        >>> import jaxsqrtm
        >>> x = jax.random.normal(jax.random.key(0), (1000, 16))
        >>> stats = jaxsqrtm.FeatureStatistics.create(16)
        >>> for batch in jnp.split(x, 4):
        ...     stats = stats.update(batch)
        >>> bool(jnp.allclose(stats.covariance(), jnp.cov(x, rowvar=False), atol=1e-5))
        True
    """

    count: jax.Array
    mean: jax.Array
    factor: jax.Array

    @classmethod
    def create(cls, d: int, dtype=jnp.float32) -> FeatureStatistics:
        """Empty statistics of ``d``-dimensional features, in ``dtype`` (float32 or float64)."""
        func = "FeatureStatistics.create"
        d = _validation.check_count(func, "d", d)
        dtype = np.dtype(dtype)
        if dtype not in (np.float32, np.float64):
            raise TypeError(f"{func}: dtype must be float32 or float64, got {dtype}")
        return cls(jnp.zeros((), jnp.int32), jnp.zeros(d, dtype), jnp.zeros((d, d), dtype))

    def update(self, x, mask=None) -> FeatureStatistics:
        """Statistics with a batch of features ``(b, d)`` added.

        ``qr([R; X_b - mu_b; sqrt(N b / (N + b)) (mu - mu_b)^T]).R``, with ``mu_b`` the
        batch mean: one QR of ``(d + b + 1) x d`` (``2 (d + b) d^2`` multiply-adds).

        Args:
            x: ``(b, d)`` features (cast to the statistics' dtype).
            mask: optional ``(b,)`` booleans; only the rows where it is true count (a
                padded last batch keeps the batch shape, and so the compiled update).

        Returns:
            The updated :class:`FeatureStatistics`.
        """
        func = "FeatureStatistics.update"
        d = self.mean.shape[-1]
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            x = np.asarray(x)
        if not jnp.issubdtype(x.dtype, jnp.floating):
            raise TypeError(f"{func}: x must have a real floating dtype, got {np.dtype(x.dtype)}")
        if x.ndim != 2 or x.shape[-1] != d:
            raise ValueError(f"{func}: x must have shape (b, {d}), got shape {tuple(x.shape)}")
        if mask is not None:
            if not hasattr(mask, "shape"):
                mask = np.asarray(mask)
            if mask.shape != x.shape[:1]:
                raise ValueError(
                    f"{func}: mask must have shape ({x.shape[0]},), got shape {tuple(mask.shape)}"
                )
        return _update(self, jnp.asarray(x, self.mean.dtype), mask)

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """The statistics of the union of the features of ``self`` and ``other``."""
        if other.factor.shape != self.factor.shape:
            raise ValueError(
                f"FeatureStatistics.merge: other must have dimension {self.mean.shape[-1]}, "
                f"got factor shape {tuple(other.factor.shape)}"
            )
        return _merge_all(jax.tree.map(lambda a, b: jnp.stack([a, b]), self, other))

    def all_merge(self, axis_name) -> FeatureStatistics:
        """Merge the statistics of every device along a named axis (inside
        ``jax.shard_map``, ``jax.pmap`` or ``jax.vmap(..., axis_name=...)``).

        One ``all_gather`` of ``d^2 + d + 1`` numbers per device, then one QR of the
        stacked ``D`` factors and ``D`` mean rows ``sqrt(N_k) (mu_k - mu)``, whose outer
        products sum to the between-device scatter. Every device gets the same result.
        """
        return _merge_all(lax.all_gather(self, axis_name))

    def covariance(self) -> jax.Array:
        """Unbiased covariance ``R^T R / (N - 1)``, ``(..., d, d)``, as ``np.cov``.

        Forming it squares the condition number of the features; distances should use
        the factor (:func:`frechet_distance_from_statistics`). Fewer than 2 features give
        Inf or NaN.
        """
        r = self.factor
        n = self.count.astype(r.dtype)[..., None, None]
        return mm(jnp.swapaxes(r, -1, -2), r, lax.Precision.HIGHEST) / (n - 1)


def _weights(n, n_total, dtype):
    """``n / n_total`` with an empty total mapped to 0."""
    n, n_total = n.astype(dtype), n_total.astype(dtype)
    return jnp.where(n_total > 0, n / jnp.where(n_total > 0, n_total, 1), 0)


@jax.jit
def _update(stats: FeatureStatistics, x, mask):
    dtype = x.dtype
    if mask is None:
        count = jnp.asarray(x.shape[0], jnp.int32)
        mean, xc = centred(x)
    else:
        keep = mask.astype(bool)
        count = jnp.sum(keep, dtype=jnp.int32)
        xk = jnp.where(keep[:, None], x, 0)
        mean = jnp.sum(xk, axis=0) / jnp.maximum(count, 1).astype(dtype)
        mean = mean + jnp.sum(jnp.where(keep[:, None], x - mean, 0), axis=0) / jnp.maximum(
            count, 1
        ).astype(dtype)
        xc = jnp.where(keep[:, None], x - mean, 0)
    batch = FeatureStatistics(count, mean, xc)
    return _combine(
        jax.tree.map(lambda leaf: leaf[None], stats), jax.tree.map(lambda leaf: leaf[None], batch)
    )


@jax.jit
def _merge_all(stacked: FeatureStatistics):
    """Merge ``D`` statistics stacked on a leading axis."""
    return _combine(stacked)


def _combine(*parts: FeatureStatistics):
    """Merge stacked statistics (leading axis ``D_j`` each; factors ``(D_j, r_j, d)``).

    ``N = sum N_k``, ``mu = sum (N_k / N) mu_k`` and
    ``R = qr([R_1; ...; R_D; sqrt(N_k) (mu_k - mu)^T ...]).R``.
    """
    counts = jnp.concatenate([p.count for p in parts])
    means = jnp.concatenate([p.mean for p in parts])
    dtype = means.dtype
    total = jnp.sum(counts, dtype=jnp.int32)
    weights = _weights(counts, total, dtype)
    # Relative to the first mean, so that a common offset cancels before the weighting.
    offset = means[0]
    mean = offset + jnp.sum(weights[:, None] * (means - offset), axis=0)
    rows = jnp.sqrt(counts.astype(dtype))[:, None] * (means - mean)
    d = mean.shape[-1]
    blocks = [p.factor.reshape(-1, d) for p in parts] + [rows]
    stacked = jnp.concatenate(blocks, axis=0)
    if stacked.shape[0] < d:
        stacked = jnp.concatenate([stacked, jnp.zeros((d - stacked.shape[0], d), dtype)])
    return FeatureStatistics(total, mean, feature_factor(stacked))


def frechet_distance_from_statistics(
    stats1: FeatureStatistics, stats2: FeatureStatistics, *, precision="highest"
):
    """Fréchet distance (FID) between Gaussians fitted to two streams of features.

    :func:`jaxsqrtm.frechet_distance_from_features` from the factors: with
    ``F_i = R_i / sqrt(N_i - 1)``, ``||mu1 - mu2||^2 + ||F1||_F^2 + ||F2||_F^2
    - 2 ||F1 F2^T||_*`` (Procrustes form, no covariance formed). The polar iteration runs
    on the ``d x d`` ``F1 F2^T`` whatever the counts.

    Args:
        stats1: :class:`FeatureStatistics` of the first set (at least 2 features).
        stats2: of the second set, same dimension.
        precision: matmul precision.

    Returns:
        A scalar in the statistics' dtype.

    Cost: 46 products of ``d x d`` matrices in float32 (90 in float64), plus 3.
    """
    func = "frechet_distance_from_statistics"
    for name, s in (("stats1", stats1), ("stats2", stats2)):
        if not isinstance(s, FeatureStatistics):
            raise TypeError(f"{func}: {name} must be a FeatureStatistics, got {type(s).__name__}")
    if stats1.factor.shape != stats2.factor.shape:
        raise ValueError(
            f"{func}: stats2 must have the factor shape of stats1 "
            f"{tuple(stats1.factor.shape)}, got {tuple(stats2.factor.shape)}"
        )
    precision = _validation.check_precision(func, precision)
    return _frechet_from_statistics(stats1, stats2, precision)


@functools.partial(jax.jit, static_argnums=(2,))
def _frechet_from_statistics(stats1, stats2, precision):
    def scaled(s):
        n = s.count.astype(s.factor.dtype)
        return s.factor * lax.rsqrt(n - 1)

    distance = factor_bures(scaled(stats1), scaled(stats2), precision)
    return squared_norm(stats1.mean - stats2.mean) + distance
