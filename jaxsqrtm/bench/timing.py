"""Compile, warm up and time compiled functions, interleaving the repeats of many cases.

Timing one case after another lets a change of machine load (another process, clock
boost, thermal throttling) bias the comparison; here every round times each case once,
in a rotated order, and the statistics are taken over the rounds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

MAX_INNER_CALLS = 64
TIME_KEYS = ("median_s", "q25_s", "q75_s", "min_s", "max_s")


@dataclasses.dataclass
class Timed:
    """A compiled function, its arguments and the samples gathered so far.

    ``samples`` are seconds per call; each sample averages ``inner`` blocking calls.
    ``output`` is the result of the last warm-up call.
    """

    compiled: Any
    args: tuple
    compile_s: float
    inner: int = 1
    samples: list[float] = dataclasses.field(default_factory=list)
    output: Any = None

    @property
    def spent_s(self) -> float:
        return sum(self.samples) * self.inner


def compile_timed(fn: Callable, args: tuple) -> Timed:
    """Trace, lower and compile ``fn`` for ``args``; the wall time is ``compile_s``.

    JAX's in-memory caches are cleared first, so every case pays its full tracing cost
    (as on a first call) rather than reusing traces left by an earlier shape or case.
    """
    jax.clear_caches()
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return Timed(compiled, args, time.perf_counter() - start)


def seconds_per_call(timed: Timed, calls: int) -> float:
    """Mean wall time of ``calls`` calls, each waited for with ``jax.block_until_ready``."""
    start = time.perf_counter()
    for _ in range(calls):
        jax.block_until_ready(timed.compiled(*timed.args))
    return (time.perf_counter() - start) / calls


def warm_up(timed: Timed, calls: int, min_sample_s: float) -> None:
    """Run ``calls`` untimed calls, then choose ``inner`` so a sample lasts ``min_sample_s``.

    ``inner`` comes from timed batches of calls after the warm-up, growing fourfold until
    a batch lasts a fifth of ``min_sample_s``: the first calls after compilation
    (allocation, cold caches) can take several times as long as the rest, and a call of
    0.1 ms timed on its own is mostly scheduler noise.
    """
    for _ in range(calls):
        timed.output = jax.block_until_ready(timed.compiled(*timed.args))
    batch = 1
    while True:
        per_call = seconds_per_call(timed, batch)
        if batch >= MAX_INNER_CALLS or per_call * batch >= 0.2 * min_sample_s:
            break
        batch = min(4 * batch, MAX_INNER_CALLS)
    timed.inner = int(min(MAX_INNER_CALLS, max(1, math.ceil(min_sample_s / max(per_call, 1e-9)))))


def wants_sample(timed: Timed, repeats: int, min_repeats: int, max_case_s: float) -> bool:
    """Whether ``timed`` needs another sample: ``repeats`` in all, ``min_repeats`` if slow."""
    if len(timed.samples) >= repeats:
        return False
    return len(timed.samples) < min_repeats or timed.spent_s < max_case_s


def measure_interleaved(
    cases: list[Timed],
    *,
    repeats: int,
    min_repeats: int,
    max_case_s: float,
    on_sample: Callable[[], None] = lambda: None,
) -> None:
    """Append samples to every case, one per case per round, rotating the order.

    A case stops early, after ``min_repeats`` samples, once it has spent ``max_case_s``.
    """
    for round_index in range(repeats):
        shift = round_index % max(len(cases), 1)
        for timed in cases[shift:] + cases[:shift]:
            if wants_sample(timed, repeats, min_repeats, max_case_s):
                timed.samples.append(seconds_per_call(timed, timed.inner))
                on_sample()


def measure_with_progress(cases: list[Timed], settings, bar) -> None:
    """:func:`measure_interleaved` with the sweep's ``repeats``, ``min_repeats`` and
    ``max_case_s``, ticking ``bar`` once per sample and once per sample a case skipped."""
    measure_interleaved(
        cases,
        repeats=settings.repeats,
        min_repeats=settings.min_repeats,
        max_case_s=settings.max_case_s,
        on_sample=lambda: bar.update(1),
    )
    bar.update(sum(settings.repeats - len(timed.samples) for timed in cases))


def summarize(samples) -> dict:
    """Median, quartiles, extremes and count of ``samples`` (seconds)."""
    samples = np.asarray(samples, dtype=np.float64)
    q25, median, q75 = np.percentile(samples, [25, 50, 75])
    return {
        "median_s": float(median),
        "q25_s": float(q25),
        "q75_s": float(q75),
        "min_s": float(samples.min()),
        "max_s": float(samples.max()),
        "repeats": len(samples),
    }


def statistics(timed: Timed) -> dict:
    """:func:`summarize` of the samples, with the calls per sample and the compile time."""
    return {
        **summarize(timed.samples),
        "calls_per_repeat": timed.inner,
        "compile_s": timed.compile_s,
    }
