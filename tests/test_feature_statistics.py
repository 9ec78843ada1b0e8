"""Streaming feature statistics: batches, masks, merges across simulated devices, FID.

Devices are simulated with ``jax.vmap(..., axis_name=...)``, under which
``lax.all_gather`` behaves as it does over a ``shard_map`` or ``pmap`` axis; one test runs
``all_merge`` inside ``jax.shard_map`` on the devices at hand.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

import jaxsqrtm
from jaxsqrtm import FeatureStatistics, testing

D = 64  # raw 8 x 8 patches


@pytest.fixture(scope="module")
def patches():
    """Float32 grey-level patches of two images, ``(N, 64)`` each."""
    pytest.importorskip("skimage")
    rng = np.random.default_rng(0)
    astronaut = testing.image_patch_features("astronaut")
    coffee = testing.image_patch_features("coffee")
    return (
        astronaut[rng.choice(len(astronaut), 1200, replace=False)].astype(np.float32),
        coffee[rng.choice(len(coffee), 900, replace=False)].astype(np.float32),
    )


def _moments64(x):
    x = np.asarray(x, np.float64)
    return x.mean(0), np.cov(x, rowvar=False)


def _check_moments(stats, x, *, count):
    mean, cov = _moments64(x)
    assert int(stats.count) == count == len(x)
    assert np.abs(np.asarray(stats.mean) - mean).max() < 1e-6 * np.abs(mean).max()
    assert testing.relative_error(stats.covariance(), cov) < 1e-6
    r = np.asarray(stats.factor)
    assert np.all(np.tril(r, -1) == 0)


def test_one_shot_and_batches(patches):
    """Batches of different sizes, a padded last batch with a mask, and the one-shot
    statistics all agree with float64 moments of the same float32 data to round-off."""
    x, _ = patches
    one_shot = FeatureStatistics.create(D).update(x)
    assert one_shot.factor.dtype == jnp.float32
    _check_moments(one_shot, x, count=1200)  # measured 1e-7 (covariance)
    stats = FeatureStatistics.create(D)
    for lo, hi in [(0, 500), (500, 1000), (1000, 1100)]:
        stats = stats.update(x[lo:hi])
    padded = np.concatenate([x[1100:], np.full((28, D), np.nan, np.float32)])
    stats = stats.update(padded, mask=np.arange(128) < 100)
    _check_moments(stats, x, count=1200)
    assert np.allclose(stats.covariance(), one_shot.covariance(), rtol=1e-5, atol=1e-8)


def test_merge_across_simulated_devices(patches):
    """Four devices, each updating with three batches of its own shard, then all_merge."""
    x, _ = patches
    shards = x.reshape(4, 3, 100, D)  # device, batch, sample, feature
    empty = FeatureStatistics.create(D)
    stats = jax.tree.map(lambda leaf: jnp.broadcast_to(leaf, (4, *leaf.shape)), empty)
    for k in range(3):
        stats = jax.vmap(lambda s, b: s.update(b))(stats, shards[:, k])
    merged = jax.vmap(lambda s: s.all_merge("devices"), axis_name="devices")(stats)
    for device in range(4):
        _check_moments(jax.tree.map(lambda leaf, i=device: leaf[i], merged), x, count=1200)
    one_shot = empty.update(x)
    assert np.allclose(merged.covariance()[0], one_shot.covariance(), rtol=1e-5, atol=1e-8)
    # the pairwise merge of the four partial statistics gives the same
    parts = [jax.tree.map(lambda leaf, i=i: leaf[i], stats) for i in range(4)]
    pairwise = parts[0].merge(parts[1]).merge(parts[2].merge(parts[3]))
    _check_moments(pairwise, x, count=1200)


def test_merge_with_empty_and_jit_scan():
    x = np.random.default_rng(1).standard_normal((6, 50, 5)) * 3 + 10
    empty = FeatureStatistics.create(5, jnp.float64)

    @jax.jit
    def stream(batches):
        return lax.scan(lambda s, b: (s.update(b), None), empty, batches)[0]

    stats = stream(x)
    flat = x.reshape(-1, 5)
    assert np.allclose(stats.mean, flat.mean(0), rtol=1e-14)
    assert np.allclose(stats.covariance(), np.cov(flat, rowvar=False), rtol=1e-12)
    for merged in (stats.merge(empty), empty.merge(stats)):
        assert int(merged.count) == 300
        assert np.allclose(merged.mean, stats.mean, rtol=1e-14)
        assert np.allclose(merged.covariance(), stats.covariance(), rtol=1e-12)
    nothing = empty.update(x[0], mask=np.zeros(50, bool))
    assert int(nothing.count) == 0 and np.all(np.asarray(nothing.factor) == 0)


def test_all_merge_in_shard_map():
    devices = np.array(jax.devices()[:1])
    mesh = jax.sharding.Mesh(devices, ("data",))
    spec = jax.sharding.PartitionSpec("data")
    x = np.random.default_rng(2).standard_normal((len(devices) * 40, 5)).astype(np.float32)

    def local(x):
        stats = FeatureStatistics.create(5).update(x).all_merge("data")
        return stats.mean[None], stats.covariance()[None]

    mean, cov = jax.shard_map(local, mesh=mesh, in_specs=spec, out_specs=spec)(x)
    assert np.allclose(mean[0], x.mean(0), atol=1e-6)
    assert testing.relative_error(cov[0], np.cov(x.astype(np.float64), rowvar=False)) < 1e-6


def test_frechet_from_statistics(patches):
    """Streamed FID equals the one-shot feature FID and the float64 value (N > d and
    N < d: a rank-deficient factor)."""
    x1, x2 = patches
    few = x2[:40]
    s1 = FeatureStatistics.create(D)
    for batch in np.split(x1, 4):
        s1 = s1.update(batch)
    s2 = (
        FeatureStatistics.create(D)
        .update(x2[:450])
        .merge(FeatureStatistics.create(D).update(x2[450:]))
    )
    s3 = FeatureStatistics.create(D).update(few)
    for stats, features in ((s2, x2), (s3, few)):
        got = jaxsqrtm.frechet_distance_from_statistics(s1, stats)
        assert got.dtype == jnp.float32
        ref = testing.frechet_distance_reference(x1, features)
        assert abs(float(got) - ref) / ref < 1e-5  # measured 1e-7
        one_shot = jaxsqrtm.frechet_distance_from_features(x1, features)
        assert abs(float(got) - float(one_shot)) / ref < 1e-5


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: FeatureStatistics.create(0), ValueError, "d must be >= 1"),
        (lambda: FeatureStatistics.create(4, jnp.int32), TypeError, "float32 or float64"),
        (lambda: FeatureStatistics.create(4).update(np.ones((3, 5))), ValueError, r"\(b, 4\)"),
        (lambda: FeatureStatistics.create(4).update(np.ones((3, 4), int)), TypeError, "x must"),
        (
            lambda: FeatureStatistics.create(4).update(np.ones((3, 4)), mask=np.ones(2, bool)),
            ValueError,
            r"mask must have shape \(3,\)",
        ),
        (
            lambda: FeatureStatistics.create(4).merge(FeatureStatistics.create(3)),
            ValueError,
            "dimension 4",
        ),
        (
            lambda: jaxsqrtm.frechet_distance_from_statistics(
                FeatureStatistics.create(4), (1, 2, 3)
            ),
            TypeError,
            "stats2 must be a FeatureStatistics",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
