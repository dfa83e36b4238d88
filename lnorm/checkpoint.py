"""Orbax checkpoints of a training run, in `run_dir/checkpoints/<step>/`.

Each checkpoint has three items, so that a model can be loaded without its optimiser:
- `model`: `{"params": ..., "rest": ...}` (the nnx.State of `nnx.Param`s and of everything
  else: batch statistics, RNG streams);
- `train`: optimiser state, the on-device metric accumulator and the step;
- `meta`: JSON (the latest logged metrics, so a finished run can answer without training).
Orbax writes into a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint as the latest one. Typed PRNG keys (nnx RNG streams) are
stored as their raw key data and re-wrapped on restore.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # the best checkpoint by `train.select_metric` (model and meta only)


def _is_key(x: Any) -> bool:
    return hasattr(x, "dtype") and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _to_storable(tree: Any) -> Any:
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


def _abstract(like: Any) -> Any:
    """Shape/dtype/sharding target for restoring into the structure of `like`."""
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, _to_storable(like))


def _from_storable(restored: Any, like: Any) -> Any:
    return jax.tree.map(
        lambda t, x: jax.random.wrap_key_data(x, impl=jax.random.key_impl(t)) if _is_key(t) else x,
        like, restored,
    )


class Checkpointer:
    """A thin wrapper of `ocp.CheckpointManager` for the trainer's three items.

    Saves are synchronous: the trainer donates its state buffers to the next step, and a
    checkpoint must be complete on disk before the run moves on.
    """

    def __init__(self, directory: str | os.PathLike, *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep_checkpoints={keep}: expected at least 1")
        self.directory = Path(directory).absolute()
        self._manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=keep, create=True, enable_async_checkpointing=False),
        )

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, model: Any, meta: dict[str, Any], train: Any = None) -> None:
        items = dict(model=ocp.args.StandardSave(_to_storable(model)),
                     meta=ocp.args.JsonSave(meta))
        if train is not None:
            items["train"] = ocp.args.StandardSave(_to_storable(train))
        if step in self._manager.all_steps():
            # Left by an interrupted attempt that got further (the best checkpoint is saved
            # between regular checkpoints); the resumed run reproduces it exactly.
            self._manager.delete(step)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()

    def restore(self, step: int, *, model: Any = None, train: Any = None) -> dict[str, Any]:
        """Restores `meta` and the items given a template (concrete or abstract arrays of the
        same structure, carrying the target shardings). Returns a dict of the restored items."""
        args: dict[str, Any] = {"meta": ocp.args.JsonRestore()}
        templates = {"model": model, "train": train}
        for name, like in templates.items():
            if like is not None:
                args[name] = ocp.args.StandardRestore(_abstract(like))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**args))
        except (ValueError, KeyError, TypeError) as e:
            raise ValueError(
                f"checkpoint {self.directory / str(step)} does not match this model/optimiser "
                f"(changed architecture or config?): {e}"
            ) from e
        restored = {"meta": out["meta"]}
        for name, like in templates.items():
            if like is not None:
                restored[name] = _from_storable(out[name], like)
        return restored

    def load_model(self, step: int, model: nnx.Module) -> None:
        """Loads checkpoint `step`'s parameters and model state into `model`, in place."""
        _, params, rest = nnx.split(model, nnx.Param, ...)
        restored = self.restore(step, model={"params": params, "rest": rest})["model"]
        nnx.update(model, restored["params"], restored["rest"])

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def checkpoint_steps(run_dir: str | os.PathLike) -> dict[str, list[int]]:
    """The saved steps of a run: `{"last": [...], "best": [...]}` (ascending)."""
    steps = {}
    for name, sub in (("last", CHECKPOINT_DIR), ("best", BEST_DIR)):
        directory = Path(run_dir) / sub
        steps[name] = sorted(int(p.name) for p in directory.iterdir()
                             if p.name.isdigit()) if directory.is_dir() else []
    return steps


def load_model(run_dir: str | os.PathLike, model: nnx.Module,
               step: int | str | None = None) -> int:
    """Loads a run's checkpoint into `model` in place (e.g. for a test evaluation or sampling):
    `step` is a step number, "last" (default) or "best" (the checkpoint selected by
    `train.select_metric`). Returns the step loaded."""
    steps = checkpoint_steps(run_dir)
    run_dir = Path(run_dir)
    if step == "best":
        if not steps["best"]:
            raise FileNotFoundError(f"no best checkpoint in {run_dir / BEST_DIR} (the run has "
                                    "no train.select_metric, or has not evaluated yet)")
        step, sub = steps["best"][-1], BEST_DIR
    elif step in (None, "last"):
        if not steps["last"]:
            raise FileNotFoundError(f"no checkpoint in {run_dir / CHECKPOINT_DIR}")
        step, sub = steps["last"][-1], CHECKPOINT_DIR
    else:
        step = int(step)
        sub = CHECKPOINT_DIR if step in steps["last"] else BEST_DIR
        if step not in steps["last"] + steps["best"]:
            raise FileNotFoundError(f"no checkpoint at step {step} in {run_dir}: saved steps "
                                    f"are {sorted(set(steps['last'] + steps['best']))}")
    with Checkpointer(run_dir / sub) as ckpt:
        ckpt.load_model(step, model)
    return step
