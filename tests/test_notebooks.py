"""Notebooks are jupytext percent-format drivers: each runs, and its paired .ipynb (stored
without outputs) holds the same code."""

from __future__ import annotations

import contextlib
import io
import runpy
from pathlib import Path

import jupytext
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.py"))

# The paper's Table 1, columns batch / weight / layer.
TABLE_1 = {
    "weight matrix re-scaling": ("invariant", "invariant", "invariant"),
    "weight matrix re-centring": ("changes", "changes", "invariant"),
    "weight vector re-scaling": ("invariant", "invariant", "changes"),
    "dataset re-scaling": ("invariant", "changes", "invariant"),
    "dataset re-centring": ("invariant", "changes", "changes"),
    "single case re-scaling": ("changes", "changes", "invariant"),
}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_paired_without_outputs(path):
    paired = path.with_suffix(".ipynb")
    assert paired.exists(), f"{paired} missing: run `jupytext --to ipynb {path}`"
    code = [c.source for c in jupytext.read(path).cells if c.cell_type == "code"]
    nb = jupytext.read(paired)
    assert [c.source for c in nb.cells if c.cell_type == "code"] == code
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code")


def test_invariances_notebook_reproduces_table_1():
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(NOTEBOOKS[0].parent / "invariances.py"), run_name="__main__")
    printed = {}
    for line in out.getvalue().splitlines():
        words = line.split()
        if len(words) > 3:
            printed[" ".join(words[:-3])] = tuple(words[-3:])
    for name, expected in TABLE_1.items():
        assert printed[name] == expected, name
