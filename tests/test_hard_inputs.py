"""Hard inputs every public function must survive.

Bad arguments (non-square or rank-1 arrays, integer or boolean dtypes, unknown or
misplaced knobs) raise ``TypeError``/``ValueError`` at trace time, naming the shape or
value; complex input is accepted and, like real input, only its Hermitian part is used.
Bad values, which cannot be checked under ``jit``, have documented outcomes: NaN or Inf
entries give NaN, a zero matrix gives a zero root and gradient, repeated and zero
eigenvalues, scales from 1e-30 to 1e30, a tiny matrix batched with a huge one, n = 1 and
an empty batch all give finite, per-matrix results.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import testing

ROOTS = (jaxsqrtm.sqrtm, jaxsqrtm.inv_sqrtm)


@pytest.mark.parametrize("root", ROOTS)
@pytest.mark.parametrize(
    ("a", "error", "match"),
    [
        (np.ones(3, np.float32), ValueError, r"shape \(3,\)"),
        (np.ones((2, 3), np.float32), ValueError, r"square.*\(2, 3\)"),
        (np.ones((4, 3, 2), np.float32), ValueError, r"\(4, 3, 2\)"),
        (np.eye(3, dtype=np.int32), TypeError, "int32"),
        (np.eye(3, dtype=bool), TypeError, "bool"),
        ([[1, 0], [0, 1]], TypeError, "int"),
    ],
)
def test_bad_arrays(root, a, error, match):
    with pytest.raises(error, match=match):
        root(a)
    with pytest.raises(error, match=match):
        jax.jit(root)(a)


@pytest.mark.parametrize("root", ROOTS)
def test_complex_input_is_hermitised(root):
    """A non-Hermitian complex matrix is read as its Hermitian part ``(A + A^H) / 2``,
    in its own dtype."""
    h = testing.spd_matrix(3, 4.0, seed=2, dtype=np.complex128).astype(np.complex64)
    skew = np.array([[0, 1 + 2j, -1j], [-1 + 2j, 0.5j, 3], [-1j, -3, -0.25j]], np.complex64)
    a = h + skew
    out = root(a)
    assert out.dtype == jnp.complex64
    np.testing.assert_array_equal(out, root((a + a.conj().T) / 2))
    np.testing.assert_allclose(out, root(h), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "svd"}, ValueError, "'svd'"),
        ({"method": "mpa", "degree": 0}, ValueError, "degree must be >= 1"),
        ({"method": "mpa", "degree": 2.0}, TypeError, "degree"),
        ({"method": "mtp", "degree": True}, TypeError, "degree"),
        ({"method": "mpa", "normalization": "l1"}, ValueError, "'l1'"),
        ({"method": "mpa", "backward_iters": -1}, ValueError, "backward_iters"),
        ({"method": "mpa", "num_iters": 3}, ValueError, "num_iters=3 does not apply"),
        ({"method": "ns", "degree": 3}, ValueError, "degree=3 does not apply"),
        ({"method": "eigh", "normalization": "trace"}, ValueError, "does not apply"),
        ({"precision": "float32"}, ValueError, "'float32'"),
    ],
)
def test_bad_knobs(kwargs, error, match):
    for root in ROOTS:
        with pytest.raises(error, match=match):
            root(jnp.eye(3), **kwargs)


def test_knobs_must_be_static():
    with pytest.raises(TypeError, match="degree"):
        jax.jit(lambda a, d: jaxsqrtm.sqrtm(a, method="mpa", degree=d))(jnp.eye(3), 5)


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_hard_values(method):
    """Outcomes of values that cannot be checked under jit: no crash, no hang."""
    eye = np.eye(4, dtype=np.float32)
    nan = np.full((4, 4), np.nan, np.float32)
    inf = np.where(eye > 0, np.inf, 0).astype(np.float32)
    zero = np.zeros((4, 4), np.float32)
    repeated = np.diag([3.0, 3.0, 3.0, 1.0]).astype(np.float32)
    batch = jnp.asarray(np.stack([eye * 4, nan, inf, zero, repeated]))

    s = jaxsqrtm.sqrtm(batch, method=method)
    np.testing.assert_allclose(s[0], 2 * eye, rtol=2e-3)  # paper-MPA on 4 I: 7e-4
    assert np.all(np.isnan(s[1])) and np.all(np.isnan(s[2]))  # NaN / Inf -> NaN
    np.testing.assert_array_equal(s[3], 0)  # zero matrix -> zero root
    assert np.all(np.isfinite(s[4]))

    grad = jax.grad(lambda a: jnp.sum(jnp.sin(jaxsqrtm.sqrtm(a, method=method))))(batch)
    np.testing.assert_array_equal(grad[3], 0)  # zero matrix -> zero (finite) gradient
    assert np.all(np.isfinite(np.asarray(grad)[[0, 4]]))
    assert np.all(np.isnan(grad[1]))

    p = jaxsqrtm.inv_sqrtm(batch, method=method)
    np.testing.assert_allclose(p[0], eye / 2, rtol=2e-3)
    assert np.all(np.isnan(p[1]))
    if method in ("auto", "eigh"):  # the pseudo-inverse root of a zero matrix
        np.testing.assert_array_equal(p[3], 0)
    else:
        assert not np.all(np.isfinite(p[3]))  # singular -> not finite


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_n1_and_empty_batch(method):
    for root, expected in ((jaxsqrtm.sqrtm, 3.0), (jaxsqrtm.inv_sqrtm, 1 / 3)):
        np.testing.assert_allclose(
            root(jnp.full((2, 1, 1), 9.0), method=method), expected, rtol=1e-6
        )
        assert root(jnp.zeros((0, 5, 5)), method=method).shape == (0, 5, 5)
        g = jax.grad(lambda a, root=root: jnp.sum(root(a, method=method)))(jnp.full((1, 1), 9.0))
        np.testing.assert_allclose(g, 1 / 6 if root is jaxsqrtm.sqrtm else -1 / 54, rtol=1e-6)


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_identity_and_block_constant_spectra(method):
    """Repeated eigenvalues: root exact up to the method's approximation error at that
    normalised spectrum, gradient finite (eigh's divided differences included)."""
    u = testing.random_orthogonal(6, np.random.default_rng(0))
    block = (u * np.array([5.0, 5.0, 5.0, 0.5, 0.5, 0.5])) @ u.T
    for a in (np.eye(6), block):
        a = jnp.asarray(a, jnp.float32)
        grad = jax.grad(lambda a: jnp.sum(jaxsqrtm.sqrtm(a, method=method) ** 2))(a)
        assert np.all(np.isfinite(grad))
    s = jaxsqrtm.sqrtm(jnp.asarray(block, jnp.float32), method=method)
    # measured x1.5 (auto and eigh: round-off, 1e-7)
    tol = {"auto": 1e-6, "mpa": 4e-2, "mtp": 1.2e-1, "ns": 0.3, "eigh": 1e-6}[method]
    assert testing.relative_error(s, testing.sqrtm_reference(block)) < tol


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_scale_invariance(method):
    """sqrtm(t A) = sqrt(t) sqrtm(A) for t from 1e-30 to 1e30 in float32: the per-matrix
    scaling is exact, so only round-off changes (measured 3e-7)."""
    a = testing.spd_matrix(8, 10.0, seed=3)
    scales = np.array([1e-30, 1e-10, 1.0, 1e10, 1e30])
    batch = jnp.asarray(scales[:, None, None] * a, jnp.float32)
    s = (
        np.asarray(jaxsqrtm.sqrtm(batch, method=method), np.float64)
        / np.sqrt(scales)[:, None, None]
    )
    p = (
        np.asarray(jaxsqrtm.inv_sqrtm(batch, method=method), np.float64)
        * np.sqrt(scales)[:, None, None]
    )
    for out in (s, p):
        assert np.all(np.isfinite(out))
        assert testing.relative_error(out, np.broadcast_to(out[2], out.shape)) < 2e-6


@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_batch_elements_are_independent(method):
    """A tiny matrix batched with a huge one gives what each gives alone, up to float32
    round-off (XLA may pick other kernels for another batch size; measured <= 8e-8, and
    2.5e-6 for the adaptive "auto", whose stopping step can move by one). A normalisation
    shared across the batch would be off by O(1)."""
    tiny = testing.spd_matrix(8, 10.0, seed=1, scale=1e-6)
    huge = testing.spd_matrix(8, 1e3, seed=2, scale=1e6)
    both = jnp.asarray(np.stack([tiny, huge]), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(3).standard_normal((8, 8)), jnp.float32)

    def root_and_grad(a):
        def loss(x):
            return jnp.sum(jaxsqrtm.inv_sqrtm(x, method=method) * weights)

        return jaxsqrtm.inv_sqrtm(a, method=method), jax.vmap(jax.grad(loss))(a)

    batched = root_and_grad(both)
    for i in range(2):
        alone = root_and_grad(both[i : i + 1])
        for got, expected in zip(batched, alone, strict=True):
            assert testing.relative_error(got[i], expected[0]) < (
                5e-6 if method == "auto" else 1e-6
            )


@pytest.mark.parametrize("method", ["mpa", "mtp", "ns"])
def test_indefinite_input_is_finite(method):
    """Documented: a slightly indefinite matrix gives a finite matrix that is not a root."""
    a = np.diag([1.0, 0.5, -0.01]).astype(np.float32)
    assert np.all(np.isfinite(jaxsqrtm.sqrtm(a, method=method)))


def test_eigh_clamps_negative_eigenvalues():
    a = np.diag([4.0, -1.0]).astype(np.float32)
    np.testing.assert_allclose(jaxsqrtm.sqrtm(a, method="eigh"), np.diag([2.0, 0.0]))
