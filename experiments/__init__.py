"""The paper's experiments, one package each, found by scanning this folder.

An experiment is a package `experiments/NAME/` whose `__init__.py` defines `DataConfig` and
`ModelConfig` (dataclasses: the experiment's own config sections), `build(cfg, run_dir) ->
lnorm.trainer.Task` and optionally `STAGES` (name -> `fn(model, ctx) -> results`: heavy
evaluations that `python -m experiments.evaluate RUN_DIR --stage NAME` runs), with its config in
`configs/exp/NAME.yaml` and its scales in `configs/exp/NAME/{paper,small,tiny}.yaml`. Nothing
else lists it: a package without `build` is an experiment that is not implemented yet.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

# The paper's six experiments (docs/paper.md §4), in the paper's order.
PAPER_EXPERIMENTS = ("order_embeddings", "attentive_reader", "skipthought", "draw", "handwriting",
                     "pmnist")
_HERE = Path(__file__).resolve().parent


class UnknownExperimentError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def packages() -> list[str]:
    """The experiment packages in this folder."""
    return sorted(m.name for m in pkgutil.iter_modules([str(_HERE)]) if m.ispkg)


def available() -> list[str]:
    """The implemented experiments: packages that define `build`."""
    return [name for name in packages() if _defines_build(name)]


def _defines_build(name: str) -> bool:
    return hasattr(importlib.import_module(f"experiments.{name}"), "build")


def listing() -> str:
    """Every experiment of the paper and whether it can run."""
    ready = set(available())
    names = [*PAPER_EXPERIMENTS, *(n for n in sorted(ready) if n not in PAPER_EXPERIMENTS)]
    return "\n".join(f"  {n:18s} {'ready' if n in ready else 'not implemented yet'}"
                     for n in names)


def check(name: str | None) -> None:
    """Raises UnknownExperimentError (with the listing) unless `name` is implemented."""
    if name is not None and name in available():
        return
    if name is None:
        what = "no experiment chosen"
    elif name in PAPER_EXPERIMENTS or name in packages():
        what = f"experiment {name!r} is not implemented yet"
    else:
        what = f"unknown experiment {name!r}"
    raise UnknownExperimentError(
        f"{what}; choose one with +exp=NAME:\n{listing()}")


def load(name: str | None) -> ModuleType:
    """The experiment package `name`; an unknown or unimplemented name lists the experiments."""
    check(name)
    return importlib.import_module(f"experiments.{name}")
