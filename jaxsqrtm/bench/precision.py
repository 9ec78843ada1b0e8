"""The ``precision`` workload: the accurate modes at each product precision, side by side.

For each ``batch x n x n`` shape of ``precision_shapes`` (64 x 64 x 64 and
1 x 1024 x 1024 by default, the shapes of its speed target) and each function of
``functions``, :func:`jaxsqrtm.polar` and :func:`jaxsqrtm.fractional_matrix_power` at
``t = -1/4`` (``"power"``), the default method ``"auto"`` runs at every precision of
``precisions`` (``--precision``; "highest" and "mixed" by default) on float32 matrices
of the run's spectrum and condition number (SPD for the roots and the power, square with
those singular values for the polar factor). Each row has:

* the forward and forward+backward times on the running device (medians of
  interleaved repeats, compile time excluded) and their ratio to ``"highest"``'s;
* the relative Frobenius errors of the root and of the gradient against the float64
  references, largest over the batch;
* the products per matrix by precision kind, forward+backward, from the call's
  :attr:`jaxsqrtm.RootInfo.products` (:attr:`jaxsqrtm.PolarInfo.products`,
  :attr:`jaxsqrtm.PowerInfo.products`; the largest over the batch, which is what a
  batched product does), their bfloat16 share, and the cost model's speed-up over
  ``"highest"`` on an H100 (:mod:`jaxsqrtm.bench.cost_model`): an estimate.

On a CPU the measured ratio says nothing about accelerators: XLA's CPU products have no
fast bfloat16 path. The speed target, ``"mixed"`` at least :data:`SPEEDUP_TARGET` times
faster than ``"highest"`` forward+backward at both target shapes, is checked on the
estimate, and on the measurement too when the device is a GPU.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm._core import summed_products
from jaxsqrtm.bench import cases, cost_model, timing

PRECISIONS = ("highest", "high", "default", "mixed")
SPEEDUP_TARGET = 3.0
MODES = ("forward", "forward_backward")


def functions_of(settings) -> tuple[str, ...]:
    """The run's root functions, the polar factor and ``A^(-1/4)``."""
    return (*settings.functions, POLAR, POWER)


def steps(settings) -> int:
    """Progress steps: per case, a compilation and ``repeats`` samples."""
    per_shape = len(functions_of(settings)) * len(settings.precisions) * len(MODES)
    return len(settings.precision_shapes) * per_shape * (1 + settings.repeats)


POLAR = "polar"
POWER = "power"
POWER_EXPONENT = -1 / 4
"""The exponent of the ``power`` rows: Shampoo's for a matrix's two statistics."""


def _power(a, **kwargs):
    return jaxsqrtm.fractional_matrix_power(a, POWER_EXPONENT, **kwargs)


def _auto(function: str):
    """``"auto"`` of ``function``: a root of :data:`jaxsqrtm.bench.cases.FUNCTIONS`, the
    polar factor or the fractional power ``A^(-1/4)``."""
    if function == POLAR:
        return jaxsqrtm.polar
    if function == POWER:
        return _power
    return cases.root_function(function, "auto")


def case_function(function: str, precision: str, mode: str):
    """``a -> root`` or ``(a, g) -> (root, dl/da)`` of ``"auto"`` at ``precision``."""
    root = _auto(function)

    def at_precision(a):
        return root(a, precision=precision)

    return at_precision if mode == "forward" else cases.value_and_gradient(at_precision)


def case_input(function: str, n: int, batch: int, settings):
    """float64 ``(batch, n, n)`` input of ``function`` at the run's spectrum and condition
    number: SPD for a root or power, a square matrix with that spectrum as singular values
    for the polar factor."""
    if function == POLAR:
        return testing.rectangular_matrix(
            n, n, settings.kappa, kind=settings.spectrum, batch=(batch,), seed=settings.seed
        )
    return testing.spd_matrix(
        n, settings.kappa, kind=settings.spectrum, batch=(batch,), seed=settings.seed
    )


def references(function: str, a64, g64):
    """float64 value and gradient (vector-Jacobian product with ``g64``) of ``function``."""
    if function == POLAR:
        # the polar factor's derivative is self-adjoint: the same map gives the gradient
        return testing.polar_reference(a64), testing.polar_derivative_reference(a64, g64)
    if function == POWER:
        return (
            testing.power_reference(a64, POWER_EXPONENT),
            testing.power_vjp_reference(a64, g64, POWER_EXPONENT),
        )
    inverse = function == "inv_sqrtm"
    return (
        testing.sqrtm_reference(a64, inverse=inverse),
        testing.sqrtm_vjp_reference(a64, g64, inverse=inverse),
    )


def product_counts(function: str, precision: str, a) -> dict:
    """Forward+backward products per matrix by kind, the largest over the batch."""
    root = _auto(function)
    _, info = jax.jit(lambda x: root(x, precision=precision, return_info=True))(a)
    counts = summed_products(info.products, backward=True)
    return {kind: int(np.max(count)) for kind, count in counts.items()}


def run(settings, bar) -> dict:
    """Every shape, function and precision timed, checked and counted.

    Args:
        settings: :class:`jaxsqrtm.bench.workloads.Settings` (``precision_shapes``,
            ``precisions``, ``functions``, ``kappa``, ``spectrum``, the timing knobs,
            ``seed``).
        bar: a progress bar, advanced once per compilation and per sample.

    Returns:
        ``{"platform", "kappa", "spectrum", "throughput", "rows", "summary"}``.
    """
    rows = []
    functions = functions_of(settings)
    for batch, n in settings.precision_shapes:
        inputs = {}
        timed = {}
        for function in functions:
            a64 = case_input(function, n, batch, settings)
            g64 = np.random.default_rng(settings.seed + 1).standard_normal(a64.shape)
            a, g = jnp.asarray(a64, jnp.float32), jnp.asarray(g64, jnp.float32)
            inputs[function] = a, g
            for precision in settings.precisions:
                for mode in MODES:
                    bar.set_description(f"precision {function} {batch}x{n}x{n} {precision}")
                    args = (a,) if mode == "forward" else (a, g)
                    fn = case_function(function, precision, mode)
                    timed[function, precision, mode] = timing.compile_timed(fn, args)
                    bar.update(1)
        for item in timed.values():
            timing.warm_up(item, settings.warmup, settings.min_sample_s)
        timing.measure_with_progress(list(timed.values()), settings, bar)
        for function in functions:
            for precision in settings.precisions:
                modes = {mode: timed[function, precision, mode] for mode in MODES}
                rows.append(make_row(batch, n, function, precision, modes, *inputs[function]))
    add_ratios(rows)
    return {
        "platform": jax.default_backend(),
        "kappa": settings.kappa,
        "spectrum": settings.spectrum,
        "throughput": cost_model.H100,
        "rows": rows,
        "summary": summary(rows, settings.precision_shapes),
    }


def make_row(batch, n, function, precision, modes, a, g) -> dict:
    """One shape, function and precision: times, errors, products and their share."""
    a64, g64 = np.asarray(a, np.float64), np.asarray(g, np.float64)
    root = modes["forward"].output
    _, grad = modes["forward_backward"].output
    reference, reference_grad = references(function, a64, g64)
    products = product_counts(function, precision, a)
    return {
        "shape": [batch, n, n],
        "function": function,
        "precision": precision,
        **{mode: timing.statistics(item) for mode, item in modes.items()},
        "error": {
            "forward": testing.relative_error(root, reference),
            "gradient": testing.relative_error(grad, reference_grad),
        },
        "finite": bool(np.all(np.isfinite(root)) and np.all(np.isfinite(grad))),
        "products": products,
        "bfloat16_share": cost_model.share(products),
        "model_s": cost_model.product_seconds(products, n=n, batch=batch),
    }


def add_ratios(rows: list[dict]) -> None:
    """Each row's speed-up over ``"highest"`` on the same shape and function: measured
    (forward+backward medians) and estimated (cost model); ``None`` without a
    ``"highest"`` row."""
    baseline = {(tuple(r["shape"]), r["function"]): r for r in rows if r["precision"] == "highest"}
    for row in rows:
        base = baseline.get((tuple(row["shape"]), row["function"]))
        if base is None:
            row["measured_speedup"] = row["estimated_speedup"] = None
            continue
        row["measured_speedup"] = (
            base["forward_backward"]["median_s"] / row["forward_backward"]["median_s"]
        )
        row["estimated_speedup"] = cost_model.speedup(base["products"], row["products"])


def summary(rows: list[dict], shapes) -> dict:
    """The speed target: ``"mixed"`` at least :data:`SPEEDUP_TARGET` times ``"highest"``
    forward+backward at every shape, per function, on the estimate (and measured)."""
    entries = []
    for row in rows:
        if row["precision"] != "mixed" or row["estimated_speedup"] is None:
            continue
        entries.append(
            {
                "shape": row["shape"],
                "function": row["function"],
                "estimated": row["estimated_speedup"],
                "measured": row["measured_speedup"],
                "share": row["bfloat16_share"],
                "met": bool(row["estimated_speedup"] >= SPEEDUP_TARGET),
            }
        )
    return {
        "target": SPEEDUP_TARGET,
        "shapes": [list(s) for s in shapes],
        "break_even_share": cost_model.break_even_share(),
        "entries": entries,
    }
