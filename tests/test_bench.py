"""The benchmark command runs end to end on tiny shapes and writes complete results.

No timing is asserted: only that every figure the JSON promises is there and finite, that
the quick output fits a screen with its legend, and that BLAS runs on one thread meanwhile.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsqrtm
from jaxsqrtm import bench
from jaxsqrtm.bench import blas, cases, cli, distances, memory, report, workloads

SCREEN_LINES = 50

TINY = [
    "--quick",
    "--workloads", "batch,size",
    "--batches", "2",
    "--batch-n", "8",
    "--sizes", "8",
    "--size-batch", "2",
    "--repeats", "1",
    "--no-progress",
]  # fmt: skip


@dataclasses.dataclass
class TinyRun:
    """What one run of ``main`` wrote and printed, and the BLAS thread counts around it."""

    result: dict
    printed: str
    plot_dir: pathlib.Path
    markdown_path: pathlib.Path
    blas_before: list | None
    blas_after: list | None


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> TinyRun:
    """One run of ``main`` on a single 2 x 8 x 8 group serving both sweeps."""
    out = tmp_path_factory.mktemp("bench")
    json_path, plot_dir, markdown_path = out / "bench.json", out / "plots", out / "bench.md"
    outputs = ["--json", str(json_path), "--plot", str(plot_dir), "--markdown", str(markdown_path)]
    blas.load_lapack()
    before = blas.libraries()
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert bench.main([*TINY, *outputs]) == 0
    result = json.loads(json_path.read_text())
    return TinyRun(result, stdout.getvalue(), plot_dir, markdown_path, before, blas.libraries())


def test_json_records_device_versions_and_settings(tiny_run):
    result = tiny_run.result
    assert result["device"]["platform"]
    assert result["device"]["cpu_count"] >= 1
    assert result["versions"]["jax"]
    assert result["versions"]["jaxsqrtm"] == jaxsqrtm.__version__
    settings = result["settings"]
    assert settings["batches"] == [2]
    assert settings["sizes"] == [8]
    assert settings["repeats"] == 1
    assert set(jaxsqrtm.METHODS) <= set(settings["methods"])
    assert set(settings["functions"]) == {"sqrtm", "inv_sqrtm"}
    assert "threads" in result["environment"]


def test_every_method_and_function_has_a_row(tiny_run):
    result = tiny_run.result
    pairs = {(r["function"], r["method"]) for r in result["rows"]}
    for method in jaxsqrtm.METHODS:
        assert ("sqrtm", method) in pairs
        assert ("inv_sqrtm", method) in pairs


def test_rows_carry_shape_times_roofline_and_finite_errors(tiny_run):
    result = tiny_run.result
    assert result["rows"]
    for row in result["rows"]:
        assert row["shape"] == [2, 8, 8]
        assert {w["kind"] for w in row["workloads"]} == {"batch", "size"}
        assert row["dtype"] == "float32"
        assert row["product_s"] > 0
        modes = ["forward"] if row["method"] == cases.STOCK else list(cases.MODES)
        for mode in modes:
            timing = row[mode]
            assert timing["median_s"] > 0
            assert timing["min_s"] <= timing["median_s"] <= timing["max_s"]
            assert timing["compile_s"] > 0
            assert timing["repeats"] == 1
            if timing["matmuls"] is None:
                assert timing["roofline"] is None
            else:
                assert timing["roofline"] > 0
        assert isinstance(row["error"]["forward"], float)
        assert math.isfinite(row["error"]["forward"])
        if row["method"] == cases.STOCK:
            assert row["forward_backward"] is None
            assert row["error"]["gradient"] is None
        else:
            assert isinstance(row["error"]["gradient"], float)
            assert math.isfinite(row["error"]["gradient"])


def test_summary_and_products(tiny_run):
    result = tiny_run.result
    assert [(p["batch"], p["n"]) for p in result["products"]] == [(2, 8)]
    summary = result["summary"]
    assert summary["roofline_target"] == 1.3
    assert summary["roofline"] == []  # only n >= 64 counts
    functions = {entry["function"] for entry in summary["mpa_over_eigh"]}
    assert functions == {"sqrtm", "inv_sqrtm"}
    assert all(entry["ratio"] > 0 for entry in summary["mpa_over_eigh"])
    assert summary["auto_over_mpa_target"] == 1.5
    accurate = summary["auto_over_mpa"]
    assert {entry["function"] for entry in accurate} == {"sqrtm", "inv_sqrtm"}
    for entry in accurate:
        assert entry["ratio"] == pytest.approx(entry["auto_s"] / entry["mpa_s"])
        assert entry["ratio_best"] > 0


def test_plots_and_markdown_are_written(tiny_run):
    names = {p.name: p.stat().st_size for p in tiny_run.plot_dir.glob("*.png")}
    assert set(names) == {"time_vs_batch.png", "time_vs_size.png", "error_vs_size.png"}
    assert all(size > 1000 for size in names.values())
    assert tiny_run.markdown_path.read_text().strip() == tiny_run.printed.strip()
    full = bench.markdown(tiny_run.result)
    for title in ("Time against batch size", "auto / mpa fwd+bwd", "Relative error against"):
        assert title in full
    assert report.MEMORY_TITLE in full


def test_quick_output_is_one_table_with_legend_and_targets(tiny_run):
    text = tiny_run.printed
    assert len(text.splitlines()) <= SCREEN_LINES
    assert "Legend:" in text
    for entry in report.LEGEND.values():
        assert entry.split(":")[0] in text
    assert "**Targets**" in text
    assert "Time and error per shape" in text
    assert "Time against batch size" not in text  # the per-figure tables are in the full run


def test_quick_preset_output_fits_a_screen(tiny_run):
    """The quick preset's three shapes, every method and both functions: one screen."""
    result = tiny_run.result
    shapes = [(g.batch, g.n) for g in workloads.plan_groups(workloads.quick_settings())]
    assert len(shapes) == 3
    rows = [
        {**row, "batch": b, "n": n, "shape": [b, n, n]} for b, n in shapes for row in result["rows"]
    ]
    quick = {**result, "rows": rows, "summary": report.summary(rows)}
    text = bench.markdown(quick, compact=True)
    assert len(text.splitlines()) <= SCREEN_LINES
    assert all(f"{b}x{n}x{n}" in text for b, n in shapes)


def test_blas_runs_on_one_thread_during_the_run_only(tiny_run):
    pytest.importorskip("threadpoolctl")
    libraries = tiny_run.result["environment"]["blas"]
    assert libraries
    assert all(library["threads"] == 1 for library in libraries)
    assert "BLAS threads: 1 (" in tiny_run.printed
    assert tiny_run.blas_after == tiny_run.blas_before


def test_memory_of_every_case_and_residuals_of_reverse_mode(tiny_run):
    result = tiny_run.result
    for row in result["rows"]:
        for mode in ("forward", "forward_backward"):
            if row[mode] is None:
                continue
            compiled = row[mode]["memory"]
            assert set(compiled) == set(memory.COMPILED_FIELDS)
            assert compiled["argument_bytes"] >= 4 * math.prod(row["shape"])
            assert compiled["output_bytes"] >= 4 * math.prod(row["shape"])
            assert compiled["temp_bytes"] >= 0
        if row["forward_backward"] is not None:
            assert row["forward_backward"]["residual_bytes"] > 0
            assert "residual_bytes" not in row["forward"]


@pytest.mark.parametrize("method", ["mpa", "ns"])
def test_residual_bytes_are_those_jax_vjp_keeps(method):
    a = jnp.asarray(np.eye(4) + 0.1 * np.ones((4, 4)), jnp.float32)

    def root(x):
        return jaxsqrtm.sqrtm(x, method=method)

    _, pullback = jax.vjp(root, a)
    kept = sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(pullback))
    assert memory.residual_bytes(root, a) == kept


def test_blas_description_says_whether_threads_are_limited():
    one = [{"library": "openblas", "path": "/x/scipy.libs/libopenblas.so", "threads": 1}]
    two = [{**one[0], "threads": 2}]
    assert blas.describe(one, None).startswith("BLAS threads: 1 (openblas (scipy.libs))")
    assert "NOT limited (openblas (scipy.libs): 2)" in blas.describe(two, None)
    assert blas.describe(None, "1").startswith("BLAS threads: 1 (OPENBLAS_NUM_THREADS=1)")
    assert "threadpoolctl not installed" in blas.describe(None, None)
    assert "no BLAS library found" in blas.describe([], "4")


def test_quick_preset_takes_overrides():
    args = cli.parser().parse_args(["--quick", "--sizes", "16,32", "--methods", "mpa,eigh"])
    settings = cli.settings_from(args)
    assert settings.sizes == (16, 32)
    assert settings.methods == ("mpa", "eigh")
    assert settings.repeats == workloads.quick_settings().repeats
    assert cli.settings_from(cli.parser().parse_args([])) == workloads.Settings()


def test_unknown_method_is_rejected():
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["--methods", "svd"])


def test_plan_merges_shapes_and_covers_every_method():
    settings = workloads.Settings(
        batches=(1, 64), sizes=(64, 128), workloads=("batch", "size", "target")
    )
    groups = workloads.plan_groups(settings)
    shapes = [(g.batch, g.n) for g in groups]
    assert len(shapes) == len(set(shapes))
    assert set(shapes) == {(1, 64), (64, 64), (1, 128), (256, 32)}
    merged = next(g for g in groups if (g.batch, g.n) == (64, 64))
    assert {w.kind for w in merged.workloads} == {"batch", "target"}
    specs = cases.case_specs(cases.FUNCTIONS, cases.available_methods(), ("float32",))
    for method in jaxsqrtm.METHODS:
        for function in cases.FUNCTIONS:
            for mode in cases.MODES:
                assert cases.CaseSpec(function, method, mode, "float32") in specs


def test_application_workloads_use_their_shapes():
    settings = workloads.Settings(workloads=("application",), pooling_batch=8)
    found = {w.label: (w.batch, w.n, w.dtypes) for w in workloads.selected_workloads(settings)}
    assert found["decorrelated_bn"][:2] == (1, 64)
    assert found["so_vit_head"][:2] == (64, 48)
    assert found["covariance_pooling"][:2] == (8, 256)
    assert found["style_transfer"][:2] == (4, 512)
    assert "bfloat16" in found["style_transfer"][2]


DISTANCE_TINY = [
    "--quick",
    "--workloads", "distances",
    "--distance-dim", "24",
    "--distance-samples", "16,40",
    "--repeats", "1",
    "--no-progress",
]  # fmt: skip


@pytest.fixture(scope="module")
def distance_run(tmp_path_factory) -> tuple[dict, str]:
    """One run of ``main`` of the ``distances`` workload at d = 24 (and the 64-dim digits)."""
    pytest.importorskip("sklearn")
    pytest.importorskip("skimage")
    json_path = tmp_path_factory.mktemp("distances") / "bench.json"
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert bench.main([*DISTANCE_TINY, "--json", str(json_path)]) == 0
    return json.loads(json_path.read_text()), stdout.getvalue()


def test_distance_cases_have_references_that_agree(distance_run):
    result, _ = distance_run
    assert result["rows"] == []
    assert result["settings"]["distance_dim"] == 24
    figures = result["distances"]
    found = [(c["source"], c["dim"], c["samples"]) for c in figures["cases"]]
    assert found[:2] == [("images", 24, [16, 16]), ("images", 24, [40, 40])]
    assert found[2][:2] == ("digits", 64)
    for case in figures["cases"]:
        assert case["reference"] > 0
        assert case["reference_agreement"] < 1e-6
        assert len(case["traces"]) == len(case["rank"]) == 2
    assert figures["cases"][0]["rank"][0] <= 15  # N - 1: rank-deficient
    assert figures["cases"][1]["rank"][0] == 24


def test_every_distance_column_has_a_value_error_and_time(distance_run):
    figures = distance_run[0]["distances"]
    expected = {m.name for m in distances.available_methods()}
    assert "jaxsqrtm_features_float32" in expected
    assert ("ott_bures" in expected) == distances.has_ott()
    for case in figures["cases"]:
        rows = [r for r in figures["rows"] if r["case"] == case["name"]]
        assert {r["method"] for r in rows} == expected
        for row in rows:
            assert math.isfinite(row["value"])
            assert row["error"] == pytest.approx(
                abs(row["value"] - case["reference"]) / case["reference"]
            )
            assert row["dtype"] in ("float32", "float64")
            assert row["data"] in ("covariances", "features")
            assert 0 < row["min_s"] <= row["median_s"] <= row["max_s"]
            assert row["repeats"] == 1
            assert row["speedup"] > 0
            assert (row["compile_s"] is None) == (row["method"] == distances.SCIPY)
        eigh64 = next(r for r in rows if r["method"] == "eigh_float64")
        assert eigh64["value"] == pytest.approx(case["reference_eigh"], rel=1e-6)  # same route


def test_distance_summary_and_table(distance_run):
    result, printed = distance_run
    summary = result["distances"]["summary"]
    assert summary["speedup_target"] == distances.SPEEDUP_TARGET
    assert summary["dim"] == 24
    image_cases = [c["name"] for c in result["distances"]["cases"] if c["source"] == "images"]
    methods = {"jaxsqrtm_float32", "jaxsqrtm_float64", "jaxsqrtm_features_float32"}
    found = {(e["case"], e["method"]) for e in summary["speedup"]}
    assert found == {(case, method) for case in image_cases for method in methods}
    for entry in summary["speedup"]:
        assert entry["met"] == (entry["speedup"] >= distances.SPEEDUP_TARGET)
    assert report.DISTANCES_TITLE in printed
    assert "Speed target" in printed
    assert "Time and error per shape" not in printed  # no root workload ran
    for case in result["distances"]["cases"]:
        assert case["label"] in printed


def test_quick_preset_shrinks_the_distance_cases():
    quick, full = workloads.quick_settings(), workloads.Settings()
    assert full.distance_dim == 2048
    assert min(full.distance_samples) < full.distance_dim < max(full.distance_samples)
    assert quick.distance_dim < full.distance_dim
    assert min(quick.distance_samples) < quick.distance_dim < max(quick.distance_samples)
    assert "distances" in full.workloads
    assert "distances" not in quick.workloads


def test_scipy_formula_falls_back_to_an_offset_when_not_finite(monkeypatch):
    scipy_linalg = pytest.importorskip("scipy.linalg")
    calls = []
    real_sqrtm = scipy_linalg.sqrtm

    def sqrtm(a):
        calls.append(a)
        return np.full_like(a, np.nan) if len(calls) == 1 else real_sqrtm(a)

    monkeypatch.setattr(scipy_linalg, "sqrtm", sqrtm)
    s = np.diag([4.0, 1.0])
    value = distances.scipy_fid(np.zeros(2), s, np.ones(2), s)
    assert len(calls) == 2
    np.testing.assert_allclose(calls[1], (s + 1e-6 * np.eye(2)) @ (s + 1e-6 * np.eye(2)))
    assert value == pytest.approx(2.0, abs=1e-5)  # |mu1 - mu2|^2 + tr S + tr S - 2 tr S


def test_polar_workload_runs_at_a_tiny_size(tmp_path):
    """Every column on a wide stack, the speed ratio and the bfloat16 counts."""
    from jaxsqrtm.bench import polar

    json_path = tmp_path / "bench.json"
    args = ["--quick", "--workloads", "polar", "--polar-layers", "2", "--repeats", "1"]
    args += ["--polar-shapes", "6x10", "--polar-bf16-count", "3", "--no-progress"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert bench.main([*args, "--json", str(json_path)]) == 0
    figures = json.loads(json_path.read_text())["polar"]
    names = {c.name for c in polar.available_columns()}
    for shape in ([6, 10],):
        rows = {r["method"]: r for r in figures["rows"] if r["shape"] == shape}
        assert set(rows) == names
        for name, row in rows.items():
            if row["fails"]:  # only QDWH may fail (it does for m < n)
                assert name == "scipy_polar"
                continue
            assert row["finite"] and row["median_s"] > 0
            assert row["error"] < (0.5 if name.startswith("quintic") or name == "optax" else 0.05)
        if "optax" in rows:
            assert rows["quintic"]["error"] == pytest.approx(rows["optax"]["error"], rel=1e-3)
    assert len(figures["summary"]["speed"]) == (1 if polar.has_optax() else 0)
    bf16 = figures["bfloat16"]
    assert bf16["count"] == 3
    assert set(bf16["methods"]) == set(polar.BF16_METHODS)
    assert all(e["nonfinite"] == 0 for e in bf16["methods"].values())
    assert report.POLAR_TITLE in stdout.getvalue()


def test_powers_workload_runs_at_a_tiny_size(tmp_path):
    """Every column at p = 4 on a 2 x 8 x 8 batch: errors, times and the cost ratio."""
    from jaxsqrtm.bench import powers

    json_path = tmp_path / "bench.json"
    args = ["--quick", "--workloads", "powers", "--power-batch", "2", "--power-n", "8"]
    args += ["--power-exponents", "4", "--power-kappa", "10", "--repeats", "1", "--no-progress"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert bench.main([*args, "--json", str(json_path)]) == 0
    figures = json.loads(json_path.read_text())["powers"]
    assert figures["shape"] == [2, 8, 8]
    rows = {r["method"]: r for r in figures["rows"]}
    assert set(rows) == {c.name for c in powers.available_columns()}
    for name, row in rows.items():
        assert row["finite"] and row["median_s"] > 0
        assert row["error"] < (1e-12 if row["dtype"] == "float64" else 1e-5), name
    assert figures["summary"]["cost_ratio"] > 0
    assert report.POWERS_TITLE in stdout.getvalue()


def test_cost_model():
    """Products at an H100's dense throughputs: the issue's arithmetic (3x needs a
    bfloat16 share of 0.715 at an unchanged count) and the units."""
    from jaxsqrtm.bench import cost_model

    assert cost_model.break_even_share() == pytest.approx(0.7151, abs=1e-4)
    all_fp32 = {"float32": 100}
    assert cost_model.speedup(all_fp32, {"bfloat16": 72, "float32": 28}) == pytest.approx(
        1 / (0.28 + 0.72 * 67 / 990)
    )
    seconds = cost_model.product_seconds({"bfloat16": 3}, n=1024, batch=2)
    assert seconds == pytest.approx(3 * 2 * 2 * 1024**3 / 990e12)
    assert cost_model.share({"bfloat16": 3, "float32": 1}) == 0.75
    with pytest.raises(ValueError, match="fp8"):
        cost_model.product_seconds({"fp8": 1}, n=4)


def test_precision_workload_runs_at_a_tiny_size(tmp_path):
    """--precision adds the workload: both precisions of sqrtm, the polar factor and
    A^(-1/4) on a 2 x 8 x 8 batch, with times, errors, products per kind and the
    estimate."""
    json_path = tmp_path / "bench.json"
    args = ["--quick", "--workloads", "batch", "--batches", "1", "--batch-n", "8"]
    args += ["--methods", "eigh", "--functions", "sqrtm", "--repeats", "1", "--no-progress"]
    args += ["--precision", "highest,mixed", "--precision-shapes", "2x8"]
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        assert bench.main([*args, "--json", str(json_path)]) == 0
    figures = json.loads(json_path.read_text())["precision"]
    assert [(r["function"], r["precision"]) for r in figures["rows"]] == [
        ("sqrtm", "highest"),
        ("sqrtm", "mixed"),
        ("polar", "highest"),
        ("polar", "mixed"),
        ("power", "highest"),
        ("power", "mixed"),
    ]
    for row in figures["rows"]:
        assert row["finite"] and row["forward_backward"]["median_s"] > 0
        assert row["error"]["forward"] < 1e-5 and row["error"]["gradient"] < 1e-4
        if row["precision"] == "mixed":
            assert row["bfloat16_share"] > 0.6 and row["estimated_speedup"] > 1
        else:
            assert set(row["products"]) == {"float32"} and row["estimated_speedup"] == 1
    assert report.PRECISION_TITLE in stdout.getvalue()
