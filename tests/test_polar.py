"""The polar factor ``jaxsqrtm.polar``: accuracy of every method, its derivative, hard inputs.

References are float64: ``numpy.linalg.svd`` for the factor and the closed form of its
derivative (:func:`jaxsqrtm.testing.polar_derivative_reference`). Targets (float32):

    accurate mode ("auto")   ||U - U_ref||_F / ||U_ref||_F <= 1e-5 at kappa <= 1e2,
                             <= 1e-3 at kappa <= 1e4, float32 SVD's at kappa = 1e6;
                             ||U^T U - I||_2 <= 1e-5 for every kappa <= 1e6
    "quintic"                optax's orthogonalize_via_newton_schulz to 1e-6
    "polar_express"          <= 8 steps of 3 products, ||U^T U - I||_2 <= 1e-2 for
                             sigma_min / sigma_max >= 1e-3
    precision="bfloat16"     no non-finite value, top singular value <= 1.1
    derivative               <= 1e-4 at kappa <= 1e2, finite at repeated singular values

Measured values (jax 0.10.2, CPU) are written next to each assertion.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec
from jax.test_util import check_grads

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm._methods import polar as polar_methods
from jaxsqrtm._methods import polar_schedules

KAPPAS = (1e2, 1e4, 1e6)
SHAPES = ((48, 48), (64, 32), (32, 64))


def orthogonality(u) -> np.ndarray:
    """``||U^T U - I||_2`` on the smaller side per matrix, float64."""
    u = np.asarray(u, np.float64)
    if u.shape[-2] < u.shape[-1]:
        u = np.swapaxes(u, -1, -2)
    w = np.swapaxes(u, -1, -2) @ u
    return np.abs(np.linalg.eigvalsh(w) - 1).max(axis=-1)


def errors(u, reference) -> np.ndarray:
    return np.array([testing.relative_error(a, b) for a, b in zip(u, reference, strict=True)])


def svd32_factor(g):
    p, _, qh = jnp.linalg.svd(jnp.asarray(g, jnp.float32), full_matrices=False)
    return p @ qh


# --- API -------------------------------------------------------------------------------------


def test_methods_and_counts():
    assert jaxsqrtm.POLAR_METHODS == (
        "auto",
        "quintic",
        "polar_express",
        "cubic",
        "polynomial",
        "svd",
    )
    count = jaxsqrtm.polar_matmul_count
    assert count("quintic") == 15
    assert count("quintic", backward=True) == 45
    assert count("quintic", max_iters=7) == 21
    assert count("polar_express") == 24 == 3 * len(polar_schedules.POLAR_EXPRESS)
    assert count("cubic") == 2 * polar_schedules.CUBIC_STEPS == 52
    assert count("polynomial", coefficients=((3.0, -3.0, 1.0), (1.5, -0.5))) == 5
    assert count("polynomial", coefficients=(1.5, -0.5), max_iters=4) == 8
    assert count("auto") is None
    assert count("svd") is None


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"g": np.ones((3, 3), np.int32)}, TypeError, "floating dtype"),
        ({"g": np.ones(3)}, ValueError, "at least 2 dimensions"),
        ({"method": "qdwh"}, ValueError, "method must be one of"),
        ({"precision": "fast"}, ValueError, "bfloat16"),
        ({"precision": "bfloat16"}, ValueError, "fixed schedules"),
        ({"method": "svd", "precision": "bfloat16"}, ValueError, "fixed schedules"),
        ({"method": "quintic", "coefficients": (1.5, -0.5)}, ValueError, "does not apply"),
        ({"method": "svd", "max_iters": 3}, ValueError, "does not apply"),
        ({"method": "polynomial"}, ValueError, "needs coefficients"),
        ({"method": "polynomial", "coefficients": ()}, ValueError, "shape"),
        ({"method": "polynomial", "coefficients": ((1.0, 2.0, 3.0, 4.0),)}, ValueError, "shape"),
        ({"method": "polynomial", "coefficients": ((1.5, np.nan),)}, ValueError, "finite"),
        ({"method": "polynomial", "coefficients": (("a", "b"),)}, TypeError, "real numbers"),
        ({"max_iters": 2.5}, TypeError, "max_iters"),
        ({"max_iters": 0}, ValueError, "max_iters"),
        ({"return_info": 1}, TypeError, "return_info"),
    ],
)
def test_errors_at_trace_time(kwargs, error, match):
    kwargs = {"g": np.ones((4, 3), np.float32), **kwargs}
    with pytest.raises(error, match=match):
        jaxsqrtm.polar(kwargs.pop("g"), **kwargs)


def test_bfloat16_products_need_real_input():
    with pytest.raises(ValueError, match="real input"):
        jaxsqrtm.polar(jnp.ones((3, 2), jnp.complex64), method="cubic", precision="bfloat16")


# --- The accurate mode --------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES)
def test_auto_float32_accuracy(shape):
    """Each spectrum at each kappa, one batch per shape."""
    g = np.stack(
        [
            testing.rectangular_matrix(*shape, k, kind=kind, seed=sum(shape))
            for kind in testing.SPECTRA
            for k in KAPPAS
        ]
    ).astype(np.float32)
    reference = testing.polar_reference(g)
    u, info = jaxsqrtm.polar(g, return_info=True)
    assert u.dtype == np.float32
    error = errors(u, reference).reshape(-1, len(KAPPAS))
    svd_error = errors(svd32_factor(g), reference).reshape(-1, len(KAPPAS))
    # measured at 48x48 / 64x32 / 32x64 over the three spectra: kappa 1e2: <= 1.4e-6
    # (float32 SVD 1.2e-6); kappa 1e4: <= 1.4e-4 (SVD 9.4e-5, the clustered spectrum);
    # kappa 1e6: decomposed, equal to float32 SVD (7e-3 to 1.0e-2)
    assert np.all(error[:, 0] < 1e-5), error
    assert np.all(error[:, 1] < 1e-3), error
    assert np.all(error[:, 2] <= svd_error[:, 2] * (1 + 1e-6)), (error, svd_error)
    # measured <= 2.3e-6 (float32 SVD's own: <= 3.3e-6)
    assert np.all(orthogonality(u) < 1e-5)
    np.testing.assert_allclose(info.residual, orthogonality(u), atol=1e-6)
    # kappa 1e2: 8-10 steps, 1e4: 13-15; kappa 1e6 reaches the cap (17) and is decomposed
    iterations = np.asarray(info.iterations).reshape(-1, len(KAPPAS))
    assert np.all(iterations[:, :2] <= 15)
    assert np.all(iterations[:, 2] == polar_methods.default_max_iters(np.dtype(np.float32)))


def test_auto_float64_reaches_float64_roundoff():
    """Measured: 2.3e-15 / 9.6e-14 / 8.1e-12 at kappa 1e2 / 1e4 / 1e6 in 11 / 16 / 21 steps,
    orthogonality 2e-15 (float64 reaches kappa 1e6 by the iteration)."""
    g = np.stack([testing.rectangular_matrix(40, 24, k, seed=3) for k in KAPPAS])
    u, info = jaxsqrtm.polar(g, return_info=True)
    assert u.dtype == np.float64
    np.testing.assert_array_less(errors(u, testing.polar_reference(g)), [1e-14, 1e-12, 1e-10])
    np.testing.assert_array_less(orthogonality(u), 1e-14)
    assert np.all(np.asarray(info.iterations) < polar_methods.default_max_iters(np.dtype("f8")))


def test_noise_floor_cap():
    """The cap is the fewest steps in which a singular value at 4 eps could converge."""
    assert polar_methods.default_max_iters(np.dtype(np.float32)) == 17
    assert polar_methods.default_max_iters(np.dtype(np.float64)) == 38


# --- Rank-deficient and other hard inputs -----------------------------------------------------


@pytest.mark.parametrize("method", ["auto", "svd"])
@pytest.mark.parametrize("shape", [(40, 24), (24, 40)])
def test_rank_deficient_is_zero_on_the_null_space(method, shape):
    s = np.array([1.0, 0.5, 0.3, 0.1, 1e-2])  # rank 5 of 24
    g = testing.rectangular_matrix(*shape, singular_values=s, batch=(2,), seed=4)
    g32 = g.astype(np.float32)
    u, info = jaxsqrtm.polar(g32, method=method, return_info=True)
    p, _, qh = np.linalg.svd(g, full_matrices=False)
    reference = p[..., :5] @ qh[..., :5, :]
    # measured 1.0e-6 (auto, decomposed, and svd alike)
    assert np.max(errors(u, reference)) < 1e-5
    null = np.swapaxes(qh[..., 5:, :], -1, -2)  # G v = 0
    assert np.abs(np.asarray(u, np.float64) @ null).max() < 1e-6  # measured 3.7e-7
    assert np.all(np.asarray(info.residual) < 1e-5)  # on the range; measured 9.5e-7
    assert int(np.max(info.iterations)) == (17 if method == "auto" else 0)


def test_rank_deficient_gradient_is_finite_and_matches_the_range():
    """At a rank-deficient G the derivative is that among matrices of its rank."""
    s = np.array([1.0, 0.6, 0.2])
    g = testing.rectangular_matrix(12, 8, singular_values=s, seed=5)
    dg = np.random.default_rng(5).standard_normal(g.shape)
    tangents = [jax.jvp(functools.partial(jaxsqrtm.polar, method=m), (g,), (dg,))[1] for m in POLAR]
    # the same rank-3 manifold derivative, by differences along a rank-preserving path
    p, sv, qh = np.linalg.svd(g, full_matrices=False)
    step = 1e-6
    path = [np.linalg.svd(g + t * dg, full_matrices=False) for t in (step, -step)]
    factors = [pp[:, :3] @ qq[:3] for pp, _, qq in path]
    difference = (factors[0] - factors[1]) / (2 * step)
    for tangent in tangents:
        assert np.all(np.isfinite(tangent))
        np.testing.assert_allclose(tangent, difference, atol=1e-6)  # measured 1e-9
    del p, sv, qh


POLAR = ("auto", "svd")


@pytest.mark.parametrize("method", jaxsqrtm.POLAR_METHODS)
def test_zero_nan_and_scale_invariance(method):
    kwargs = {"coefficients": polar_schedules.POLAR_EXPRESS} if method == "polynomial" else {}
    g = testing.rectangular_matrix(10, 6, 10.0, seed=6).astype(np.float32)
    batch = np.stack([np.zeros_like(g), np.full_like(g, np.nan), g * 1e-30, g * 1e30, g])
    u = np.asarray(jaxsqrtm.polar(batch, method=method, **kwargs))
    assert np.all(u[0] == 0)
    assert np.all(np.isnan(u[1]))
    alone = np.asarray(jaxsqrtm.polar(g, method=method, **kwargs))
    if method == "quintic":  # optax's normalisation G / (||G||_F + 1e-8) shrinks tiny G
        assert np.abs(u[2]).max() < 1e-12
        u = u[3:]
    # a scale changes only the normalisation's rounding
    for scaled in u[2:]:
        np.testing.assert_allclose(scaled, alone, atol=1e-5)


@pytest.mark.parametrize("method", ["auto", "svd", "polar_express"])
def test_shapes_and_dtypes(method):
    rng = np.random.default_rng(7)
    tolerance = 1e-3 if method == "polar_express" else 1e-5  # measured 5.2e-5 / 3.6e-7
    for shape in [(0, 5, 3), (2, 0, 4), (5, 1), (1, 5), (2, 3, 7, 4)]:
        g = rng.standard_normal(shape).astype(np.float32)
        u, info = jaxsqrtm.polar(g, method=method, return_info=True)
        assert u.shape == g.shape and u.dtype == g.dtype
        assert info.residual.shape == info.iterations.shape == info.scale.shape == shape[:-2]
        if g.size:
            flat, flat_u = g.reshape(-1, *shape[-2:]), u.reshape(-1, *shape[-2:])
            assert np.max(errors(flat_u, testing.polar_reference(flat))) < tolerance
    g = rng.standard_normal((2, 9, 5))
    # computed in float32, rounded on return: measured 2.1e-4 (float16), 1.6e-3 (bfloat16)
    for dtype, tolerance in [(jnp.float16, 1e-3), (jnp.bfloat16, 1e-2)]:
        u = jaxsqrtm.polar(jnp.asarray(g, dtype), method=method)
        assert u.dtype == dtype
        if method in ("auto", "svd"):
            rounded = testing.polar_reference(np.asarray(jnp.asarray(g, dtype), np.float64))
            assert np.max(errors(u, rounded)) < tolerance


def test_complex_input():
    rng = np.random.default_rng(8)
    g = rng.standard_normal((2, 9, 5)) + 1j * rng.standard_normal((2, 9, 5))
    reference = testing.polar_reference(g)
    for method in ("auto", "svd", "polar_express"):
        u = jaxsqrtm.polar(g.astype(np.complex64), method=method)
        assert u.dtype == np.complex64
        assert np.max(errors(u, reference)) < (1e-2 if method == "polar_express" else 1e-5)
    # the derivative: JVP against central differences in complex128
    dg = rng.standard_normal(g.shape) + 1j * rng.standard_normal(g.shape)
    _, tangent = jax.jvp(jaxsqrtm.polar, (g,), (dg,))
    step = 1e-6
    difference = (
        testing.polar_reference(g + step * dg) - testing.polar_reference(g - step * dg)
    ) / (2 * step)
    np.testing.assert_allclose(tangent, difference, atol=1e-8)


# --- Fixed schedules --------------------------------------------------------------------------


@pytest.mark.linen
def test_quintic_equals_optax():
    from optax.contrib._muon import orthogonalize_via_newton_schulz

    coefficients = jnp.asarray(polar_schedules.QUINTIC[0], jnp.float32)
    rng = np.random.default_rng(9)
    for shape in [(64, 32), (32, 64)]:
        for scale in (1e-3, 1e3):
            g = (scale * rng.standard_normal(shape)).astype(np.float32)
            ours = jaxsqrtm.polar(g, method="quintic")
            theirs = orthogonalize_via_newton_schulz(jnp.asarray(g), coefficients)
            # measured <= 7.5e-7 (each is about 1e-6 from a float64 run of the schedule)
            np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-6)


def test_polar_express_guarantee():
    """<= 8 steps of 3 products; sigma_min / sigma_max >= 1e-3 ends within 1e-2."""
    assert len(polar_schedules.POLAR_EXPRESS) == 8
    assert all(len(row) == 3 for row in polar_schedules.POLAR_EXPRESS)
    # the float64 bound of the schedule: [8.6e-5, 1] -> [0.99627, 1.00007]
    low, high = polar_schedules.schedule_image(polar_schedules.POLAR_EXPRESS, 8.6e-5)
    assert 1 - 5e-3 < low and high < 1 + 5e-3
    # The normalisation is loose by (rank)^(1/4) at most: the worst case is a flat spectrum
    # with one small singular value. Measured ||U^T U - I||: <= 1.4e-4 on all four.
    for m, n in [(256, 256), (32, 64)]:
        s = np.ones(min(m, n))
        s[-1] = 1e-3
        flat = testing.rectangular_matrix(m, n, singular_values=s, seed=10)
        graded = testing.rectangular_matrix(m, n, 1e3, seed=10)
        g = np.stack([flat, graded]).astype(np.float32)
        u, info = jaxsqrtm.polar(g, method="polar_express", return_info=True)
        assert np.all(orthogonality(u) < 1e-2), orthogonality(u)
        np.testing.assert_array_equal(info.iterations, 8)


def test_cubic_and_user_schedules():
    g = testing.rectangular_matrix(30, 20, 1e3, batch=(2,), seed=11).astype(np.float32)
    cubic = jaxsqrtm.polar(g, method="cubic")
    # measured 1.7e-7: 26 classic steps take 1e-3 (here ~9e-4 after scaling) to 1
    assert np.all(orthogonality(cubic) < 1e-2)
    table = np.tile(polar_schedules.CUBIC, (polar_schedules.CUBIC_STEPS, 1))
    np.testing.assert_array_equal(jaxsqrtm.polar(g, method="polynomial", coefficients=table), cubic)
    # one row repeated by max_iters is the same schedule
    repeated = jaxsqrtm.polar(
        g, method="polynomial", coefficients=(1.5, -0.5), max_iters=polar_schedules.CUBIC_STEPS
    )
    np.testing.assert_array_equal(repeated, cubic)
    express = jaxsqrtm.polar(g, method="polynomial", coefficients=polar_schedules.POLAR_EXPRESS)
    np.testing.assert_array_equal(express, jaxsqrtm.polar(g, method="polar_express"))


def test_polar_express_derivation():
    """Each step equioscillates on its design interval and the table is what it derives."""
    a, b, c = polar_schedules.minimax_odd_quintic(0.1, 1.0)
    x = np.linspace(0.1, 1.0, 100001)
    error = 1 - (a * x + b * x**3 + c * x**5)
    assert error[0] == pytest.approx(-error[-1], rel=1e-9)
    assert np.max(np.abs(error)) == pytest.approx(abs(error[0]), rel=1e-6)
    assert polar_schedules.polar_express() == polar_schedules.POLAR_EXPRESS
    with pytest.raises(ValueError, match="lower < upper"):
        polar_schedules.minimax_odd_quintic(1.0, 0.5)


def test_bfloat16_products_keep_outliers_out():
    """1000 gradient-like matrices (the measurement script runs 1e4: 0 non-finite,
    top singular value <= 1.0063 for "polar_express", 1.0044 for "cubic"; without the
    safety factors 21 % of them are non-finite)."""
    g = jnp.asarray(testing.gradient_like(24, 48, count=1000, seed=12), jnp.float32)
    for method in ("polar_express", "cubic"):
        u = jaxsqrtm.polar(g, method=method, precision="bfloat16")
        assert bool(jnp.all(jnp.isfinite(u)))
        largest = jnp.linalg.norm(u, ord=2, axis=(-2, -1))
        # measured 1.0062 / 1.0038
        assert float(jnp.max(largest)) <= 1.1, (method, float(jnp.max(largest)))


# --- Derivatives ------------------------------------------------------------------------------


@pytest.mark.parametrize(("shape", "methods"), [((48, 48), ("auto",)), ((32, 64), POLAR)])
def test_derivative_float32(shape, methods):
    rng = np.random.default_rng(13)
    g = np.stack(
        [testing.rectangular_matrix(*shape, 1e2, kind=kind, seed=14) for kind in testing.SPECTRA]
    ).astype(np.float32)
    dg = rng.standard_normal(g.shape).astype(np.float32)
    reference = testing.polar_derivative_reference(g, dg)
    for method in methods:
        f = functools.partial(jaxsqrtm.polar, method=method)
        _, tangent = jax.jvp(f, (g,), (dg,))
        _, vjp = jax.vjp(f, g)
        (cotangent,) = vjp(dg)
        assert tangent.dtype == cotangent.dtype == np.float32
        # measured <= 2.1e-6 (auto) and 4.2e-6 (svd) at kappa 1e2
        assert np.max(errors(tangent, reference)) < 1e-4
        assert np.max(errors(cotangent, reference)) < 1e-4


def repeated_cases() -> np.ndarray:
    """``6 x 4`` matrices with repeated singular values: ``(1, 1, 1, 0.5)``, orthonormal
    columns (all 1), and ``Q diag(2, 2, 0.3, 0.3) W^T``."""
    rng = np.random.default_rng(15)
    q = testing.random_orthogonal(6, rng)
    w = testing.random_orthogonal(4, rng)
    return np.stack(
        [
            testing.rectangular_matrix(6, 4, singular_values=[1.0, 1.0, 1.0, 0.5], seed=16),
            q[:, :4] @ w.T,
            q[:, :4] @ np.diag([2.0, 2.0, 0.3, 0.3]) @ w.T,
        ]
    )


@pytest.mark.parametrize("method", POLAR)
def test_derivative_finite_at_repeated_singular_values(method):
    g = repeated_cases()
    dg = np.random.default_rng(17).standard_normal(g.shape)
    f = lambda x: jaxsqrtm.polar(x, method=method)  # noqa: E731
    _, tangent = jax.jvp(f, (g,), (dg,))
    (cotangent,) = jax.vjp(f, g)[1](dg)
    reference = testing.polar_derivative_reference(g, dg)
    np.testing.assert_allclose(tangent, reference, atol=1e-12)  # measured 4.7e-15
    np.testing.assert_allclose(cotangent, reference, atol=1e-12)


def test_svd_autodiff_fails_at_repeated_singular_values():
    """What the Lyapunov rule avoids: autodiff of the SVD divides by ``s_i^2 - s_j^2``
    (and drops the terms where the computed values are equal): finite, but off by 0.20,
    0.64 and 2.2 (largest entry) on the three cases."""
    g = repeated_cases()
    dg = np.random.default_rng(17).standard_normal(g.shape)

    def svd_factor(x):
        p, _, qh = jnp.linalg.svd(x, full_matrices=False)
        return p @ qh

    autodiff = np.asarray(jax.jvp(svd_factor, (g,), (dg,))[1])
    reference = testing.polar_derivative_reference(g, dg)
    assert np.all(np.abs(autodiff - reference).max(axis=(-2, -1)) > 0.1)


@pytest.mark.parametrize(
    ("method", "shape", "modes"), [("auto", (6, 4), ("rev",)), ("svd", (4, 6), ("fwd", "rev"))]
)
def test_check_grads_float64(method, shape, modes):
    """Second order: reverse-over-reverse for "auto" (forward modes are checked against
    the reference above), every combination for "svd"."""
    g = testing.rectangular_matrix(*shape, 5.0, seed=18)
    # eps = 1e-5: the default 1e-4 leaves a divided-difference error of 2e-5 relative
    check_grads(lambda x: jaxsqrtm.polar(x, method=method), (g,), order=2, modes=modes, eps=1e-5)


@pytest.mark.parametrize("method", ["polar_express", "cubic"])
def test_schedule_derivative_is_autodiff(method):
    g = testing.rectangular_matrix(6, 4, 5.0, seed=19)
    # eps = 1e-6: the composed polynomials are steep (their differences at eps = 1e-4 are
    # 3e-2 off, at 1e-6 3e-6)
    check_grads(lambda x: jaxsqrtm.polar(x, method=method), (g,), order=1, modes=("rev",), eps=1e-6)


# --- Transforms -------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["auto"])
def test_jit_vmap_and_grad_of_vmap(method):
    g = testing.rectangular_matrix(9, 5, 30.0, batch=(3,), seed=20)
    f = lambda x: jaxsqrtm.polar(x, method=method)  # noqa: E731
    np.testing.assert_allclose(jax.jit(jax.vmap(f))(g), f(g), atol=1e-13)
    weights = np.arange(45.0).reshape(9, 5)
    grads = jax.grad(lambda x: jnp.sum(jax.vmap(f)(x) * weights))(g)
    reference = testing.polar_derivative_reference(g, np.broadcast_to(weights, g.shape))
    assert testing.relative_error(grads, reference) < 1e-13  # measured 4.3e-15


def test_a_tiny_matrix_batched_with_a_huge_one():
    """Each matrix is iterated on its own: scaling a neighbour by a power of two (exact)
    changes nothing, neither the result nor its step count."""
    g = testing.rectangular_matrix(8, 5, 1e3, seed=21).astype(np.float32)
    scales = np.array([2.0**-60, 1.0, 2.0**60], np.float32)[:, None, None]
    alone, alone_info = jaxsqrtm.polar(np.stack([g, g, g]), return_info=True)
    together, info = jaxsqrtm.polar(g * scales, return_info=True)
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(info.iterations, alone_info.iterations)


@pytest.mark.parametrize("shape", [(10, 8), (8, 10), (8, 8)])
def test_auto_under_shard_map(shape):
    """Forward and gradient of ``"auto"`` under ``jax.shard_map`` (over this process's
    first device) equal the unsharded call, also for m != n, whose derivative solves for
    ``H^(-1)`` from a constant right-hand side (measured: identical)."""
    mesh = Mesh(np.array(jax.devices()[:1]), ("batch",))
    spec = PartitionSpec("batch")
    g = jnp.asarray(testing.rectangular_matrix(*shape, 10.0, batch=(2,), seed=3), jnp.float32)

    def loss(x):
        return jnp.sum(jnp.sin(jaxsqrtm.polar(x)))

    def both(x):
        return jaxsqrtm.polar(x), jax.grad(loss)(x)

    sharded = jax.jit(jax.shard_map(both, mesh=mesh, in_specs=spec, out_specs=(spec, spec)))
    for x, y in zip(sharded(g), jax.jit(both)(g), strict=True):
        np.testing.assert_array_equal(x, y)
