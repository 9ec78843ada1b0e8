"""Summaries, legend and Markdown tables of benchmark results (plain data in, text out)."""

from __future__ import annotations

import json
import math
import textwrap
from collections.abc import Callable

from jaxsqrtm.bench import blas
from jaxsqrtm.bench.cases import STOCK
from jaxsqrtm.bench.workloads import TARGET_SHAPES

ROOFLINE_METHODS = ("mpa", "mtp", "ns")
ROOFLINE_TARGET = 1.3
ROOFLINE_MIN_N = 64
EIGH_RATIO_TARGET = 1.0
AUTO_RATIO_TARGET = 1.5  # "auto" / "mpa" forward+backward at condition number <= 1e2
MISSING = "–"
WIDTH = 100  # of the wrapped paragraphs
METHOD_LABELS = {STOCK: "stock"}
LEGEND = {
    "ms": "ms: median milliseconds, forward / forward+backward (jax.vjp, fixed random cotangent).",
    "error": "error: relative Frobenius error against float64 eigh, worst of the batch: forward / "
    "gradient.",
    "roofline": "roofline: time / (its matrix products x time of one batched product); 1 = ideal.",
    "methods": "mpa, mtp, ns: the paper's rough settings (errors of 1e-2 to 1 expected); auto: "
    "accurate default.",
    "eigh": "eigh: eigendecomposition, the accurate baseline.",
    "stock": "stock: jax.scipy.linalg.sqrtm (Schur), forward only.",
}


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


def _worst(entries: list[dict], key: str) -> dict[str, float]:
    """The largest ``entry[key]`` per method and function (``"mpa/sqrtm"``)."""
    return _largest(entries, key, lambda entry: f"{entry['method']}/{entry['function']}")


def _largest(entries: list[dict], key: str, group: Callable[[dict], str]) -> dict[str, float]:
    """The largest ``entry[key]`` per ``group(entry)``, over the entries that have one."""
    largest: dict[str, float] = {}
    for entry in entries:
        name, value = group(entry), entry[key]
        if value is not None and value > largest.get(name, -math.inf):
            largest[name] = value
    return largest


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
    """Milliseconds to three significant digits (``"0.400"``, ``"12.0"``), whole from 100."""
    if seconds is None:
        return MISSING
    ms = seconds * 1e3
    return f"{ms:#.3g}".rstrip(".") if ms < 100 else f"{ms:.0f}"


def ratio_text(value: float | None) -> str:
    return MISSING if value is None else f"{value:.2f}"


def error_text(value: float | None) -> str:
    if value is None:
        return MISSING
    return f"{value:.1e}" if isinstance(value, float) and math.isfinite(value) else str(value)


def table(header: list[str], body: list[list[str]]) -> str:
    """A Markdown table, its columns padded to a common width so the text reads as one."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(cells) for cells in body)])


def method_label(method: str) -> str:
    """A method's name in tables: ``"stock"`` for ``jax.scipy.linalg.sqrtm``."""
    return METHOD_LABELS.get(method, method)


def paragraph(text: str) -> str:
    """``text`` wrapped to :data:`WIDTH` columns."""
    return textwrap.fill(text, WIDTH, break_on_hyphens=False)


def legend(keys) -> str:
    """The entries ``keys`` of :data:`LEGEND` as a Markdown list."""
    items = (
        textwrap.fill(LEGEND[key], WIDTH, initial_indent="- ", subsequent_indent="  ")
        for key in keys
    )
    return "Legend:\n" + "\n".join(items)


def device_text(device: dict) -> str:
    """``"CPU: AMD EPYC, 2 cores"``, or the accelerator and its host."""
    host = f"{device['cpu_model']}, {device['cpu_count']} cores"
    if device["platform"] == "cpu":
        return f"CPU: {host}"
    return f"{device['platform'].upper()}: {device['device_kind']} (host {host})"


def blas_text(environment: dict) -> str:
    """:func:`jaxsqrtm.bench.blas.describe` of a run's recorded environment."""
    variable = environment.get("threads", {}).get(blas.VARIABLE)
    return blas.describe(environment.get("blas"), variable)


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
    return table([row_title, *map(method_label, columns)], body)


def times_cell(row: dict) -> str:
    """``"forward / forward+backward"`` medians in ms."""
    fwd, both = _seconds(row, "forward"), _seconds(row, "forward_backward")
    return f"{milliseconds(fwd)} / {milliseconds(both)}"


def _both_rooflines(row: dict) -> str:
    return f"{ratio_text(_ratio(row, 'forward'))} / {ratio_text(_ratio(row, 'forward_backward'))}"


def errors_cell(row: dict) -> str:
    """``"forward / gradient"`` relative errors."""
    error = row["error"]
    return f"{error_text(error['forward'])} / {error_text(error['gradient'])}"


def kibibytes(count: int | None) -> str:
    """``count`` bytes in KiB, to three significant digits."""
    return MISSING if count is None else f"{count / 1024:.3g}"


def _memory_cell(row: dict) -> str:
    both = row.get("forward_backward")
    if both is None:
        return MISSING
    temp = (both.get("memory") or {}).get("temp_bytes")
    return f"{kibibytes(both.get('residual_bytes'))} / {kibibytes(temp)}"


def _both_compiles(row: dict) -> str:
    times = [row[m]["compile_s"] if row.get(m) else None for m in ("forward", "forward_backward")]
    return " / ".join(MISSING if t is None else f"{t:.2f}" for t in times)


MEMORY_TITLE = "Reverse-mode memory, KiB (jax.vjp residuals / compiled forward+backward temp)"
SECTIONS = (
    ("batch", "Time against batch size, ms (forward / forward+backward)", times_cell),
    ("size", "Time against matrix size, ms (forward / forward+backward)", times_cell),
    ("target", "Time at the paper's CPU shapes, ms (forward / forward+backward)", times_cell),
    ("application", "Application shapes, ms (forward / forward+backward)", times_cell),
    ("batch", "Roofline ratio against batch size (forward / forward+backward)", _both_rooflines),
    ("size", "Roofline ratio against matrix size (forward / forward+backward)", _both_rooflines),
    ("application", "Roofline ratio, application shapes", _both_rooflines),
    ("size", "Relative error against float64, by size (forward / gradient)", errors_cell),
    ("application", "Relative error, application shapes (forward / gradient)", errors_cell),
    ("size", MEMORY_TITLE + ", by size", _memory_cell),
    ("application", MEMORY_TITLE + ", application shapes", _memory_cell),
    ("size", "Compile time, s (forward / forward+backward)", _both_compiles),
)


def markdown(result: dict, *, compact: bool = False) -> str:
    """A run as Markdown: header, legend and targets, then the tables.

    Args:
        result: :func:`jaxsqrtm.bench.run_benchmark`'s output (or its JSON, loaded).
        compact: one table of every shape and method (fits a screen for the ``--quick``
            preset) instead of one table per figure and the targets in detail.
    """
    heading = f"# jaxsqrtm {result['versions']['jaxsqrtm']} benchmark"
    parts = [heading + (", quick preset" if compact else ""), header(result)]
    if result["rows"]:
        parts += _root_parts(result, compact)
    if result.get("distances"):
        parts.append(distances_markdown(result["distances"]))
    if result.get("powers"):
        parts.append(powers_markdown(result["powers"]))
    if result.get("polar"):
        parts.append(polar_markdown(result["polar"]))
    if result.get("precision"):
        parts.append(precision_markdown(result["precision"]))
    return "\n\n".join(parts) + "\n"


def _root_parts(result: dict, compact: bool) -> list[str]:
    """Legend, targets and tables of the roots' workloads (all but ``distances``)."""
    settings, rows = result["settings"], result["rows"]
    parts = [
        legend(("ms", "error", "roofline", "methods", "eigh", "stock")),
        targets(result["summary"], settings["functions"]),
    ]
    if compact:
        caption = "**Time and error per shape** (roofline of forward+backward)"
        parts.append(caption + "\n\n" + shape_table(rows, settings))
        return parts
    parts.append(_targets_markdown(result["summary"]))
    for kind, title, cell in SECTIONS:
        for function in settings["functions"]:
            selected = [r for r in rows if r["function"] == function]
            if not any(label_of(r, kind) for r in selected):
                continue
            parts.append(
                f"**{title}: `{function}`**\n\n"
                + pivot(selected, kind, list(settings["methods"]), cell, "shape")
            )
    return parts


def header(result: dict) -> str:
    """Device, versions, BLAS threads and inputs of a run, as one wrapped paragraph."""
    device, versions, settings = result["device"], result["versions"], result["settings"]
    environment = result.get("environment", {})
    load = [environment.get(f"load_average_{when}") for when in ("before", "after")]
    load_text = f", load {load[0][0]} to {load[1][0]}" if all(load) else ""
    dtypes = ", ".join(dict.fromkeys(row["dtype"] for row in result["rows"]))
    text = (
        f"{device_text(device)}{load_text}; JAX {versions['jax']}, jaxlib {versions['jaxlib']}. "
        f"{blas_text(environment)}"
    )
    if result["rows"]:
        text += (
            f" Inputs: {dtypes} SPD matrices with a {settings['spectrum']} "
            f"spectrum, condition number {settings['kappa']:g}; median of up to "
            f"{settings['repeats']} interleaved repeats, compile time excluded."
        )
    elif any(result.get(k) for k in ("distances", "powers", "polar", "precision")):
        text += (
            f" Median of up to {settings['repeats']} interleaved repeats, compile time excluded."
        )
    return paragraph(text)


def shape_label(row: dict, with_dtype: bool) -> str:
    """``"64x64x64"``, with the matrix source unless synthetic and the dtype if asked."""
    label = "x".join(map(str, row["shape"]))
    if row["source"] != "synthetic":
        label += f" {row['source']}"
    return f"{label} {row['dtype']}" if with_dtype else label


def shape_table(rows: list[dict], settings: dict) -> str:
    """One line per shape and method: per function, times, roofline and errors."""
    with_dtype = len({row["dtype"] for row in rows}) > 1
    grouped: dict[str, dict[str, dict[str, dict]]] = {}
    for row in rows:
        shape = grouped.setdefault(shape_label(row, with_dtype), {})
        shape.setdefault(row["method"], {})[row["function"]] = row
    functions = settings["functions"]
    header_cells = ["shape", "method"]
    for function in functions:
        header_cells += [f"{function} ms", "roofline", "error"]
    body = []
    for shape, by_method in grouped.items():
        methods = [m for m in settings["methods"] if m in by_method]
        for index, method in enumerate(methods):
            cells = [shape if index == 0 else "", method_label(method)]
            for function in functions:
                cells += _function_cells(by_method[method].get(function))
            body.append(cells)
    return table(header_cells, body)


def _function_cells(row: dict | None) -> list[str]:
    if row is None:
        return [MISSING] * 3
    return [times_cell(row), ratio_text(_ratio(row, "forward_backward")), errors_cell(row)]


def targets(summary_: dict, functions) -> str:
    """The three targets, worst case per function: median (fastest samples) and a mark."""
    min_n = summary_["roofline_min_n"]
    shapes = ", ".join(f"{b}x{n}x{n}" for b, n in TARGET_SHAPES)
    lines = [
        (
            f"roofline ≤ {summary_['roofline_target']}: worst of {', '.join(ROOFLINE_METHODS)} "
            f"at n ≥ {min_n}",
            summary_["roofline_target"],
            _worst_per_function(summary_["roofline"], "forward_backward"),
            _worst_per_function(summary_["roofline"], "forward_backward_best"),
        ),
        (
            f"mpa / eigh ≤ {summary_['mpa_over_eigh_target']}: worst of {shapes}",
            summary_["mpa_over_eigh_target"],
            *_worst_ratios([e for e in summary_["mpa_over_eigh"] if e["target_shape"]]),
        ),
        (
            f"auto / mpa ≤ {summary_['auto_over_mpa_target']}: worst shape",
            summary_["auto_over_mpa_target"],
            *_worst_ratios(summary_.get("auto_over_mpa", [])),
        ),
    ]
    body = [
        [name] + [_target_cell(median.get(f), best.get(f), target) for f in functions]
        for name, target, median, best in lines
    ]
    title = paragraph(
        "**Targets** (float32, forward+backward; auto / mpa at condition number ≤ 100): the "
        "worst case's median (fastest samples), ✓ where the median meets the target."
    )
    return title + "\n\n" + table(["target", *functions], body)


def _worst_per_function(entries: list[dict], key: str) -> dict[str, float]:
    return _largest(entries, key, lambda entry: entry["function"])


def _worst_ratios(entries: list[dict]) -> tuple[dict, dict]:
    return _worst_per_function(entries, "ratio"), _worst_per_function(entries, "ratio_best")


def _target_cell(median: float | None, best: float | None, target: float) -> str:
    if median is None:
        return MISSING
    mark = "✓" if median <= target else "✗"
    return f"{ratio_text(median)} ({ratio_text(best)}) {mark}"


def _targets_markdown(summary_: dict) -> str:
    """The targets per method and per shape."""
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
    text = "**Targets in detail**\n\n" + roofline
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


DISTANCES_TITLE = "Fréchet distance (FID) of real-image features"


def distances_markdown(figures: dict) -> str:
    """The ``distances`` workload: its cases, one line per case and column, the speed target.

    Args:
        figures: :func:`jaxsqrtm.bench.distances.run`'s output (``result["distances"]``).
    """
    intro = paragraph(
        f"**{DISTANCES_TITLE}**: grey 8x8 patches of scikit-image pictures (colour photographs "
        "against grey-level pictures) mapped to d dimensions by a fixed random ReLU layer, and "
        "scikit-learn's digits 0-4 against 5-9. Reference: float64, from the float64 "
        "features without forming a covariance (singular values of the centred features' "
        "product); eigh route: float64 eigendecompositions of the covariances, and its "
        "difference from the reference. error: |FID - reference| / reference; ms: median, "
        "compile time excluded; x scipy: SciPy's time over the column's. scipy: "
        "scipy.linalg.sqrtm(S1 S2), its real part, on float64 covariances (pytorch-fid's "
        "formula). float32 covariances are formed in float32 from float32 features."
    )
    cases = table(
        ["case", "reference FID", "eigh route (difference)", "tr S1 + tr S2", "rank S1, S2"],
        [
            [
                c["label"],
                f"{c['reference']:.9g}",
                f"{c['reference_eigh']:.9g} ({error_text(c['reference_agreement'])})",
                f"{sum(c['traces']):.6g}",
                f"{c['rank'][0]}, {c['rank'][1]}",
            ]
            for c in figures["cases"]
        ],
    )
    labels = {c["name"]: c["label"] for c in figures["cases"]}
    body, previous = [], None
    for row in figures["rows"]:
        first = row["case"] != previous
        previous = row["case"]
        body.append(
            [
                labels[row["case"]] if first else "",
                row["label"],
                row["dtype"],
                row["data"],
                f"{row['value']:.6g}",
                error_text(row["error"]),
                milliseconds(row["median_s"]),
                MISSING if row["speedup"] is None else f"{row['speedup']:.3g}",
            ]
        )
    header_ = ["case", "method", "dtype", "from", "FID", "error", "ms", "x scipy"]
    target = _speed_target(figures["summary"], labels)
    return "\n\n".join([intro, cases, table(header_, body), target])


def _speed_target(summary_: dict, labels: dict[str, str]) -> str:
    """The jaxsqrtm columns' speed-up over SciPy at the largest image dimension, per case."""
    if not summary_["speedup"]:
        return "**Speed target**: no image case with SciPy and jaxsqrtm timed."
    target = summary_["speedup_target"]
    cases: dict[str, list[str]] = {}
    for entry in summary_["speedup"]:
        cases.setdefault(entry["case"], []).append(
            f"{entry['method']} {entry['speedup']:.3g}x {'✓' if entry['met'] else '✗'}"
        )
    parts = [f"{labels[case]}: {', '.join(found)}" for case, found in cases.items()]
    return paragraph(
        f"**Speed target**: jaxsqrtm's FID at d = {summary_['dim']} ≥ {target:g}x faster than "
        f"scipy.linalg.sqrtm(S1 S2). {'; '.join(parts)}."
    )


POWERS_TITLE = "Inverse p-th roots A^(-1/p) of statistics"


def powers_markdown(figures: dict) -> str:
    """The ``powers`` workload: one line per exponent and method, and the cost target.

    Args:
        figures: :func:`jaxsqrtm.bench.powers.run`'s output (``result["powers"]``).
    """
    batch, n, _ = figures["shape"]
    intro = paragraph(
        f"**{POWERS_TITLE}**: {batch} x {n} x {n} float32 SPD matrices with a "
        f"Marchenko-Pastur spectrum (a sample covariance's), condition number "
        f"{figures['kappa']:g}, in one batched call per method. error: relative Frobenius "
        "error against float64 eigh of the same (float32) input, largest over the batch; "
        "ms: median, compile time excluded; x inv_sqrtm: time over jaxsqrtm.inv_sqrtm's on "
        "the same input. optax runs with ridge_epsilon=0 (the same root), under jax.vmap."
    )
    unit = next((r for r in figures["rows"] if r["method"] == "inv_sqrtm"), None)
    body = []
    for row in sorted(figures["rows"], key=lambda r: (r["p"], r["method"] != "jaxsqrtm")):
        ratio = MISSING if unit is None else f"{row['median_s'] / unit['median_s']:.3g}"
        body.append(
            [
                f"-1/{row['p']}",
                row["label"],
                row["dtype"],
                error_text(row["error"]) + ("" if row["finite"] else " (non-finite)"),
                milliseconds(row["median_s"]),
                ratio,
            ]
        )
    header_ = ["t", "method", "dtype", "error", "ms", "x inv_sqrtm"]
    summary_ = figures["summary"]
    if summary_["cost_ratio"] is None:
        target = "**Cost target**: not measured (p = 4 or inv_sqrtm not timed)."
    else:
        target = paragraph(
            f"**Cost target**: fractional_matrix_power(A, -1/{summary_['cost_exponent']}) "
            f"at most {summary_['cost_target']:g}x inv_sqrtm(A): "
            f"{summary_['cost_ratio']:.3g}x {'✓' if summary_['met'] else '✗'}."
        )
    return "\n\n".join([intro, table(header_, body), target])


POLAR_TITLE = "Polar factor of stacked matrices (Muon's orthogonalisation)"


def polar_markdown(figures: dict) -> str:
    """The ``polar`` workload: one line per shape and column, the speed target and the
    bfloat16 measurement.

    Args:
        figures: :func:`jaxsqrtm.bench.polar.run`'s output (``result["polar"]``).
    """
    intro = paragraph(
        f"**{POLAR_TITLE}**: {figures['layers']} float32 matrices per shape with a "
        f"{figures['spectrum']} spectrum of condition number {figures['kappa']:g}, one call "
        "per column. error: relative Frobenius error against the float64 SVD of the same "
        "input, largest over the stack; ||U^T U - I||: on the smaller side; ms: median, "
        "compile time excluded; x optax: time over optax's (same schedule, default "
        "precision). quintic is optax's schedule tuned past convergence: its singular "
        "values end in [0.7, 1.2]."
    )
    optax_s = {
        tuple(r["shape"]): r["median_s"]
        for r in figures["rows"]
        if r["method"] == "optax" and r["median_s"]
    }
    body, previous = [], None
    for row in figures["rows"]:
        shape = tuple(row["shape"])
        label = f"{figures['layers']}x{shape[0]}x{shape[1]}"
        first, previous = shape != previous, shape
        if row["fails"]:
            cells = ["fails (below)", MISSING, MISSING, MISSING]
        else:
            baseline = optax_s.get(shape)
            cells = [
                error_text(row["error"]) if row["finite"] else "non-finite",
                error_text(row["orthogonality"]),
                milliseconds(row["median_s"]),
                f"{row['median_s'] / baseline:.3g}" if baseline else MISSING,
            ]
        precision = row["precision"] or MISSING
        body.append([label if first else "", row["label"], precision, *cells])
    header_ = ["shape", "method", "precision", "error", "||U^T U - I||", "ms", "x optax"]
    speed = figures["summary"]["speed"]
    target = figures["summary"]["speed_target"]
    if speed:
        found = "; ".join(
            f"{e['shape'][0]}x{e['shape'][1]}: {e['ratio']:.3g}x {'✓' if e['met'] else '✗'}"
            for e in speed
        )
        speed_text = paragraph(
            f"**Speed target**: jaxsqrtm's quintic at most {target:g}x optax's time. {found}."
        )
    else:
        speed_text = "**Speed target**: not measured (optax not installed)."
    failures = [
        f"{row['label']} at {row['shape'][0]}x{row['shape'][1]}: {row['fails']}"
        for row in figures["rows"]
        if row["fails"]
    ]
    fails_text = paragraph("**Fails**: " + "; ".join(failures) + ".") if failures else None
    bf16 = figures["bfloat16"]
    lines = []
    for method, e in bf16["methods"].items():
        mark = MISSING if e["met"] is None else ("✓" if e["met"] else "✗")
        top = MISSING if e["top"] is None else f"{e['top']:.4g}"
        bound = f", float64 bound {e['bound']:.4g}" if e.get("bound") else ""
        lines.append(f"{method} {mark}: {e['nonfinite']} non-finite, top {top}{bound}")
    bf16_text = paragraph(
        f"**bfloat16 products** on {bf16['count']} gradient-like matrices "
        f"({', '.join(f'{m}x{n}' for m, n in bf16['shapes'])}); target: none non-finite, "
        f"largest top singular value at most {bf16['target']:g} (quintic, tuned past 1: "
        "its own float64 bound): " + "; ".join(lines) + "."
    )
    parts = [intro, table(header_, body), fails_text, speed_text, bf16_text]
    return "\n\n".join(part for part in parts if part)


PRECISION_TITLE = "Time by product precision"


def precision_markdown(figures: dict) -> str:
    """The ``precision`` workload: one line per shape, function and precision, and the
    speed target on the cost model's estimate.

    Args:
        figures: :func:`jaxsqrtm.bench.precision.run`'s output (``result["precision"]``).
    """
    throughput = ", ".join(f"{k} {v / 1e12:g}" for k, v in figures["throughput"].items())
    platform = figures["platform"]
    caveat = (
        " On a CPU the measured ratio says nothing about accelerators: its products have no "
        "fast bfloat16 path."
        if platform == "cpu"
        else ""
    )
    intro = paragraph(
        f"**{PRECISION_TITLE}**: method auto (power: A^(-1/4)), float32 SPD matrices "
        f"(square ones for the polar factor, as singular values) with a "
        f"{figures['spectrum']} spectrum, "
        f"condition number {figures['kappa']:g}. ms: "
        f"median on this device ({platform}), compile time excluded; products: forward+"
        "backward per matrix by kind (largest over the batch); bf16: their bfloat16 share; "
        "x highest: forward+backward speed-up over highest, measured here and estimated "
        f"by the cost model (products at an H100's dense TFLOP/s: {throughput}; an "
        f"estimate, not a measurement).{caveat}"
    )
    body = []
    for row in figures["rows"]:
        batch, n, _ = row["shape"]
        products = ", ".join(f"{k} {v}" for k, v in row["products"].items() if v)
        body.append(
            [
                f"{batch}x{n}x{n}",
                row["function"],
                row["precision"],
                milliseconds(row["forward"]["median_s"]),
                milliseconds(row["forward_backward"]["median_s"]),
                errors_pair(row["error"]) + ("" if row["finite"] else " (non-finite)"),
                products or MISSING,
                f"{row['bfloat16_share']:.0%}",
                ratio_text(row["measured_speedup"]),
                ratio_text(row["estimated_speedup"]),
            ]
        )
    header_ = [
        "shape",
        "function",
        "precision",
        "fwd ms",
        "fwd+bwd ms",
        "error (root / grad)",
        "products",
        "bf16",
        "x highest (here)",
        "x highest (H100 est.)",
    ]
    summary_ = figures["summary"]
    found = "; ".join(
        f"{e['shape'][0]}x{e['shape'][1]}x{e['shape'][2]} {e['function']}: "
        f"{e['estimated']:.3g}x {'✓' if e['met'] else '✗'}"
        for e in summary_["entries"]
    )
    target = paragraph(
        f"**Speed target** (estimate): mixed at least {summary_['target']:g}x highest "
        f"forward+backward; with an unchanged product count that needs a bfloat16 share of "
        f"{summary_['break_even_share']:.0%}. {found or 'not measured (no mixed row)'}."
    )
    return "\n\n".join([intro, table(header_, body), target])


def errors_pair(error: dict) -> str:
    """``"root / gradient"`` relative errors."""
    return f"{error_text(error['forward'])} / {error_text(error['gradient'])}"
