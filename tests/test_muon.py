"""``jaxsqrtm.optim.muon``: optax's Muon with the orthogonaliser of ``jaxsqrtm.polar``.

* With ``polar_method="quintic"`` the updates equal ``optax.contrib.muon``'s (same
  momentum, shape scaling, weight decay, AdamW branch) over several steps, on a pytree
  with a matrix, a stacked ``(L, m, n)`` weight, a convolution kernel and a bias.
* The accurate mode and Polar Express give orthogonal updates (float64 SVD oracle).
* Dimension numbers: batch, reduction and output axes of stacked and convolution
  weights; leaves without them go to AdamW.
* Optimizer state keeps the parameters' sharding on a mesh with ``AxisType.Explicit``
  axes (8 forced host devices, in a subprocess: ``python tests/test_muon.py sharding``
  prints the partition specs as JSON).
* Bad arguments raise at construction, bad shapes at the first (traced) update.
* The digits MLP of :mod:`jaxsqrtm.examples.optimisers` reaches the same final loss with
  ``optax.contrib.muon`` and ``jaxsqrtm.optim.muon``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from optax.contrib import MuonDimensionNumbers as DN

from jaxsqrtm import testing
from jaxsqrtm.optim import muon, orthogonalize, scale_by_muon

RESULT_PREFIX = "MUON-SHARDING "
RUNS = (("quintic", "eager"), ("quintic", "jit"), ("auto", "jit"))  # sharding checks
DIMS = {"matrix": DN(), "stack": DN(1, 2), "conv": DN((0, 1, 2), 3), "bias": None}


def _params(rng, dtype=np.float32):
    shapes = {"matrix": (6, 10), "stack": (3, 8, 5), "conv": (3, 3, 2, 4), "bias": (5,)}
    return {k: jnp.asarray(rng.standard_normal(s), dtype) for k, s in shapes.items()}


def _orthogonality(u):
    """Largest ``||U^T U - I||_2`` (``U U^T`` for wide ``U``) over a batch, float64."""
    u = np.asarray(u, np.float64)
    if u.shape[-2] < u.shape[-1]:
        u = np.swapaxes(u, -1, -2)
    gram = np.swapaxes(u, -1, -2) @ u - np.eye(u.shape[-1])
    return float(np.max(np.linalg.norm(gram, ord=2, axis=(-2, -1))))


def _relative(x, y):
    """Per-leaf ``||x - y||_F / ||y||_F`` (0 where both are 0), float64."""

    def error(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        norm = np.linalg.norm(b)
        return float(np.linalg.norm(a - b) / norm) if norm else float(np.linalg.norm(a))

    return jax.tree.map(error, x, y)


def _run_both(reference, mine, params, rng, steps=4):
    """The updates of both optimisers, step by step, on the same random gradients."""
    states = reference.init(params), mine.init(params)
    p_ref = p_mine = params
    errors = []
    ref_update, mine_update = jax.jit(reference.update), jax.jit(mine.update)
    for _ in range(steps):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), params)
        u_ref, s_ref = ref_update(grads, states[0], p_ref)
        u_mine, s_mine = mine_update(grads, states[1], p_mine)
        states = s_ref, s_mine
        errors.append(_relative(u_mine, u_ref))
        p_ref, p_mine = optax.apply_updates(p_ref, u_ref), optax.apply_updates(p_mine, u_mine)
    return errors


OPTAX_CASES = {
    "defaults": {},
    "dimension_numbers": dict(muon_weight_dimension_numbers=DIMS),
    "callable_dims_adaptive_decay": dict(
        muon_weight_dimension_numbers=lambda params: DIMS, adaptive=True, weight_decay=0.1
    ),
    "consistent_rms_heavy_ball": dict(
        muon_weight_dimension_numbers=DIMS, consistent_rms=0.2, nesterov=False, beta=0.9
    ),
}


@pytest.mark.parametrize("case", OPTAX_CASES)
def test_quintic_equals_optax_muon(case):
    """Relative Frobenius difference per leaf over 4 steps, float32.

    Measured at most 1.8e-6 (AdamW leaves: 0). That is float32 round-off of the five
    quintic steps: optax's own float32 orthogonalisation differs from the same steps in
    float64 by up to 1.6e-6 on these shapes, and ``jaxsqrtm.polar``'s by as much.
    """
    options = OPTAX_CASES[case]
    params = _params(np.random.default_rng(0))
    errors = _run_both(
        optax.contrib.muon(0.1, **options),
        muon(0.1, polar_method="quintic", **options),
        params,
        np.random.default_rng(1),
    )
    for step in errors:
        for name, error in step.items():
            assert error <= 5e-6, (case, name, errors)


@pytest.mark.parametrize("method", ["auto", "polar_express"])
def test_accurate_and_polar_express_updates_are_orthogonal(method):
    """The direction of :func:`scale_by_muon` is the polar factor of the momentum.

    Momenta with singular values from 1 down to ``1e-3`` (geometric). Targets: the
    accurate mode's orthogonality ``||U^T U - I||_2 <= 1e-5`` (measured 3.4e-7) and
    distance to the float64 polar factor ``<= 1e-4``, between the accuracy targets
    ``1e-5`` at condition number ``1e2`` and ``1e-3`` at ``1e4`` (measured 6.7e-6);
    Polar Express ``||U^T U - I||_2 <= 1e-2`` at ``sigma_min / sigma_max >= 1e-3``
    (measured 1.4e-4). optax's quintic is not orthogonal here (0.86).
    """
    grads = {
        "wide": testing.rectangular_matrix(16, 40, 1e3, batch=(4,), seed=1),
        "tall": testing.rectangular_matrix(48, 12, 1e3, seed=2),
    }
    grads = jax.tree.map(lambda g: jnp.asarray(g, jnp.float32), grads)
    dims = {"wide": DN(1, 2), "tall": DN()}
    transform = scale_by_muon(polar_method=method, weight_dimension_numbers=dims, beta=0.9)
    updates, state = jax.jit(transform.update)(grads, transform.init(grads))
    assert int(state.count) == 1
    for name, u in updates.items():
        assert u.dtype == jnp.float32 and u.shape == grads[name].shape
        # First step, Nesterov: the momentum is a positive multiple of the gradient.
        orthogonality = _orthogonality(u)
        error = testing.relative_error(u, testing.polar_reference(grads[name]))
        if method == "auto":
            assert orthogonality <= 1e-5, (name, orthogonality)
            assert error <= 1e-4, (name, error)
        else:
            assert orthogonality <= 1e-2, (name, orthogonality)


def test_dimension_numbers_reshape_stacked_and_conv_weights():
    """Batch axes anywhere, several reduction axes: against the float64 polar factor of
    each reshaped slice (accurate mode; Gaussian matrices; measured at most 1.8e-7)."""
    rng = np.random.default_rng(3)
    middle = rng.standard_normal((6, 3, 9)).astype(np.float32)  # (m, L, n), batch in the middle
    conv = rng.standard_normal((3, 3, 4, 8)).astype(np.float32)  # HWIO
    stack = rng.standard_normal((2, 5, 7, 3)).astype(np.float32)  # (L1, L2, m, n)
    updates = {"middle": middle, "conv": conv, "stack": stack}
    dims = {"middle": DN(0, 2), "conv": DN((0, 1, 2), 3), "stack": DN(-2, -1)}
    out, _ = orthogonalize(polar_method="auto", weight_dimension_numbers=dims).update(updates, None)
    expected = {
        "middle": np.moveaxis(testing.polar_reference(np.moveaxis(middle, 1, 0)), 0, 1),
        "conv": testing.polar_reference(conv.reshape(36, 8)).reshape(conv.shape),
        "stack": testing.polar_reference(stack),
    }
    for name, reference in expected.items():
        assert out[name].shape == reference.shape
        assert testing.relative_error(out[name], reference) <= 1e-5, name


def test_non_matrix_leaves_go_to_adamw():
    """Leaves that are not 2-D (default) or whose dimension numbers are None get exactly
    the updates of :func:`optax.adamw` with Muon's AdamW settings."""
    params = _params(np.random.default_rng(4))
    grads = _params(np.random.default_rng(5))
    options = dict(adam_b1=0.8, adam_b2=0.99, adam_weight_decay=0.01, eps=1e-6)
    adam = optax.adamw(3e-3, b1=0.8, b2=0.99, eps=1e-6, weight_decay=0.01, nesterov=True)
    expected, _ = adam.update(grads, adam.init(params), params)
    for dims, adam_leaves in ((None, ("stack", "conv", "bias")), (DIMS, ("bias",))):
        optimizer = muon(
            0.1, adam_learning_rate=3e-3, muon_weight_dimension_numbers=dims, **options
        )
        updates, _ = optimizer.update(grads, optimizer.init(params), params)
        for name in adam_leaves:
            np.testing.assert_array_equal(updates[name], expected[name])
        for name in set(params) - set(adam_leaves):
            assert not np.allclose(updates[name], expected[name])


def test_jit_equals_eager_and_zero_gradients_give_zero_updates():
    """jit against eager, relative Frobenius per leaf: measured at most 6.2e-7 (quintic),
    1.6e-7 (auto)."""
    params = _params(np.random.default_rng(6))
    for method in ("quintic", "auto"):
        optimizer = muon(0.1, polar_method=method, muon_weight_dimension_numbers=DIMS)
        state = optimizer.init(params)
        eager, _ = optimizer.update(params, state, params)
        jitted, _ = jax.jit(optimizer.update)(params, state, params)
        for name, error in _relative(jitted, eager).items():
            assert error <= 1e-5, (method, name, error)
        zeros = jax.tree.map(jnp.zeros_like, params)
        updates, state = optimizer.update(zeros, optimizer.init(params), params)
        for name, u in updates.items():
            assert np.all(np.asarray(u) == 0), (method, name)


def test_bfloat16_products_and_momentum_dtype():
    """bfloat16 products (float32 accumulation) with Polar Express: finite updates whose
    singular values are within 1e-2 of 1, Polar Express's guarantee (measured 6.8e-5:
    the last step runs in float32); a bfloat16 momentum keeps its dtype."""
    params = _params(np.random.default_rng(7))
    optimizer = muon(
        1.0,
        polar_method="polar_express",
        precision="bfloat16",
        mu_dtype=jnp.bfloat16,
        muon_weight_dimension_numbers=DIMS,
    )
    state = optimizer.init(params)
    updates, state = jax.jit(optimizer.update)(params, state, params)
    muon_state = state.inner_states["muon"].inner_state[0]
    assert muon_state.mu["matrix"].dtype == jnp.bfloat16
    assert updates["matrix"].dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(updates["matrix"])))
    # shape factor sqrt(max(1, 10 / 6)) for the (6, 10) matrix
    singular_values = np.linalg.svd(
        np.asarray(updates["matrix"]) / np.sqrt(10 / 6), compute_uv=False
    )
    np.testing.assert_allclose(singular_values, 1, atol=1e-2)


# --- Bad arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(polar_method="newton"), ValueError, "method"),
        (dict(precision="fp8"), ValueError, "precision"),
        (dict(polar_method="polynomial"), ValueError, "coefficients"),
        (dict(coefficients=((1.0, -0.5),)), ValueError, "coefficients"),
        (dict(polar_method="polynomial", coefficients=((1.0,),)), ValueError, "coefficients"),
        (dict(polar_method="auto", precision="bfloat16"), ValueError, "bfloat16"),
        (dict(beta=1.5), ValueError, "beta"),
        (dict(muon_weight_dimension_numbers={"w": (0, 1)}), TypeError, "MuonDimensionNumbers"),
        (dict(muon_weight_dimension_numbers={"w": DN(0, "1")}), TypeError, "output_axis"),
        (dict(consistent_rms="0.2"), TypeError, "consistent_rms"),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, error, match):
    with pytest.raises(error, match=match):
        muon(0.1, **kwargs)


@pytest.mark.parametrize(
    "shape, dims, match",
    [
        ((4, 5), DN(0, 0), "distinct"),
        ((4, 5), DN(0, 2), "out of range"),
        ((5,), DN(), "rank >= 2"),
    ],
)
def test_bad_dimension_numbers_raise_at_trace_time(shape, dims, match):
    params = {"w": jnp.ones(shape)}
    optimizer = muon(0.1, muon_weight_dimension_numbers={"w": dims})
    with pytest.raises(ValueError, match=match):
        jax.jit(optimizer.update)(params, optimizer.init(params), params)


def test_orthogonalize_without_dimension_numbers_needs_matrices():
    transform = orthogonalize()
    with pytest.raises(ValueError, match=r"2-D matrix, got shape \(2, 3, 4\)"):
        jax.jit(transform.update)({"w": jnp.ones((3, 4)), "stack": jnp.ones((2, 3, 4))}, None)


# --- Sharding (8 forced host devices, in a subprocess) -----------------------------------


def sharding_specs() -> dict:
    """Partition specs of parameters, momentum and updates after ``init`` and ``update``
    (:data:`RUNS`) on a mesh with one Explicit axis, and the sharded updates' difference
    from one device's."""
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((8,), ("data",), axis_types=(AxisType.Explicit,))
    shardings = {
        "matrix": P("data", None),
        "stack": P("data", None, None),
        "stack_inner": P(None, None, "data"),
        "conv": P(None, None, None, "data"),
        "bias": P("data"),
    }
    shapes = {
        "matrix": (16, 8),
        "stack": (8, 16, 8),
        "stack_inner": (3, 16, 8),
        "conv": (3, 3, 2, 8),
        "bias": (8,),
    }
    dims = {
        "matrix": DN(),
        "stack": DN(1, 2),
        "stack_inner": DN(1, 2),
        "conv": DN((0, 1, 2), 3),
        "bias": None,
    }

    def spec(x):
        return list(jax.typeof(x).sharding.spec)

    rng = np.random.default_rng(0)
    host = {k: rng.standard_normal(shape).astype(np.float32) for k, shape in shapes.items()}
    matrices = [k for k in dims if dims[k] is not None]
    results = {}
    with jax.set_mesh(mesh):
        params = {k: jax.device_put(v, NamedSharding(mesh, shardings[k])) for k, v in host.items()}
        results["params"] = {k: spec(v) for k, v in params.items()}
        for method, mode in RUNS:
            optimizer = muon(0.1, polar_method=method, muon_weight_dimension_numbers=dims)
            wrap = jax.jit if mode == "jit" else lambda f: f
            state0 = wrap(optimizer.init)(params)
            updates, state1 = wrap(optimizer.update)(params, state0, params)
            muon_mu = [s.inner_states["muon"].inner_state[0].mu for s in (state0, state1)]
            adam_mu = [s.inner_states["adam"].inner_state[0].mu for s in (state0, state1)]
            results[f"{method}/{mode}"] = {
                "muon_mu": [{k: spec(mu[k]) for k in matrices} for mu in muon_mu],
                "adam_mu": [spec(mu["bias"]) for mu in adam_mu],
                "updates": {k: spec(v) for k, v in updates.items()},
                "finite": bool(all(np.all(np.isfinite(v)) for v in jax.tree.leaves(updates))),
            }
        got = jax.tree.map(np.asarray, updates)  # the last run's: auto, jit
    # The same parameters on one device.
    single = jax.tree.map(lambda x: jax.device_put(x, jax.devices()[0]), host)
    expected, _ = optimizer.update(single, optimizer.init(single), single)
    results["sharded_vs_single"] = _relative(got, jax.tree.map(np.asarray, expected))
    return results


@pytest.fixture(scope="module")
def sharding_results():
    env = dict(
        os.environ,
        XLA_FLAGS="--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
    )
    env.pop("JAX_ENABLE_X64", None)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    process = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "sharding"],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [line for line in process.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        pytest.fail(f"the subprocess failed ({process.returncode}):\n{process.stderr[-4000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX) :])


@pytest.mark.parametrize("run", [f"{method}/{mode}" for method, mode in RUNS])
def test_state_and_updates_keep_the_parameters_sharding(sharding_results, run):
    params = sharding_results["params"]
    case = sharding_results[run]
    assert case["finite"]
    for mu in case["muon_mu"]:  # after init, after update
        assert mu == {k: v for k, v in params.items() if k != "bias"}
    assert case["adam_mu"] == [params["bias"], params["bias"]]
    assert case["updates"] == params


def test_sharded_updates_equal_single_device(sharding_results):
    """Accurate mode, relative Frobenius per leaf: measured at most 2.5e-7 (0 for the
    gathered matrices, 2.5e-7 for the stack orthogonalised on its devices, 2.0e-7 for the
    bias's AdamW update)."""
    for name, error in sharding_results["sharded_vs_single"].items():
        assert error <= 1e-5, (name, error)


# --- Training ----------------------------------------------------------------------------


def test_digits_training_matches_optax_muon():
    """Same settings, same seeds: final training loss of ``jaxsqrtm.optim.muon`` (quintic)
    against ``optax.contrib.muon``; the accurate mode trains at least as well.

    Measured (MLP 64-32-32-10, 4 epochs of 11 steps, batch 128, 6 seeds): optax's final
    losses 0.57-0.78, standard deviation over the seeds 0.073; the quintic run differs by
    at most 1.2e-7 per seed (every step's loss by at most 4.8e-7), asserted below 1% of
    the seed-to-seed spread. The accurate mode (``"auto"``) ends lower on every seed, by
    0.127 on average (Polar Express by the same), asserted to be no worse than optax's
    mean plus one spread.
    """
    from jaxsqrtm.examples import optimisers

    options = dict(model="mlp", epochs=4, batch_size=128, hidden=32, seeds=tuple(range(6)))
    settings = dict(adam_learning_rate=3e-3)
    reference = optimisers.train(optax.contrib.muon(0.02, **settings), **options)
    quintic = optimisers.train(muon(0.02, **settings), **options)
    accurate = optimisers.train(muon(0.02, polar_method="auto", **settings), **options)
    ref_loss = reference["final"]["train_loss"]
    spread = np.std(ref_loss, ddof=1)
    difference = np.abs(quintic["final"]["train_loss"] - ref_loss)
    assert np.max(difference) <= 0.01 * spread, (difference, spread)
    assert np.mean(accurate["final"]["train_loss"]) <= np.mean(ref_loss) + spread


if __name__ == "__main__":
    if sys.argv[1:] == ["sharding"]:
        print(RESULT_PREFIX + json.dumps(sharding_specs()))
