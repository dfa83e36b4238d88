"""The only Hydra entry point: `python -m experiments.run +exp=NAME [key=value ...]`.

`main` only wraps `run(cfg, run_dir)`, a plain function the tests call directly. Hydra stops
here: everything below receives plain dataclasses.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import experiments
from experiments import schema
from lnorm.logger import RunLogger, WandbConfig
from lnorm.runinfo import write_run_info
from lnorm.trainer import train

schema.register()


class ConfigError(ValueError):
    """The composed config does not match the schema (unknown key, wrong type, missing value)."""


def resolve(cfg: DictConfig) -> tuple[schema.RunConfig, dict[str, Any], ModuleType]:
    """Checks `cfg` against the schema and the chosen experiment's own sections.

    Returns the config as dataclasses, the same as a plain resolved dict (what the run records),
    and the experiment module.
    """
    module = experiments.load(cfg.get("name"))
    base = OmegaConf.structured(schema.RunConfig)
    base.data = OmegaConf.structured(module.DataConfig)
    base.model = OmegaConf.structured(module.ModelConfig)
    try:
        # Merge a plain copy: a Hydra-composed config carries its schema type and open flags,
        # and would let keys added with `+key=value` through.
        merged = OmegaConf.merge(base, OmegaConf.to_container(cfg))
        OmegaConf.resolve(merged)
        resolved = OmegaConf.to_container(merged, throw_on_missing=True)
        conf = OmegaConf.to_object(merged)
    except OmegaConfBaseException as e:
        raise ConfigError(f"invalid config for experiment {cfg.get('name')!r}: {e}") from None
    return conf, resolved, module


def run(cfg: DictConfig, run_dir: str | Path) -> dict[str, float]:
    """Builds the experiment named by `cfg.name` and trains it in `run_dir` (resuming if the
    directory already holds a checkpoint). Returns the final metrics."""
    conf, resolved, module = resolve(cfg)
    run_dir = Path(run_dir)
    write_run_info(run_dir, resolved, conf.seed)
    task = module.build(conf, run_dir)
    wandb = WandbConfig(
        mode=conf.logger.wandb.mode,
        project=conf.logger.wandb.project,
        entity=conf.logger.wandb.entity,
        group=conf.name,
        tags=(f"norm={conf.norm.name}", conf.name),
        name=f"{conf.name}-{run_dir.name}",
    )
    with RunLogger(run_dir, config=resolved, wandb=wandb) as logger:
        return train(task, conf.train, run_dir, logger)


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
    except (experiments.UnknownExperimentError, ConfigError) as e:
        # A rejected config never started a run: remove the directories Hydra made for it.
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:
            if parent == Path.cwd() or any(parent.iterdir()):
                break
            parent.rmdir()
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    main()
