"""Distribution over 8 forced host devices: shard_map, explicit sharding, compiled collectives.

The checks run in subprocesses with ``XLA_FLAGS=--xla_force_host_platform_device_count=8``
(plus ``--xla_backend_optimization_level=0`` for speed) and ``JAX_PLATFORMS=cpu`` (the
device count is fixed when JAX starts): each runs this very file,
``python tests/test_distribution.py GROUP``, which prints the group's
measurements as JSON; the tests compare them with their tolerances. The groups run
once per session, side by side, and their results are shared by the tests (and by the
workers of pytest-xdist), so that a failing case fails its own test without hiding the
others.

* ``library``: every method's ``sqrtm``/``inv_sqrtm`` and ``solve_lyapunov`` under
  ``jax.shard_map`` (``check_vma=True``), forward and backward, against the unsharded
  batch; each device's adaptive loop running only as long as its own matrices need;
  outputs keeping their sharding on a mesh with ``AxisType.Explicit`` axes; the
  collectives that plain ``jit`` of a batch sharded on its leading axis compiles to.
* ``linen``: a full ``shard_map`` train step with ``DecorrelatedBatchNorm`` and
  ``CovariancePooling``, in both Flax front-ends (``jaxsqrtm.linen`` and
  ``jaxsqrtm.nnx``), and plain ``jit`` of the step with the batch sharded, against one
  device with the full batch.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import itertools
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

DEVICES = 8
DATA = "data"
METHODS = ("auto", "mpa", "mtp", "ns", "eigh")
ROOTS = ("sqrtm", "inv_sqrtm")
RESULT_PREFIX = "DISTRIBUTION-RESULT "


# --- Running a group in a subprocess ---------------------------------------------------


def _run_groups(names) -> dict:
    """Runs each group in its own subprocess, all at once; ``name -> results``.

    The subprocesses import the ``jaxsqrtm`` that this process imports. A group whose
    packages are missing is not run (its tests carry a marker that skips them).
    """
    import importlib.util

    import jaxsqrtm

    env = dict(
        os.environ,
        # Level 0 (LLVM code generation) cuts the compile time, which dominates here, by
        # 40%; the compiled collectives are the same as at the default level (measured).
        XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES} "
        "--xla_backend_optimization_level=0",
        JAX_PLATFORMS="cpu",
    )
    env.pop("JAX_ENABLE_X64", None)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(jaxsqrtm.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    results = {}
    for name in names:
        missing = [p for p in GROUP_PACKAGES.get(name, ()) if importlib.util.find_spec(p) is None]
        if missing:
            results[name] = {"crash": f"not run: {', '.join(missing)} missing"}
    processes = {
        name: subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), name],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in names
        if name not in results
    }
    for name, process in processes.items():
        try:
            stdout, stderr = process.communicate(timeout=600)
        except subprocess.TimeoutExpired:
            process.kill()
            stdout, stderr = process.communicate()
        lines = [line for line in stdout.splitlines() if line.startswith(RESULT_PREFIX)]
        if lines:
            results[name] = json.loads(lines[-1][len(RESULT_PREFIX) :])
        else:
            results[name] = {"crash": f"exit code {process.returncode}\n{stderr[-4000:]}"}
    return results


@contextlib.contextmanager
def _exclusive(path):
    """An advisory lock on ``path`` (POSIX); no lock where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _group(tmp_path_factory, name: str) -> dict:
    """A group's results; the groups run once per test session, even under pytest-xdist."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # shared by the workers of one session
    cache = root / "distribution.json"
    with _exclusive(root / "distribution.lock"):
        if not cache.exists():
            cache.write_text(json.dumps(_run_groups(GROUPS)))
        return json.loads(cache.read_text())[name]


def _checked(results: dict) -> dict:
    if "crash" in results:
        pytest.fail(f"the subprocess failed:\n{results['crash']}")
    return results


def _case(results: dict, key: str) -> dict:
    case = _checked(results)[key]
    if case.get("error"):
        pytest.fail(f"{key}: {case['error']}")
    return case


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return _group(tmp_path_factory, "library")


@pytest.fixture(scope="module")
def linen(tmp_path_factory):
    return _group(tmp_path_factory, "linen")


# --- Collectives in compiled HLO -------------------------------------------------------

_COLLECTIVE = re.compile(
    r"=\s*(?P<shape>.+?)\s+(?P<kind>all-reduce|all-gather|collective-permute|all-to-all|"
    r"reduce-scatter)(?:-start)?\("
)
_HEADER = re.compile(r"^(?:ENTRY\s+)?%?(?P<name>[^\s(]+)\s*\(.*\{\s*$")
_CALLEE = re.compile(
    r"\b(?P<role>condition|body|calls|to_apply|true_computation|false_computation|"
    r"branch_computations)=\{?(?P<names>%[\w.\-]+(?:,\s*%[\w.\-]+)*)\}?"
)


def hlo_collectives(hlo: str) -> list[dict]:
    """Collectives of compiled HLO text: ``kind``, result ``shape``, ``where``, ``loop``.

    ``where`` is ``"condition"`` or ``"body"`` when the instruction sits (directly or
    through called computations) in the condition or body of a ``while`` loop, the
    innermost loop first, and ``"outside"`` otherwise; ``loop`` names that condition or
    body computation (``None`` outside). A collective in a loop condition runs once per
    iteration (and once more to stop).
    """
    computations: dict[str, list[str]] = {}
    current = None
    for line in hlo.splitlines():
        header = _HEADER.match(line) if not line.startswith(" ") else None
        if header:
            current = header.group("name")
            computations[current] = []
        elif current is not None and line.strip() == "}":
            current = None
        elif current is not None:
            computations[current].append(line)
    callers: dict[str, list[tuple[str, str]]] = collections.defaultdict(list)
    for name, lines in computations.items():
        for line in lines:
            for callee in _CALLEE.finditer(line):
                for child in re.findall(r"%([\w.\-]+)", callee.group("names")):
                    callers[child].append((name, callee.group("role")))

    def where(name, seen=frozenset()):
        for _, role in callers.get(name, ()):
            if role in ("condition", "body"):
                return role, name
        for parent, _ in callers.get(name, ()):
            if parent not in seen:
                found = where(parent, seen | {name})
                if found[1] is not None:
                    return found
        return "outside", None

    found = []
    for name, lines in computations.items():
        for line in lines:
            match = _COLLECTIVE.search(line)
            if match:
                role, loop = where(name)
                found.append(
                    {
                        "kind": match.group("kind"),
                        "shape": match.group("shape"),
                        "where": role,
                        "loop": loop,
                    }
                )
    return found


def hlo_loops(hlo: str) -> list[str]:
    """The condition computations of the ``while`` instructions in HLO text."""
    return re.findall(r"\swhile\(.*?\bcondition=%?([\w.\-]+)", hlo)


def _is_scalar(shape: str) -> bool:
    """A scalar shape such as ``pred[]``, or a tuple of them (combined all-reduces)."""
    return re.fullmatch(r"\(?[a-z0-9]+\[\](, [a-z0-9]+\[\])*\)?", shape) is not None


# --- Group functions (run in the subprocess) -------------------------------------------


def _error_text(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {' '.join(lines[:3])[:600]}"


@contextlib.contextmanager
def _recorded(case: dict):
    """Stores the message of an exception raised in the block as ``case["error"]``."""
    case["error"] = None
    try:
        yield
    except Exception as error:
        case["error"] = _error_text(error)


def _auto_mesh():
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()), (DATA,))


def _per_shard(f, mesh, num_args=1):
    import jax
    from jax.sharding import PartitionSpec as P

    return jax.shard_map(f, mesh=mesh, in_specs=(P(DATA),) * num_args, out_specs=P(DATA))


def _batch(num=16, n=8, kappa=30.0, seed=0):
    from jaxsqrtm import testing

    return testing.spd_matrix(n, kappa, batch=(num,), seed=seed).astype(np.float32)


def _sin_sum(f):
    import jax.numpy as jnp

    return lambda *args: jnp.sum(jnp.sin(f(*args)))


def _root_function(root: str, method: str):
    import jaxsqrtm

    func = getattr(jaxsqrtm, root)
    return lambda x: func(x, method=method)


def _every_root(method, a, wrap=None):
    """``sqrtm``, ``inv_sqrtm`` and the gradients of ``sum(sin(root))`` in one program.

    ``wrap`` (e.g. :func:`_per_shard`) wraps each root; gradients are taken through it.
    """
    import jax

    out = {}
    for root in ROOTS:
        f = _root_function(root, method)
        f = f if wrap is None else wrap(f)
        out[root] = f(a)
        out[f"{root}/grad"] = jax.grad(_sin_sum(f))(a)
    return out


def _relative_errors(got: dict, expected: dict) -> dict:
    from jaxsqrtm import testing

    return {key: testing.relative_error(got[key], expected[key]) for key in expected}


def _shard_map_checks(a, mesh) -> tuple[dict, dict]:
    """Every method under ``shard_map`` against the unsharded batch on one device.

    Returns the results and the unsharded outputs per method.
    """
    import jax

    wrap = functools.partial(_per_shard, mesh=mesh)
    results, unsharded = {}, {}
    for method in METHODS:
        with _recorded(case := results.setdefault(method, {})):
            unsharded[method] = jax.jit(functools.partial(_every_root, method))(a)
            program = jax.jit(functools.partial(_every_root, method, wrap=wrap))
            compiled = program.lower(a).compile()
            case["errors"] = _relative_errors(compiled(a), unsharded[method])
            case["collectives"] = hlo_collectives(compiled.as_text())
    return results, unsharded


def _lyapunov_checks(mesh) -> dict:
    """``solve_lyapunov`` under ``shard_map``: forward, ``grad`` (fixed count) or ``jvp``."""
    import jax

    import jaxsqrtm
    from jaxsqrtm import testing

    s = np.asarray(testing.sqrtm_reference(_batch(seed=1)), np.float32)
    g = np.random.default_rng(2).standard_normal(s.shape).astype(np.float32)
    ds = (0.01 * (g + np.swapaxes(g, -1, -2))).astype(np.float32)

    def forward_and_derivatives(s, g, ds, f):
        jvp = jax.jvp(f, (s, g), (ds, g))[1]
        return f(s, g), jvp, *jax.grad(_sin_sum(f), argnums=(0, 1))(s, g)

    results = {}
    for num_iters in (8, None):
        with _recorded(case := results.setdefault(str(num_iters), {})):
            solve = functools.partial(jaxsqrtm.solve_lyapunov, num_iters=num_iters)
            sharded = _per_shard(solve, mesh, num_args=2)
            expected = jax.jit(functools.partial(forward_and_derivatives, f=solve))(s, g, ds)
            program = jax.jit(functools.partial(forward_and_derivatives, f=sharded))
            compiled = program.lower(s, g, ds).compile()
            got = compiled(s, g, ds)
            names = ("forward", "jvp", "grad_s", "grad_g")
            case["errors"] = {
                name: testing.relative_error(x, y)
                for name, x, y in zip(names, got, expected, strict=True)
            }
            case["collectives"] = hlo_collectives(compiled.as_text())
    return results


def _explicit_checks(a, unsharded) -> dict:
    """Partition specs (as lists) of roots and gradients on a mesh with Explicit axes."""
    import jax
    from jax.sharding import AxisType, NamedSharding
    from jax.sharding import PartitionSpec as P

    mesh = jax.make_mesh((DEVICES,), (DATA,), axis_types=(AxisType.Explicit,))
    results = {}
    with jax.set_mesh(mesh):
        sharded = jax.device_put(a, NamedSharding(mesh, P(DATA)))
        for method in METHODS:
            with _recorded(case := results.setdefault(method, {})):
                traced = {}

                def program(x, method=method, traced=traced):
                    out = _every_root(method, x)
                    traced.update({k: list(jax.typeof(v).sharding.spec) for k, v in out.items()})
                    return out

                got = jax.jit(program)(sharded)
                case["input_spec"] = list(jax.typeof(sharded).sharding.spec)
                case["specs"] = {k: list(v.sharding.spec) for k, v in got.items()}
                case["traced_specs"] = traced
                case["errors"] = _relative_errors(got, unsharded[method])
    return results


def _plain_jit_checks(a, mesh) -> dict:
    """Collectives and loops of plain ``jit`` on a batch sharded ``P("data")`` (Auto axes).

    Per method, one program with both roots and their gradients (:func:`_every_root`).
    """
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    sharded = jax.device_put(a, NamedSharding(mesh, P(DATA)))
    results = {}
    for method in METHODS:
        with _recorded(case := results.setdefault(method, {})):
            program = jax.jit(functools.partial(_every_root, method))
            hlo = program.lower(sharded).compile().as_text()
            case["collectives"] = hlo_collectives(hlo)
            case["loops"] = hlo_loops(hlo)
    return results


class _TripCounter:
    """Counts, per device, how often each traced ``lax.while_loop`` evaluates its condition.

    ``jax.lax.while_loop`` is replaced by a wrapper whose condition first reports
    ``(run, loop, device)`` to the host with ``jax.debug.callback``, the device being
    ``lax.axis_index`` under ``shard_map`` (``-1`` outside). A loop that takes ``k``
    steps evaluates its condition ``k + 1`` times.
    """

    def __init__(self):
        import jax

        self.counts = collections.Counter()
        self.run = None
        self.axis = None
        self._loops = itertools.count()
        self._original = jax.lax.while_loop

    def _record(self, loop, device):
        self.counts[self.run, loop, int(device)] += 1

    def while_loop(self, cond_fun, body_fun, init_val):
        import jax
        from jax import lax

        loop, axis = next(self._loops), self.axis

        def cond(state):
            device = lax.axis_index(axis) if axis else -1
            jax.debug.callback(functools.partial(self._record, loop), device)
            return cond_fun(state)

        return self._original(cond, body_fun, init_val)

    @contextlib.contextmanager
    def installed(self):
        import jax

        jax.clear_caches()  # retrace: programs traced before do not report
        jax.lax.while_loop = self.while_loop
        try:
            yield self
        finally:
            jax.lax.while_loop = self._original
            jax.clear_caches()

    def per_device(self, run) -> dict[int, list[int]]:
        """``device -> [evaluations of each loop, in tracing order]`` for one run."""
        out = collections.defaultdict(list)
        for (r, _, device), count in sorted(self.counts.items(), key=lambda kv: kv[0][1]):
            if r == run:
                out[device].append(count)
        return dict(out)


def _convergence_checks(mesh) -> dict:
    """Per-device trip counts of the adaptive loops with one ill-conditioned shard."""
    import jax

    import jaxsqrtm
    from jaxsqrtm import testing

    per_device = 2
    hard = testing.spd_matrix(8, 1e6, batch=(per_device,), seed=3)
    easy = testing.spd_matrix(8, 10.0, batch=((DEVICES - 1) * per_device,), seed=4)
    a = np.concatenate([hard, easy]).astype(np.float32)
    results = {}
    with _recorded(results), _TripCounter().installed() as counter:

        def root(x):
            return jaxsqrtm.sqrtm(x, return_info=True)

        counter.axis, counter.run = DATA, "shard_map"
        compiled = jax.jit(_per_shard(root, mesh)).lower(a).compile()
        out, info = compiled(a)
        jax.effects_barrier()
        results["collectives"] = hlo_collectives(compiled.as_text())
        results["trips_shard_map"] = counter.per_device("shard_map")
        counter.axis = None
        results["trips_alone"] = {}
        for device in range(DEVICES):
            counter.run = f"alone{device}"
            jax.block_until_ready(jax.jit(root)(a[device * per_device : (device + 1) * per_device]))
            jax.effects_barrier()
            results["trips_alone"][device] = counter.per_device(counter.run).get(-1, [])
        counter.run = "unsharded"
        expected, expected_info = jax.jit(root)(a)
        results["iterations"] = np.asarray(info.iterations).tolist()
        results["iterations_unsharded"] = np.asarray(expected_info.iterations).tolist()
        results["forward"] = testing.relative_error(out, expected)
    return results


def group_library() -> dict:
    """The checks of the library's functions (the loop counting last: it retraces)."""
    import jax

    assert jax.device_count() == DEVICES, jax.devices()
    a, mesh = _batch(), _auto_mesh()
    shard_map_results, unsharded = _shard_map_checks(a, mesh)
    return {
        "shard_map": shard_map_results,
        "lyapunov": _lyapunov_checks(mesh),
        "explicit": _explicit_checks(a, unsharded),
        "jit": _plain_jit_checks(a, mesh),
        "convergence": _convergence_checks(mesh),
    }


def _tree_difference(got, expected) -> float:
    """``max |got - expected| / max |expected|`` over all leaves of a pytree."""
    import jax

    pairs = list(zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True))
    scale = max(float(np.max(np.abs(e))) for _, e in pairs)
    return max(float(np.max(np.abs(np.asarray(g) - np.asarray(e)))) for g, e in pairs) / scale


def _step_differences(params, got, expected) -> dict:
    """:func:`_tree_difference` of two train steps' outputs; parameters as their change."""
    import jax

    def change(new):
        return jax.tree.map(lambda n, o: n - o, new, params)

    return {
        "step": _tree_difference(change(got[0]), change(expected[0])),
        "batch_stats": _tree_difference(got[1], expected[1]),
        "opt_state": _tree_difference(got[2], expected[2]),
        "loss": _tree_difference(got[3], expected[3]),
    }


def group_linen() -> dict:
    """One SGD step of a small model: ``shard_map`` over 8 devices vs one device.

    Two ways to take the data-parallel gradient under ``check_vma=True``: ``"pcast"``
    makes per-device copies of the parameters (``lax.pcast(..., to="varying")``, as under
    ``pmap``) and averages their gradients with ``lax.pmean``; ``"pmean_loss"`` keeps
    the parameters replicated and differentiates the ``lax.pmean`` of the loss.

    The same model in both front-ends: the NNX model (``nnx.split``/``nnx.merge`` in a
    functional step) starts from the linen model's variables, so every NNX result is
    compared with the linen model's single-device step. ``"jit/..."``: plain ``jax.jit``
    of the step (no ``axis_name``) with the batch sharded ``P("data")`` on 8 devices.
    """
    import flax.linen as nn
    import jax
    import optax
    from flax import nnx
    from jax import lax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    from jaxsqrtm import nnx as jnnx
    from jaxsqrtm.linen import CovariancePooling, DecorrelatedBatchNorm

    assert jax.device_count() == DEVICES, jax.devices()

    class Net(nn.Module):
        method: str | None = None
        axis_name: str | None = None

        @nn.compact
        def __call__(self, x, train: bool):
            x = nn.Dense(8)(x)
            x = DecorrelatedBatchNorm(
                group_size=4, momentum=0.9, axis_name=self.axis_name, method=self.method
            )(x, use_running_average=not train)
            x = CovariancePooling(epsilon=1e-3, method=self.method)(x)
            return nn.Dense(4)(x)

    rng = np.random.default_rng(5)
    batch, tokens, features = 8 * DEVICES, 16, 16
    mixing = rng.standard_normal((features, features)) + 2 * np.eye(features)
    x = (rng.standard_normal((batch, tokens, features)) @ mixing + 1.0).astype(np.float32)
    labels = rng.integers(0, 4, batch).astype(np.int32)
    optimizer = optax.sgd(0.1, momentum=0.9)

    def train_step(params, stats, opt_state, x, labels, *, model, gradient=None):
        def loss_fn(params):
            logits, updates = model.apply(
                {"params": params, "batch_stats": stats}, x, train=True, mutable=["batch_stats"]
            )
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            if gradient == "pmean_loss":
                loss = lax.pmean(loss, DATA)
            return loss, updates["batch_stats"]

        local = lax.pcast(params, DATA, to="varying") if gradient == "pcast" else params
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(local)
        if gradient == "pcast":
            grads, loss = lax.pmean((grads, loss), DATA)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    class NNXNet(nnx.Module):
        """``Net`` in NNX, its attributes named as linen names ``Net``'s modules."""

        def __init__(self, features, method=None, axis_name=None):
            rngs = nnx.Rngs(0)
            self.Dense_0 = nnx.Linear(features, 8, rngs=rngs)
            self.DecorrelatedBatchNorm_0 = jnnx.DecorrelatedBatchNorm(
                8, group_size=4, momentum=0.9, axis_name=axis_name, method=method, rngs=rngs
            )
            self.CovariancePooling_0 = jnnx.CovariancePooling(8, epsilon=1e-3, method=method)
            self.Dense_1 = nnx.Linear(36, 4, rngs=rngs)

        def __call__(self, x):
            x = self.DecorrelatedBatchNorm_0(self.Dense_0(x))
            return self.Dense_1(self.CovariancePooling_0(x))

    def nnx_train_step(params, stats, opt_state, x, labels, *, graphdef, gradient=None):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, stats, copy=True)
            logits = model(x)
            loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
            if gradient == "pmean_loss":
                loss = lax.pmean(loss, DATA)
            return loss, nnx.state(model, nnx.BatchStat)

        local = lax.pcast(params, DATA, to="varying") if gradient == "pcast" else params
        (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(local)
        if gradient == "pcast":
            grads, loss = lax.pmean((grads, loss), DATA)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_stats, opt_state, loss

    def pure(tree):
        """NNX states in ``tree`` as the nested dicts linen uses."""
        return jax.tree.map(
            lambda s: nnx.to_pure_dict(s) if isinstance(s, nnx.State) else s,
            tree,
            is_leaf=lambda s: isinstance(s, nnx.State),
        )

    mesh = _auto_mesh()
    results = {}
    for method, gradients in ((None, ("pcast", "pmean_loss")), ("mpa", ("pcast",))):
        single = Net(method=method)
        # eval mode: the same variables, without whitening the batch
        variables = jax.jit(functools.partial(single.init, train=False))(jax.random.key(0), x)
        params, stats = variables["params"], variables["batch_stats"]
        opt_state = optimizer.init(params)

        with _recorded(case := results.setdefault(f"{method}/single", {})):
            single_step = jax.jit(functools.partial(train_step, model=single))
            expected = single_step(params, stats, opt_state, x, labels)
            # float32 round-off of the step itself: the same batch in another order
            order = rng.permutation(batch)
            case.update(
                _step_differences(
                    params, single_step(params, stats, opt_state, x[order], labels[order]), expected
                )
            )
            case["largest_step"] = max(
                float(np.max(np.abs(n - o)))
                for n, o in zip(jax.tree.leaves(expected[0]), jax.tree.leaves(params), strict=True)
            )
        for gradient in gradients:
            with _recorded(case := results.setdefault(f"{method}/{gradient}", {})):
                step = functools.partial(
                    train_step, model=Net(method=method, axis_name=DATA), gradient=gradient
                )
                sharded = jax.shard_map(
                    step,
                    mesh=mesh,
                    in_specs=(P(), P(), P(), P(DATA), P(DATA)),
                    out_specs=(P(), P(), P(), P()),
                )
                case.update(
                    _step_differences(
                        params, jax.jit(sharded)(params, stats, opt_state, x, labels), expected
                    )
                )

        # NNX, from the linen model's variables; compared with the linen single step.
        for gradient in ("single", *gradients):
            with _recorded(case := results.setdefault(f"nnx/{method}/{gradient}", {})):
                axis_name = None if gradient == "single" else DATA
                model = NNXNet(features, method=method, axis_name=axis_name)
                jnnx.load_linen_variables(model, variables)
                graphdef, nnx_params, nnx_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
                step = functools.partial(
                    nnx_train_step,
                    graphdef=graphdef,
                    gradient=None if gradient == "single" else gradient,
                )
                if gradient != "single":
                    step = jax.shard_map(
                        step,
                        mesh=mesh,
                        in_specs=(P(), P(), P(), P(DATA), P(DATA)),
                        out_specs=(P(), P(), P(), P()),
                    )
                got = jax.jit(step)(nnx_params, nnx_stats, optimizer.init(nnx_params), x, labels)
                case.update(_step_differences(params, pure(got), expected))

        if method is not None:
            continue
        # Plain jit of the batch sharded over the devices: the compiler's collectives
        # give the statistics of the whole batch.
        sharded_batch = NamedSharding(mesh, P(DATA))
        x_sharded = jax.device_put(x, sharded_batch)
        labels_sharded = jax.device_put(labels, sharded_batch)
        with _recorded(case := results.setdefault("jit/linen", {})):
            got = single_step(params, stats, opt_state, x_sharded, labels_sharded)
            case.update(_step_differences(params, got, expected))
        with _recorded(case := results.setdefault("jit/nnx", {})):
            model = NNXNet(features, method=method)
            jnnx.load_linen_variables(model, variables)
            graphdef, nnx_params, nnx_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
            step = jax.jit(functools.partial(nnx_train_step, graphdef=graphdef))
            got = step(nnx_params, nnx_stats, optimizer.init(nnx_params), x_sharded, labels_sharded)
            case.update(_step_differences(params, pure(got), expected))
    return results


GROUPS = {"library": group_library, "linen": group_linen}
GROUP_PACKAGES = {"linen": ("flax", "optax")}


# --- Tests -----------------------------------------------------------------------------

# Largest relative Frobenius error per matrix, sharded vs unsharded, float32 (16 matrices
# 8 x 8, condition number 30). Measured: 0 (bitwise equal) for every root and gradient
# except the gradients of "mpa" and "mtp" sqrtm, 1.4e-7 and 1.6e-7.
SHARD_MAP_TOL = 1e-6
# solve_lyapunov, same batch size: measured 2.3e-7 (forward), 6.1e-7 (gradient in S),
# 3.7e-7 (gradient in G), 2.5e-7 (jvp of num_iters=None).
LYAPUNOV_TOL = 2e-6


@pytest.mark.parametrize("method", METHODS)
def test_shard_map_matches_unsharded(library, method):
    """``jax.shard_map`` (``check_vma=True``) of ``sqrtm`` and ``inv_sqrtm``: roots and the
    gradients of ``sum(sin(root))`` taken through the ``shard_map`` equal the unsharded
    batch, and the compiled program holds no collective."""
    case = _case(library["shard_map"], method)
    for name, error in case["errors"].items():
        assert error <= SHARD_MAP_TOL, (name, error)
    assert case["collectives"] == [], case["collectives"]


@pytest.mark.parametrize("num_iters", ["8", "None"])
def test_shard_map_solve_lyapunov_matches_unsharded(library, num_iters):
    """``solve_lyapunov`` under ``shard_map``: the solution, its ``jvp`` and its ``grad`` in
    ``S`` and ``G`` (both settings: the derivative is the equation's, not the loop's) equal
    the unsharded batch; no collective."""
    case = _case(library["lyapunov"], num_iters)
    assert sorted(case["errors"]) == ["forward", "grad_g", "grad_s", "jvp"]
    for name, error in case["errors"].items():
        assert error <= LYAPUNOV_TOL, (name, error)
    assert case["collectives"] == [], case["collectives"]


def test_each_device_iterates_until_its_own_matrices_converge(library):
    """Device 0 holds two matrices of condition number 1e6, devices 1-7 two of condition
    number 10 each; ``sqrtm`` (``"auto"``) with ``return_info=True`` under ``shard_map``.

    Counted per device with a ``jax.debug.callback`` in the condition of every
    ``lax.while_loop``: each device evaluates its loop conditions exactly as often as a
    single-device call on its own two matrices (measured: 12 times on device 0, 5 on the
    others), so devices 1-7 stop first; the compiled program has no collective, so no
    loop condition waits for another device. Per-matrix ``info.iterations`` equal the
    unsharded batch's (measured: 12 on device 0, 5 elsewhere).
    """
    results = _case(library, "convergence")
    sharded = {int(k): v for k, v in results["trips_shard_map"].items()}
    alone = {int(k): v for k, v in results["trips_alone"].items()}
    assert sorted(sharded) == list(range(DEVICES)), ("loops counted per device:", sharded)
    assert sharded == alone
    assert all(sum(sharded[d]) < sum(sharded[0]) for d in range(1, DEVICES)), sharded
    assert results["collectives"] == []
    iterations = np.asarray(results["iterations"]).reshape(DEVICES, -1)
    np.testing.assert_array_equal(iterations.ravel(), results["iterations_unsharded"])
    assert iterations[0].min() > iterations[1:].max()
    assert results["forward"] <= SHARD_MAP_TOL


EXPLICIT_SPEC = [DATA, None, None]
# Relative error against the unsharded batch, as above. Measured: "auto" 2.5e-7 (sqrtm),
# 3.3e-7 (inv_sqrtm), 3.6e-7 and 1.1e-6 (their gradients); the others at most 1.6e-7.
EXPLICIT_TOL = 5e-6


@pytest.mark.parametrize("method", METHODS)
def test_explicit_axes_keep_the_input_sharding(library, method):
    """On a mesh with ``AxisType.Explicit`` axes, a batch put with ``P("data")`` gives
    roots and gradients typed (while tracing) and placed ``P("data", None, None)``, equal
    to the unsharded results to float32 round-off."""
    case = _case(library["explicit"], method)
    assert case["input_spec"] == EXPLICIT_SPEC
    for specs in (case["specs"], case["traced_specs"]):
        assert specs == dict.fromkeys(specs, EXPLICIT_SPEC), specs
    assert sorted(case["specs"]) == sorted(case["traced_specs"]) == sorted(case["errors"])
    for name, error in case["errors"].items():
        assert error <= EXPLICIT_TOL, (name, error)


@pytest.mark.parametrize("method", METHODS)
def test_plain_jit_of_a_sharded_batch(library, method):
    """What plain ``jit`` of a batch sharded ``P("data")`` (Auto axes) communicates.

    Measured in the compiled HLO of both roots and their gradients: ``"mpa"``,
    ``"mtp"``, ``"ns"`` and ``"eigh"`` have no collective. ``"auto"`` has scalar
    all-reduces only, none in a loop body. It runs 6 loops here: a forward loop per root,
    and per gradient a forward loop and a backward loop that replays the forward's steps.
    Each forward loop has one ``pred[]`` OR in its condition, the batch-wide "is any
    matrix still iterating", once per iteration, so every device iterates until the
    slowest matrix of the whole batch has converged; the replay loops test only their
    step counter. Outside the loops: whether any matrix needs the ridge's second-order
    term and whether any needs the decomposition (``pred[]`` ORs), and the step count
    each backward replays (``s32[]`` max), which XLA combines into tuple all-reduces.
    Figures: ``python tests/test_distribution.py library``.
    """
    case = _case(library["jit"], method)
    collectives = case["collectives"]
    if method != "auto":
        assert collectives == [], collectives
        return
    for collective in collectives:
        assert collective["kind"] == "all-reduce", collective
        assert _is_scalar(collective["shape"]), collective
        assert collective["where"] != "body", collective
    in_conditions = [c["loop"] for c in collectives if c["where"] == "condition"]
    assert len(case["loops"]) == 6, case["loops"]
    assert set(in_conditions) <= set(case["loops"]), (case["loops"], collectives)
    assert len(set(in_conditions)) == len(in_conditions) == 4, collectives  # forward loops


# A train step's outputs against one device with the full batch, as max |difference| /
# max |single device| over each pytree, the parameters as their change (largest 0.02).
# The single device's own round-off, measured by feeding it the same batch in another
# order, sets the scale: default method 1.4e-6 (step), 6.2e-8 (batch_stats), 7.6e-7
# (optimiser state), 7.7e-8 (loss); "mpa" 1.4e-6, 6.2e-8, 9.7e-7, 7.7e-8. Measured
# sharded: default method 1.4e-6, 6.2e-8, 5.4e-7, 0 (either gradient); "mpa" 2.1e-6,
# 6.2e-8, 1.6e-6, 0. The NNX model gives the same figures (its single-device step is
# bitwise the linen one), and so does plain jit of the batch sharded P("data") in both
# front-ends (1.4e-6, 6.2e-8, 5.2e-7, 0).
LINEN_TOL = {"step": 1e-5, "batch_stats": 5e-7, "opt_state": 1e-5, "loss": 1e-6}


@pytest.mark.linen
@pytest.mark.parametrize(
    "method, gradient", [("None", "pcast"), ("None", "pmean_loss"), ("mpa", "pcast")]
)
def test_linen_layers_in_a_shard_map_train_step(linen, method, gradient):
    """``DecorrelatedBatchNorm`` (``axis_name="data"``) and ``CovariancePooling`` in a full
    ``shard_map`` train step over 8 devices (SGD with momentum, batch 64, 8 per device)
    equal one device with the full batch: parameter update, running statistics,
    optimiser state and loss, to float32 round-off.

    ``gradient="pcast"``: parameters made per-device with ``lax.pcast(..., to="varying")``
    and gradients averaged with ``lax.pmean``, as under ``pmap``. ``"pmean_loss"``:
    replicated parameters and the gradient of ``lax.pmean(loss)``. (With replicated
    parameters, the gradient of the per-device loss is already summed over devices, so
    ``lax.pmean`` of it would be 8 times the full-batch gradient.)
    """
    single = _case(linen, f"{method}/single")
    assert single["largest_step"] > 1e-3  # the step does something
    case = _case(linen, f"{method}/{gradient}")
    for name, tol in LINEN_TOL.items():
        assert case[name] <= tol, (name, case[name], "single-device reorder:", single[name])


@pytest.mark.linen
@pytest.mark.parametrize(
    "method, gradient",
    [
        ("None", "single"),
        ("None", "pcast"),
        ("None", "pmean_loss"),
        ("mpa", "single"),
        ("mpa", "pcast"),
    ],
)
def test_nnx_layers_in_a_shard_map_train_step(linen, method, gradient):
    """The same train step with the ``jaxsqrtm.nnx`` layers (``nnx.split``/``nnx.merge``
    in a functional step, started from the linen model's variables): on one device
    (``"single"``) it equals the linen step, and under ``shard_map`` over 8 devices the
    full-batch linen step, to float32 round-off."""
    case = _case(linen, f"nnx/{method}/{gradient}")
    for name, tol in LINEN_TOL.items():
        assert case[name] <= tol, (name, case[name])


@pytest.mark.linen
@pytest.mark.parametrize("frontend", ["linen", "nnx"])
def test_layers_under_plain_jit_of_a_sharded_batch(linen, frontend):
    """Plain ``jax.jit`` of the train step (layers without ``axis_name``) with the batch
    sharded ``P("data")`` over 8 devices: the compiler's collectives give the statistics
    of the whole batch, so the step equals one device with the full batch."""
    case = _case(linen, f"jit/{frontend}")
    for name, tol in LINEN_TOL.items():
        assert case[name] <= tol, (name, case[name])


def test_hlo_collectives_parser():
    """The HLO reader finds collectives in a loop condition, a body (through a called
    computation) and the entry, skips ``-done`` halves, and counts the loops."""
    hlo = "\n".join(
        [
            "%cond (p: (s32[])) -> pred[] {",
            "  %a = pred[] all-reduce(%x), to_apply=%or",
            "}",
            "%body (p: (s32[])) -> (s32[]) {",
            "  %f = f32[2] fusion(%y), calls=%inner",
            "}",
            "%inner (q: f32[2]) -> f32[2] {",
            "  %g = f32[16]{0} all-gather(%q), dimensions={0}",
            "}",
            "ENTRY %main (x: f32[2]) -> f32[2] {",
            "  %w = (s32[]) while(%t), condition=%cond, body=%body",
            "  %s = (s32[], pred[]) all-reduce-start(%z, %v), to_apply=%max",
            "  %d = s32[] all-reduce-done(%s)",
            "}",
        ]
    )
    assert hlo_collectives(hlo) == [
        {"kind": "all-reduce", "shape": "pred[]", "where": "condition", "loop": "cond"},
        {"kind": "all-gather", "shape": "f32[16]{0}", "where": "body", "loop": "body"},
        {"kind": "all-reduce", "shape": "(s32[], pred[])", "where": "outside", "loop": None},
    ]
    assert hlo_loops(hlo) == ["cond"]
    assert [_is_scalar(c["shape"]) for c in hlo_collectives(hlo)] == [True, False, True]


if __name__ == "__main__":
    print(RESULT_PREFIX + json.dumps(GROUPS[sys.argv[1]]()))
