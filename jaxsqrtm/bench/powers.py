"""The ``powers`` workload: inverse ``p``-th roots ``A^(-1/p)`` of statistics, side by side.

One ``(B, n, n)`` float32 batch of SPD matrices with a Marchenko–Pastur spectrum (that of
a sample covariance, as Shampoo's statistics are) of condition number ``power_kappa``.
For each ``p`` of ``power_exponents`` one run times and checks:

* ``jaxsqrtm.fractional_matrix_power(A, -1/p)`` (``"auto"``), one batched call;
* float32 ``eigh``, ``V diag(l^(-1/p)) V^T`` (``jnp.linalg.eigh``, batched);
* ``optax.matrix_inverse_pth_root(A, p)`` under ``jax.vmap`` (a batched array raises in
  optax 0.2.8; ``vmap`` works), with ``ridge_epsilon=0`` so that it computes the same
  root as the others, when optax is installed;

and once, as the unit of the cost target at ``p = 4``, ``jaxsqrtm.inv_sqrtm(A)``, and the
float64 ``eigh`` of the same input (that is also the reference). Errors are relative
Frobenius errors against float64 ``eigh`` of the float32-rounded input, the largest over
the batch; times are medians of interleaved repeats, compile time excluded.

The cost target: ``fractional_matrix_power(A, -1/4)`` at most :data:`COST_TARGET` times
``inv_sqrtm(A)`` (``summary["cost"]``); the documented target size is
``(B, 1024, 1024)`` (``--power-n 1024``).
"""

from __future__ import annotations

import dataclasses
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm.bench import distances, timing

COST_TARGET = 2.0
COST_EXPONENT = 4
HIGHEST = lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Column:
    """One method: ``name`` (JSON key), ``label`` (tables), ``dtype``, and whether it is
    computed per exponent (``per_p``) or once."""

    name: str
    label: str
    dtype: str = "float32"
    per_p: bool = True


COLUMNS = (
    Column("jaxsqrtm", "jaxsqrtm.fractional_matrix_power"),
    Column("eigh_float32", "eigh float32"),
    Column("optax", "optax.matrix_inverse_pth_root (vmap)"),
    Column("inv_sqrtm", "jaxsqrtm.inv_sqrtm", per_p=False),
    Column("eigh_float64", "eigh float64", dtype="float64", per_p=False),
)


def has_optax() -> bool:
    """Whether optax is installed (its column is left out otherwise)."""
    return importlib.util.find_spec("optax") is not None


def available_columns() -> tuple[Column, ...]:
    """:data:`COLUMNS`, less optax's where it is not installed."""
    return tuple(c for c in COLUMNS if c.name != "optax" or has_optax())


def eigh_power(a, t):
    """``V diag(l^t) V^T`` by ``jnp.linalg.eigh``; eigenvalues clamped at 0."""
    w, v = jnp.linalg.eigh(a)
    f = jnp.where(w > 0, jnp.where(w > 0, w, 1) ** t, 0)
    return jnp.matmul(v * f[..., None, :], jnp.swapaxes(v, -1, -2), precision=HIGHEST)


def function(column: Column, p: int | None):
    """The batched function of one column (``p`` for the per-exponent columns)."""
    if column.name == "jaxsqrtm":
        return lambda a: jaxsqrtm.fractional_matrix_power(a, -1 / p)
    if column.name == "eigh_float32":
        return lambda a: eigh_power(a, -1 / p)
    if column.name == "optax":
        import optax

        def one(a):
            return optax.matrix_inverse_pth_root(a, p, ridge_epsilon=0.0, precision=HIGHEST)[0]

        return jax.vmap(one)
    if column.name == "inv_sqrtm":
        return jaxsqrtm.inv_sqrtm
    if column.name == "eigh_float64":
        return lambda a: eigh_power(a, -0.5)
    raise ValueError(f"unknown column {column.name!r}")


def input_matrices(settings) -> np.ndarray:
    """The ``(power_batch, power_n, power_n)`` float64 statistics of the workload."""
    return testing.spd_matrix(
        settings.power_n,
        settings.power_kappa,
        kind="marchenko_pastur",
        batch=(settings.power_batch,),
        seed=settings.seed,
    )


def cases(settings, columns) -> list[tuple[Column, int | None]]:
    """Every (column, p) timed: the per-exponent columns for each ``p``, the others once."""
    found = [(c, p) for p in settings.power_exponents for c in columns if c.per_p]
    return found + [(c, None) for c in columns if not c.per_p]


def steps(settings) -> int:
    """Progress steps: per case, a compilation and ``repeats`` samples."""
    return len(cases(settings, available_columns())) * (1 + settings.repeats)


def run(settings, bar) -> dict:
    """Every column of the workload timed and checked.

    Args:
        settings: :class:`jaxsqrtm.bench.workloads.Settings` (``power_batch``,
            ``power_n``, ``power_kappa``, ``power_exponents``, the timing knobs, ``seed``).
        bar: a progress bar, advanced once per compilation and per sample.

    Returns:
        ``{"shape", "kappa", "rows", "summary"}``: one row per column and exponent (its
        ``error`` and time statistics) and the cost target.
    """
    a64 = input_matrices(settings)
    a32 = a64.astype(np.float32)
    timed = {}
    for column, p in cases(settings, available_columns()):
        bar.set_description(f"powers {column.name}" + ("" if p is None else f" p={p}"))
        with distances.x64(column.dtype == "float64"):
            args = (jnp.asarray(a32, column.dtype),)
            timed[column, p] = timing.compile_timed(function(column, p), args)
        bar.update(1)
    for item in timed.values():
        distances.warm_up(item, settings.warmup, settings.min_sample_s)
    timing.measure_with_progress(list(timed.values()), settings, bar)
    rows = [make_row(column, p, item, a32) for (column, p), item in timed.items()]
    return {
        "shape": list(a32.shape),
        "kappa": settings.power_kappa,
        "rows": rows,
        "summary": summary(rows),
    }


def make_row(column: Column, p: int | None, item: timing.Timed, a32: np.ndarray) -> dict:
    """One column and exponent: the error against float64 ``eigh`` and the time."""
    t = -0.5 if p is None else -1 / p
    output = np.asarray(item.output, np.float64)
    return {
        "method": column.name,
        "label": column.label,
        "dtype": column.dtype,
        "p": 2 if p is None else p,
        "error": testing.relative_error(output, testing.power_reference(a32, t)),
        "finite": bool(np.all(np.isfinite(output))),
        **timing.statistics(item),
    }


def summary(rows: list[dict]) -> dict:
    """The cost target: ``fractional_matrix_power(A, -1/4)``'s median over ``inv_sqrtm``'s."""
    by_key = {(r["method"], r["p"]): r for r in rows}
    ours = by_key.get(("jaxsqrtm", COST_EXPONENT))
    unit = by_key.get(("inv_sqrtm", 2))
    ratio = None if ours is None or unit is None else ours["median_s"] / unit["median_s"]
    return {
        "cost_target": COST_TARGET,
        "cost_exponent": COST_EXPONENT,
        "cost_ratio": ratio,
        "met": None if ratio is None else bool(ratio <= COST_TARGET),
    }
