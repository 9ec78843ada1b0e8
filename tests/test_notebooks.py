"""The notebooks in ``notebooks/`` run top to bottom in quick mode without a cell error.

Each notebook is executed in memory with nbclient, in a fresh kernel whose working
directory is ``notebooks/`` and whose environment sets ``JAXSQRTM_NOTEBOOK_QUICK=1`` (small
sizes, few repeats and epochs). One test per notebook, so that ``pytest -n`` spreads them
over its workers. The committed files are only read, never written. A second, cheap test
checks that the committed outputs come from a full run.
"""

import pathlib

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NAMES = (
    "quickstart",
    "numerical_tests",
    "covariance_pooling",
    "style_transfer",
    "frechet_distance",
    "muon",
    "shampoo",
)
CELL_TIMEOUT_S = 600


def _read(name):
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def _code_cells(notebook):
    return [cell for cell in notebook.cells if cell.cell_type == "code"]


def _stream_text(notebook):
    return "".join(
        output.get("text", "") for cell in _code_cells(notebook) for output in cell.outputs
    )


def test_every_notebook_is_listed():
    assert sorted(path.stem for path in NOTEBOOK_DIR.glob("*.ipynb")) == sorted(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_in_quick_mode(name, monkeypatch):
    monkeypatch.setenv("JAXSQRTM_NOTEBOOK_QUICK", "1")  # inherited by the kernel
    notebook = _read(name)
    client = nbclient.NotebookClient(
        notebook,
        timeout=CELL_TIMEOUT_S,
        kernel_name="python3",
        resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
    )
    client.execute()  # raises CellExecutionError, naming the cell, on any error
    assert "quick mode: True" in _stream_text(notebook)


@pytest.mark.parametrize("name", NAMES)
def test_committed_outputs_are_from_a_full_run(name):
    cells = _code_cells(_read(name))
    assert "%pip install" in cells[0].source, "the first code cell installs jaxsqrtm"
    counts = [cell.execution_count for cell in cells]
    assert counts == list(range(1, len(cells) + 1)), "cells run once, in order, top to bottom"
    assert not [o for cell in cells for o in cell.outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for cell in cells for o in cell.outputs)
    assert "quick mode: False" in text
    assert "This notebook ran on:" in text
