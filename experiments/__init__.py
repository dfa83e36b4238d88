"""The paper's experiments, registered by name.

Each module `experiments/NAME.py` defines `DataConfig` and `ModelConfig` (dataclasses: the
experiment's own config sections) and `build(cfg, run_dir) -> lnorm.trainer.Task`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

# name -> module. Experiments of the paper not listed here are not implemented yet (README).
EXPERIMENTS: dict[str, str] = {
    "pmnist": "experiments.pmnist",
}


class UnknownExperimentError(KeyError):
    def __str__(self) -> str:
        return str(self.args[0])


def known() -> str:
    return ", ".join(sorted(EXPERIMENTS))


def load(name: str | None) -> ModuleType:
    """The experiment module registered as `name`; an unknown name lists the known ones."""
    if name not in EXPERIMENTS:
        what = "no experiment chosen" if name is None else f"unknown experiment {name!r}"
        raise UnknownExperimentError(
            f"{what}; choose one with +exp=NAME, where NAME is one of: {known()}"
        )
    return importlib.import_module(EXPERIMENTS[name])
