"""The only Hydra entry point: `python -m experiments.run +exp=NAME [scale=small] [key=value ...]`.

`main` only wraps `run(cfg, run_dir)`, a plain function the tests call directly. Hydra stops
here: everything below receives plain dataclasses.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import hydra
import jax
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import experiments
from experiments import schema
from experiments.schema import ConfigError
from lnorm.checkpoint import (
    BEST_DIR,
    CHECKPOINT_DIR,
    CheckpointMismatchError,
    DamagedCheckpointError,
    checkpoint_steps,
)
from lnorm.data.common import DataError
from lnorm.logger import METRICS_FILE, SUMMARY_FILE, WANDB_ID_FILE, RunLogger, WandbConfig
from lnorm.parallel import check_batch_size, initialize_from_environment
from lnorm.runinfo import (
    RUN_INFO_FILE,
    config_changes,
    flatten,
    read_run_info,
    write_run_info,
)
from lnorm.runlock import LOCK_FILE, RunLock, RunLockedError
from lnorm.trainer import Interrupted, NonFiniteLossError, train

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


def resolve(cfg: DictConfig | dict) -> tuple[schema.RunConfig, dict[str, Any], ModuleType]:
    """Checks `cfg` against the schema and the chosen experiment's own sections.

    Returns the config as dataclasses, the same as a plain resolved dict (what the run records),
    and the experiment package.
    """
    name = cfg.get("name")
    module = experiments.load(name)
    base = _schema(module)
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
    try:
        WandbConfig(mode=conf.logger.wandb.mode, init_timeout_s=conf.logger.wandb.init_timeout_s)
    except ValueError as e:
        raise ConfigError(str(e).replace("WandbConfig.", "logger.wandb.")) from None
    batch_size = getattr(conf.data, "batch_size", None)
    if batch_size is not None:
        try:
            check_batch_size(batch_size, "data.batch_size")
        except ValueError as e:
            raise ConfigError(str(e)) from None
    return conf, resolved, module


def _schema(module: ModuleType) -> DictConfig:
    """The run config's schema with the experiment's data and model sections (their defaults)."""
    base = OmegaConf.structured(schema.RunConfig)
    base.data = OmegaConf.structured(module.DataConfig)
    base.model = OmegaConf.structured(module.ModelConfig)
    return base


def use_compile_cache(path: str | None) -> None:
    """JAX's persistent compilation cache in `path` (`compile_cache=`): a sweep's jobs, resumes
    and reruns load a compiled training step instead of compiling it again (an LSTM step:
    2.5 s -> 0.2 s). Only compilations over half a second are stored."""
    if path:
        jax.config.update("jax_compilation_cache_dir", os.path.expanduser(path))
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def run(cfg: DictConfig | dict, run_dir: str | Path) -> dict[str, float]:
    """Builds the experiment named by `cfg.name` and trains it in `run_dir` (resuming if the
    directory already holds a checkpoint of the same config). Returns the final metrics."""
    conf, resolved, module = resolve(cfg)
    use_compile_cache(conf.compile_cache)
    run_dir = Path(run_dir)
    with RunLock(run_dir):
        steps = checkpoint_steps(run_dir)["last"]
        previous = read_run_info(run_dir) if steps else None
        defaults = flatten(OmegaConf.to_container(_schema(module)))
        changes = (config_changes(previous["config"], resolved, defaults=defaults)
                   if previous else {})
        if changes and not conf.force_resume:
            listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in changes.items())
            raise ConfigError(
                f"{run_dir} holds a run (step {steps[-1]}) with a different config: {listed}. "
                "Resume it with its own config, start a fresh directory, or add "
                "force_resume=true to continue with the new values (recorded in "
                "run_info.json)")
        write_run_info(run_dir, resolved, conf.seed, previous=previous, forced=changes)
        if not steps:  # a fresh start is a new W&B run, not the continuation of an old one
            (run_dir / WANDB_ID_FILE).unlink(missing_ok=True)
        task = module.build(conf, run_dir)
        _header(conf, run_dir, steps[-1] if steps else None, task)
        with RunLogger(run_dir, config=resolved, wandb=_wandb(conf, run_dir)) as logger:
            return train(task, conf.train, run_dir, logger, context=conf)


def _wandb(conf: schema.RunConfig, run_dir: Path) -> WandbConfig:
    w = conf.logger.wandb
    return WandbConfig(mode=w.mode, project=w.project, entity=w.entity, group=conf.name,
                       init_timeout_s=w.init_timeout_s,
                       tags=(f"norm={conf.norm.name}", conf.name, f"scale={conf.scale}"),
                       name=f"{conf.name}-{run_dir.name}")


def _header(conf: schema.RunConfig, run_dir: Path, step: int | None, task: Any) -> None:
    """What a person needs to know about the run before its progress bar."""
    devices = jax.devices()
    start = f"resuming from step {step}" if step else "fresh start"
    lines = [f"lnorm {conf.name} (scale={conf.scale}, norm={conf.norm.name}, seed={conf.seed}, "
             f"dtype={conf.train.dtype})",
             f"  run dir: {run_dir}",
             f"  devices: {len(devices)} x {devices[0].device_kind} "
             f"({jax.process_count()} process(es)); {start}"]
    if task.data_source:
        lines.append(f"  data:    {task.data_source}")
    if jax.process_index() == 0:
        print("\n".join(lines), flush=True)


def _remove_fresh(run_dir: Path) -> None:
    """Removes what a run that failed before its first checkpoint wrote (the files the
    project and Hydra put there, nothing else), and the directory once empty."""
    if not run_dir.is_dir() or checkpoint_steps(run_dir)["last"]:
        return
    for name in (RUN_INFO_FILE, METRICS_FILE, SUMMARY_FILE, LOCK_FILE, WANDB_ID_FILE, "run.log",
                 "permutation.npy"):
        (run_dir / name).unlink(missing_ok=True)
    for name in (".hydra", "wandb", CHECKPOINT_DIR, BEST_DIR, "artifacts"):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    for directory in (run_dir, *run_dir.parents):
        if directory == Path.cwd() or not directory.exists() or any(directory.iterdir()):
            break
        directory.rmdir()


def _exit_with(message: str, run_dir: Path | None = None) -> None:
    """Prints a one-line error (the traceback with HYDRA_FULL_ERROR=1 or --debug), removes
    what a run that never got going wrote, and exits with code 2."""
    if os.environ.get("HYDRA_FULL_ERROR") == "1":
        raise
    if run_dir is not None:
        _remove_fresh(run_dir)
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def precheck(argv: list[str]) -> None:
    """Rejects an unknown or unimplemented experiment, or an unknown scale, before Hydra
    composes (whose own error would only say that a config file is missing)."""
    names = [a.split("=", 1)[1] for a in argv if a.split("=", 1)[0] in ("+exp", "exp")]
    # configs/paper/ options (`paper=EXP-NORM`, swept by `+sweep=paper`) include their experiment.
    by_paper = any(a.split("=", 1)[0] in ("+paper", "paper") or a == "+sweep=paper" for a in argv)
    if not any(a.startswith(("-h", "--help", "--hydra-help", "--info", "--cfg")) for a in argv):
        for value in names or ([] if by_paper else [None]):
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
    except Interrupted as e:
        command = " ".join(shlex.quote(a) for a in [
            "python", "-m", "experiments.run", *HydraConfig.get().overrides.task,
            f"hydra.run.dir={run_dir}"])
        print(f"\n{e}.\nResume with: {command}", file=sys.stderr)
        sys.exit(128 + e.signum)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except (experiments.UnknownExperimentError, ConfigError, DataError, RunLockedError,
            DamagedCheckpointError, CheckpointMismatchError) as e:
        _exit_with(str(e), None if isinstance(e, RunLockedError) else run_dir)
    print("final metrics: " + ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))


if __name__ == "__main__":
    initialize_from_environment()  # one of several processes (SLURM, TPU pod): jax.distributed
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
        os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        precheck(sys.argv[1:])
    except (experiments.UnknownExperimentError, ConfigError) as e:
        _exit_with(str(e))
    main()
