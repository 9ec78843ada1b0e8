"""The layers' mathematics without Flax (:mod:`jaxsqrtm.functional`).

Runs where Flax is not installed (the oldest-versions run): the module must import and
work without it. The layers of both front-ends are tested on top of it in
``test_linen.py`` and ``test_nnx.py``.
"""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import functional, testing
from jaxsqrtm.functional import (
    covariance_pooling,
    decorrelated_batch_norm,
    default_whitening_epsilon,
    group_moments,
    init_decorrelated_batch_norm,
    mean_and_covariance,
    power_normalize,
    whitening_coloring_transform,
)


def correlated_features(shape, kappa=10.0, *, mean=0.5, seed=0):
    """``shape`` samples whose channels (last axis) have covariance ``spd_matrix(C, kappa)``."""
    mixing = testing.sqrtm_reference(testing.spd_matrix(shape[-1], kappa, seed=seed))
    return np.random.default_rng(seed).standard_normal(shape) @ mixing + mean


def test_imports_and_runs_without_flax():
    code = (
        "import sys\n"
        "sys.modules['flax'] = None  # any import of flax fails\n"
        "import jax.numpy as jnp\n"
        "from jaxsqrtm import functional\n"
        "x = jnp.arange(24.0).reshape(2, 3, 4) ** 0.5\n"
        "print(functional.covariance_pooling(x).shape)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(2, 10)"


# --- Covariance and pooling ------------------------------------------------------------


def test_weighted_mean_and_covariance():
    tokens = correlated_features((2, 7, 3))
    weights = np.random.default_rng(1).random((2, 7))
    weights /= weights.sum(axis=-1, keepdims=True)
    mean, covariance = mean_and_covariance(tokens, weights)
    expected_mean = np.einsum("np,npc->nc", weights, tokens)
    centred = tokens - expected_mean[:, None]
    expected = np.einsum("np,npi,npj->nij", weights, centred, centred)
    np.testing.assert_allclose(mean, expected_mean, rtol=1e-12)
    np.testing.assert_allclose(covariance, expected, rtol=1e-12)
    _, uniform = mean_and_covariance(tokens)
    np.testing.assert_allclose(uniform, testing.covariance(tokens), rtol=1e-12)


def test_power_normalization_of_a_zero_matrix_is_zero():
    out = power_normalize(jnp.zeros((2, 3, 3), jnp.float32))
    np.testing.assert_array_equal(out, 0)


def test_pooling_functions_take_their_learned_maps_as_callables():
    x = correlated_features((2, 5, 5, 6))
    kernel = np.random.default_rng(2).standard_normal((6, 4))
    pooled = covariance_pooling(x, reduce=lambda f: f @ kernel, method="eigh", output="matrix")
    reduced = (x @ kernel).reshape(2, 25, 4)
    covariance = testing.covariance(reduced)
    trace = np.trace(covariance, axis1=-2, axis2=-1)[:, None, None]
    expected = testing.sqrtm_reference(covariance / trace) * np.sqrt(trace)
    np.testing.assert_allclose(pooled, expected, rtol=1e-10)

    video = correlated_features((2, 3, 2, 2, 4))
    zero = lambda f: jnp.zeros((*f.shape[:-1], 1), f.dtype)  # noqa: E731
    pooled, weights = functional.attentive_covariance_pooling(
        video, score_positions=zero, score_frames=zero, method="eigh"
    )
    np.testing.assert_allclose(weights, 1 / 12)
    np.testing.assert_allclose(
        pooled, covariance_pooling(video.reshape(2, 12, 4), method="eigh"), rtol=1e-12
    )

    tokens = correlated_features((2, 5, 4))
    logits = functional.second_order_vit_head(
        tokens,
        class_head=lambda t: t[:, :2],
        pool=functools.partial(covariance_pooling, method="eigh"),
        covariance_head=lambda p: p[:, :2],
    )
    expected = tokens[:, 0, :2] + covariance_pooling(tokens[:, 1:], method="eigh")[:, :2]
    np.testing.assert_allclose(logits, expected, rtol=1e-12)


def test_space_time_weights_sum_to_one():
    rng = np.random.default_rng(3)
    weights = functional.space_time_weights(
        jnp.asarray(rng.standard_normal((2, 3, 4, 4)), jnp.bfloat16),
        jnp.asarray(rng.standard_normal((2, 3)), jnp.bfloat16),
    )
    assert weights.dtype == jnp.float32
    np.testing.assert_allclose(weights.sum(axis=(1, 2, 3)), 1, rtol=1e-6)


# --- Decorrelated batch norm -----------------------------------------------------------


def test_group_moments_across_a_named_axis_equal_the_whole_batch():
    x = correlated_features((4, 32, 8)).astype(np.float32)
    mean, covariance = jax.vmap(
        functools.partial(group_moments, group_size=4, axis_name="shards"), axis_name="shards"
    )(x)
    whole_mean, whole_covariance = group_moments(x.reshape(128, 8), 4)
    np.testing.assert_allclose(mean[0], whole_mean, atol=1e-6)
    np.testing.assert_allclose(covariance[3], whole_covariance, atol=1e-6)
    expected = testing.covariance(np.swapaxes(x.reshape(128, 2, 4), 0, 1))
    np.testing.assert_allclose(whole_covariance, expected, atol=1e-5)


def test_statistics_are_returned_not_mutated():
    x = correlated_features((64, 8))
    mean, whitening = init_decorrelated_batch_norm(8, 4, jnp.float64)
    run = functools.partial(decorrelated_batch_norm, x, mean, whitening, method="eigh")
    _, new_mean, _ = run(use_running_average=False, momentum=0.5)
    np.testing.assert_allclose(new_mean, 0.5 * x.mean(axis=0), rtol=1e-12)
    _, same_mean, same_whitening = run(use_running_average=False, update_statistics=False)
    assert same_mean is mean and same_whitening is whitening
    y, same_mean, _ = run(use_running_average=True)
    assert same_mean is mean
    np.testing.assert_allclose(y, x, rtol=1e-12)  # initial statistics: identity map

    # The statistics carry no derivative.
    def total(x):
        _, m, w = decorrelated_batch_norm(x, mean, whitening, use_running_average=False)
        return jnp.sum(m) + jnp.sum(w)

    np.testing.assert_array_equal(jax.grad(total)(x), 0)


def rank_deficient_features(samples=512, seed=0):
    """8 channels spanned by 3 directions plus a mean: each group of 4 has rank 3."""
    rng = np.random.default_rng(seed)
    return rng.standard_normal((samples, 3)) @ rng.standard_normal((3, 8)) + 1.0


@pytest.mark.parametrize("method", [None, "auto", "eigh"])
def test_default_epsilon_gives_the_pseudo_inverse_root_on_rank_deficient_groups(method):
    """The mechanism behind the evaluation-mode collapse: with the paper's ridge the
    null direction of a rank-3 group is scaled by ``1 / sqrt(1e-5)`` (~316); an input
    with a component there (a shifted mean in evaluation) is amplified. The default
    (0 with the projecting methods) gives it weight 0."""
    x = rank_deficient_features().astype(np.float32)
    mean, whitening = init_decorrelated_batch_norm(8, 4)
    assert default_whitening_epsilon(method) == 0
    run = functools.partial(decorrelated_batch_norm, method=method, momentum=0.0)

    y, mean0, whitening0 = run(x, mean, whitening, use_running_average=False)
    covariance = functional.group_moments(y, 4)[1]
    for group in np.asarray(covariance, np.float64):
        np.testing.assert_allclose(np.linalg.eigvalsh(group), [0, 1, 1, 1], atol=1e-4)
    assert float(jnp.linalg.norm(whitening0, ord=2, axis=(-2, -1)).max()) < 10

    _, _, paper = run(x, mean, whitening, use_running_average=False, epsilon=1e-5)
    assert float(jnp.linalg.norm(paper, ord=2, axis=(-2, -1)).min()) > 300

    # Evaluation with a running mean off the data's affine subspace.
    null = np.linalg.svd(np.asarray(testing.covariance(x[:, :4])))[0][:, -1]
    shifted = mean0.at[:4].add(jnp.asarray(0.1 * null, mean0.dtype))
    y_eval = run(x, shifted, whitening0, use_running_average=True)[0]
    y_paper = run(x, shifted, paper, use_running_average=True)[0]
    assert float(jnp.abs(y_eval - y).max()) < 1e-3
    assert float(jnp.abs(y_paper - y).max()) > 10


@pytest.mark.parametrize("method", ["mpa", "mtp", "ns"])
def test_non_projecting_methods_keep_the_paper_ridge(method):
    assert default_whitening_epsilon(method) == functional.PAPER_EPSILON == 1e-5
    mean, whitening = init_decorrelated_batch_norm(8, 4)
    y, _, new = decorrelated_batch_norm(
        np.zeros((16, 8), np.float32), mean, whitening, use_running_average=False, method=method
    )
    assert bool(jnp.all(jnp.isfinite(y))) and bool(jnp.all(jnp.isfinite(new)))


def test_decorrelated_batch_norm_errors():
    mean, whitening = init_decorrelated_batch_norm(8, 4)
    with pytest.raises(ValueError, match=r"mean and whitening must have shapes \(12,\)"):
        decorrelated_batch_norm(np.ones((4, 12)), mean, whitening, use_running_average=True)
    with pytest.raises(ValueError, match=r"group_size must divide the 12 channels"):
        init_decorrelated_batch_norm(12, 5)
    with pytest.raises(TypeError, match="use_running_average must be a bool"):
        decorrelated_batch_norm(np.ones((4, 8)), mean, whitening, use_running_average=None)
    with pytest.raises(ValueError, match=r"momentum must be in \[0, 1\], got 2"):
        decorrelated_batch_norm(
            np.ones((4, 8)), mean, whitening, use_running_average=False, momentum=2
        )


# --- Whitening-colouring transform -----------------------------------------------------


def wct(content, style, **kwargs):
    """:func:`whitening_coloring_transform` under ``jit``."""
    return jax.jit(functools.partial(whitening_coloring_transform, **kwargs))(content, style)


def test_wct_matches_style_statistics():
    content = correlated_features((12, 12, 4), kappa=20.0, mean=-1.0, seed=1)
    style = 3.0 * correlated_features((10, 10, 4), kappa=50.0, mean=2.0, seed=2)
    out = wct(content, style, epsilon=1e-12, method="eigh")
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


# Relative error of the float32 gradient (in content and style) against the float64 eigh
# transform: measured eigh 8.7e-7, auto 1.2e-6, mpa 7.3e-3 (mtp 0.29, ns 0.15).
WCT_GRAD_TOLERANCE = {"eigh": 1e-5, "auto": 1e-5, "mpa": 2e-2}


@pytest.mark.parametrize("method", sorted(WCT_GRAD_TOLERANCE))
def test_wct_gradients_match_float64_eigh(method):
    content = correlated_features((5, 5, 4), seed=2)
    style = 2.0 * correlated_features((4, 4, 4), seed=3)

    def loss(method):
        def f(content, style):
            return jnp.sum(
                jnp.sin(whitening_coloring_transform(content, style, alpha=0.7, method=method))
            )

        return jax.jit(jax.grad(f, argnums=(0, 1)))

    reference = loss("eigh")(content, style)
    grads = loss(method)(content.astype(np.float32), style.astype(np.float32))
    assert all(g.dtype == jnp.float32 for g in grads)
    error = max(
        np.linalg.norm(np.asarray(g, np.float64) - r) / np.linalg.norm(r)
        for g, r in zip(grads, reference, strict=True)
    )
    assert error < WCT_GRAD_TOLERANCE[method], error


def test_wct_rejects_bad_arguments():
    with pytest.raises(ValueError, match=r"content must have shape \(\.\.\., H, W, C\)"):
        whitening_coloring_transform(np.ones((16, 3)), np.ones((4, 4, 3)))
    with pytest.raises(ValueError, match="must have the same channels"):
        whitening_coloring_transform(np.ones((4, 4, 3)), np.ones((4, 4, 2)))
    with pytest.raises(ValueError, match="whitening_coloring_transform: epsilon must be >= 0"):
        whitening_coloring_transform(np.ones((4, 4, 3)), np.ones((4, 4, 3)), epsilon=-1.0)
    with pytest.raises(ValueError, match="sqrtm_options must not contain 'method'"):
        whitening_coloring_transform(
            np.ones((4, 4, 3)), np.ones((4, 4, 3)), sqrtm_options={"method": "eigh"}
        )
    assert jaxsqrtm.sqrtm is functional.sqrtm  # the library's own root
