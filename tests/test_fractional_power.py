"""``fractional_matrix_power``: exponents, the accuracy table, gradients, PSD semantics.

Targets (float32 inputs, relative Frobenius error against float64 ``eigh`` of the same
input): ``A^(+-1/p)`` for p in {2, 3, 4, 6, 8} and condition numbers up to ``1e6`` no
worse than float32 ``eigh`` on the same input (within 1.5x) and at most ``1e-5`` at
``1e2``; gradients at most ``1e-3`` up to ``1e4``. Measured values (jax 0.10.2, CPU) are
written next to each assertion.
"""

import fractions

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm._methods import eigh as eigh_method
from jaxsqrtm._power_api import _residual, configure

F = jaxsqrtm.fractional_matrix_power
KAPPAS = (1e2, 1e4, 1e6)
# The noise floor of the PSD semantics, relative to the largest eigenvalue, for n = 64.
FLOOR_64 = 2 * 64**0.25 * float(np.finfo(np.float32).eps)


def relative_errors(x, reference):
    return np.array([testing.relative_error(o, r) for o, r in zip(x, reference, strict=True)])


def test_exponents_and_knobs_are_validated():
    a = jnp.eye(3)
    for t in (0, 2, 0.4, -2 / 3, float("nan"), fractions.Fraction(2, 3)):
        with pytest.raises(ValueError, match="t must be"):
            F(a, t)
    for t in ("1/2", None, True):
        with pytest.raises(TypeError, match="t must be"):
            F(a, t)
    with pytest.raises(ValueError, match="method"):
        F(a, -0.5, method="mpa")
    with pytest.raises(ValueError, match="ridge"):
        F(a, -0.5, ridge=1.5)
    with pytest.raises(ValueError, match="max_iters"):
        F(a, -0.5, method="eigh", max_iters=5)
    with pytest.raises(ValueError, match="does not apply to method='eigh'"):
        F(a, -1 / 3, method="eigh", precision="mixed")
    with pytest.raises(ValueError, match="square"):
        F(jnp.ones((2, 3)), 0.5)
    with pytest.raises(TypeError, match="floating"):
        F(jnp.eye(2, dtype=jnp.int32), 0.5)
    assert configure("f", "auto", -1 / 3).p == 3
    assert configure("f", "auto", fractions.Fraction(-1, 6)).inverse
    assert configure("f", "eigh", np.float32(0.25)).p == 4
    assert configure("f", "auto", 1).p == 1
    assert jaxsqrtm.POWER_METHODS == ("auto", "eigh")
    assert jaxsqrtm.power_matmul_count(-1 / 4) is None
    assert jaxsqrtm.power_matmul_count(1 / 3, method="eigh", backward=True) is None


# The exponents of the float32 table: the coupled iteration's routes (p = 3, 6, both
# signs) and Shampoo's square-root compositions (p = 4, 8). The other tests on float32
# (9, 64, 64) batches reuse their compiled programs.
TABLE_EXPONENTS = (1 / 3, -1 / 3, 1 / 6, -1 / 6, -1 / 4, -1 / 8)


@pytest.fixture(scope="module")
def table_batch():
    """n = 64, the three spectra at condition numbers 1e2, 1e4, 1e6 (float32)."""
    return np.stack(
        [testing.spd_matrix(64, k, kind=s, seed=64) for s in testing.SPECTRA for k in KAPPAS]
    ).astype(np.float32)


@pytest.fixture(scope="module")
def hard_batch():
    """Nine float32 64 x 64 matrices in one batch: three rank-19 covariances (20 samples),
    zero, NaN, SPD matrices scaled by 1e-30 and 1e30, an indefinite one (eigenvalues
    from -0.3 to 1) and a plain SPD one (kappa 10)."""
    rng = np.random.default_rng(0)
    features = rng.standard_normal((3, 20, 64)) * np.logspace(0, -1, 64)
    spd = testing.spd_matrix(64, 10.0, batch=(3,), seed=9)
    u = testing.random_orthogonal(64, rng)
    indefinite = (u * np.linspace(-0.3, 1, 64)) @ u.T
    mats = [*testing.covariance(features), np.zeros((64, 64)), np.full((64, 64), np.nan)]
    mats += [spd[0] * 1e-30, spd[1] * 1e30, indefinite, spd[2]]
    return np.stack(mats).astype(np.float32)


@pytest.mark.parametrize("t", TABLE_EXPONENTS)
def test_float32_accuracy_table(t, table_batch):
    """Against float32 eigh (this library's ``method="eigh"``) on the same input.

    Measured worst ratios over the nine matrices (ours / eigh): 0.50, 0.43, 0.40, 0.73,
    0.37, 0.36 in the order of :data:`TABLE_EXPONENTS` (n = 256: at most 1.11, with
    p = 2, 4, 8 positive too); largest errors at 1e2 below 1.2e-6.
    """
    at_1e2 = np.array([k == 1e2 for _ in testing.SPECTRA for k in KAPPAS])
    reference = testing.power_reference(table_batch, t)
    x, info = F(table_batch, t, return_info=True)
    ours = relative_errors(x, reference)
    eigh = relative_errors(F(table_batch, t, method="eigh"), reference)
    assert np.all(ours <= 1.5 * eigh), ours / eigh
    assert np.all(ours[at_1e2] < 1e-5), ours[at_1e2]
    assert np.all(info.converged)
    # eps kappa for t < 0 (measured 1.9e-2 at 1e6), round-off for t > 0 (1.8e-5)
    assert np.all(info.residual < (0.05 if t < 0 else 1e-4)), info.residual


def test_odd_root_on_a_clustered_spectrum_n256():
    """255 equal eigenvalues and one 100 times larger: the coupled iteration's product
    round-off, 3.7e-6 here before ``Z T`` was written ``Z + Z D``, is relative to
    ``T - I`` (measured 8.4e-7; float32 eigh 1.2e-6)."""
    a = testing.spd_matrix(256, 1e2, kind="clustered", seed=256).astype(np.float32)
    reference = testing.power_reference(a, -1 / 3)
    ours = testing.relative_error(F(a, -1 / 3), reference)
    eigh = testing.relative_error(F(a, -1 / 3, method="eigh"), reference)
    assert ours < 1.2e-6 and ours < 1.5 * eigh, (ours, eigh)


@pytest.mark.parametrize("t", [-1, 1 / 5])
def test_other_exponents(t):
    """Any integer p (p = 1, and q = 5, whose positive root is ``B X^3``), kappa 10
    (measured at most 9e-7; p = 7, 12, 16 measured alike, 2e-7 to 2.3e-6 at kappa 1e3)."""
    a = testing.spd_matrix(16, 10.0, batch=(2,), seed=3).astype(np.float32)
    x, info = F(a, t, return_info=True)
    assert x.dtype == jnp.float32
    assert testing.relative_error(x, testing.power_reference(a, t)) < 3e-6
    assert np.all(info.converged) and np.all(info.residual < 1e-5)


@pytest.mark.parametrize("t", [1 / 3, -1 / 6])
def test_float32_gradient_against_daleckii_krein(t):
    """Reverse mode of ``"auto"``, n = 32: kappa 1e2, a block-constant spectrum (repeated
    eigenvalues 1, 2, 3: the rules stay finite; ``t l^(t-1)`` on the ties) and twice
    kappa 1e4. Measured at most 1.4e-6, 1e-6 and 3.4e-5 (float32 ``"eigh"``: 1.8e-6 and
    7.3e-5 at 1e2 and 1e4): ``B X`` (a non-symmetric cotangent into the coupled rule)
    and ``(A^(1/2))^(-1/3)`` (the rule alone after a root)."""
    repeated = np.diag(np.repeat([1.0, 2.0, 3.0], [12, 12, 8]))
    a = np.stack(
        [
            testing.spd_matrix(32, 1e2, seed=5),
            repeated,
            *testing.spd_matrix(32, 1e4, batch=(2,), seed=5),
        ]
    ).astype(np.float32)
    g = np.random.default_rng(0).standard_normal(a.shape).astype(np.float32)
    _, vjp = jax.vjp(lambda x: F(x, t), jnp.asarray(a))
    grad = vjp(jnp.asarray(g))[0]
    assert grad.dtype == jnp.float32
    errors = relative_errors(grad, testing.power_vjp_reference(a, g, t))
    assert np.all(errors[:2] < 1e-5) and np.all(errors[2:] < 3e-4), errors


def test_float64_gradient_grad_of_vmap_and_check_grads():
    """float64, kappa 10, ``t = 1/3``: the Daleckii–Krein gradient to 1e-12 (measured
    3.6e-15), ``grad`` of a ``vmap`` of single matrices equals the batched gradient, and
    ``check_grads`` order 1 in forward and reverse mode."""
    t = 1 / 3
    a = jnp.asarray(testing.spd_matrix(6, 10.0, batch=(2,), seed=3))
    g = np.random.default_rng(1).standard_normal(a.shape)
    _, vjp = jax.vjp(lambda x: F(x, t), a)
    grad = vjp(jnp.asarray(g))[0]
    assert testing.relative_error(grad, testing.power_vjp_reference(a, g, t)) < 1e-12
    grad_of_vmap = jax.grad(lambda x: jnp.sum(jax.vmap(lambda y: F(y, t))(x) * g))(a)
    np.testing.assert_allclose(grad_of_vmap, grad, rtol=1e-12, atol=1e-14)

    def f(x):
        return jnp.sum(jnp.sin(F(x, t) * jnp.arange(36.0).reshape(6, 6) / 36))

    jax.test_util.check_grads(f, (a,), order=1, modes=["fwd", "rev"], atol=1e-5)


@pytest.mark.parametrize("t", TABLE_EXPONENTS)
def test_hard_batch(t, hard_batch):
    """Each matrix is computed as if alone (per-matrix convergence and fallback).

    Rank-deficient covariances: finite, matching float64 eigh with the noise floor as
    well as float32 eigh does (measured at most 1.7e-6 and 2.6e-6 for t > 0 and t < 0;
    float32 eigh 9e-7 and 2.4e-6) and a residual of round-off (pseudo-inverse semantics);
    zero: 0; NaN: NaN and not converged; the scaled pair: scale invariant; indefinite:
    the PSD part's power.
    """
    x, info = F(hard_batch, t, return_info=True)
    eigh = F(hard_batch, t, method="eigh")
    x, info, eigh = np.asarray(x), jax.tree.map(np.asarray, info), np.asarray(eigh)
    finite = [i for i in range(9) if i != 4]
    assert np.all(np.isfinite(x[finite])) and np.all(info.converged[finite])
    assert np.all(np.isnan(x[4])) and not info.converged[4]
    assert np.all(x[3] == 0) and info.residual[3] == 0
    for i in (0, 1, 2, 7):  # the noise floor of the PSD semantics
        reference = testing.power_reference(hard_batch[i], t, floor=FLOOR_64)
        error = testing.relative_error(x[i], reference)
        assert error < max(2 * testing.relative_error(eigh[i], reference), 3e-6), (i, error)
        assert info.residual[i] < 1e-4, (i, info.residual[i])
    for i in (5, 6, 8):
        reference = testing.power_reference(hard_batch[i], t)
        assert testing.relative_error(x[i], reference) < 2e-6, i


def test_ridge(hard_batch):
    """``ridge=r`` gives ``(A + r c I)^t`` with ``c = PowerInfo.scale``, both methods
    (measured 6e-7 and 1.1e-6 against float64), and keeps the rank-deficient statistics'
    inverse roots finite with a residual below Shampoo's 0.1 (measured 1.5e-2 at
    ``r = 1e-6``)."""
    r, t = 1e-6, -1 / 4
    x, info = F(hard_batch, t, ridge=r, return_info=True)
    a = hard_batch[8].astype(np.float64)
    c = np.sqrt(np.linalg.norm(a @ a))
    np.testing.assert_allclose(info.scale[8], c, rtol=1e-6)
    reference = testing.power_reference(a + r * c * np.eye(64), t)
    assert testing.relative_error(x[8], reference) < 2e-6
    eigh = F(hard_batch, t, ridge=r, method="eigh")
    assert testing.relative_error(eigh[8], reference) < 3e-6
    assert np.all(np.isfinite(x[:3])) and np.all(info.residual[:3] < 0.05), info.residual


def test_residual_flags_a_wrong_root():
    """The residual is round-off for the exact root, the pseudo-inverse and the PSD part's
    root, and of the size of the error for a perturbed one."""
    a = np.diag(np.array([4.0, 2.0, 1.0, 0.0, -0.5]))
    scale = jnp.asarray(np.sqrt(np.linalg.norm(a @ a)))
    # t < 0 weighs the smallest kept eigenvalues most, t > 0 the largest
    for t, off in ((-1 / 3, [1, 1, 1.1, 1, 1]), (1 / 3, [1.1, 1, 1, 1, 1])):
        config = configure("f", "auto", t)
        exact = testing.power_reference(a, t)
        assert _residual(jnp.asarray(exact), jnp.asarray(a), scale, config) < 1e-14
        wrong = exact * np.diag(off)
        assert _residual(jnp.asarray(wrong), jnp.asarray(a), scale, config) > 0.1


def test_small_shapes_and_bfloat16():
    """n = 1, an empty batch, and bfloat16 input: computed in float32, bfloat16 out,
    finite, off by the output's rounding (measured 1.8e-3)."""
    np.testing.assert_allclose(F(jnp.array([[8.0]]), -1 / 3), [[0.5]], rtol=1e-6)
    assert F(jnp.zeros((0, 3, 3)), -1 / 3).shape == (0, 3, 3)
    b = jnp.asarray(testing.spd_matrix(32, 1e3, seed=2), jnp.bfloat16)
    x = F(b, -1 / 4)
    assert x.dtype == jnp.bfloat16 and bool(jnp.all(jnp.isfinite(x)))
    reference = testing.power_reference(np.asarray(b, np.float64), -1 / 4)
    assert testing.relative_error(np.asarray(x, np.float64), reference) < 4e-3


def test_eigh_square_roots_unchanged():
    """The power entry's ``"eigh"`` at ``p = 2`` is the square roots' ``"eigh"``, forward and
    gradient, bit for bit."""
    a = jnp.asarray(testing.spd_matrix(6, 30.0, batch=(2,), seed=4), jnp.float32)
    g = jnp.asarray(np.random.default_rng(2).standard_normal(a.shape), jnp.float32)
    for t, root in ((0.5, jaxsqrtm.sqrtm), (-0.5, jaxsqrtm.inv_sqrtm)):
        ours, vjp = jax.vjp(lambda x, t=t: F(x, t, method="eigh"), a)
        theirs, vjp_theirs = jax.vjp(lambda x, root=root: root(x, method="eigh"), a)
        np.testing.assert_array_equal(ours, theirs)
        np.testing.assert_array_equal(vjp(g)[0], vjp_theirs(g)[0])
    assert eigh_method.degree(configure("f", "eigh", 1 / 3)) == 3
