# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # The paper's experiments, from run directories
#
# The interactive side of `python -m scripts.report`: the same sections (curves with seed bands,
# the table per normaliser, the paper's numbers beside ours, each claim checked on the data),
# shown here instead of written to `docs/results/README.md`. Point `RUN_DIRS` at sweep or run
# directories (`python -m experiments.run -m +sweep=paper scale=small` writes
# `multirun/paper/<date>`); `X` draws the curves against `step` or training `time`.
#
# The `.ipynb` is stored with the outputs of the small-scale sweeps of docs/results/. Re-run it
# with `LNORM_RUN_DIRS=DIR[:DIR...] jupyter nbconvert --to notebook --execute --inplace
# notebooks/curves.ipynb`; after editing this `.py`, `jupytext --sync notebooks/curves.py`.

# %%
import io
import os

import matplotlib.pyplot as plt
from IPython.display import Image, Markdown, display

from scripts import report

# Run or sweep directories; by default those in $LNORM_RUN_DIRS (separated by os.pathsep).
RUN_DIRS = [p for p in os.environ.get("LNORM_RUN_DIRS", "").split(os.pathsep) if p]
X = "step"  # or "time": the trainer's time/elapsed_s
print(RUN_DIRS)

# %%
sections = report.sections(report.load(RUN_DIRS))
for name, spec in report.PAPER.items():
    found = [s for s in sections if s.name == name]
    print(f"{name:17} {spec.where:40} " + (f"{len(found[0].runs)} runs" if found else "not run"))


# %%
def show(section: report.Section) -> None:
    """One experiment: its curves, then its table, the paper's numbers and the verdicts."""
    buffer, figure = io.BytesIO(), report.draw(section, X)
    figure.savefig(buffer, format="png", dpi=70)
    plt.close(figure)
    display(Image(buffer.getvalue()))
    display(Markdown(report.section_markdown(section, None)))


for section in sections:
    show(section)
