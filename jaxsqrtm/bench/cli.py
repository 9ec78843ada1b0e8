"""Command line of ``python -m jaxsqrtm.bench``."""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import sys

from jaxsqrtm import testing
from jaxsqrtm.bench import blas, cases, precision, report, runner, workloads

DESCRIPTION = """\
Time and accuracy of jaxsqrtm's matrix square roots against batch size and matrix size,
at the application shapes, next to eigh and jax.scipy.linalg.sqrtm: forward and
forward+backward medians over interleaved repeats, compile time, a roofline ratio
(time / (products x time of one batched product)), the relative error against a float64
reference and the memory of reverse mode. The distances workload computes the Fréchet
distance (FID) of real-image features with SciPy's formula (pytorch-fid's), float32 and
float64 eigh, OTT-JAX's costs.Bures (if installed) and jaxsqrtm, and compares their errors
and times. The powers workload times inverse p-th roots A^(-1/p) of a batch of
statistics: jaxsqrtm.fractional_matrix_power, float32 eigh and optax's
matrix_inverse_pth_root, with inv_sqrtm and float64 eigh on the same input. The polar
workload orthogonalises stacks of L x m x n matrices with jaxsqrtm.polar's methods,
optax's Muon orthogonalisation and jax.scipy.linalg.polar, and counts bfloat16 outliers
on gradient-like matrices. The precision workload (--precision highest,mixed) times
sqrtm and inv_sqrtm at each product precision and turns their products per precision into
an expected accelerator speed-up (an H100 cost model). BLAS libraries are held to one
thread during the run (threadpoolctl), so that LAPACK does not compete with XLA for the
cores. Prints Markdown tables to stdout (with --quick, one screen); --json keeps every
figure."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(item) for item in text.split(",") if item.strip())


def _shapes(text: str) -> tuple[tuple[int, int], ...]:
    """``"512x2048,1024x1024"`` as ``((512, 2048), (1024, 1024))``."""
    try:
        return tuple(
            tuple(int(side) for side in item.lower().split("x", 1))
            for item in text.split(",")
            if item.strip()
        )
    except ValueError:
        raise argparse.ArgumentTypeError(f"shapes are MxN, comma-separated, got {text!r}") from None


def _names(choices):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(item.strip() for item in text.split(",") if item.strip())
        unknown = [name for name in names if name not in choices]
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {tuple(choices)}")
        return names

    return parse


def parser() -> argparse.ArgumentParser:
    """The argument parser; every option left out keeps the preset's value."""
    p = argparse.ArgumentParser(prog="python -m jaxsqrtm.bench", description=DESCRIPTION)
    quick_help = "3 shapes, < 2 min on 2 cores, one screen of output"
    p.add_argument("--quick", action="store_true", help=quick_help)
    p.add_argument("--json", type=pathlib.Path, help="write every figure and setting here")
    p.add_argument("--plot", type=pathlib.Path, help="write PNG figures into this directory")
    p.add_argument("--markdown", type=pathlib.Path, help="also write the tables to this file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sweep = p.add_argument_group("workloads (comma-separated lists)")
    sweep.add_argument("--workloads", type=_names(workloads.WORKLOAD_KINDS))
    sweep.add_argument("--batches", type=_ints, help="batch sizes of the batch sweep")
    sweep.add_argument("--batch-n", dest="batch_sweep_n", type=int, help="n of the batch sweep")
    sweep.add_argument("--sizes", type=_ints, help="matrix sizes of the size sweep")
    sweep.add_argument("--size-batch", dest="size_sweep_batch", type=int)
    sweep.add_argument("--pooling-batch", type=int, help="batch of covariance pooling (x256x256)")
    sweep.add_argument("--methods", type=_names((*_library_methods(), cases.STOCK)))
    sweep.add_argument("--functions", type=_names(cases.FUNCTIONS))
    sweep.add_argument("--dtypes", type=_names(workloads.DTYPES), help="of sweeps and targets")
    sweep.add_argument("--app-dtypes", dest="application_dtypes", type=_names(workloads.DTYPES))
    dim_help = "feature dimension of the distances workload's image cases"
    sweep.add_argument("--distance-dim", type=int, help=dim_help)
    samples_help = "samples per feature set, one image case each"
    sweep.add_argument("--distance-samples", type=_ints, help=samples_help)
    sweep.add_argument("--power-batch", type=int, help="B of the powers workload's B x n x n")
    sweep.add_argument("--power-n", type=int, help="n of the powers workload (target: 1024)")
    sweep.add_argument("--power-kappa", type=float, help="condition number of its statistics")
    sweep.add_argument("--power-exponents", type=_ints, help="p of its roots A^(-1/p)")
    sweep.add_argument("--polar-layers", type=int, help="L of the polar workload's L x m x n")
    sweep.add_argument("--polar-shapes", type=_shapes, help="its m x n, e.g. 512x2048,1024x1024")
    bf16_help = "gradient-like matrices of its bfloat16 measurement"
    sweep.add_argument("--polar-bf16-count", type=int, help=bf16_help)
    precision_help = "precisions of the precision workload (added to the run), e.g. highest,mixed"
    sweep.add_argument(
        "--precision", dest="precisions", type=_names(precision.PRECISIONS), help=precision_help
    )
    sweep.add_argument("--precision-shapes", type=_shapes, help="its BxN, e.g. 64x64,1x1024")
    measure = p.add_argument_group("measurement")
    measure.add_argument("--repeats", type=int, help="interleaved timed samples per case")
    measure.add_argument("--warmup", type=int, help="untimed calls per case")
    measure.add_argument("--min-sample-seconds", dest="min_sample_s", type=float)
    measure.add_argument("--min-repeats", type=int, help="samples even for slow cases")
    measure.add_argument("--max-case-seconds", dest="max_case_s", type=float)
    measure.add_argument("--kappa", type=float, help="condition number of the inputs")
    measure.add_argument("--spectrum", choices=testing.SPECTRA)
    measure.add_argument("--seed", type=int)
    return p


def _library_methods() -> tuple[str, ...]:
    import jaxsqrtm

    return jaxsqrtm.METHODS


def settings_from(args: argparse.Namespace) -> workloads.Settings:
    """The preset (full or ``--quick``) with every given option applied."""
    fields = {f.name for f in dataclasses.fields(workloads.Settings)}
    given = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    settings = workloads.quick_settings(**given) if args.quick else workloads.Settings(**given)
    if args.precisions and "precision" not in settings.workloads:
        settings = dataclasses.replace(settings, workloads=(*settings.workloads, "precision"))
    return settings


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; write the JSON, figures and tables asked for."""
    args = parser().parse_args(argv)
    settings = settings_from(args)
    if min(settings.repeats, settings.warmup, settings.min_repeats) < 1:
        parser().error("--repeats, --warmup and --min-repeats must be at least 1")
    with blas.one_thread():
        result = runner.run_benchmark(settings, progress=not args.no_progress)
    text = report.markdown(result, compact=args.quick)
    print(text)
    if args.markdown:
        args.markdown.write_text(text, encoding="utf-8")
    if args.json:
        args.json.write_text(report.to_json(result), encoding="utf-8")
    if args.plot:
        from jaxsqrtm.bench import plot

        for path in plot.write_figures(result, args.plot):
            print(f"wrote {path}", file=sys.stderr)
    print(f"total {result['elapsed_s']:.1f} s", file=sys.stderr)
    return 0
