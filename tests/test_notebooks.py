"""Notebooks are jupytext percent-format drivers paired with an .ipynb stored WITH its outputs:
the pair holds the same code, the stored outputs show the result, and the notebook executes
with the dev extra (nbconvert, ipykernel) and reproduces that result."""

from __future__ import annotations

from pathlib import Path

import jupytext
import nbformat
import pytest
from nbconvert.preprocessors import ExecutePreprocessor

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.py"))

# The paper's Table 1, columns batch / weight / layer.
TABLE_1 = {
    "weight matrix re-scaling": ("invariant", "invariant", "invariant"),
    "weight matrix re-centring": ("changes", "changes", "invariant"),
    "weight vector re-scaling": ("invariant", "invariant", "changes"),
    "dataset re-scaling": ("invariant", "changes", "invariant"),
    "dataset re-centring": ("invariant", "changes", "changes"),
    "single case re-scaling": ("changes", "changes", "invariant"),
}


def _printed(nb) -> str:
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def _table(text: str) -> dict[str, tuple[str, ...]]:
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) > 3:
            rows[" ".join(words[:-3])] = tuple(words[-3:])
    return rows


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_and_stored_with_outputs(path):
    paired = path.with_suffix(".ipynb")
    assert paired.exists(), f"{paired} missing: run `jupytext --to ipynb {path}`"
    code = [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]
    nb = nbformat.read(paired, as_version=4)
    assert [c.source for c in nb.cells if c.cell_type == "code"] == code, (
        f"{paired} is out of date: run `jupytext --sync {path}` and execute it")
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code"]
    assert counts == list(range(1, len(code) + 1)), f"{paired}: not executed top to bottom"
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if o.get("output_type") == "error"]


def test_invariances_notebook_executes_and_reproduces_table_1():
    nb = nbformat.read(NOTEBOOK_DIR / "invariances.ipynb", as_version=4)
    stored = _table(_printed(nb))
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": str(NOTEBOOK_DIR)}})
    executed = _table(_printed(nb))
    for name, expected in TABLE_1.items():
        assert executed[name] == expected, name
        assert stored[name] == expected, f"stored output: {name}"
