"""`run_info.json`: everything needed to tell later what produced a run's numbers."""

from __future__ import annotations

import datetime
import importlib.metadata
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


def write_run_info(run_dir: str | os.PathLike, config: Mapping[str, Any], seed: int) -> Path:
    """Writes `run_dir/run_info.json` atomically: resolved config, seed, versions, devices,
    host, command line and git commit. Returns its path."""
    devices = jax.devices()
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
    }
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / RUN_INFO_FILE
    write_json_atomic(path, info)
    return path
