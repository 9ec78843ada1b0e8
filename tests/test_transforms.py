"""jit / vmap / grad compositions, second order, residuals, recompiles and sharding."""

import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import jax.test_util
import numpy as np
import pytest
from jax import lax

import jaxsqrtm
from jaxsqrtm import testing

ROOTS = {"sqrtm": jaxsqrtm.sqrtm, "inv_sqrtm": jaxsqrtm.inv_sqrtm}
CONVERGED = testing.CONVERGED_KNOBS


def loss(root, method, **knobs):
    """A scalar loss with a non-symmetric cotangent."""
    weights = jnp.arange(16.0).reshape(4, 4) / 16

    def f(a):
        return jnp.sum(jnp.sin(root(a, method=method, **knobs) * weights.astype(a.dtype)))

    return f


@pytest.fixture(scope="module")
def batch():
    """Two well-conditioned 4x4 SPD matrices (kappa = 2, distinct eigenvalues)."""
    return testing.spd_matrix(4, 2.0, batch=(2,), seed=11)


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_float32_stays_float32_under_every_mode(method, root_name, batch):
    """Forward, reverse and second-order derivatives of float32 input are float32 (x64 is
    on in the tests) and agree with each other to float32 round-off (measured 1e-6)."""
    root = ROOTS[root_name]
    a = jnp.asarray(batch[0], jnp.float32)
    tangent = jnp.asarray(testing.spd_matrix(4, 3.0, seed=12), jnp.float32)
    f = loss(root, method)

    @jax.jit
    def modes(a, tangent):
        return {
            "root": root(a, method=method),
            "jvp": jax.jvp(lambda x: root(x, method=method), (a,), (tangent,))[1],
            "jacrev": jax.jacrev(lambda x: root(x, method=method))(a),
            "jvp_of_grad": jax.jvp(jax.grad(f), (a,), (tangent,))[1],
            "grad_of_grad": jax.grad(lambda y: jnp.sum(jax.grad(f)(y) ** 2))(a),
        }

    out = modes(a, tangent)
    assert all(v.dtype == jnp.float32 for v in out.values())
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    np.testing.assert_allclose(
        jnp.tensordot(out["jacrev"], tangent, 2), out["jvp"], rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_every_transform_agrees(method, root_name, batch):
    """Every JAX transform, and compositions of them, on every method: each result agrees
    with the same quantity reached another way (float64, 1e-10 relative)."""
    root = ROOTS[root_name]
    dtype = jnp.float64
    a = jnp.asarray(batch, dtype)
    tangent = jnp.asarray(testing.spd_matrix(4, 3.0, seed=12), dtype)
    f = loss(root, method)

    def root_of(x):
        return root(x, method=method)

    eager = root_of(a)
    assert eager.dtype == dtype

    @jax.jit
    def transforms(a, tangent):
        x = a[0]
        _, linear = jax.linearize(root_of, x)

        def scan_body(total, x):
            y = root_of(x)
            return total + jnp.sum(y), y

        return {
            "jit": root_of(a),
            "vmap": jax.vmap(root_of)(a),
            "scan": lax.scan(scan_body, jnp.zeros((), dtype), a)[1],
            "grad": jax.grad(f)(x),
            "grad_of_vmap": jax.grad(lambda y: jnp.sum(jax.vmap(f)(y)))(a),
            "vmap_of_grad": jax.vmap(jax.grad(f))(a),
            "grad_of_checkpoint": jax.grad(jax.checkpoint(f))(x),
            "grad_of_scan": jax.grad(lambda y: lax.scan(scan_body, jnp.zeros((), dtype), y)[0])(a),
            "vjp_of_sum": jax.vjp(root_of, x)[1](jnp.ones_like(x))[0],
            "jvp": jax.jvp(root_of, (x,), (tangent,))[1],
            "linearize": linear(tangent),
            "vmap_of_jvp": jax.vmap(lambda y: jax.jvp(root_of, (y,), (tangent,))[1])(a),
            "jacfwd": jax.jacfwd(root_of)(x),
            "jacrev": jax.jacrev(root_of)(x),
            "hessian": jax.hessian(f)(x),
            "hessian_rev_rev": jax.jacrev(jax.jacrev(f))(x),
            "jvp_of_grad": jax.jvp(jax.grad(f), (x,), (tangent,))[1],
            "grad_of_grad": jax.grad(lambda y: jnp.sum(jax.grad(f)(y) ** 2))(x),
        }

    out = transforms(a, tangent)
    assert all(v.dtype == dtype for v in out.values())
    assert all(bool(jnp.all(jnp.isfinite(v))) for v in out.values())
    rtol = 1e-10

    def agree(x, y):
        np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(jnp.max(jnp.abs(y))))

    agree(out["jit"], eager)
    agree(out["vmap"], eager)
    agree(out["scan"], eager)
    agree(out["grad_of_vmap"][0], out["grad"])
    agree(out["vmap_of_grad"], out["grad_of_vmap"])
    agree(out["grad_of_checkpoint"], out["grad"])
    agree(out["grad_of_scan"], jax.vmap(jax.grad(lambda y: jnp.sum(root_of(y))))(a))
    agree(out["vjp_of_sum"], jnp.sum(out["jacrev"], axis=(0, 1)))
    agree(out["linearize"], out["jvp"])
    agree(out["vmap_of_jvp"][0], out["jvp"])
    agree(out["jacfwd"], out["jacrev"])
    agree(jnp.tensordot(out["jacfwd"], tangent, 2), out["jvp"])
    agree(out["hessian"], out["hessian_rev_rev"])
    agree(jnp.tensordot(out["hessian"], tangent, 2), out["jvp_of_grad"])


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_jvp_and_vjp_match_daleckii_krein_float64(method, root_name, batch):
    """The directional derivative of ``A^(+-1/2)`` in a symmetric direction ``E`` is the
    Daleckii–Krein ``V [(V^T E V) o F] V^T`` (self-adjoint, so the vector-Jacobian product
    with ``E`` is the same matrix). Float64, converged knobs; measured 1e-13 (``"ns"``:
    autodiff of 12 iterations, 1e-11)."""
    inverse = root_name == "inv_sqrtm"

    def root_of(x):
        return ROOTS[root_name](x, method=method, **CONVERGED[method])

    a = jnp.asarray(batch)
    e = jnp.asarray(testing.spd_matrix(4, 3.0, batch=(2,), seed=13))
    reference = testing.sqrtm_vjp_reference(a, e, inverse=inverse)
    jvp = jax.jvp(root_of, (a,), (e,))[1]
    vjp = jax.vjp(root_of, a)[1](e)[0]
    assert testing.relative_error(jvp, reference) < 1e-10
    assert testing.relative_error(vjp, reference) < 1e-10


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_check_grads_float64(method, root_name, batch):
    """First and second order, forward and reverse mode (reverse over reverse included,
    for the adaptive ``"auto"`` too), against finite differences, float64, converged
    knobs."""
    f = loss(ROOTS[root_name], method, **CONVERGED[method])
    # "ns" is JAX's own autodiff of its steps: reverse mode suffices there.
    modes = ["rev"] if method == "ns" else ["fwd", "rev"]
    jax.test_util.check_grads(
        f, (jnp.asarray(batch[0]),), order=2, modes=modes, atol=1e-4, rtol=1e-4
    )


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_forward_over_reverse_float64(method, root_name, batch):
    """Hessian-vector products by jax.jvp of jax.grad match central differences of the
    gradient (measured 1e-10 relative)."""
    f = loss(ROOTS[root_name], method, **CONVERGED[method])
    grad = jax.grad(f)

    @jax.jit
    def hvp_and_differences(a, tangent, eps=1e-5):
        hvp = jax.jvp(grad, (a,), (tangent,))[1]
        return hvp, (grad(a + eps * tangent) - grad(a - eps * tangent)) / (2 * eps)

    hvp, fd = hvp_and_differences(jnp.asarray(batch[0]), jnp.asarray(batch[1]))
    np.testing.assert_allclose(hvp, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("method", ["mpa", "mtp"])
def test_backward_saves_only_output_and_scalars(method, batch):
    """Reverse mode of the closed forms keeps the root and at most one scalar per matrix
    (the inverse root measures its own scale in the backward pass)."""
    a = jnp.asarray(batch)
    for name, root in ROOTS.items():
        _, vjp = jax.vjp(lambda x, root=root: root(x, method=method), a)
        expected = [(2, 4, 4)] if name == "inv_sqrtm" else [(2,), (2, 4, 4)]
        assert sorted(leaf.shape for leaf in jax.tree_util.tree_leaves(vjp)) == expected


def test_eigh_backward_saves_the_decomposition(batch):
    a = jnp.asarray(batch)
    for root in ROOTS.values():
        _, vjp = jax.vjp(lambda x, root=root: root(x, method="eigh"), a)
        assert sorted(leaf.shape for leaf in jax.tree_util.tree_leaves(vjp)) == [(2, 4), (2, 4, 4)]


def test_auto_backward_saves_roots_and_step_sizes(batch):
    """Besides the scale, "auto" keeps the normalised root (and the inverse root for
    inv_sqrtm), the forward's step sizes (max_iters per matrix) and its step counts: the
    backward replays them instead of measuring its own. The cond that selects the
    decomposition for matrices at the noise floor keeps the input, the per-matrix
    selection and the branch index, whether or not it is taken (the decomposition is
    recomputed in the backward only where it is)."""
    a = jnp.asarray(batch)
    for name, root in ROOTS.items():
        _, vjp = jax.vjp(lambda x, root=root: root(x, method="auto"), a)
        roots = [(2, 4, 4)] * (2 if name == "inv_sqrtm" else 1)
        decomposition = [(), (2,), (2, 4, 4)]
        # max_iters defaults to 40
        expected = sorted([(2,), (2,), (2, 40), *roots, *decomposition])
        assert sorted(leaf.shape for leaf in jax.tree_util.tree_leaves(vjp)) == expected


def test_gradient_is_symmetric_and_uses_symmetric_part(batch):
    a = jnp.asarray(batch[0])
    skew = jnp.triu(jnp.ones((4, 4)), 1) - jnp.tril(jnp.ones((4, 4)), -1)
    for method in jaxsqrtm.METHODS:
        f = loss(jaxsqrtm.sqrtm, method)
        np.testing.assert_allclose(
            jaxsqrtm.sqrtm(a + skew, method=method), jaxsqrtm.sqrtm(a, method=method)
        )
        g = jax.grad(f)(a)
        np.testing.assert_allclose(g, g.T, atol=1e-12)


def test_no_recompile_for_same_shapes_and_knobs(batch):
    from jaxsqrtm import _api

    a = jnp.asarray(batch, jnp.float32)
    jaxsqrtm.sqrtm(a, method="mpa", degree=6)
    before = _api._root._cache_size()
    for _ in range(3):
        jaxsqrtm.sqrtm(a + 1e-3, method="mpa", degree=6)
        jaxsqrtm.sqrtm(np.asarray(a), method="mpa", degree=6)
    assert _api._root._cache_size() == before
    jaxsqrtm.sqrtm(a, method="mpa", degree=7)
    assert _api._root._cache_size() == before + 1


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_half_precision_computed_in_float32(dtype):
    a = jnp.asarray(testing.spd_matrix(8, 10.0, seed=12), dtype)

    @jax.jit
    def every_method(a):
        out = {}
        for method in jaxsqrtm.METHODS:

            def f(x, method=method):
                return jaxsqrtm.sqrtm(x, method=method)

            out[method] = f(a), f(a.astype(jnp.float32)), jax.grad(lambda x, f=f: jnp.sum(f(x)))(a)
        return out

    for half, full, grad in every_method(a).values():
        assert half.dtype == grad.dtype == dtype
        np.testing.assert_array_equal(half, full.astype(dtype))


SHARDING_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import jaxsqrtm
    from jaxsqrtm import testing

    assert jax.device_count() == 8, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("batch",))
    sharding = NamedSharding(mesh, P("batch"))
    a = jnp.asarray(testing.spd_matrix(8, 30.0, batch=(16,), seed=0), jnp.float32)
    a_sharded = jax.device_put(a, sharding)

    @jax.jit
    def every_method(a):
        out = {}
        for method in jaxsqrtm.METHODS:
            for root in (jaxsqrtm.sqrtm, jaxsqrtm.inv_sqrtm):
                f = lambda x: root(x, method=method)
                out[method, root.__name__] = f(a)
                out[method, root.__name__, "grad"] = jax.grad(lambda x: jnp.sum(jnp.sin(f(x))))(a)
        return out

    unsharded, sharded = every_method(a), every_method(a_sharded)
    for key, out in sharded.items():
        # float32 round-off: other kernels per shard, and "auto" may stop a step apart
        assert testing.relative_error(out, unsharded[key]) < 1e-5, key
        assert out.sharding.is_equivalent_to(sharding, out.ndim), (key, out.sharding)
    print("sharded ok")
    """
)


def test_sharded_batch_matches_and_stays_sharded():
    env = dict(
        os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu"
    )
    result = subprocess.run(
        [sys.executable, "-c", SHARDING_SCRIPT],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sharded ok" in result.stdout
