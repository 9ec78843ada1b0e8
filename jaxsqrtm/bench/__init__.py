"""Benchmark of jaxsqrtm against batch size, matrix size and application shapes.

Run ``python -m jaxsqrtm.bench --help``. From Python::

    from jaxsqrtm import bench
    from jaxsqrtm.bench import blas

    with blas.one_thread():  # LAPACK's threads must not compete with XLA's
        result = bench.run_benchmark(bench.quick_settings(sizes=(16, 32)))
    print(bench.markdown(result, compact=True))

Timing needs only JAX and NumPy; holding BLAS to one thread needs ``threadpoolctl``,
the progress bar uses ``tqdm`` when installed, the figures need ``matplotlib`` and the
decorrelated-BN input ``scikit-learn`` (all in the ``demo`` extra).
"""

from jaxsqrtm.bench.cli import main
from jaxsqrtm.bench.report import markdown, to_json
from jaxsqrtm.bench.runner import run_benchmark
from jaxsqrtm.bench.workloads import Settings, quick_settings

__all__ = ["Settings", "main", "markdown", "quick_settings", "run_benchmark", "to_json"]
