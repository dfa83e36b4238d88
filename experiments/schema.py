"""Structured config schema: every key a run may have, with its type.

Hydra composes `configs/` on top of `RunConfig`, so a wrong type fails at composition. The
experiment-specific sections `data` and `model` are checked against the experiment's own
dataclasses in `experiments.run`, so a mistyped key anywhere (`+typo=1` included) is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore

from lnorm.norms import NormSpec
from lnorm.optim import OptimConfig
from lnorm.trainer import TrainConfig

SCALES = ("paper", "small", "tiny")


def require_positive(section: str, config: object, keys: tuple[str, ...]) -> None:
    """`section.key` must be a positive integer (or null) for each of `keys` of `config`."""
    for key in keys:
        value = getattr(config, key)
        if value is not None and value < 1:
            raise ValueError(f"{section}.{key}={value}: expected a positive integer")


class ConfigError(ValueError):
    """The composed config does not match the schema (unknown key, wrong type, missing value,
    a value out of range). Defined here, not in `experiments.run`: run as `python -m`, that
    module is `__main__`, and its own class would not catch what experiments raise."""


@dataclass
class WandbSection:
    mode: str = "offline"  # offline | online | disabled
    project: str = "lnorm"
    entity: str | None = None
    init_timeout_s: float = 20.0  # online: how long to wait for the server before going on


@dataclass
class LoggerConfig:
    wandb: WandbSection = field(default_factory=WandbSection)


@dataclass
class TrainSection(TrainConfig):
    """The trainer's config; its seed and optimiser are the top-level `seed` and `optim`."""

    seed: int = "${seed}"  # type: ignore[assignment]
    optim: OptimConfig = "${optim}"  # type: ignore[assignment]


@dataclass
class RunConfig:
    name: str | None = None  # set by configs/exp/NAME.yaml
    scale: str = "paper"  # paper | small | tiny (configs/scale, configs/exp/NAME/SCALE.yaml)
    seed: int = 0
    force_resume: bool = False  # resume a run directory even though defining keys changed
    compile_cache: str | None = "~/.cache/lnorm/jax"  # JAX's persistent cache; null: off
    norm: NormSpec = field(default_factory=NormSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainSection = field(default_factory=TrainSection)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    data: Any = None  # checked against experiments.<name>.DataConfig
    model: Any = None  # checked against experiments.<name>.ModelConfig


def register() -> None:
    ConfigStore.instance().store(name="lnorm_schema", node=RunConfig)
