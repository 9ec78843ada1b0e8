"""PNG figures in the style of the paper's numerical tests (needs matplotlib).

Three figures, each a grid with one row per function (``sqrtm``, ``inv_sqrtm``) and one
line per method: time against batch size, time against matrix size (forward and
forward+backward, medians with an interquartile bar) and relative error against matrix
size (forward and gradient). float32 inputs only.
"""

from __future__ import annotations

import math
import pathlib

from jaxsqrtm.bench.report import label_of


def _time(mode: str):
    def value(row):
        timing = row.get(mode)
        if timing is None:
            return None
        return tuple(1e3 * timing[key] for key in ("median_s", "q25_s", "q75_s"))

    return value


def _error(which: str):
    def value(row):
        error = row["error"][which]
        if not isinstance(error, float) or not math.isfinite(error) or error <= 0:
            return None
        return error, error, error

    return value


FIGURES = (
    (
        "time_vs_batch.png",
        "batch",
        "batch",
        "batch size",
        "time (ms)",
        (("forward", _time("forward")), ("forward+backward", _time("forward_backward"))),
    ),
    (
        "time_vs_size.png",
        "size",
        "n",
        "matrix size n",
        "time (ms)",
        (("forward", _time("forward")), ("forward+backward", _time("forward_backward"))),
    ),
    (
        "error_vs_size.png",
        "size",
        "n",
        "matrix size n",
        "relative error vs float64",
        (("forward", _error("forward")), ("gradient", _error("gradient"))),
    ),
)


def write_figures(result: dict, directory) -> list[pathlib.Path]:
    """Write every figure whose workload was run into ``directory``; return the paths."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullLocator

    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    rows = [r for r in result["rows"] if r["dtype"] == "float32"]
    settings, device = result["settings"], result["device"]
    caption = f"{device['platform']} ({device['cpu_model']}), JAX {result['versions']['jax']}"
    written = []
    for filename, kind, x_key, x_label, y_label, panels in FIGURES:
        selected = [r for r in rows if label_of(r, kind) is not None]
        if not selected:
            continue
        functions = [f for f in settings["functions"] if any(r["function"] == f for r in selected)]
        figure = Figure(figsize=(5.5 * len(panels), 3.8 * len(functions)), layout="constrained")
        axes = figure.subplots(len(functions), len(panels), squeeze=False)
        for i, function in enumerate(functions):
            for j, (panel, value) in enumerate(panels):
                axis = axes[i][j]
                for method in settings["methods"]:
                    curve = [
                        r for r in selected if r["function"] == function and r["method"] == method
                    ]
                    _draw(axis, curve, x_key, value, method)
                axis.set(title=f"{function}: {panel}", xlabel=x_label, ylabel=y_label, yscale="log")
                axis.set_xscale("log", base=2)
                ticks = sorted({r[x_key] for r in selected})
                axis.set_xticks(ticks, labels=[str(t) for t in ticks])
                axis.xaxis.set_minor_locator(NullLocator())
                axis.grid(True, which="both", alpha=0.3)
                if axis.get_legend_handles_labels()[0]:
                    axis.legend(fontsize="small")
        figure.suptitle(caption)
        path = directory / filename
        figure.savefig(path, dpi=110)
        written.append(path)
    return written


def _draw(axis, rows: list[dict], x_key: str, value, label: str) -> None:
    points = sorted((row[x_key], value(row)) for row in rows if value(row) is not None)
    if not points:
        return
    xs = [x for x, _ in points]
    mid = [v[0] for _, v in points]
    below = [v[0] - v[1] for _, v in points]
    above = [v[2] - v[0] for _, v in points]
    axis.errorbar(xs, mid, yerr=[below, above], marker="o", markersize=3, capsize=2, label=label)
