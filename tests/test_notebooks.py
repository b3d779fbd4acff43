"""The notebooks run top to bottom with their tiny defaults, and are kept without outputs."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NAMES = ("explore_shards.ipynb", "evaluate_autoencoder.ipynb", "evaluate_generation.ipynb")


@pytest.mark.parametrize("name", NAMES)
def test_the_notebook_is_stored_clean_with_a_parameters_cell(name):
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), "strip outputs before committing"
    assert "parameters" in code[0].metadata.get("tags", []), (
        "the first code cell holds the papermill parameters"
    )
    assert "os.environ.get(" in code[0].source


@pytest.mark.timeout(600)
@pytest.mark.parametrize("name", NAMES)
def test_the_notebook_runs_with_its_tiny_defaults(name, monkeypatch, tmp_path):
    for var in [v for v in os.environ if v.startswith("NATIVE3D_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv(
        "TMPDIR", str(tmp_path)
    )  # the kernel's work folders land in pytest's tmp, which pytest prunes
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    client = NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    client.execute()  # raises CellExecutionError naming the failing cell
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert any("image/png" in o.get("data", {}) for o in outputs), "the notebook draws its figures"
    assert any(tmp_path.glob("native3d-*")), "the notebook worked under TMPDIR"
