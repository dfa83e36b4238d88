"""The only Hydra entry point: `python -m experiments.run +exp=NAME [scale=small] [key=value ...]`.

`main` only wraps `run(cfg, run_dir)`, a plain function the tests call directly. Hydra stops
here: everything below receives plain dataclasses.
"""

from __future__ import annotations

import hashlib
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
from lnorm.parallel import check_batch_size
from lnorm.runinfo import write_run_info
from lnorm.trainer import train

schema.register()
SUBDIR_CHARS = 80


def short_name(overrides: str) -> str:
    """A sweep job's directory name from its overrides: as they are when short, else cut and
    suffixed with a hash of the whole (unique, and far below the 255-byte file-name limit).
    The full overrides are in the job's run_info.json."""
    name = overrides.replace("/", "_")
    if len(name) <= SUBDIR_CHARS:
        return name
    return f"{name[:SUBDIR_CHARS - 9]}-{hashlib.sha1(name.encode()).hexdigest()[:8]}"


OmegaConf.register_new_resolver("short_name", short_name, replace=True)


class ConfigError(ValueError):
    """The composed config does not match the schema (unknown key, wrong type, missing value,
    a value out of range)."""


def resolve(cfg: DictConfig | dict) -> tuple[schema.RunConfig, dict[str, Any], ModuleType]:
    """Checks `cfg` against the schema and the chosen experiment's own sections.

    Returns the config as dataclasses, the same as a plain resolved dict (what the run records),
    and the experiment package.
    """
    name = cfg.get("name")
    module = experiments.load(name)
    base = OmegaConf.structured(schema.RunConfig)
    base.data = OmegaConf.structured(module.DataConfig)
    base.model = OmegaConf.structured(module.ModelConfig)
    plain = OmegaConf.to_container(cfg) if isinstance(cfg, DictConfig) else cfg
    try:
        # Merge a plain copy: a Hydra-composed config carries its schema type and open flags,
        # and would let keys added with `+key=value` through.
        merged = OmegaConf.merge(base, plain)
        OmegaConf.resolve(merged)
        resolved = OmegaConf.to_container(merged, throw_on_missing=True)
        conf = OmegaConf.to_object(merged)
    except (OmegaConfBaseException, ValueError) as e:
        raise ConfigError(f"invalid config for experiment {name!r}: {e}") from None
    if conf.scale not in schema.SCALES:
        raise ConfigError(f"scale={conf.scale!r}: expected one of {schema.SCALES}")
    batch_size = getattr(conf.data, "batch_size", None)
    if batch_size is not None:
        try:
            check_batch_size(batch_size, "data.batch_size")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return conf, resolved, module


def run(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, float]:
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
        tags=(f"norm={conf.norm.name}", conf.name, f"scale={conf.scale}"),
        name=f"{conf.name}-{run_dir.name}",
    )
    with RunLogger(run_dir, config=resolved, wandb=wandb) as logger:
        return train(task, conf.train, run_dir, logger, context=conf)


def _exit_with(message: str, run_dir: Path | None = None) -> None:
    """A rejected config never started a run: removes the directories Hydra made for it,
    prints the error and exits with code 2."""
    if run_dir is not None:
        shutil.rmtree(run_dir, ignore_errors=True)
        for parent in run_dir.parents:
            if parent == Path.cwd() or not parent.exists() or any(parent.iterdir()):
                break
            parent.rmdir()
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def precheck(argv: list[str]) -> None:
    """Rejects an unknown or unimplemented experiment, or an unknown scale, before Hydra
    composes (whose own error would only say that a config file is missing)."""
    names = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in ("+exp", "exp")]
    if not any(a.startswith(("-h", "--help", "--hydra-help", "--info", "--cfg")) for a in argv):
        for value in names or [None]:
            for name in str(value).split(",") if value else [None]:
                experiments.check(name)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key.lstrip("+") == "scale":
            bad = [v for v in value.split(",") if v not in schema.SCALES]
            if bad:
                raise ConfigError(f"scale={value}: expected one of {schema.SCALES}")


@hydra.main(config_path="../configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        metrics = run(cfg, run_dir)
    except (experiments.UnknownExperimentError, ConfigError) as e:
        _exit_with(str(e), run_dir)
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    try:
        precheck(sys.argv[1:])
    except (experiments.UnknownExperimentError, ConfigError) as e:
        _exit_with(str(e))
    main()
