"""``python -m jaxsqrtm``: each method's error and time on real covariance matrices.

Two real 64 x 64 covariances (needs the ``demo`` extra: scikit-learn, scikit-image):
the pixel covariance of scikit-learn's digits (rank 61: a rank-deficient root) and
the covariance of 8 x 8 grey patches of scikit-image's astronaut (full rank,
condition number 4e4). For each method, ``sqrtm`` and ``inv_sqrtm`` in float32 are
compared with a float64 ``eigh`` reference (forward and gradient for a fixed random
cotangent) and timed (median of interleaved repeats, compile time excluded) with the
benchmark's code (:mod:`jaxsqrtm.bench`), BLAS held to one thread.
"""

from __future__ import annotations

import argparse
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

import jaxsqrtm
from jaxsqrtm import testing
from jaxsqrtm.bench import blas, cases, report, runner, timing, workloads

DTYPE = "float32"


def matrices() -> dict[str, tuple[np.ndarray, bool, tuple[str, ...]]]:
    """``{title: (float64 matrix, singular, functions)}``; a singular one has no gradient."""
    digits = testing.digits_covariance()
    patches = testing.image_patch_covariance("astronaut")
    return {
        "digits pixels (rank 61, no gradient)": (digits, True, ("sqrtm",)),
        "astronaut patches": (patches, False, cases.FUNCTIONS),
    }


def measure_rows(a, cotangent, functions, singular, settings: workloads.Settings) -> list[dict]:
    """Time every method of ``functions`` on one matrix and measure its errors.

    Args:
        a: the float32 matrix.
        cotangent: the float32 cotangent of the gradient.
        functions: ``"sqrtm"`` and/or ``"inv_sqrtm"``.
        singular: the matrix is singular, so its gradient is infinite and not checked.
        settings: the measurement knobs (repeats, warm-up, sample length).

    Returns:
        One dict per function and method with ``function``, ``method``, ``forward`` and
        ``forward_backward`` time statistics and ``error`` (as the benchmark's rows).
    """
    inputs = {DTYPE: (jnp.asarray(a), jnp.asarray(cotangent))}
    timed = runner.compile_cases(cases.case_specs(functions, jaxsqrtm.METHODS, (DTYPE,)), inputs)
    runner.measure(list(timed.values()), settings)
    rows = []
    for (function, method, _), modes in runner.by_root(timed).items():
        checked = {"forward": modes["forward"]} if singular else modes
        rows.append(
            {
                "function": function,
                "method": method,
                **{mode: timing.statistics(item) for mode, item in modes.items()},
                "error": runner.errors(function, checked, *inputs[DTYPE]),
            }
        )
    return rows


def matrix_section(title: str, a: np.ndarray, rows: list[dict]) -> str:
    """A matrix's title, size and spectrum, then one table line per function and method."""
    w = np.linalg.eigvalsh(a)
    heading = f"{title}: {a.shape[0]}x{a.shape[1]}, eigenvalues {max(w[0], 0):.1e} .. {w[-1]:.1e}"
    body = [
        [row["function"], row["method"], report.times_cell(row), report.errors_cell(row)]
        for row in rows
    ]
    return heading + "\n\n" + report.table(["function", "method", "ms", "error"], body)


def header(repeats: int) -> str:
    """Versions, device and BLAS threads (as they are now), as one wrapped paragraph."""
    device = runner.device_info()
    variable = os.environ.get(blas.VARIABLE)
    return report.paragraph(
        f"jaxsqrtm {jaxsqrtm.__version__}, JAX {jax.__version__}, {report.device_text(device)}. "
        f"{blas.describe(blas.libraries(), variable)} Inputs: {DTYPE}, errors against float64; "
        f"median of up to {repeats} interleaved repeats, compile time excluded."
    )


def report_text(repeats: int = 7) -> str:
    """The text printed by ``python -m jaxsqrtm``: header, legend and one table per matrix."""
    settings = workloads.Settings(repeats=repeats)
    rng = np.random.default_rng(0)
    sections = []
    for title, (a, singular, functions) in matrices().items():
        cotangent = rng.standard_normal(a.shape).astype(DTYPE)
        rows = measure_rows(a.astype(DTYPE), cotangent, functions, singular, settings)
        sections.append(matrix_section(title, a, rows))
    legend = report.legend(("ms", "error", "methods", "eigh"))
    return "\n\n".join([header(repeats), legend, *sections])


def main(argv=None) -> int:
    """Print :func:`report_text`, with every BLAS library held to one thread meanwhile."""
    parser = argparse.ArgumentParser(prog="python -m jaxsqrtm", description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats per case")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    with blas.one_thread():
        text = report_text(args.repeats)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
