"""The accurate mode, ``method="auto"``: the accuracy table, hard spectra and diagnostics.

Targets (float32 inputs, relative Frobenius error against float64 ``eigh``; the forward
columns are about what float32 ``eigh`` achieves):

    kappa up to   sqrt forward   inv_sqrt forward   sqrt gradient
    1e2           1e-5           1e-4               1e-4
    1e4           3e-5           3e-3               1e-3
    1e6           1e-3           3e-1               1e-2

Measured maxima over n = 16, 64, 256, the three spectra and two seeds (jax 0.10.2, CPU)
are written next to each assertion.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm._methods import accurate

KAPPAS = (1e2, 1e4, 1e6)
TARGETS = {  # (sqrt forward, inv_sqrt forward, sqrt gradient) per kappa
    1e2: (1e-5, 1e-4, 1e-4),
    1e4: (3e-5, 3e-3, 1e-3),
    1e6: (1e-3, 3e-1, 1e-2),
}


def auto_errors(a, g, inverse):
    """Per-matrix forward and gradient errors of ``method="auto"``."""
    root = jaxsqrtm.inv_sqrtm if inverse else jaxsqrtm.sqrtm
    out, vjp = jax.vjp(lambda x: root(x, method="auto"), jnp.asarray(a))
    grad = vjp(jnp.asarray(g))[0]
    ref = testing.sqrtm_reference(a, inverse=inverse)
    ref_grad = testing.sqrtm_vjp_reference(a, g, inverse=inverse)
    forward = [testing.relative_error(o, r) for o, r in zip(out, ref, strict=True)]
    backward = [testing.relative_error(o, r) for o, r in zip(grad, ref_grad, strict=True)]
    return forward, backward


@pytest.mark.parametrize("kind", testing.SPECTRA)
@pytest.mark.parametrize("n", [16, 64, 256])
def test_float32_accuracy_table(n, kind):
    a = np.stack([testing.spd_matrix(n, k, kind=kind, seed=n) for k in KAPPAS]).astype(np.float32)
    g = np.random.default_rng(n).standard_normal(a.shape).astype(np.float32)
    sqrt_fwd, sqrt_grad = auto_errors(a, g, inverse=False)
    inv_fwd, _ = auto_errors(a, g, inverse=True)
    for i, kappa in enumerate(KAPPAS):
        sqrt_target, inv_target, grad_target = TARGETS[kappa]
        # measured maxima: sqrt 6.5e-7 / 1.2e-5 / 1.2e-4, inv 8.7e-7 / 8.0e-5 / 9.0e-3,
        # gradient 9.2e-7 / 5.8e-5 / 7.2e-3 at kappa 1e2 / 1e4 / 1e6
        assert sqrt_fwd[i] < sqrt_target, (kappa, sqrt_fwd[i])
        assert inv_fwd[i] < inv_target, (kappa, inv_fwd[i])
        assert sqrt_grad[i] < grad_target, (kappa, sqrt_grad[i])


def test_float32_accuracy_n512():
    """The largest size of the table, one geometric matrix per kappa (measured
    sqrt 6.5e-7 / 2.6e-6 / 1.6e-5, gradient 1.3e-6 / 2.7e-5 / 1.7e-3)."""
    a = np.stack([testing.spd_matrix(512, k, seed=7) for k in KAPPAS]).astype(np.float32)
    g = np.random.default_rng(7).standard_normal(a.shape).astype(np.float32)
    sqrt_fwd, sqrt_grad = auto_errors(a, g, inverse=False)
    for i, kappa in enumerate(KAPPAS):
        sqrt_target, _, grad_target = TARGETS[kappa]
        assert sqrt_fwd[i] < sqrt_target
        assert sqrt_grad[i] < grad_target


@pytest.mark.parametrize("inverse", [False, True])
def test_float64_reaches_float64_roundoff(inverse):
    """Measured at n = 64, geometric: forward 3.6e-14 / 1.4e-11 (inverse), gradient 7.5e-12
    / 2.8e-11 at kappa = 1e6; 1e-14 at kappa = 1e2."""
    a = np.stack([testing.spd_matrix(64, k, seed=1) for k in KAPPAS])
    g = np.random.default_rng(1).standard_normal(a.shape)
    forward, backward = auto_errors(a, g, inverse)
    np.testing.assert_array_less(forward, [1e-13, 1e-12, 5e-11])
    np.testing.assert_array_less(backward, [1e-13, 2e-12, 1e-10])


def test_real_covariances():
    """Astronaut patch covariance (kappa 4e4): float32 eigh-level accuracy."""
    a = testing.image_patch_covariance("astronaut").astype(np.float32)
    g = np.random.default_rng(2).standard_normal(a.shape).astype(np.float32)
    (sqrt_fwd,), (sqrt_grad,) = auto_errors(a[None], g[None], inverse=False)
    (inv_fwd,), _ = auto_errors(a[None], g[None], inverse=True)
    eigh = testing.relative_error(
        jaxsqrtm.sqrtm(a, method="eigh"), testing.sqrtm_reference(a)
    )  # measured 4.9e-5
    assert sqrt_fwd < 3e-5  # measured 4.7e-6
    assert sqrt_fwd < eigh
    assert inv_fwd < 3e-3  # measured 8.2e-5
    assert sqrt_grad < 1e-3  # measured 5.4e-5


def rank_deficient_covariance():
    """49 samples x 256 channels: rank 48, the usual covariance-pooling input."""
    features = np.random.default_rng(0).standard_normal((49, 256))
    return testing.covariance(features).astype(np.float32)


def _range_and_null(a):
    """Float64 eigenvectors of the range and of the null space (eigenvalues below
    ``1e-6 l_max``) of ``a``."""
    w, v = np.linalg.eigh(np.asarray(a, np.float64))
    keep = w > 1e-6 * w[-1]
    return w[keep], v[:, keep], v[:, ~keep]


def test_rank_deficient_square_root_has_no_ridge_bias():
    """The spectrum reaches the noise floor, so the root comes from the decomposition:
    zero on the null space (measured 2.0e-7 of ||S||_2 = 0.75 there, against
    ``0.375 sqrt(ridge c) = 5e-4`` before), round-off on the range."""
    a = rank_deficient_covariance()
    s, info = jaxsqrtm.sqrtm(a, method="auto", return_info=True)
    assert int(info.iterations) < 20  # measured 12, then the decomposition
    w, rng, null = _range_and_null(a)
    assert null.shape[1] == 256 - 48
    s = np.asarray(s, np.float64)
    assert np.linalg.norm(null.T @ s @ null, 2) < 2e-6  # measured 2.0e-7
    reference = (rng * np.sqrt(w)) @ rng.T
    assert testing.relative_error(s, reference) < 1e-5  # measured 8.1e-7
    clamped_eigh = testing.relative_error(
        eigh_clamped_root(a), reference
    )  # float32 eigh with clamped eigenvalues: measured 3.9e-4
    assert testing.relative_error(s, reference) < clamped_eigh


def eigh_clamped_root(a):
    """``V sqrt(max(l, 0)) V^T`` with ``jnp.linalg.eigh`` in the dtype of ``a``."""
    w, v = jnp.linalg.eigh(jnp.asarray(a))
    return (v * jnp.sqrt(jnp.maximum(w, 0))) @ v.T


def test_rank_deficient_inverse_root_is_the_pseudo_inverse():
    """On the range of A the inverse root is accurate; on the null space it is 0
    (measured 5.8e-8 against ``||P||_2 = 0.75``), not the ridge's ``1 / sqrt(ridge c)``."""
    a = rank_deficient_covariance()
    p = np.asarray(jaxsqrtm.inv_sqrtm(a, method="auto"), np.float64)
    assert np.all(np.isfinite(p))
    w, rng, null = _range_and_null(a)
    reference = (rng * w**-0.5) @ rng.T
    assert testing.relative_error(p, reference) < 1e-5  # measured 8.1e-7
    assert np.linalg.norm(null.T @ p @ null, 2) < 1e-6  # measured 5.8e-8


def indefinite_covariance(n, rank, negative, seed=0):
    """A rank-``rank`` covariance whose null eigenvalues are replaced by values spread
    over ``[-negative, 0]`` times the largest eigenvalue (float64)."""
    features = np.random.default_rng(seed).standard_normal((rank + 1, n))
    w, v = np.linalg.eigh(testing.covariance(features))
    null = w < 1e-9 * w[-1]
    w[null] = -negative * w[-1] * np.linspace(0, 1, int(null.sum()))
    return (v * w) @ v.T


@pytest.mark.parametrize("n", [64, 256])
@pytest.mark.parametrize("negative", [2.4e-7, 1e-5, 1e-3])
def test_indefinite_input_gives_the_root_of_the_psd_part(n, negative):
    """Negative eigenvalues down to ``-1e-3 l_max``: the root of ``A_+`` (its negative
    eigenvalues set to 0), as accurate as float32 ``eigh`` with clamped eigenvalues or
    better, in the matrix and in its trace; the inverse root is the pseudo-inverse on
    the range. Measured (root / trace) against the float64 root of ``A_+``: 8e-7 to
    9e-7 / 4e-9 to 1.1e-7 at both sizes; clamped eigh the same where the negative
    eigenvalues are clearly negative, 1.3e-4 to 1.7e-4 / 7e-5 to 9e-5 where they are
    round-off-sized (``-2.4e-7 l_max``); inverse root 9e-7 to 1.2e-6."""
    a = indefinite_covariance(n, n // 4, negative)
    a32 = a.astype(np.float32)
    w, rng, _ = _range_and_null(a)
    reference = (rng * np.sqrt(w)) @ rng.T
    root = np.asarray(jaxsqrtm.sqrtm(a32), np.float64)
    clamped = np.asarray(eigh_clamped_root(a32), np.float64)
    error = testing.relative_error(root, reference)
    trace_error = abs(np.trace(root) / np.trace(reference) - 1)
    assert error <= testing.relative_error(clamped, reference)
    assert trace_error <= max(abs(np.trace(clamped) / np.trace(reference) - 1), 1e-6)
    assert error < 1e-5
    inverse = np.asarray(jaxsqrtm.inv_sqrtm(a32), np.float64)
    assert testing.relative_error(inverse, (rng / np.sqrt(w)) @ rng.T) < 1e-5


def test_tiny_negative_eigenvalue_does_not_spread():
    """``diag(4, -1e-6)``: the positive direction keeps its root, the negative one is 0."""
    a = jnp.diag(jnp.array([4.0, -1e-6]))
    np.testing.assert_array_equal(jaxsqrtm.sqrtm(a), jnp.diag(jnp.array([2.0, 0.0])))
    np.testing.assert_array_equal(jaxsqrtm.inv_sqrtm(a), jnp.diag(jnp.array([0.5, 0.0])))
    for func in (jaxsqrtm.sqrtm, jaxsqrtm.inv_sqrtm):
        grad = jax.grad(lambda a, func=func: jnp.sum(func(a)))(a)
        assert np.all(np.isfinite(grad))


@pytest.mark.parametrize("ridge", [0.0, 1e-9, 1e-12])
@pytest.mark.parametrize("inverse", [False, True])
def test_ridge_too_small_to_converge_is_handled(ridge, inverse):
    """A ridge below the noise floor cannot make a rank-deficient input converge (or
    gives non-finite iterates); those matrices are computed by the decomposition, so the
    result is the same as with the default ridge."""
    a = rank_deficient_covariance()
    func = jaxsqrtm.inv_sqrtm if inverse else jaxsqrtm.sqrtm
    out = func(a, ridge=ridge)
    assert np.all(np.isfinite(out))
    assert testing.relative_error(out, func(a)) < 1e-6


def test_gradient_at_rank_deficient_and_indefinite_input_is_finite():
    """The decomposition's Daleckii–Krein derivative there, equal to that of
    ``method="eigh"``; the iteration's Lyapunov derivative elsewhere in the batch."""
    a = np.stack(
        [
            rank_deficient_covariance()[:64, :64],
            indefinite_covariance(64, 16, 1e-3).astype(np.float32),
            testing.spd_matrix(64, 1e2, seed=2).astype(np.float32),
        ]
    )
    g = np.random.default_rng(1).standard_normal(a.shape).astype(np.float32)
    for func in (jaxsqrtm.sqrtm, jaxsqrtm.inv_sqrtm):

        def loss(a, method, func=func):
            return jnp.sum(func(a, method=method) * g)

        auto, eigh = (jax.grad(loss)(a, method) for method in ("auto", "eigh"))
        assert np.all(np.isfinite(auto))
        assert testing.relative_error(auto[:2], eigh[:2]) < 1e-6
        reference = testing.sqrtm_vjp_reference(a[2], g[2], inverse=func is jaxsqrtm.inv_sqrtm)
        assert testing.relative_error(auto[2], reference) < 1e-4


def test_ridge_knob():
    """ridge=0 on a well-conditioned SPD matrix; a large ridge is the root of A + r c I."""
    a = testing.spd_matrix(32, 1e3, seed=4)
    s0 = jaxsqrtm.sqrtm(a, method="auto", ridge=0.0)
    assert testing.relative_error(s0, testing.sqrtm_reference(a)) < 1e-13
    with pytest.raises(ValueError, match="ridge"):
        jaxsqrtm.sqrtm(a, method="auto", ridge=-1.0)
    with pytest.raises(ValueError, match="normalization"):
        jaxsqrtm.sqrtm(a, method="auto", normalization="spectral")


@pytest.mark.parametrize("normalization", ["spectral_bound", "frobenius", "trace"])
def test_every_bound_normalization_converges(normalization):
    """Every scale that bounds the spectrum converges to round-off (7, 7 and 8 steps).
    Measured 1.9e-7 to 2.3e-7 (root) and 2.9e-7 to 3.2e-7 (inverse)."""
    a = testing.spd_matrix(32, 1e2, kind="marchenko_pastur", seed=3)
    a32 = a.astype(np.float32)
    for inverse, root in ((False, jaxsqrtm.sqrtm), (True, jaxsqrtm.inv_sqrtm)):
        out = root(a32, method="auto", normalization=normalization)
        reference = testing.sqrtm_reference(a, inverse=inverse)
        assert testing.relative_error(out, reference) < 1e-6


@pytest.mark.parametrize("kind", testing.SPECTRA)
def test_ridge_second_order_term_is_dropped_only_below_round_off(kind):
    """The ridge removal skips its ``r^2`` terms where a bound shows them below round-off.

    The bound ``u >= r / l_min`` must hold, so that a skipped term, at most
    ``3 u^2 / 8`` relative, is below ``eps / 8``; it keeps the terms from kappa 1e4 on and
    skips them at 1e2 for n = 16 (where it saves two products of ``sqrtm``).
    """
    r = float(np.finfo(np.float32).eps)
    for kappa in KAPPAS:
        for n in (16, 64):
            a = testing.spd_matrix(n, kappa, kind=kind, seed=7)
            a_hat = a / np.linalg.eigvalsh(a)[-1] + r * np.eye(n)
            z = testing.sqrtm_reference(a_hat, inverse=True).astype(np.float32)
            matters = bool(accurate.second_order_matters(jnp.asarray(z), r))
            largest_term = 3 / 8 * (r / np.linalg.eigvalsh(a_hat)[0]) ** 2
            assert matters or largest_term < r / 8, (kind, kappa, n)
            if kappa >= 1e4:
                assert matters, (kind, kappa, n)
            if kappa == 1e2 and n == 16:
                assert not matters, (kind, n)


def test_iterations_follow_conditioning():
    """Measured (float32, n = 64, geometric): 4, 7, 9, 12 steps at kappa 1, 1e2, 1e4, 1e6;
    each matrix of a batch reports its own count."""
    a = np.stack([testing.spd_matrix(64, k, seed=1) for k in (1.0, *KAPPAS)]).astype(np.float32)
    _, info = jaxsqrtm.sqrtm(a, method="auto", return_info=True)
    iterations = np.asarray(info.iterations)
    assert list(iterations) == sorted(iterations)
    assert iterations[0] <= 5 and iterations[-1] <= 14


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_diagnostics(method):
    a = testing.spd_matrix(16, 1e2, batch=(3,), seed=5).astype(np.float32)
    for root in (jaxsqrtm.sqrtm, jaxsqrtm.inv_sqrtm):
        out, info = jax.jit(lambda x, root=root: root(x, method=method, return_info=True))(a)
        assert isinstance(info, jaxsqrtm.RootInfo)
        assert info.residual.shape == info.iterations.shape == info.scale.shape == (3,)
        assert info.iterations.dtype == jnp.int32 and info.residual.dtype == jnp.float32
        np.testing.assert_array_equal(out, root(a, method=method))
        x = np.asarray(out, np.float64)
        a64 = a.astype(np.float64)
        if root is jaxsqrtm.sqrtm:
            direct = np.linalg.norm(x @ x - a64, axis=(1, 2)) / np.linalg.norm(a64, axis=(1, 2))
        else:
            direct = np.linalg.norm(x @ a64 @ x - np.eye(16), axis=(1, 2)) / 4
        np.testing.assert_allclose(info.residual, direct, rtol=0.05, atol=2e-6)
    _, info = jaxsqrtm.sqrtm(a, method=method, return_info=True)
    if method == "auto":
        assert np.all(info.residual < 1e-5)  # measured 1e-6
        bound = np.minimum(
            np.linalg.norm(a, axis=(1, 2)), np.linalg.norm(a @ a, axis=(1, 2)) ** 0.5
        )
        np.testing.assert_allclose(info.scale, bound * (1 + np.finfo(np.float32).eps), rtol=1e-5)
    if method in ("mpa", "mtp"):
        assert np.all(info.residual > 1e-3)  # the paper's settings are not a root here
