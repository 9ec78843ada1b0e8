"""``python -m jaxsqrtm`` runs in a fresh process and prints its header, legend and tables.

No timing is asserted: only that the command runs, says that BLAS was held to one thread,
explains its columns and reports every method on both matrices.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

import jaxsqrtm

pytest.importorskip("sklearn")
pytest.importorskip("skimage")


@pytest.fixture(scope="module")
def printed() -> str:
    """What ``python -m jaxsqrtm --repeats 1`` prints (the environment is inherited)."""
    done = subprocess.run(
        [sys.executable, "-m", "jaxsqrtm", "--repeats", "1"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_header_reports_one_blas_thread(printed):
    pytest.importorskip("threadpoolctl")
    first_paragraph = printed.split("\n\n")[0]
    assert f"jaxsqrtm {jaxsqrtm.__version__}" in first_paragraph
    assert "BLAS threads: 1 (" in " ".join(first_paragraph.split())


def test_legend_explains_columns_and_methods(printed):
    assert "Legend:" in printed
    for entry in ("- ms:", "- error:", "- mpa, mtp, ns: the paper's rough settings", "- eigh:"):
        assert entry in printed


def test_every_method_on_both_matrices(printed):
    digits, astronaut = printed.split("digits pixels")[1].split("astronaut patches")
    methods = set(jaxsqrtm.METHODS)
    assert table_cells(digits) == {("sqrtm", method) for method in methods}
    assert table_cells(astronaut) == {(f, m) for f in ("sqrtm", "inv_sqrtm") for m in methods}


def table_cells(text: str) -> set[tuple[str, str]]:
    """The (function, method) pairs of the Markdown table rows in ``text``."""
    rows = [line.strip("|").split("|") for line in text.splitlines() if line.startswith("|")]
    pairs = {(cells[0].strip(), cells[1].strip()) for cells in rows}
    return pairs - {("function", "method")} - {p for p in pairs if p[0].startswith("-")}
