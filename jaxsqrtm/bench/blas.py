"""One BLAS thread while timing, so that LAPACK's threads do not compete with XLA's.

On the CPU, XLA runs a compiled program on its own thread pool, while the LAPACK calls
inside it (``eigh``, the LU solve of ``"mpa"``, ``jax.scipy.linalg.sqrtm``) go to the
OpenBLAS that jaxlib loads (SciPy's) on its first LAPACK call. OpenBLAS keeps one thread
per core, and on a busy machine its threads and XLA's fight for the same cores: a 0.15 ms
``"mpa"`` call on one 64 x 64 matrix then takes 2 to 30 ms. ``OPENBLAS_NUM_THREADS=1``
only helps when set before the library is loaded, which a command started without it
cannot arrange. :func:`one_thread` loads jaxlib's LAPACK first and then sets every
loaded BLAS library to one thread with ``threadpoolctl``, for the duration of a ``with``
block; the library modules themselves never change a thread setting.
"""

from __future__ import annotations

import contextlib
import pathlib
from collections.abc import Iterator

import jax
import jax.numpy as jnp

THREADS = 1
VARIABLE = "OPENBLAS_NUM_THREADS"
SLOW = (
    "timings of LAPACK calls (eigh, mpa's solve, stock) can be 10-200x too slow; "
    f"install threadpoolctl or set {VARIABLE}=1"
)


def load_lapack() -> None:
    """Run one 2 x 2 ``eigh`` on the CPU, so that jaxlib has loaded its LAPACK library."""
    with jax.default_device(jax.devices("cpu")[0]):
        jax.block_until_ready(jnp.linalg.eigh(jnp.eye(2)))


def libraries() -> list[dict] | None:
    """The loaded BLAS libraries and their thread counts.

    Returns:
        One dict per library (``library``, ``path``, ``version``, ``threads``), or
        ``None`` when ``threadpoolctl`` is not installed.
    """
    try:
        import threadpoolctl
    except ImportError:
        return None
    return [
        {
            "library": info["internal_api"],
            "path": info["filepath"],
            "version": info.get("version"),
            "threads": info["num_threads"],
        }
        for info in threadpoolctl.threadpool_info()
        if info["user_api"] == "blas"
    ]


@contextlib.contextmanager
def one_thread() -> Iterator[list[dict] | None]:
    """Within the block, every loaded BLAS library, jaxlib's LAPACK included, uses one thread.

    The previous thread counts are restored on exit. Without ``threadpoolctl`` nothing
    changes.

    Yields:
        :func:`libraries` as set inside the block.
    """
    load_lapack()
    try:
        import threadpoolctl
    except ImportError:
        yield None
        return
    with threadpoolctl.threadpool_limits(THREADS, user_api="blas"):
        yield libraries()


def is_limited(blas: list[dict] | None, variable: str | None) -> bool:
    """Whether LAPACK runs on one thread: every library found, or else the variable, says so.

    Args:
        blas: :func:`libraries`.
        variable: the value of ``OPENBLAS_NUM_THREADS`` when the process started.
    """
    if blas:
        return all(library["threads"] == THREADS for library in blas)
    return variable == str(THREADS)


def describe(blas: list[dict] | None, variable: str | None) -> str:
    """One sentence for a report's header: how many threads the BLAS libraries use.

    Args:
        blas: :func:`libraries`, as seen at the end of the measurements.
        variable: the value of ``OPENBLAS_NUM_THREADS`` when the process started.
    """
    if not is_limited(blas, variable):
        return f"BLAS threads NOT limited ({_thread_counts(blas)}): {SLOW}."
    names = ", ".join(_name(library) for library in blas) if blas else f"{VARIABLE}={variable}"
    return f"BLAS threads: {THREADS} ({names}), so that LAPACK calls do not compete with XLA's."


def _name(library: dict) -> str:
    """``"openblas (scipy.libs)"``: the library and the folder it was loaded from."""
    return f"{library['library']} ({pathlib.Path(library['path']).parent.name})"


def _thread_counts(blas: list[dict] | None) -> str:
    """``"openblas (scipy.libs): 2, ..."``, or why there is no count."""
    if blas is None:
        return "threadpoolctl not installed"
    if not blas:
        return "no BLAS library found"
    return ", ".join(f"{_name(library)}: {library['threads']}" for library in blas)
