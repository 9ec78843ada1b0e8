"""Summaries and Markdown tables of benchmark results (plain data in, text out)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

from jaxsqrtm.bench.workloads import TARGET_SHAPES

ROOFLINE_METHODS = ("mpa", "mtp", "ns")
ROOFLINE_TARGET = 1.3
ROOFLINE_MIN_N = 64
EIGH_RATIO_TARGET = 1.0
AUTO_RATIO_TARGET = 1.5  # "auto" / "mpa" forward+backward at condition number <= 1e2
MISSING = "–"


def summary(rows: list[dict]) -> dict:
    """The targets: roofline ratios at ``n >= 64``, MPA against eigh, auto against MPA.

    Only float32 rows count. ``mpa_over_eigh`` and ``auto_over_mpa`` compare
    forward+backward medians (``ratio``) and fastest samples (``ratio_best``) at every
    shape, with ``target_shape`` marking the paper's CPU comparison shapes.
    """
    float32 = [r for r in rows if r["dtype"] == "float32"]
    roofline = [
        {
            **_where(r),
            "forward": _ratio(r, "forward"),
            "forward_backward": _ratio(r, "forward_backward"),
            "forward_backward_best": _ratio(r, "forward_backward", "roofline_best"),
        }
        for r in float32
        if r["method"] in ROOFLINE_METHODS and r["n"] >= ROOFLINE_MIN_N
    ]
    return {
        "roofline_target": ROOFLINE_TARGET,
        "roofline_min_n": ROOFLINE_MIN_N,
        "roofline": roofline,
        "worst_forward_backward_roofline": _worst(roofline, "forward_backward"),
        "worst_forward_backward_roofline_best": _worst(roofline, "forward_backward_best"),
        "mpa_over_eigh_target": EIGH_RATIO_TARGET,
        "mpa_over_eigh": _versus(float32, "mpa", "eigh"),
        "auto_over_mpa_target": AUTO_RATIO_TARGET,
        "auto_over_mpa": _versus(float32, "auto", "mpa"),
    }


def _where(row: dict) -> dict:
    keys = ("method", "function", "batch", "n", "source", "dtype")
    return {key: row[key] for key in keys}


def _worst(entries: list[dict], key: str) -> dict:
    """The largest ``entry[key]`` per method and function."""
    worst: dict[str, float] = {}
    for entry in entries:
        name, value = f"{entry['method']}/{entry['function']}", entry[key]
        if value is not None and value > worst.get(name, -math.inf):
            worst[name] = value
    return worst


def _ratio(row: dict, mode: str, key: str = "roofline") -> float | None:
    timing = row.get(mode)
    return None if timing is None else timing[key]


def _seconds(row: dict | None, mode: str, key: str = "median_s") -> float | None:
    """A time statistic of one mode (the median, or e.g. ``"min_s"``), ``None`` if absent."""
    if row is None or row.get(mode) is None:
        return None
    return row[mode][key]


def _versus(rows: list[dict], method: str, baseline: str) -> list[dict]:
    index = {(r["batch"], r["n"], r["source"], r["function"], r["method"]): r for r in rows}
    result = []
    for (batch, n, source, function, name), row in index.items():
        if name != method:
            continue
        other = index.get((batch, n, source, function, baseline))
        mine, theirs = _seconds(row, "forward_backward"), _seconds(other, "forward_backward")
        if mine is None or theirs is None:
            continue
        result.append(
            {
                "batch": batch,
                "n": n,
                "source": source,
                "function": function,
                f"{method}_s": mine,
                f"{baseline}_s": theirs,
                "ratio": mine / theirs,
                "ratio_best": _seconds(row, "forward_backward", "min_s")
                / _seconds(other, "forward_backward", "min_s"),
                "target_shape": (batch, n) in TARGET_SHAPES and source == "synthetic",
            }
        )
    return result


def to_json(result: dict) -> str:
    """Strict JSON: non-finite numbers become the strings ``"nan"``, ``"inf"``, ``"-inf"``."""
    return json.dumps(_finite(result), indent=1, allow_nan=False)


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    return value


def milliseconds(seconds: float | None) -> str:
    if seconds is None:
        return MISSING
    ms = seconds * 1e3
    return f"{ms:.3g}" if ms < 1000 else f"{ms:.0f}"


def ratio_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def error_text(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.1e}" if isinstance(value, float) and math.isfinite(value) else str(value)


def table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cells) + " |" for cells in body]
    return "\n".join(lines)


def label_of(row: dict, kind: str) -> str | None:
    """The row's label in workload ``kind``, ``None`` if it is not part of it."""
    for workload in row["workloads"]:
        if workload["kind"] == kind:
            return workload["label"]
    return None


def pivot(
    rows: list[dict],
    kind: str,
    methods: list[str],
    cell: Callable[[dict], str],
    row_title: str,
) -> str:
    """Rows: the shapes of workload ``kind`` (plus dtype when several); columns: methods."""
    selected = [r for r in rows if label_of(r, kind) is not None]
    several_dtypes = len({r["dtype"] for r in selected}) > 1
    lines: dict[str, dict[str, str]] = {}
    for row in selected:
        name = label_of(row, kind)
        name = f"{name} ({row['dtype']})" if several_dtypes else name
        lines.setdefault(name, {})[row["method"]] = cell(row)
    columns = [m for m in methods if any(m in line for line in lines.values())]
    body = [[name] + [line.get(m, MISSING) for m in columns] for name, line in lines.items()]
    return table([row_title, *columns], body)


def _both_times(row: dict) -> str:
    fwd, both = _seconds(row, "forward"), _seconds(row, "forward_backward")
    return f"{milliseconds(fwd)} / {milliseconds(both)}"


def _both_rooflines(row: dict) -> str:
    return f"{ratio_text(_ratio(row, 'forward'))} / {ratio_text(_ratio(row, 'forward_backward'))}"


def _both_errors(row: dict) -> str:
    error = row["error"]
    return f"{error_text(error['forward'])} / {error_text(error['gradient'])}"


def _both_compiles(row: dict) -> str:
    times = [row[m]["compile_s"] if row.get(m) else None for m in ("forward", "forward_backward")]
    return " / ".join(MISSING if t is None else f"{t:.2f}" for t in times)


SECTIONS = (
    ("batch", "Time against batch size, ms (forward / forward+backward)", _both_times),
    ("size", "Time against matrix size, ms (forward / forward+backward)", _both_times),
    ("target", "Time at the paper's CPU shapes, ms (forward / forward+backward)", _both_times),
    ("application", "Application shapes, ms (forward / forward+backward)", _both_times),
    ("batch", "Roofline ratio against batch size (forward / forward+backward)", _both_rooflines),
    ("size", "Roofline ratio against matrix size (forward / forward+backward)", _both_rooflines),
    ("application", "Roofline ratio, application shapes", _both_rooflines),
    ("size", "Relative error against float64, by size (forward / gradient)", _both_errors),
    ("application", "Relative error, application shapes (forward / gradient)", _both_errors),
    ("size", "Compile time, s (forward / forward+backward)", _both_compiles),
)


def markdown(result: dict) -> str:
    """Every table of a run, as Markdown: targets first, then one table per figure."""
    device, versions, settings = result["device"], result["versions"], result["settings"]
    methods = list(settings["methods"])
    parts = [
        f"Device: {device['platform']} ({device['cpu_model']}, {device['cpu_count']} cores); "
        f"JAX {versions['jax']}, jaxlib {versions['jaxlib']}; inputs: SPD matrices with a "
        f"{settings['spectrum']} spectrum, condition number {settings['kappa']:g}; "
        f"median of up to {settings['repeats']} interleaved repeats; "
        f"thread settings {_threads(result)}.",
        _targets_markdown(result["summary"]),
    ]
    rows = result["rows"]
    for kind, title, cell in SECTIONS:
        for function in settings["functions"]:
            selected = [r for r in rows if r["function"] == function]
            if not any(label_of(r, kind) for r in selected):
                continue
            parts.append(
                f"**{title}: `{function}`**\n\n" + pivot(selected, kind, methods, cell, "shape")
            )
    return "\n\n".join(parts) + "\n"


def _threads(result: dict) -> str:
    threads = result.get("environment", {}).get("threads", {})
    given = [f"{name}={value}" for name, value in threads.items() if value is not None]
    return ", ".join(given) if given else "default"


def _targets_markdown(summary_: dict) -> str:
    worst = summary_["worst_forward_backward_roofline"]
    best = summary_["worst_forward_backward_roofline_best"]
    roofline = table(
        [
            "method / function",
            f"worst forward+backward roofline at n ≥ {summary_['roofline_min_n']}: medians",
            "fastest samples",
        ],
        [[key, ratio_text(value), ratio_text(best.get(key))] for key, value in worst.items()],
    )
    targets = [e for e in summary_["mpa_over_eigh"] if e["target_shape"]]
    versus = table(
        ["shape", "function", "mpa fwd+bwd, ms", "eigh fwd+bwd, ms", "mpa / eigh"],
        [
            [
                f"{e['batch']}x{e['n']}x{e['n']}",
                e["function"],
                milliseconds(e["mpa_s"]),
                milliseconds(e["eigh_s"]),
                ratio_text(e["ratio"]),
            ]
            for e in targets
        ],
    )
    text = (
        f"**Targets** (float32): roofline ≤ {summary_['roofline_target']} for "
        f"{', '.join(ROOFLINE_METHODS)}; mpa / eigh ≤ {summary_['mpa_over_eigh_target']}; "
        f"auto / mpa ≤ {summary_['auto_over_mpa_target']} at condition number ≤ 100.\n\n" + roofline
    )
    if targets:
        text += "\n\n" + versus
    accurate = summary_.get("auto_over_mpa", [])
    if accurate:
        text += "\n\n" + _auto_over_mpa_table(accurate)
    return text


def _auto_over_mpa_table(entries: list[dict]) -> str:
    """``auto`` / ``mpa`` forward+backward per shape: medians (fastest samples)."""
    cells: dict[str, dict[str, str]] = {}
    for e in entries:
        shape = f"{e['batch']}x{e['n']}x{e['n']}"
        shape = shape if e["source"] == "synthetic" else f"{shape} ({e['source']})"
        cells.setdefault(shape, {})[e["function"]] = (
            f"{ratio_text(e['ratio'])} ({ratio_text(e['ratio_best'])})"
        )
    functions = list(dict.fromkeys(e["function"] for e in entries))
    body = [[shape] + [line.get(f, MISSING) for f in functions] for shape, line in cells.items()]
    header = ["auto / mpa fwd+bwd: median (fastest samples)", *functions]
    return table(header, body)
