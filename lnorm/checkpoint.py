"""Orbax checkpoints of a training run, in `run_dir/checkpoints/<step>/`.

Each checkpoint has three items, so that a model can be loaded without its optimiser:
- `model`: `{"params": ..., "rest": ...}` (the nnx.State of `nnx.Param`s and of everything
  else: batch statistics, RNG streams);
- `train`: optimiser state and the on-device metric accumulator;
- `meta`: JSON (the latest logged metrics, so a finished run can answer without training).
Orbax writes into a temporary directory and renames it when complete, so a run killed while
saving leaves the previous checkpoint as the latest one. Typed PRNG keys (nnx RNG streams) are
stored as their raw key data and re-wrapped on restore.

Files can still be damaged afterwards (a full disk, a copy cut short, bit rot), and orbax then
fails with a storage error that looks like any other. So each save records the size and
SHA-256 of every file of the step in `<step>/lnorm_checksums.json`, written atomically once
orbax has finished; `verify` checks them, `latest_good_step` sets a damaged checkpoint aside
(renamed `<step>.damaged`) and falls back to the previous one, and a failed restore is
diagnosed: "damaged" (checksums, or unreadable files) or "does not match this model" (the
stored shapes differ from the model's), never one for the other. A checkpoint without the file
(saved by an older version, or killed between orbax's commit and the checksums, when orbax's
own commit is complete) is not checked.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from lnorm.logger import file_digest, write_json_atomic

CHECKPOINT_DIR = "checkpoints"
BEST_DIR = "best"  # the best checkpoint by `train.select_metric` (model and meta only)
CHECKSUM_FILE = "lnorm_checksums.json"
DAMAGED_SUFFIX = ".damaged"


class DamagedCheckpointError(ValueError):
    """A checkpoint whose files differ from what was saved, or cannot be read."""


class CheckpointMismatchError(ValueError):
    """An intact checkpoint whose arrays do not fit the model/optimiser restored into."""


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


def _file_digests(step_dir: Path) -> dict[str, dict[str, Any]]:
    """`{relative path: {"size", "sha256"}}` of every file of a step but the checksum file."""
    return {
        p.relative_to(step_dir).as_posix(): {"size": p.stat().st_size, "sha256": file_digest(p)}
        for p in sorted(step_dir.rglob("*"))
        if p.is_file() and p.name != CHECKSUM_FILE and not p.name.startswith(f".{CHECKSUM_FILE}")
    }


def _check_files(step_dir: Path) -> str | None:
    """What is wrong with a step's files according to its checksum file, or None."""
    if not step_dir.is_dir():
        return "its directory is missing"
    record = step_dir / CHECKSUM_FILE
    if not record.exists():
        return None  # not recorded: see the module docstring
    try:
        files = json.loads(record.read_text())["files"]
        expected = {rel: (int(f["size"]), str(f["sha256"])) for rel, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return f"its checksum file {CHECKSUM_FILE} is unreadable"
    problems = []
    for rel, (size, sha) in expected.items():
        path = step_dir / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif (actual := path.stat().st_size) != size:
            cut = " (truncated)" if actual < size else ""
            problems.append(f"{rel} has {actual} bytes, {size} when saved{cut}")
        elif file_digest(path) != sha:
            problems.append(f"{rel} has other contents than when saved (checksum mismatch)")
    if not problems:
        return None
    more = f"; and {len(problems) - 3} more files" if len(problems) > 3 else ""
    return "; ".join(problems[:3]) + more


def _path_str(path: tuple) -> str:
    """`params/dense/kernel` for a key path (without the `value` of an nnx Variable)."""
    names = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(names[:-1] if names[-1:] == ["value"] else names)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(path): tuple(getattr(x, "shape", ())) for path, x in leaves}


def _shape_mismatch(item: str, stored: Any, like: Any) -> str | None:
    """The first difference between a stored item's arrays and the template's, or None."""
    have = _shapes(getattr(stored, "tree", stored))
    want = _shapes(_abstract(like))
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    if missing or extra:
        return (f"{item}: arrays the model has and the checkpoint lacks: {missing[:3]}; arrays "
                f"the checkpoint has and the model lacks: {extra[:3]}")
    for key, shape in want.items():
        if have[key] != shape:
            return f"{item}/{key}: shape {have[key]} saved, {shape} in this model"
    return None


class Checkpointer:
    """A thin wrapper of `ocp.CheckpointManager` for the trainer's three items, with checksums.

    Saves are synchronous: the trainer donates its state buffers to the next step, and a
    checkpoint must be complete on disk before the run moves on. `keep` is the number of
    checkpoints kept (the oldest are deleted); damaged ones set aside do not count.
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
        self._problems: dict[int, str | None] = {}  # verification results, by step

    def step_dir(self, step: int) -> Path:
        return self.directory / str(step)

    def all_steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def verify(self, step: int) -> str | None:
        """What is wrong with checkpoint `step` (missing, truncated or changed files, by their
        recorded sizes and checksums), or None when it is intact or was saved unrecorded."""
        self._problems[step] = _check_files(self.step_dir(step))
        return self._problems[step]

    def _verified(self, step: int) -> str | None:
        """`verify`, once per step and Checkpointer (the trainer asks several times)."""
        return self._problems[step] if step in self._problems else self.verify(step)

    def latest_good_step(self) -> int | None:
        """The latest checkpoint that verifies. Each later, damaged one is renamed
        `<step>.damaged` (kept for inspection, out of orbax's way) with a warning naming it
        and what is wrong; None when no checkpoint is left."""
        for step in reversed(self.all_steps()):
            problem = self._verified(step)
            if problem is None:
                return step
            self._set_aside(step, problem)
        return None

    def latest_step(self) -> int | None:
        """The checkpoint to resume from: `latest_good_step()`."""
        return self.latest_good_step()

    def _set_aside(self, step: int, problem: str) -> None:
        source = self.step_dir(step)
        target = source.with_name(source.name + DAMAGED_SUFFIX)
        n = 1
        while target.exists():
            n += 1
            target = source.with_name(f"{source.name}{DAMAGED_SUFFIX}{n}")
        if jax.process_index() == 0:
            os.replace(source, target)
        previous = [s for s in self.all_steps() if s < step]
        fallback = f"step {previous[-1]}" if previous else "none: no earlier checkpoint"
        warnings.warn(f"checkpoint {source} is damaged ({problem}); moved to {target.name}, "
                      f"falling back to the previous checkpoint ({fallback})", stacklevel=3)
        self._problems.pop(step, None)
        self._manager.reload()

    def save(self, step: int, model: Any, meta: dict[str, Any], train: Any = None) -> None:
        items = dict(model=ocp.args.StandardSave(_to_storable(model)),
                     meta=ocp.args.JsonSave(meta))
        if train is not None:
            items["train"] = ocp.args.StandardSave(_to_storable(train))
        if step in self._manager.all_steps():
            # Left by an interrupted attempt that got further (the best checkpoint is saved
            # between regular checkpoints); the resumed run reproduces it exactly.
            self._manager.delete(step)
        self._problems.pop(step, None)
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        self._manager.wait_until_finished()
        if jax.process_index() == 0:
            step_dir = self.step_dir(step)
            write_json_atomic(step_dir / CHECKSUM_FILE, {"files": _file_digests(step_dir)})
        self._problems[step] = None
        for old in set(self._problems) - set(self._manager.all_steps()):
            del self._problems[old]  # deleted by `keep`

    def restore(self, step: int, *, model: Any = None, train: Any = None) -> dict[str, Any]:
        """Restores `meta` and the items given a template (concrete or abstract arrays of the
        same structure, carrying the target shardings). Returns a dict of the restored items.

        Raises DamagedCheckpointError when the files fail verification or cannot be read, and
        CheckpointMismatchError when the stored arrays do not fit the templates."""
        where = self.step_dir(step)
        problem = self._verified(step)
        if problem is not None:
            raise DamagedCheckpointError(f"checkpoint {where} is damaged: {problem}")
        args: dict[str, Any] = {"meta": ocp.args.JsonRestore()}
        templates = {name: like for name, like in (("model", model), ("train", train))
                     if like is not None}
        for name, like in templates.items():
            args[name] = ocp.args.StandardRestore(_abstract(like))
        try:
            out = self._manager.restore(step, args=ocp.args.Composite(**args))
        except Exception as e:  # orbax/tensorstore raise many types; diagnosed below
            mismatch = self._mismatch(step, templates)
            if mismatch is not None:
                raise CheckpointMismatchError(
                    f"checkpoint {where} does not match this model/optimiser ({mismatch}): "
                    "changed architecture or config?") from e
            reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else repr(e)
            raise DamagedCheckpointError(
                f"checkpoint {where} could not be read although its array shapes match this "
                f"model; its files are damaged ({type(e).__name__}: {reason}). Move it aside "
                "to resume from the previous checkpoint.") from e
        restored = {"meta": out["meta"]}
        for name, like in templates.items():
            restored[name] = _from_storable(out[name], like)
        return restored

    def _mismatch(self, step: int, templates: dict[str, Any]) -> str | None:
        """How the stored arrays differ from the templates; None when they agree or the
        stored metadata itself is unreadable (then the files are what is wrong)."""
        try:
            stored = self._manager.item_metadata(step)
            return next((m for name, like in templates.items()
                         if (m := _shape_mismatch(name, stored[name], like)) is not None), None)
        except Exception:  # unreadable metadata: damaged, not a mismatch
            return None

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
    """The saved steps of a run: `{"last": [...], "best": [...]}` (ascending; damaged ones set
    aside are not listed)."""
    steps = {}
    for name, sub in (("last", CHECKPOINT_DIR), ("best", BEST_DIR)):
        directory = Path(run_dir) / sub
        steps[name] = sorted(int(p.name) for p in directory.iterdir()
                             if p.name.isdigit()) if directory.is_dir() else []
    return steps


def load_model(run_dir: str | os.PathLike, model: nnx.Module,
               step: int | str | None = None) -> int:
    """Loads a run's checkpoint into `model` in place (e.g. for a test evaluation or sampling):
    `step` is a step number, "last" (default: the latest that verifies) or "best" (the
    checkpoint selected by `train.select_metric`). Returns the step loaded."""
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
        step, sub = None, CHECKPOINT_DIR
    else:
        step = int(step)
        sub = CHECKPOINT_DIR if step in steps["last"] else BEST_DIR
        if step not in steps["last"] + steps["best"]:
            raise FileNotFoundError(f"no checkpoint at step {step} in {run_dir}: saved steps "
                                    f"are {sorted(set(steps['last'] + steps['best']))}")
    with Checkpointer(run_dir / sub) as ckpt:
        if step is None:
            step = ckpt.latest_good_step()
            if step is None:
                raise FileNotFoundError(f"no intact checkpoint in {run_dir / CHECKPOINT_DIR}")
        ckpt.load_model(step, model)
    return step
