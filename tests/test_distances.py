"""Fréchet, Bures–Wasserstein and fidelity distances and the polar iteration under them.

References are float64 (complex128) values from float64 data: nuclear norms by
``numpy.linalg.svd`` of products of eigh roots or of feature factors. Tolerances are a
few times what was measured (in the comments); the float32 ``eigh`` comparisons compute
the same quantity from the same float32 input the way pytorch-fid does.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import jaxsqrtm
from jaxsqrtm import _polar, testing

KAPPAS = (1.0, 1e2, 1e4)
N = 24  # matrix size of the matrix tests


# --- float64 references ------------------------------------------------------------------


def _nuclear(m):
    return np.linalg.svd(m, compute_uv=False).sum(axis=-1)


def _trace_sqrtm_product_ref(a, b):
    return _nuclear(testing.sqrtm_reference(a) @ testing.sqrtm_reference(b))


def _bures_squared_ref(a, b):
    trace = np.real(np.trace(a, axis1=-2, axis2=-1) + np.trace(b, axis1=-2, axis2=-1))
    return trace - 2 * _trace_sqrtm_product_ref(a, b)


def _d_trace_sqrtm_product_ref(a, b):
    """``d tr (A^(1/2) B A^(1/2))^(1/2) / dB = A^(1/2) (A^(1/2) B A^(1/2))^(-1/2) A^(1/2) / 2``."""
    s = testing.sqrtm_reference(a)
    return s @ testing.sqrtm_reference(s @ b @ s, inverse=True) @ s / 2


def _rel(x, ref):
    x, ref = np.asarray(x, np.float64), np.asarray(ref, np.float64)
    return float(np.max(np.abs(x - ref) / np.abs(ref)))


def _pairs(n, dtype=np.float64):
    """SPD pairs with condition numbers ``KAPPAS`` and every spectrum kind, ``(9, n, n)``
    (``dtype`` float64 or complex128)."""
    a, b = [], []
    for i, kappa in enumerate(KAPPAS):
        for j, kind in enumerate(testing.SPECTRA):
            seed = 10 * i + j
            a.append(testing.spd_matrix(n, kappa, kind=kind, seed=seed, dtype=dtype))
            b.append(
                testing.spd_matrix(n, kappa, kind=kind, seed=seed + 100, scale=3.0, dtype=dtype)
            )
    return np.stack(a), np.stack(b)


# --- Image features (scikit-image, scikit-learn) -------------------------------------------


def _embed(x, d, seed):
    """A fixed random ReLU layer with centred pre-activations: ``(N, 64) -> (N, d)``."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((x.shape[1], d)) / np.sqrt(x.shape[1])
    z = x @ w
    return np.maximum(z - z.mean(0) + 0.3 * rng.standard_normal(d), 0)


def _subsample(x, n, seed):
    return x[np.random.default_rng(seed).choice(len(x), n, replace=False)]


@pytest.fixture(scope="module")
def feature_sets():
    """Pairs of float64 feature sets from different images: ``name -> (x1, x2)``."""
    pytest.importorskip("skimage")
    pytest.importorskip("sklearn")
    from sklearn.datasets import load_digits

    astronaut = testing.image_patch_features("astronaut")
    coffee = testing.image_patch_features("coffee")
    digits, labels = testing.digits_features(), load_digits().target
    return {
        # 64 raw pixels, N > d, rank 61 (constant border pixels)
        "digits 0-4 vs 5-9": (digits[labels < 5][:400], digits[labels >= 5][:300]),
        # embedded in d = 128: N > d and N < d
        "patches N > d": (
            _embed(_subsample(astronaut, 400, 1), 128, 0),
            _embed(_subsample(coffee, 300, 2), 128, 0),
        ),
        "patches N < d": (
            _embed(_subsample(astronaut, 90, 3), 128, 0),
            _embed(_subsample(coffee, 70, 4), 128, 0),
        ),
    }


# --- The polar iteration -----------------------------------------------------------------


def test_schedule():
    eps32 = float(np.finfo(np.float32).eps)
    assert len(_polar.schedule(np.dtype(np.float32), eps32)) == 20
    assert len(_polar.schedule(np.dtype(np.float32), 1e-4)) == 13
    assert _polar.polar_cost(np.float32) == 46
    alphas = _polar.schedule(np.dtype(np.float32), _polar.default_floor(np.float32))
    assert all(1 <= a < 3**0.5 for a in alphas)
    with pytest.raises(ValueError, match="floor"):
        _polar.schedule(np.dtype(np.float32), 0.0)


@pytest.mark.parametrize("shape", [(3, 12, 7), (3, 7, 12)])
@pytest.mark.parametrize("dtype", [np.float32, np.complex64, np.float64])
def test_nuclear_norm(shape, dtype):
    rng = np.random.default_rng(0)
    m = rng.standard_normal(shape)
    if np.issubdtype(dtype, np.complexfloating):
        m = m + 1j * rng.standard_normal(shape)
    m[1] *= 1e-20  # a tiny matrix next to O(1) ones
    m[2, :, 4:] = 0  # rank 4
    m = m.astype(dtype)
    ref = _nuclear(m.astype(np.complex128))
    polar = _polar.polar_factor(m)
    got = _polar.nuclear_norm(m)
    assert got.dtype == np.finfo(dtype).dtype
    assert _rel(got, ref) < (1e-6 if np.finfo(dtype).bits == 32 else 1e-13)  # measured 3e-7
    # U has orthonormal columns (or rows) where M has full rank
    u = np.asarray(polar.factor[0], np.complex128)
    small = min(shape[1:])
    gram = u.conj().T @ u if shape[1] >= shape[2] else u @ u.conj().T
    assert np.abs(gram - np.eye(small)).max() < 1e-5
    assert np.all(
        np.asarray(polar.scale) >= np.linalg.norm(m[:, :, :], ord=2, axis=(-2, -1)) * 0.999
    )


def test_nuclear_norm_zero_nan_and_jvp():
    assert float(_polar.nuclear_norm(jnp.zeros((4, 3)))) == 0.0
    assert np.all(np.asarray(_polar.polar_factor(jnp.zeros((4, 3))).factor) == 0)
    assert np.isnan(float(_polar.nuclear_norm(jnp.full((4, 3), jnp.nan))))
    rng = np.random.default_rng(1)
    m, dm = rng.standard_normal((6, 4)), rng.standard_normal((6, 4))
    check_grads(_polar.nuclear_norm, (m,), order=1, modes=("rev",))
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    _, tangent = jax.jvp(_polar.nuclear_norm, (m,), (dm,))
    assert abs(float(tangent) - np.sum(u @ vt * dm)) < 1e-12
    # rank-deficient: finite, the polar factor of the range
    m[:, 3] = 0
    grad = jax.grad(_polar.nuclear_norm)(m)
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[:, 3] == 0)


# --- Matrix distances, float32 accuracy -------------------------------------------------------


def test_trace_sqrtm_product_and_bures_accuracy_float32():
    a, b = _pairs(N)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    trace = jaxsqrtm.trace_sqrtm_product(a32, b32)
    assert trace.dtype == jnp.float32 and trace.shape == (9,)
    assert _rel(trace, _trace_sqrtm_product_ref(a, b)) < 1e-5  # measured <= 2e-6
    d2_ref = _bures_squared_ref(a, b)
    d2 = jaxsqrtm.bures_wasserstein(a32, b32, squared=True)
    assert _rel(d2, d2_ref) < 1e-5
    assert _rel(jaxsqrtm.bures_wasserstein(a32, b32), np.sqrt(d2_ref)) < 1e-5


def test_float64_and_complex128():
    a, b = _pairs(8)
    assert _rel(jaxsqrtm.trace_sqrtm_product(a, b), _trace_sqrtm_product_ref(a, b)) < 1e-12
    ac, bc = _pairs(8, np.complex128)
    got = jaxsqrtm.bures_wasserstein(ac, bc, squared=True)
    assert got.dtype == jnp.float64
    assert _rel(got, _bures_squared_ref(ac, bc)) < 1e-11


def test_dtypes_and_broadcasting():
    a = testing.spd_matrix(4, 10.0, batch=(3,), seed=1)
    b = testing.spd_matrix(4, 10.0, seed=2)
    ref = _trace_sqrtm_product_ref(a, b)
    out = jaxsqrtm.trace_sqrtm_product(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))
    assert out.shape == (3,) and out.dtype == jnp.bfloat16 and _rel(out, ref) < 2e-2
    out = jaxsqrtm.bures_wasserstein(a.astype(np.complex64), b.astype(np.float32))
    assert out.dtype == jnp.float32
    assert jaxsqrtm.trace_sqrtm_product(np.zeros((0, 4, 4)), np.eye(4)).shape == (0,)


def test_hard_inputs():
    """Scales 1e-20 and 1e20 next to O(1) (per-matrix results), zero and NaN matrices."""
    a = testing.spd_matrix(6, 1e2, seed=1)
    b = testing.spd_matrix(6, 1e2, seed=2)
    nan = a.copy()
    nan[0, 0] = np.nan
    x = np.stack([a, 1e-20 * a, 1e20 * a, 0 * a, nan]).astype(np.float32)
    y = np.stack([b, 1e-20 * b, 1e20 * b, 0 * b, b]).astype(np.float32)
    d = np.asarray(jaxsqrtm.bures_wasserstein(x, y), np.float64)
    assert np.allclose(d[1:3] / [1e-10, 1e10], d[0], rtol=1e-5)
    assert d[3] == 0 and np.isnan(d[4])
    grads = jax.grad(lambda x: jnp.sum(jaxsqrtm.bures_wasserstein(x, y)[:4]))(x)
    assert np.all(np.isfinite(grads[:4])) and np.all(np.asarray(grads[3]) == 0)
    constant = np.ones((5, 3), np.float32)
    assert float(jaxsqrtm.frechet_distance_from_features(constant, constant + 1)) == 3.0


def test_transforms():
    a, b = _pairs(4)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    f = jaxsqrtm.trace_sqrtm_product
    ref = f(a32, b32)
    assert np.allclose(jax.jit(f)(a32, b32), ref, rtol=1e-6)
    assert np.allclose(jax.vmap(f)(a32, b32), ref, rtol=1e-6)
    g = jax.grad(lambda x: jnp.sum(jax.vmap(f)(x, b32)))(a32)
    assert testing.relative_error(g, _d_trace_sqrtm_product_ref(b, a)) < 1e-3


def test_gradients_float32():
    """Against the closed forms ``d t / dB = A^(1/2) (A^(1/2) B A^(1/2))^(-1/2) A^(1/2) / 2``,
    ``d d^2 = I - 2 d t`` and ``d d = d d^2 / (2 d)`` up to condition number ``1e4``; finite
    at identical arguments and rank-deficient input, appended to the same batch."""
    a, b = _pairs(16)
    spd = testing.spd_matrix(16, 1e2, seed=1)
    x = np.random.default_rng(0).standard_normal((8, 16))
    low = x.T @ x / 8  # rank 8
    a32 = np.concatenate([a, np.stack([spd, low, low, spd])]).astype(np.float32)
    b32 = np.concatenate([b, np.stack([spd, low, spd, low])]).astype(np.float32)
    dt_da, dt_db = _d_trace_sqrtm_product_ref(b, a), _d_trace_sqrtm_product_ref(a, b)
    eye = np.eye(16)
    d = np.sqrt(_bures_squared_ref(a, b))[:, None, None]
    mu1, mu2 = np.ones((13, 16), np.float32), np.zeros((13, 16), np.float32)

    @jax.jit
    def gradients(a, b):
        def grad(f, *args):
            return jax.grad(lambda *x: jnp.sum(f(*x)), argnums=tuple(range(len(args))))(*args)

        return (
            grad(jaxsqrtm.trace_sqrtm_product, a, b),
            grad(jaxsqrtm.bures_wasserstein, a, b),
            grad(lambda m, s1, s2: jaxsqrtm.frechet_distance(m, s1, mu2, s2), mu1, a, b),
        )

    (ta, tb), (da, db), (fm, fa, fb) = gradients(a32, b32)
    for g in (ta, tb, da, db, fm, fa, fb):
        assert g.dtype == jnp.float32 and np.all(np.isfinite(g))
    assert testing.relative_error(ta[:9], dt_da) < 1e-3  # measured 2.1e-4 (kappa 1e4)
    assert testing.relative_error(tb[:9], dt_db) < 1e-3
    assert testing.relative_error(da[:9], (eye - 2 * dt_da) / (2 * d)) < 1e-3  # 2.4e-4
    assert testing.relative_error(db[:9], (eye - 2 * dt_db) / (2 * d)) < 1e-3
    assert np.allclose(fm, 2 * (mu1 - mu2))
    assert testing.relative_error(fa[:9], eye - 2 * dt_da) < 1e-3
    assert testing.relative_error(fb[:9], eye - 2 * dt_db) < 1e-3
    # identical arguments: d t / dB = I / 2, and the distance's gradient vanishes
    assert np.abs(tb[9] - eye / 2).max() < 1e-5
    assert max(np.abs(da[9]).max(), np.abs(db[9]).max()) < 1e-3  # d's round-off: 5e-4


def test_check_grads_float64():
    a = testing.spd_matrix(5, 10.0, seed=1)
    b = testing.spd_matrix(5, 30.0, seed=2)
    check_grads(jaxsqrtm.trace_sqrtm_product, (a, b), order=1, modes=("rev",))
    rho = testing.density_matrix(3, seed=1)
    sigma = testing.density_matrix(3, seed=2)
    check_grads(jaxsqrtm.fidelity, (rho, sigma), order=1, modes=("rev",))


# --- Fréchet distance --------------------------------------------------------------------


def test_frechet_from_features_float32(feature_sets):
    mixed = (feature_sets["patches N < d"][0], feature_sets["patches N > d"][1])
    for name, (x1, x2) in [*feature_sets.items(), ("patches N1 < d < N2", mixed)]:
        ref = testing.frechet_distance_reference(x1, x2)
        got = jaxsqrtm.frechet_distance_from_features(np.float32(x1), np.float32(x2))
        assert got.dtype == jnp.float32
        assert _rel(got, ref) < 1e-5, name  # measured <= 1e-6
    x1, x2 = feature_sets["patches N < d"]
    assert (
        _rel(
            jaxsqrtm.frechet_distance_from_features(x1, x2),
            testing.frechet_distance_reference(x1, x2),
        )
        < 1e-12
    )


def test_frechet_from_covariances(feature_sets):
    """Float32 covariances: at least as accurate as float32 ``eigh`` (negative eigenvalues
    clamped) in pytorch-fid's form on the same input; float64 to 1e-8."""

    def eigh_root(s):
        w, v = jnp.linalg.eigh(s)
        return (v * jnp.sqrt(jnp.maximum(w, 0))) @ v.T

    for name in ("patches N > d", "patches N < d"):
        x1, x2 = feature_sets[name]
        ref = testing.frechet_distance_reference(x1, x2)
        mu1, mu2 = x1.mean(0), x2.mean(0)
        s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
        assert _rel(jaxsqrtm.frechet_distance(mu1, s1, mu2, s2), ref) < 1e-8, name
        f32 = [np.float32(v) for v in (mu1, np.cov(np.float32(x1), rowvar=False))]
        f32 += [np.float32(v) for v in (mu2, np.cov(np.float32(x2), rowvar=False))]
        got = jaxsqrtm.frechet_distance(*f32)
        root = eigh_root(f32[1])
        inner = root @ f32[3] @ root
        eigenvalues = jnp.linalg.eigvalsh((inner + inner.T) / 2)
        traces = jnp.trace(f32[1]) + jnp.trace(f32[3])
        mean = jnp.sum((f32[0] - f32[2]) ** 2)
        eigh32 = mean + traces - 2 * jnp.sum(jnp.sqrt(jnp.maximum(eigenvalues, 0)))
        assert _rel(got, ref) <= _rel(eigh32, ref), name


def test_frechet_from_features_gradient():
    """The factor's rule (``dR ~ Q^T dX``) gives the covariance route's gradient, and is
    finite for rank-deficient features (a constant and a duplicated feature)."""
    rng = np.random.default_rng(0)
    x1, x2 = rng.standard_normal((40, 6)), rng.standard_normal((30, 6)) * 2 + 1
    grad = jax.grad(jaxsqrtm.frechet_distance_from_features, argnums=(0, 1))

    def through_covariance(x1, x2):
        def stats(x):
            c = x - x.mean(0)
            return x.mean(0), c.T @ c / (len(x) - 1)

        return jaxsqrtm.frechet_distance(*stats(x1), *stats(x2), method="eigh")

    batched = jaxsqrtm.frechet_distance_from_features(np.stack([x1, x1 + 1]), x2)
    assert batched.shape == (2,)
    assert np.allclose(batched[1], jaxsqrtm.frechet_distance_from_features(x1 + 1, x2))
    g = grad(x1, x2)
    r = jax.grad(through_covariance, argnums=(0, 1))(x1, x2)
    assert max(testing.relative_error(a, b) for a, b in zip(g, r, strict=True)) < 1e-10
    x1[:, 5] = 0.5
    x2[:, 4] = x2[:, 3]
    assert all(np.all(np.isfinite(v)) for v in grad(x1, x2))


# --- Fidelity ------------------------------------------------------------------------------


def _fidelity_ref(rho, sigma):
    def factor(r):
        w, v = np.linalg.eigh(r)
        keep = w > 1e-10 * w.max()
        return v[:, keep] * np.sqrt(w[keep])

    return _nuclear(factor(rho).conj().T @ factor(sigma)) ** 2


def _states(n):
    """Pairs ``(rho, sigma)``: mixed, pure, both pure, degenerate, low rank."""
    pairs = [
        ({}, {}),
        ({"rank": 1}, {}),
        ({"rank": 1}, {"rank": 1}),
        ({"degenerate": True}, {"degenerate": True}),
        ({"rank": max(1, n // 2), "degenerate": True}, {}),
        ({"rank": min(2, n), "degenerate": True}, {"rank": min(3, n)}),
    ]
    rho = [testing.density_matrix(n, seed=i, **p) for i, (p, _) in enumerate(pairs)]
    sigma = [testing.density_matrix(n, seed=50 + i, **q) for i, (_, q) in enumerate(pairs)]
    return np.stack(rho), np.stack(sigma)


@pytest.mark.parametrize("n", [2, 8, 32, 128])
def test_fidelity_complex64(n):
    rho, sigma = _states(n)
    ref = np.array([_fidelity_ref(r, s) for r, s in zip(rho, sigma, strict=True)])
    got = jaxsqrtm.fidelity(rho.astype(np.complex64), sigma.astype(np.complex64))
    assert got.dtype == jnp.float32
    assert _rel(got, ref) < 1e-5  # measured <= 2.5e-6
    same = jaxsqrtm.fidelity(rho.astype(np.complex64), rho.astype(np.complex64))
    assert np.abs(np.asarray(same) - 1).max() < 1e-5
    if n == 8:
        assert _rel(jaxsqrtm.fidelity(rho, sigma), ref) < 1e-12


def test_fidelity_gradients():
    rho, sigma = _states(8)
    grad = jax.grad(lambda r, s: jnp.sum(jaxsqrtm.fidelity(r, s)), argnums=(0, 1))
    g32 = grad(rho.astype(np.complex64), sigma.astype(np.complex64))
    g64 = grad(rho, sigma)
    for g, r in zip(g32, g64, strict=True):
        assert g.dtype == jnp.complex64 and np.all(np.isfinite(g))
        assert np.all(np.isfinite(r))
        # full-rank pairs (first and fourth): float32 against complex128
        assert testing.relative_error(np.asarray(g)[[0, 3]], np.asarray(r)[[0, 3]]) < 1e-3


# --- Validation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: jaxsqrtm.trace_sqrtm_product(np.eye(3), np.eye(4)), ValueError, r"b must.*3 x 3"),
        (lambda: jaxsqrtm.trace_sqrtm_product(np.ones(3), np.eye(3)), ValueError, r"shape \(3,\)"),
        (
            lambda: jaxsqrtm.bures_wasserstein(np.ones((2, 3, 3)), np.ones((4, 3, 3))),
            ValueError,
            "broadcastable",
        ),
        (lambda: jaxsqrtm.bures_wasserstein(np.eye(3), np.eye(3), squared=1), TypeError, "squared"),
        (lambda: jaxsqrtm.fidelity(np.eye(2, dtype=int), np.eye(2)), TypeError, "int"),
        (lambda: jaxsqrtm.fidelity(np.eye(2), np.eye(2), method="svd"), ValueError, "'svd'"),
        (
            lambda: jaxsqrtm.trace_sqrtm_product(np.eye(2), np.eye(2), precision="x"),
            ValueError,
            "x",
        ),
        (
            lambda: jaxsqrtm.frechet_distance(np.ones(3), np.eye(3), np.ones(2), np.eye(3)),
            ValueError,
            r"mu2 must have shape \(\.\.\., 3\)",
        ),
        (
            lambda: jaxsqrtm.frechet_distance(
                np.ones(2), np.eye(2, dtype=complex), np.ones(2), np.eye(2)
            ),
            TypeError,
            "sigma1 must be real",
        ),
        (
            lambda: jaxsqrtm.frechet_distance_from_features(np.ones((5, 3)), np.ones((5, 4))),
            ValueError,
            r"x2 must have the feature dimension of x1 \(3\)",
        ),
        (
            lambda: jaxsqrtm.frechet_distance_from_features(np.ones((1, 3)), np.ones((5, 3))),
            ValueError,
            "at least 2 samples",
        ),
        (
            lambda: jaxsqrtm.frechet_distance_from_features(np.ones(3), np.ones((5, 3))),
            ValueError,
            r"x1 must have shape \(\.\.\., N, d\)",
        ),
        (
            lambda: jaxsqrtm.frechet_distance_from_features(
                np.ones((4, 3), complex), np.ones((5, 3))
            ),
            TypeError,
            "x1 must have a real floating dtype",
        ),
    ],
)
def test_bad_arguments(call, error, match):
    with pytest.raises(error, match=match):
        call()
