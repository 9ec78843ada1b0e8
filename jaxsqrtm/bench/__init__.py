"""Benchmark of jaxsqrtm against batch size, matrix size and application shapes.

Run ``python -m jaxsqrtm.bench --help``. From Python::

    from jaxsqrtm import bench

    result = bench.run_benchmark(bench.quick_settings(sizes=(16, 32)))
    print(bench.markdown(result))

Timing needs only JAX and NumPy; the progress bar uses ``tqdm`` when installed, the
figures need ``matplotlib`` and the decorrelated-BN input ``scikit-learn`` (the ``demo``
extra).
"""

from jaxsqrtm.bench.cli import main
from jaxsqrtm.bench.report import markdown, to_json
from jaxsqrtm.bench.runner import run_benchmark
from jaxsqrtm.bench.workloads import Settings, quick_settings

__all__ = ["Settings", "main", "markdown", "quick_settings", "run_benchmark", "to_json"]
