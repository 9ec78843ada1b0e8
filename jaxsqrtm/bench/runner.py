"""Run the benchmark: time every case of every shape group and measure its error.

:func:`run_benchmark` returns plain data (dicts, lists, floats) ready for JSON: the
device and versions, the settings, one record per batched product measured, one row per
(shape, function, method, dtype) and a summary of the targets.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm.bench import (
    blas,
    cases,
    distances,
    memory,
    polar,
    powers,
    precision,
    report,
    timing,
    workloads,
)


def run_benchmark(settings: workloads.Settings, *, progress: bool = True) -> dict:
    """Run every workload of ``settings`` and return all figures.

    Args:
        settings: what to measure (:class:`jaxsqrtm.bench.workloads.Settings`).
        progress: show a progress bar on stderr (needs ``tqdm``; silently off without).

    Returns:
        A JSON-ready dict with keys ``created``, ``device``, ``versions``,
        ``environment`` (thread variables, BLAS libraries and their thread counts at the
        end of the run, load averages), ``settings``, ``products`` (one
        batched product per shape), ``rows``, ``summary``, ``distances``
        (:func:`jaxsqrtm.bench.distances.run`'s figures, ``None`` when that workload is
        not selected), ``powers`` (:func:`jaxsqrtm.bench.powers.run`'s, likewise),
        ``polar`` (:func:`jaxsqrtm.bench.polar.run`'s, likewise), ``precision``
        (:func:`jaxsqrtm.bench.precision.run`'s, likewise) and ``elapsed_s``.
    """
    start = time.perf_counter()
    load_before = load_average()
    methods = cases.available_methods(settings.methods)
    settings = dataclasses.replace(settings, methods=methods)
    plan = workloads.plan_groups(settings)
    with_distances = "distances" in settings.workloads
    with_powers = "powers" in settings.workloads
    with_polar = "polar" in settings.workloads
    with_precision = "precision" in settings.workloads
    total = sum(steps(group, settings) for group in plan)
    total += distances.steps(settings) if with_distances else 0
    total += polar.steps(settings) if with_polar else 0
    total += precision.steps(settings) if with_precision else 0
    bar = progress_bar(total + (powers.steps(settings) if with_powers else 0), progress)
    products, rows, distance_figures, power_figures, polar_figures = [], [], None, None, None
    precision_figures = None
    try:
        for group in plan:
            bar.set_description(f"{group.batch}x{group.n}x{group.n}")
            group_products, group_rows = run_group(group, settings, bar)
            products += group_products
            rows += group_rows
        if with_distances:
            distance_figures = distances.run(settings, bar)
        if with_powers:
            power_figures = powers.run(settings, bar)
        if with_polar:
            polar_figures = polar.run(settings, bar)
        if with_precision:
            precision_figures = precision.run(settings, bar)
    finally:
        bar.close()
    return {
        "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": versions(),
        "environment": {
            "threads": thread_settings(),
            "blas": blas.libraries(),
            "load_average_before": load_before,
            "load_average_after": load_average(),
        },
        "settings": dataclasses.asdict(settings),
        "products": products,
        "rows": rows,
        "summary": report.summary(rows),
        "distances": distance_figures,
        "powers": power_figures,
        "polar": polar_figures,
        "precision": precision_figures,
        "elapsed_s": time.perf_counter() - start,
    }


def steps(group: workloads.Group, settings: workloads.Settings) -> int:
    """Progress steps of one group: a compilation and ``repeats`` samples per case."""
    specs = cases.case_specs(settings.functions, settings.methods, group.dtypes)
    chains = {cases.compute_dtype(d) for d in group.dtypes}
    per_dtype = len(cases.chain_lengths(group.batch, group.n))
    return (len(specs) + len(chains) * per_dtype) * (1 + settings.repeats)


def run_group(group: workloads.Group, settings: workloads.Settings, bar) -> tuple[list, list]:
    """Compile, time (interleaved) and check every case of one shape group."""
    a64 = workloads.input_matrices(group, settings)
    g64 = workloads.cotangent(group, settings)
    inputs = {d: (jnp.asarray(a64, d), jnp.asarray(g64, d)) for d in group.dtypes}
    chains = compile_chains(group, settings, a64, bar)
    specs = cases.case_specs(settings.functions, settings.methods, group.dtypes)
    timed = compile_cases(specs, inputs, bar)
    measure([*(c for pair in chains.values() for c in pair), *timed.values()], settings, bar)

    lengths = cases.chain_lengths(group.batch, group.n)
    product_s = {dtype: product_statistics(*pair, lengths) for dtype, pair in chains.items()}
    products = [
        {"batch": group.batch, "n": group.n, "dtype": str(dtype), **stats}
        for dtype, stats in product_s.items()
    ]
    rows = [make_row(group, key, modes, product_s, inputs) for key, modes in by_root(timed).items()]
    return products, rows


def compile_chains(group: workloads.Group, settings: workloads.Settings, a64, bar) -> dict:
    """``{compute dtype: [short chain, long chain]}``: the product chains, compiled."""
    chains = {}
    for dtype in dict.fromkeys(cases.compute_dtype(d) for d in group.dtypes):
        right = workloads.product_operand(group, settings)
        operands = (jnp.asarray(a64, dtype), jnp.asarray(right, dtype))
        chains[dtype] = []
        for length in cases.chain_lengths(group.batch, group.n):
            chain = functools.partial(cases.product_chain, length=length)
            chains[dtype].append(timing.compile_timed(chain, operands))
            bar.update(1)
    return chains


def compile_cases(specs: list[cases.CaseSpec], inputs: dict, bar=None) -> dict:
    """``{spec: Timed}``: every case compiled for its inputs.

    Args:
        specs: the cases (:func:`jaxsqrtm.bench.cases.case_specs`).
        inputs: ``{dtype: (matrices, cotangent)}``, arrays of that dtype.
        bar: a progress bar, advanced once per case.
    """
    bar = _NoProgress() if bar is None else bar
    timed = {}
    for spec in specs:
        a, g = inputs[spec.dtype]
        args = (a,) if spec.mode == "forward" else (a, g)
        timed[spec] = timing.compile_timed(cases.case_function(spec), args)
        bar.update(1)
    return timed


def measure(items: list[timing.Timed], settings: workloads.Settings, bar=None) -> None:
    """Warm up every item, then time them in interleaved rounds (``settings``' knobs).

    Args:
        items: compiled cases; their samples are appended in place.
        settings: ``warmup``, ``min_sample_s``, ``repeats``, ``min_repeats`` and
            ``max_case_s`` are used.
        bar: a progress bar, advanced once per sample (and for the samples skipped).
    """
    bar = _NoProgress() if bar is None else bar
    for item in items:
        timing.warm_up(item, settings.warmup, settings.min_sample_s)
    timing.measure_interleaved(
        items,
        repeats=settings.repeats,
        min_repeats=settings.min_repeats,
        max_case_s=settings.max_case_s,
        on_sample=lambda: bar.update(1),
    )
    bar.update(sum(settings.repeats - len(item.samples) for item in items))


def by_root(timed: dict) -> dict:
    """``{(function, method, dtype): {mode: Timed}}``, in case order."""
    grouped: dict = {}
    for spec, item in timed.items():
        grouped.setdefault((spec.function, spec.method, spec.dtype), {})[spec.mode] = item
    return grouped


def product_statistics(short: timing.Timed, long: timing.Timed, lengths: tuple) -> dict:
    """Time of one batched product: the two chains' per-round difference per extra product.

    The chains are timed in the same rounds, so round ``i`` of each forms a pair. ``best_s``
    is the difference of the fastest samples. Where noise makes the difference useless
    (not positive), the long chain's time per product stands in.
    """
    extra = lengths[1] - lengths[0]
    pairs = min(len(short.samples), len(long.samples))
    per_round = (np.subtract(long.samples[:pairs], short.samples[:pairs])) / extra
    best = (min(long.samples) - min(short.samples)) / extra
    stats = timing.summarize(per_round)
    if stats["median_s"] <= 0 or best <= 0:
        per_round = np.asarray(long.samples) / lengths[1]
        stats, best = timing.summarize(per_round), float(per_round.min())
    return {
        **stats,
        "best_s": best,
        "chain_lengths": list(lengths),
        "call_overhead_s": float(np.median(short.samples)) - stats["median_s"],
        "compile_s": long.compile_s,
    }


def make_row(group, key, modes, product_s, inputs) -> dict:
    """One table row: timings per mode with their roofline ratio and memory, and the errors.

    Every mode records the compiled program's memory (``memory``: temp, argument, output
    bytes, ...); forward+backward also the bytes of the residuals ``jax.vjp`` keeps
    (``residual_bytes``).
    """
    function, method, dtype = key
    product = product_s[cases.compute_dtype(dtype)]
    row = {
        "workloads": [{"kind": w.kind, "label": w.label} for w in group.workloads],
        "batch": group.batch,
        "n": group.n,
        "shape": [group.batch, group.n, group.n],
        "source": group.source,
        "function": function,
        "method": method,
        "dtype": dtype,
        "product_s": product["median_s"],
        "product_best_s": product["best_s"],
    }
    for mode in cases.MODES:
        item = modes.get(mode)
        if item is None:
            row[mode] = None
            continue
        stats = timing.statistics(item)
        count = cases.matmuls(cases.CaseSpec(function, method, mode, dtype))
        row[mode] = {
            **stats,
            "matmuls": count,
            "roofline": stats["median_s"] / (count * product["median_s"]) if count else None,
            "roofline_best": stats["min_s"] / (count * product["best_s"]) if count else None,
            "memory": memory.compiled_memory(item.compiled),
        }
    if row["forward_backward"] is not None:
        root = cases.root_function(function, method)
        row["forward_backward"]["residual_bytes"] = memory.residual_bytes(root, inputs[dtype][0])
    row["error"] = errors(function, modes, *inputs[dtype])
    return row


def errors(function: str, modes: dict, a, g) -> dict:
    """Relative Frobenius errors (largest over the batch) against the float64 oracles.

    The outputs checked are those of the cases' last warm-up calls.

    The reference is that of the input as the method received it (after rounding to its
    dtype), so the figures measure the method, not the input's rounding.
    """
    inverse = function == "inv_sqrtm"
    a64 = np.asarray(a).astype(np.float64)
    g64 = np.asarray(g).astype(np.float64)
    root = modes["forward"].output
    result = {
        "forward": testing.relative_error(root, testing.sqrtm_reference(a64, inverse=inverse)),
        "gradient": None,
    }
    if "forward_backward" in modes:
        _, grad = modes["forward_backward"].output
        reference = testing.sqrtm_vjp_reference(a64, g64, inverse=inverse)
        result["gradient"] = testing.relative_error(grad, reference)
    return result


def device_info() -> dict:
    """The device the benchmark ran on, and the host CPU."""
    device = jax.devices()[0]
    return {
        "platform": device.platform,
        "device_kind": device.device_kind,
        "device_count": jax.device_count(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
    }


def cpu_model() -> str:
    """The CPU's model name from ``/proc/cpuinfo`` where there is one."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "XLA_FLAGS")


def thread_settings() -> dict:
    """Environment variables that change how many threads XLA and LAPACK use."""
    return {name: os.environ.get(name) for name in THREAD_VARIABLES}


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, where the platform has them.

    Other work on the machine inflates and spreads the timings.
    """
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def versions() -> dict:
    """Versions of everything that shapes the figures."""
    import jaxlib

    return {
        "jaxsqrtm": jaxsqrtm.__version__,
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
    }


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(total: int, enabled: bool):
    """A ``tqdm`` bar on stderr, or a silent stand-in when disabled or not installed."""
    if not enabled:
        return _NoProgress()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoProgress()
    return tqdm(total=total, unit="step", file=sys.stderr, dynamic_ncols=True)
