"""Flax layers: whitening, running statistics, sharding, WCT, gradients, errors."""

import functools
import inspect

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm.linen import (
    AttentiveCovariancePooling,
    CovariancePooling,
    DecorrelatedBatchNorm,
    SecondOrderViTHead,
    whitening_coloring_transform,
)


def correlated_features(shape, kappa=10.0, *, mean=0.5, seed=0):
    """``shape`` samples whose channels (last axis) have covariance ``spd_matrix(C, kappa)``."""
    channels = shape[-1]
    mixing = testing.sqrtm_reference(testing.spd_matrix(channels, kappa, seed=seed))
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape) @ mixing + mean


def group_covariances(y, group_size):
    """``(G, g, g)`` covariances of the channel groups of ``(..., C)`` outputs, float64."""
    y = np.asarray(y, np.float64)
    groups = y.reshape(-1, y.shape[-1] // group_size, group_size)
    return testing.covariance(np.swapaxes(groups, 0, 1))


def init(layer, x, **kwargs):
    """``layer.init`` under ``jit``: one compilation instead of one per operation."""
    return jax.jit(functools.partial(layer.init, **kwargs))(jax.random.key(0), x)


def apply(layer, variables, x, **kwargs):
    """``layer.apply`` under ``jit``."""
    return jax.jit(functools.partial(layer.apply, **kwargs))(variables, x)


def train_mode(layer, variables, x):
    return apply(layer, variables, x, use_running_average=False, mutable=["batch_stats"])


def dbn_variables(layer, x):
    """Parameters and initial statistics, without computing a root (eval-mode init)."""
    return init(layer, x, use_running_average=True)


# --- DecorrelatedBatchNorm -------------------------------------------------------------

# max |Cov(y_group) - I| measured on these inputs (1024 float32 samples, 32 channels with
# covariance of condition number 10, groups of 16): eigh 1.6e-6, mpa 1.5e-3,
# mtp 1.4e-1 (degree 10), ns 1.2e-1 (5 iterations), ns with 8 iterations 1.7e-6,
# auto 1.4e-6.
WHITENING_CASES = [
    ("eigh", None, 1e-5),
    ("auto", None, 1e-5),
    ("mpa", None, 5e-3),
    ("mtp", None, 0.25),
    ("ns", None, 0.25),
    ("ns", {"num_iters": 8}, 1e-5),
]


@pytest.mark.parametrize("method, options, tol", WHITENING_CASES)
def test_decorrelated_batch_norm_whitens_groups(method, options, tol):
    x = correlated_features((1024, 32), mean=3.0).astype(np.float32)
    layer = DecorrelatedBatchNorm(group_size=16, epsilon=0.0, method=method, sqrtm_options=options)
    y, _ = train_mode(layer, dbn_variables(layer, x), x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y, np.float64).mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(
        group_covariances(y, 16), np.broadcast_to(np.eye(16), (2, 16, 16)), atol=tol
    )


@pytest.mark.parametrize("shape", [(64, 8), (4, 5, 5, 8), (2, 3, 4, 4, 8)])
def test_decorrelated_batch_norm_any_layout(shape):
    x = correlated_features(shape).astype(np.float32)
    layer = DecorrelatedBatchNorm(group_size=4, epsilon=0.0, method="eigh")
    y, _ = train_mode(layer, dbn_variables(layer, x), x)
    assert y.shape == shape
    np.testing.assert_allclose(
        group_covariances(y, 4), np.broadcast_to(np.eye(4), (2, 4, 4)), atol=1e-4
    )


def test_decorrelated_batch_norm_running_statistics():
    x = correlated_features((256, 8), mean=2.0)
    layer = DecorrelatedBatchNorm(group_size=4, momentum=0.9, epsilon=1e-3, method="eigh")
    variables = init(layer, x, use_running_average=False)
    stats = variables["batch_stats"]
    np.testing.assert_array_equal(stats["mean"], 0)
    np.testing.assert_array_equal(stats["whitening"], np.broadcast_to(np.eye(4), (2, 4, 4)))

    _, updates = train_mode(layer, variables, x)
    groups = np.swapaxes(x.reshape(-1, 2, 4), 0, 1)
    batch_whitening = testing.sqrtm_reference(
        testing.covariance(groups) + 1e-3 * np.eye(4), inverse=True
    )
    new = updates["batch_stats"]
    np.testing.assert_allclose(new["mean"], 0.1 * x.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(new["whitening"], 0.9 * np.eye(4) + 0.1 * batch_whitening, rtol=1e-8)

    # With momentum 0 the running statistics are the batch's: eval reproduces training.
    layer = layer.clone(momentum=0.0)
    y_train, updates = train_mode(layer, variables, x)
    variables = {**variables, **updates}
    y_eval = apply(layer, variables, x, use_running_average=True)
    np.testing.assert_allclose(y_eval, y_train, rtol=1e-10, atol=1e-12)
    # ... and eval normalises each sample on its own, whatever the rest of the batch.
    np.testing.assert_allclose(
        apply(layer, variables, x[:3], use_running_average=True), y_eval[:3], rtol=1e-12
    )


def test_use_running_average_at_construction_or_call():
    x = correlated_features((32, 8)).astype(np.float32)
    variables = init(DecorrelatedBatchNorm(group_size=4), x, use_running_average=True)
    y = apply(DecorrelatedBatchNorm(group_size=4, use_running_average=True), variables, x)
    np.testing.assert_allclose(y, x, rtol=1e-6)  # initial stats: zero mean, identity
    with pytest.raises(ValueError, match="use_running_average"):
        DecorrelatedBatchNorm(group_size=4).apply(variables, x)
    with pytest.raises(ValueError, match="use_running_average"):
        DecorrelatedBatchNorm(group_size=4, use_running_average=True).apply(
            variables, x, use_running_average=True
        )


def test_sharded_statistics_match_single_batch():
    shards, per_shard = 4, 64
    x = correlated_features((shards * per_shard, 16), mean=1.0).astype(np.float32)
    single = DecorrelatedBatchNorm(group_size=8, use_running_average=False, method="eigh")
    sharded = nn.vmap(
        DecorrelatedBatchNorm,
        variable_axes={"params": None, "batch_stats": None},
        split_rngs={"params": False},
        axis_name="shards",
    )(group_size=8, use_running_average=False, axis_name="shards", method="eigh")

    x_sharded = x.reshape(shards, per_shard, 16)
    variables = init(sharded, x_sharded)  # no pmean while initialising
    assert variables["batch_stats"]["whitening"].shape == (2, 8, 8)
    y_sharded, updates_sharded = apply(sharded, variables, x_sharded, mutable=["batch_stats"])
    y_single, updates_single = apply(single, variables, x, mutable=["batch_stats"])
    np.testing.assert_allclose(y_sharded.reshape(x.shape), y_single, atol=2e-5)
    for name in ("mean", "whitening"):
        np.testing.assert_allclose(
            updates_sharded["batch_stats"][name], updates_single["batch_stats"][name], atol=2e-6
        )


def test_half_precision_inputs_get_float32_statistics():
    x = jnp.asarray(correlated_features((256, 8), mean=2.0), jnp.bfloat16)
    layer = DecorrelatedBatchNorm(group_size=8, method="eigh", use_scale=False, use_bias=False)
    variables = dbn_variables(layer, x)
    assert {v.dtype for v in jax.tree.leaves(variables["batch_stats"])} == {jnp.dtype(jnp.float32)}
    y, updates = train_mode(layer, variables, x)
    assert y.dtype == jnp.bfloat16
    assert {v.dtype for v in jax.tree.leaves(updates)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(group_covariances(y, 8)[0], np.eye(8), atol=0.05)


# --- Covariance pooling and the So-ViT head ----------------------------------------------


def reference_power_normalization(features, compensate=True):
    """``sqrt(tr A) (A / tr A)^(1/2)`` of ``(N, P, C)`` features, float64 eigh."""
    covariance = testing.covariance(features)
    trace = np.trace(covariance, axis1=-2, axis2=-1)[:, None, None]
    root = testing.sqrtm_reference(covariance / trace)
    return root * np.sqrt(trace) if compensate else root


@pytest.mark.parametrize("shape", [(3, 5, 5, 6), (3, 25, 6)])
def test_covariance_pooling_matches_reference(shape):
    x = correlated_features(shape)
    layer = CovariancePooling(method="eigh", output="matrix")
    expected = reference_power_normalization(x.reshape(3, 25, 6))
    np.testing.assert_allclose(apply(layer, {}, x), expected, rtol=1e-10, atol=1e-12)

    rows, cols = np.triu_indices(6)
    triu = apply(CovariancePooling(method="eigh"), {}, x)
    assert triu.shape == (3, 21)
    np.testing.assert_allclose(triu, expected[:, rows, cols], rtol=1e-10, atol=1e-12)


def test_covariance_pooling_without_compensation_is_scale_free():
    x = correlated_features((2, 4, 4, 5))
    layer = CovariancePooling(compensate=False, method="eigh")
    pooled = apply(layer, {}, x)
    np.testing.assert_allclose(apply(layer, {}, 1e3 * x), pooled, rtol=1e-9)
    rows, cols = np.triu_indices(5)
    expected = reference_power_normalization(x.reshape(2, 16, 5), compensate=False)
    np.testing.assert_allclose(pooled, expected[:, rows, cols], rtol=1e-10)


def test_default_method_is_the_library_default():
    x = correlated_features((2, 16, 6)).astype(np.float32)
    covariance = jnp.asarray(testing.covariance(x), jnp.float32)
    trace = jnp.trace(covariance, axis1=-2, axis2=-1)[:, None, None]
    expected = jaxsqrtm.sqrtm(covariance / trace) * jnp.sqrt(trace)
    pooled = apply(CovariancePooling(output="matrix"), {}, x)
    assert pooled.dtype == jnp.float32
    np.testing.assert_allclose(pooled, expected, rtol=1e-5, atol=1e-6)


def test_channel_reduction_and_so_vit_head_shapes():
    x = correlated_features((2, 17, 12)).astype(np.float32)
    pooling = CovariancePooling(reduced_channels=4, method="eigh")
    variables = init(pooling, x)
    assert variables["params"]["reduction"]["kernel"].shape == (12, 4)
    assert apply(pooling, variables, x).shape == (2, 10)

    head = SecondOrderViTHead(num_classes=7, reduced_channels=4, method="eigh")
    variables = init(head, x)
    assert set(variables["params"]) == {"class_head", "covariance_pooling", "covariance_head"}
    logits = apply(head, variables, x)
    assert logits.shape == (2, 7) and logits.dtype == jnp.float32


def test_attentive_pooling_starts_as_plain_pooling_over_space_and_time():
    video = correlated_features((2, 3, 4, 4, 5))
    layer = AttentiveCovariancePooling(method="eigh")
    variables = init(layer, video)
    pooled, state = apply(layer, variables, video, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention"]
    np.testing.assert_allclose(weights, 1 / 48)
    plain = apply(CovariancePooling(method="eigh"), {}, video.reshape(2, 48, 5))
    np.testing.assert_allclose(pooled, plain, rtol=1e-10)

    # Non-zero scores: the weights still sum to 1 and pooling uses the weighted covariance.
    params = jax.tree.map(lambda p: p + 0.5, variables["params"])
    pooled, state = apply(layer, {"params": params}, video, mutable=["intermediates"])
    (weights,) = state["intermediates"]["attention"]
    np.testing.assert_allclose(weights.sum(axis=(1, 2, 3)), 1, rtol=1e-12)
    assert np.ptp(np.asarray(weights)) > 0
    assert not np.allclose(pooled, plain)


# --- Whitening-colouring transform -----------------------------------------------------


def wct(content, style, **kwargs):
    """:func:`whitening_coloring_transform` under ``jit``."""
    return jax.jit(functools.partial(whitening_coloring_transform, **kwargs))(content, style)


def test_wct_matches_style_statistics():
    content = correlated_features((12, 12, 4), kappa=20.0, mean=-1.0, seed=1)
    style = 3.0 * correlated_features((10, 10, 4), kappa=50.0, mean=2.0, seed=2)
    out = wct(content, style, eps=1e-12, method="eigh")
    out, style = np.reshape(out, (-1, 4)), style.reshape(-1, 4)
    np.testing.assert_allclose(out.mean(axis=0), style.mean(axis=0), rtol=1e-10)
    np.testing.assert_allclose(testing.covariance(out), testing.covariance(style), rtol=1e-9)


def test_wct_with_default_method_is_close_to_style_statistics():
    content = correlated_features((12, 12, 4), mean=-1.0, seed=1).astype(np.float32)
    style = 3.0 * correlated_features((10, 10, 4), mean=2.0, seed=2).astype(np.float32)
    out = wct(content, style)
    assert out.dtype == jnp.float32
    style_cov = testing.covariance(style.reshape(-1, 4))
    # Measured relative Frobenius error with the library's default root: 1.6e-3.
    assert testing.relative_error(testing.covariance(np.reshape(out, (-1, 4))), style_cov) < 2e-2


def test_wct_alpha_zero_returns_content_and_batches_broadcast():
    content = correlated_features((2, 6, 6, 3), seed=1).astype(np.float32)
    style = correlated_features((5, 5, 3), seed=2).astype(np.float32)
    np.testing.assert_array_equal(wct(content, style, alpha=0.0), content)
    full = wct(content, style, method="eigh")
    half = wct(content, style, alpha=0.5, method="eigh")
    assert full.shape == content.shape
    np.testing.assert_allclose(half, 0.5 * (full + content), rtol=1e-5, atol=1e-5)


# --- Gradients against a float64 eigh reference layer ----------------------------------


def randomized(params, seed):
    """``params + 0.3 N(0, 1)``: no zero-initialised parameter hides a gradient."""
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda p: p + 0.3 * rng.standard_normal(p.shape), params)


def dbn(**kw):
    return DecorrelatedBatchNorm(group_size=4, use_running_average=False, **kw)


def covariance_pooling(**kw):
    return CovariancePooling(reduced_channels=4, **kw)


def so_vit_head(**kw):
    return SecondOrderViTHead(num_classes=3, reduced_channels=4, **kw)


def attentive_pooling(**kw):
    return AttentiveCovariancePooling(reduced_channels=4, **kw)


LAYERS = {
    "dbn": (dbn, (64, 8)),
    "covariance_pooling": (covariance_pooling, (2, 6, 6, 8)),
    "so_vit_head": (so_vit_head, (2, 25, 8)),
    "attentive_pooling": (attentive_pooling, (2, 3, 4, 4, 6)),
}

# Relative error (global norm over parameters and over the input, the larger) of
# float32 gradients against the float64 eigh layer, measured with default knobs:
#   dbn                 eigh 3.7e-7  mpa 9.9e-5  mtp 2.6e-2  ns 4.1e-3
#   covariance_pooling  eigh 1.2e-6  mpa 1.3e-3  mtp 2.8e-2  ns 4.8e-2
#   so_vit_head         eigh 5.5e-7  mpa 1.5e-2  mtp 4.0e-2  ns 2.6e-2
#   attentive_pooling   eigh 6.3e-7  mpa 6.6e-4  mtp 1.7e-2  ns 3.4e-2
#   wct                 eigh 7.6e-7  mpa 7.3e-3  mtp 2.9e-1  ns 1.5e-1
# and auto 1.5e-7 (dbn), 4.3e-7 (covariance_pooling).
# The approximations' forward error sets these (small spectra of condition 10-30).
GRAD_TOLERANCE = {
    "dbn": {"eigh": 1e-5, "auto": 1e-5, "mpa": 3e-4, "mtp": 6e-2, "ns": 1e-2},
    "covariance_pooling": {"eigh": 1e-5, "auto": 1e-5, "mpa": 5e-3, "mtp": 6e-2, "ns": 0.1},
    "so_vit_head": {"eigh": 1e-5, "mpa": 3e-2, "mtp": 0.1, "ns": 6e-2},
    "attentive_pooling": {"eigh": 1e-5, "mpa": 2e-3, "mtp": 4e-2, "ns": 7e-2},
    "wct": {"eigh": 1e-5, "mpa": 2e-2, "mtp": 0.5, "ns": 0.3},
}


def layer_loss(make, method, dtype):
    layer = make(method=method, param_dtype=dtype)

    def loss(params, x):
        out = layer.apply({"params": params}, x, mutable=["batch_stats"])[0]
        return jnp.sum(out * jnp.sin(jnp.arange(out.size, dtype=dtype).reshape(out.shape)))

    return loss


def wct_loss(method, dtype):
    del dtype

    def loss(content, style):
        return jnp.sum(
            jnp.sin(whitening_coloring_transform(content, style, alpha=0.7, method=method))
        )

    return loss


def cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), tree)


def relative_tree_error(grads, reference):
    """Largest over arguments of ``||g - g_ref|| / ||g_ref||`` (all leaves as one vector)."""
    errors = []
    for g, r in zip(grads, reference, strict=True):
        flat_g = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(g)])
        flat_r = np.concatenate([np.ravel(np.asarray(a, np.float64)) for a in jax.tree.leaves(r)])
        errors.append(np.linalg.norm(flat_g - flat_r) / np.linalg.norm(flat_r))
    return max(errors)


def layer_arguments(name):
    if name == "wct":
        return wct_loss, (
            correlated_features((5, 5, 4), seed=2),
            2.0 * correlated_features((4, 4, 4), seed=3),
        )
    make, shape = LAYERS[name]
    x = correlated_features(shape)
    params = jax.jit(make(method="eigh", param_dtype=jnp.float64).init)(jax.random.key(0), x)
    return (lambda method, dtype: layer_loss(make, method, dtype)), (
        randomized(params["params"], 1),
        x,
    )


@pytest.fixture(scope="module")
def reference_gradients():
    cache = {}

    def get(name):
        if name not in cache:
            loss, args = layer_arguments(name)
            grads = jax.jit(jax.grad(loss("eigh", jnp.float64), argnums=(0, 1)))(*args)
            cache[name] = (loss, args, grads)
        return cache[name]

    return get


# Every layer with the Padé root; every method on one square-root and one inverse-root layer.
GRAD_CASES = [(name, "mpa") for name in [*LAYERS, "wct"]] + [
    (name, method)
    for name in ("covariance_pooling", "dbn")
    for method in ("auto", "mtp", "ns", "eigh")
]


@pytest.mark.parametrize("name, method", GRAD_CASES)
def test_gradients_match_float64_eigh_layer(name, method, reference_gradients):
    loss, args, reference = reference_gradients(name)
    grads = jax.jit(jax.grad(loss(method, jnp.float32), argnums=(0, 1)))(*cast(args, jnp.float32))
    assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads))
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))
    assert relative_tree_error(grads, reference) < GRAD_TOLERANCE[name][method]


# --- Configuration errors --------------------------------------------------------------


def test_group_size_must_divide_channels():
    x = np.zeros((8, 12), np.float32)
    with pytest.raises(ValueError, match=r"group_size=5 does not divide the 12 channels"):
        DecorrelatedBatchNorm(group_size=5).init(jax.random.key(0), x, use_running_average=False)
    with pytest.raises(ValueError, match=r"group_size=0"):
        DecorrelatedBatchNorm(group_size=0).init(jax.random.key(0), x, use_running_average=False)


@pytest.mark.parametrize(
    "layer, shape, match",
    [
        (DecorrelatedBatchNorm(group_size=4, use_running_average=False), (8,), "rank >= 2"),
        (CovariancePooling(), (4, 8), r"rank 3 or 4.*\(4, 8\)"),
        (CovariancePooling(), (1, 2, 3, 4, 8), "rank 3 or 4"),
        (AttentiveCovariancePooling(), (2, 4, 4, 8), r"rank 5.*\(2, 4, 4, 8\)"),
        (SecondOrderViTHead(num_classes=3), (2, 8), "rank 3"),
        (SecondOrderViTHead(num_classes=3), (2, 1, 8), "at least one visual token"),
    ],
)
def test_wrong_input_rank_raises_at_init(layer, shape, match):
    with pytest.raises(ValueError, match=match):
        layer.init(jax.random.key(0), np.ones(shape, np.float32))


def test_bad_options_raise_at_init():
    x = correlated_features((2, 9, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="output must be one of"):
        init(CovariancePooling(output="vector"), x)
    with pytest.raises(ValueError, match="method must be one of"):
        init(CovariancePooling(method="svd"), x)
    with pytest.raises(ValueError, match="num_iters=3 does not apply"):
        init(CovariancePooling(method="mpa", sqrtm_options={"num_iters": 3}), x)
    with pytest.raises(ValueError, match="must not contain 'method'"):
        init(CovariancePooling(sqrtm_options={"method": "eigh"}), x)
    if "return_info" in inspect.signature(jaxsqrtm.sqrtm).parameters:
        with pytest.raises(ValueError, match="return_info"):
            init(CovariancePooling(sqrtm_options={"return_info": True}), x)
    with pytest.raises(TypeError, match="iterations"):
        init(CovariancePooling(sqrtm_options={"iterations": 3}), x)


def test_wct_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"content must have shape \(\.\.\., H, W, C\)"):
        whitening_coloring_transform(np.ones((16, 3)), np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="same channels"):
        whitening_coloring_transform(np.ones((4, 4, 3)), np.ones((4, 4, 2)))
