"""`run_info.json`: everything needed to tell later what produced a run's numbers."""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax

from lnorm.logger import write_json_atomic

RUN_INFO_FILE = "run_info.json"
EVAL_DIR = "eval"  # experiments.evaluate's results: eval/step_<N>.json
PACKAGES = (
    "lnorm", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "numpy", "grain",
    "tensorflow-datasets", "array-record", "hydra-core", "omegaconf", "wandb",
)


def package_versions() -> dict[str, str | None]:
    """Installed versions of the packages the numbers depend on (`None`: not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _git(*args: str, cwd: Path) -> str | None:
    # --no-optional-locks: never touch the index, so this cannot collide with a commit running
    # in the same checkout.
    try:
        out = subprocess.run(["git", "--no-optional-locks", *args], cwd=cwd, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def git_state(path: str | os.PathLike | None = None) -> dict[str, Any]:
    """`{"commit": sha, "dirty": bool}` of the git checkout holding `path` (default: this
    package's source); both `None` outside a git checkout."""
    cwd = Path(path) if path is not None else Path(__file__).resolve().parent
    commit = _git("rev-parse", "HEAD", cwd=cwd)
    if not commit:
        return {"commit": None, "dirty": None}
    status = _git("status", "--porcelain", "--untracked-files=no", cwd=cwd)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


# Config keys a resumed run may change: how long it runs, how often it logs, evaluates and
# saves, where data and logs go. Every other key defines the run (`config_changes`).
RESUMABLE_KEYS = (
    "train.steps", "train.epochs", "train.progress", "train.log_every", "train.eval_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.early_stop_patience",
    "logger.", "data.data_dir", "data.manual_dir", "force_resume", "compile_cache",
)
MIRRORED_KEYS = ("train.seed", "train.optim.")  # interpolated from `seed` and `optim`


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """`{"a": {"b": 1}}` -> `{"a.b": 1}`."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                   resumable: tuple[str, ...] = RESUMABLE_KEYS,
                   defaults: Mapping[str, Any] | None = None) -> dict[str, list]:
    """The keys defining a run whose values differ: `{key: [old, new]}`. A key missing from
    `old` (recorded before the key existed) is unchanged if its new value is its default in
    `defaults` (flat, as `flatten` gives): the run behaves as it always did."""
    a, b, d = flatten(old), flatten(new), defaults or {}
    return {k: [a.get(k), b.get(k)] for k in sorted(set(a) | set(b))
            if a.get(k) != b.get(k) and not k.startswith((*resumable, *MIRRORED_KEYS))
            and not (k not in a and k in d and b.get(k) == d[k])}


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    path = Path(run_dir) / RUN_INFO_FILE
    return json.loads(path.read_text()) if path.exists() else None


def write_run_info(run_dir: str | os.PathLike, config: Mapping[str, Any], seed: int, *,
                   previous: Mapping[str, Any] | None = None,
                   forced: Mapping[str, list] | None = None) -> Path:
    """Writes `run_dir/run_info.json` atomically: resolved config, seed, versions, devices,
    host, command line and git commit. On a resume, `previous` (the run's earlier record)
    moves into `history`, with the defining keys a forced resume changed (`forced`).
    Returns its path."""
    devices = jax.devices()
    history = []
    if previous is not None:
        history = [*previous.get("history", []),
                   {k: previous.get(k) for k in ("time", "command", "git", "hostname")}]
        if forced:
            history[-1]["forced_changes"] = dict(forced)
    info = {
        "config": dict(config),
        "seed": int(seed),
        "versions": package_versions(),
        "devices": {
            "platform": devices[0].platform,
            "count": len(devices),
            "local_count": jax.local_device_count(),
            "process_count": jax.process_count(),
            "kinds": sorted({d.device_kind for d in devices}),
        },
        "hostname": socket.gethostname(),
        "command": [sys.executable, *sys.argv],
        "cwd": os.getcwd(),
        "git": git_state(),
        "time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "history": history,
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_INFO_FILE
    write_json_atomic(path, info)
    return path
