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

import jaxsqrtm
from jaxsqrtm import testing

ROOTS = {"sqrtm": jaxsqrtm.sqrtm, "inv_sqrtm": jaxsqrtm.inv_sqrtm}
# Knobs under which the forward is converged, so that the custom gradient is the exact
# derivative of the computed function and finite differences can check it.
CONVERGED = {
    "auto": {},
    "mpa": {"degree": 12, "normalization": "spectral", "backward_iters": 24},
    "mtp": {"degree": 40, "normalization": "spectral", "backward_iters": 24},
    "ns": {"num_iters": 12, "normalization": "spectral"},
    "eigh": {},
}


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


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_compositions_agree(method, root_name, dtype, batch):
    root = ROOTS[root_name]
    a = jnp.asarray(batch, dtype)
    f = loss(root, method)
    eager = root(a, method=method)
    assert eager.dtype == dtype

    @jax.jit
    def compositions(a):
        out = {
            "jit": root(a, method=method),
            "vmap": jax.vmap(lambda x: root(x, method=method))(a),
            "grad": jax.grad(f)(a[0]),
            "grad_of_vmap": jax.grad(lambda x: jnp.sum(jax.vmap(f)(x)))(a),
            "vmap_of_grad": jax.vmap(jax.grad(f))(a),
            "jvp_of_grad": jax.jvp(jax.grad(f), (a[0],), (a[1],))[1],  # forward-over-reverse
        }
        if method != "auto":  # its while_loop has no reverse-over-reverse
            out["grad_of_grad"] = jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(a[0])
        return out

    out = compositions(a)
    assert all(v.dtype == dtype for v in out.values())
    np.testing.assert_allclose(out["jit"], eager, rtol=1e-6)
    np.testing.assert_allclose(out["vmap"], eager, rtol=1e-6)
    np.testing.assert_allclose(out["grad_of_vmap"][0], out["grad"], rtol=1e-5)
    np.testing.assert_allclose(out["vmap_of_grad"], out["grad_of_vmap"], rtol=1e-5)
    assert all(
        bool(jnp.all(jnp.isfinite(out[k]))) for k in ("jvp_of_grad", "grad_of_grad") if k in out
    )


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", jaxsqrtm.METHODS)
def test_check_grads_float64(method, root_name, batch):
    """First order against finite differences, float64, with converged knobs."""
    f = loss(ROOTS[root_name], method, **CONVERGED[method])
    jax.test_util.check_grads(f, (jnp.asarray(batch[0]),), order=1, modes=["rev"])


@pytest.mark.parametrize("root_name", list(ROOTS))
@pytest.mark.parametrize("method", ["mpa", "ns", "eigh"])
def test_second_order_float64(method, root_name, batch):
    """Second order (reverse over reverse) against finite differences of the gradient."""
    f = loss(ROOTS[root_name], method, **CONVERGED[method])
    jax.test_util.check_grads(
        f, (jnp.asarray(batch[0]),), order=2, modes=["rev"], atol=1e-4, rtol=1e-4
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


def test_auto_reverse_over_reverse_is_refused():
    """Documented: "auto" loops with lax.while_loop, which JAX cannot reverse twice."""
    f = loss(jaxsqrtm.sqrtm, "auto")
    with pytest.raises(ValueError, match="while_loop"):
        jax.grad(lambda x: jnp.sum(jax.grad(f)(x) ** 2))(jnp.eye(4))


@pytest.mark.parametrize("method", ["mpa", "mtp"])
def test_backward_saves_only_output_and_scalars(method, batch):
    a = jnp.asarray(batch)
    for root in ROOTS.values():
        _, vjp = jax.vjp(lambda x, root=root: root(x, method=method), a)
        assert sorted(leaf.shape for leaf in jax.tree_util.tree_leaves(vjp)) == [(2,), (2, 4, 4)]


def test_auto_backward_saves_roots_and_step_sizes(batch):
    """Besides the scale, "auto" keeps the normalised root (and the inverse root for
    inv_sqrtm), the forward's step sizes (max_iters per matrix) and its step counts: the
    backward replays them instead of measuring its own."""
    a = jnp.asarray(batch)
    for name, root in ROOTS.items():
        _, vjp = jax.vjp(lambda x, root=root: root(x, method="auto"), a)
        roots = [(2, 4, 4)] * (2 if name == "inv_sqrtm" else 1)
        expected = sorted([(2,), (2,), (2, 40), *roots])  # max_iters defaults to 40
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
