"""Conventions shared by every dataset builder in `lnorm.data`.

Every dataset is a TFDS `GeneratorBasedBuilder` that reads the canonical files as they are
distributed, writes `array_record`, and is read back with `as_data_source()` + grain. No
TensorFlow is needed for any of it. TFDS prepares into an `incomplete.*` directory and renames
it when done, so an interrupted preparation leaves nothing half-written behind.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from lnorm.logger import file_digest

# (manual_dir, instructions) of the `prepare` call under way, for `manual_dir_or_none`.
_GIVEN_MANUAL_DIR: contextvars.ContextVar[tuple[Path, str] | None] = contextvars.ContextVar(
    "lnorm_manual_dir", default=None)
DEFAULT_DATA_DIR = Path(os.environ.get("LNORM_DATA_DIR", "~/lnorm_data")).expanduser()
DOWNLOAD_TIMEOUT_S = 20.0


class DataError(ValueError):
    """Bad or missing input data: the message names the file, the line or element, and what
    was expected."""


def where(path: str | os.PathLike, line: int | None = None) -> str:
    """`file:line` prefix for DataError messages."""
    return f"{path}:{line}" if line is not None else str(path)


def prepare(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    data_dir: str | os.PathLike | None = None,
    *,
    manual_dir: str | os.PathLike | None = None,
    config: str | tfds.core.BuilderConfig | None = None,
    **builder_kwargs: Any,
) -> tfds.core.GeneratorBasedBuilder:
    """Prepares `builder_cls` as array_record under `data_dir` (a no-op when already prepared)
    and returns the builder, ready for `builder.as_data_source()`.

    A `manual_dir` given is where the data must come from: a missing or empty folder is a
    DataError naming it, also for builders that could download instead (`manual_dir_or_none`).
    A config object named like a predefined one but with other options
    (`IamOnDBConfig(name="default", skip_bad_files=True)`) prepares under a name of its own,
    `<name>-<digest of the options that differ>` (`own_config`)."""
    data_dir = Path(data_dir) if data_dir is not None else DEFAULT_DATA_DIR
    download_config = tfds.download.DownloadConfig(
        manual_dir=str(manual_dir) if manual_dir is not None else None,
        try_download_gcs=False,  # no network detour: the builder knows its own sources
    )
    instructions = getattr(builder_cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or ""
    given = _GIVEN_MANUAL_DIR.set(
        (Path(manual_dir), instructions) if manual_dir is not None else None)
    try:
        # One preparation at a time per data directory: parallel jobs of a sweep would
        # otherwise race to rename the same `incomplete.*` folder into place.
        # The builder is made inside the lock too: it reads what is already prepared.
        with exclusive(data_dir / ".prepare.lock"):
            builder = builder_cls(data_dir=str(data_dir),
                                  config=own_config(builder_cls, config), **builder_kwargs)
            builder.download_and_prepare(file_format="array_record",
                                         download_config=download_config)
    finally:
        _GIVEN_MANUAL_DIR.reset(given)
    return builder


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """An exclusive `flock` on `path` (created) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


# BuilderConfig fields that describe a config without changing the data it prepares.
_DESCRIPTIVE_FIELDS = ("name", "description", "release_notes", "tags")


def own_config(
    builder_cls: type[tfds.core.GeneratorBasedBuilder],
    config: str | tfds.core.BuilderConfig | None,
) -> str | tfds.core.BuilderConfig | None:
    """`config`, or for a config object named like one of `builder_cls.BUILDER_CONFIGS` (which
    TFDS refuses): that predefined config when the options agree, else a copy named
    `<name>-<8 hex digits>`, a digest of the options that differ (the same options, the same
    name, so a prepared dataset is found again)."""
    if not isinstance(config, tfds.core.BuilderConfig):
        return config
    predefined = {c.name: c for c in builder_cls.BUILDER_CONFIGS}.get(config.name)
    if predefined is None or predefined is config:
        return config
    differ = {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if f.name not in _DESCRIPTIVE_FIELDS
        and getattr(config, f.name) != getattr(predefined, f.name, None)
    }
    if not differ:
        return predefined
    digest = hashlib.sha256(json.dumps(differ, sort_keys=True, default=repr).encode())
    return dataclasses.replace(config, name=f"{config.name}-{digest.hexdigest()[:8]}")


def check_manual_dir(manual_dir: str | os.PathLike, instructions: str = "") -> Path:
    """`manual_dir`, which must be an existing folder holding something; a DataError naming
    it (with the builder's download instructions) otherwise."""
    folder = Path(manual_dir).expanduser()
    if not folder.is_dir():
        what = "is not a folder" if folder.exists() else "does not exist"
    elif not any(folder.iterdir()):
        what = "is empty"
    else:
        return folder
    raise DataError(f"manual_dir {folder} {what}: put the dataset's files there, or leave "
                    f"manual_dir unset to use the builder's other sources\n{instructions.strip()}")


def data_root(data_dir: str | os.PathLike | None) -> Path:
    """The prepared-data directory: `data_dir`, else $LNORM_DATA_DIR or ~/lnorm_data."""
    return Path(data_dir).expanduser() if data_dir else DEFAULT_DATA_DIR


def synthetic_corpus(
    data_dir: str | os.PathLike | None,
    dataset: str,
    write: Callable[..., Any],
    *,
    num_examples: int,
    seed: int = 0,
) -> tuple[Path, Path]:
    """A dataset's synthetic stand-in, in the real files' format, for `data.synthetic=true`.

    The files are written once by `write(out_dir, num_examples=, seed=)` (the dataset module's
    `write_synthetic`) into `<data_dir>/synthetic/<dataset>-<num_examples>-<seed>/files`, via a
    temporary folder renamed when complete. Returns `(files, prepared_data_dir)`: the manual
    directory to prepare from, and a TFDS data directory of its own, so that a stand-in is never
    mistaken for the real dataset prepared under `data_dir`."""
    root = data_root(data_dir) / "synthetic" / f"{dataset}-{num_examples}-{seed}"
    write_folder_once(root / "files", lambda out: write(out, num_examples=num_examples, seed=seed))
    return root / "files", root / "prepared"


def write_folder_once(folder: Path, write: Callable[[Path], Any]) -> None:
    """Makes `folder` by `write(tmp)` into a temporary sibling renamed when complete, unless it
    exists: an interrupted write leaves nothing behind, and of two processes racing to write
    it, one wins and the other keeps the winner's."""
    if folder.exists():
        return
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would stay with the renamed folder
    try:
        write(tmp)
        os.replace(tmp, folder)
    except OSError:
        if not folder.exists():  # not another process having won the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def md5(path: str | os.PathLike) -> str:
    """The MD5 of a file (MNIST and the cloze texts' sources publish MD5s)."""
    return file_digest(path, "md5")


def download_with_timeout(
    url: str, dest: str | os.PathLike, timeout: float = DOWNLOAD_TIMEOUT_S
) -> Path:
    """Downloads `url` to `dest` atomically (temp file, then rename). Unreachable hosts fail
    within `timeout` seconds instead of stalling for minutes."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            shutil.copyfileobj(resp, out)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def require_files(directory: str | os.PathLike, names: Iterable[str], instructions: str) -> Path:
    """Checks that `directory` holds every file in `names`; otherwise raises a DataError that
    lists the missing files and repeats the builder's manual download instructions."""
    directory = Path(directory)
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
        raise DataError(
            f"missing files in {directory}: {', '.join(missing)}\n{instructions.strip()}"
        )
    return directory


def manual_dir_or_none(dl_manager: tfds.download.DownloadManager) -> Path | None:
    """For builders with other sources: the manual directory, or None where none was given
    (TFDS's default one, when missing or empty, raises a bare AssertionError). One given to
    `prepare` must exist and hold files: the user named it, so it is never skipped silently."""
    given = _GIVEN_MANUAL_DIR.get()
    if given is not None:
        return check_manual_dir(*given)
    try:
        return Path(dl_manager.manual_dir)
    except AssertionError:
        return None


def manual_root(
    dl_manager: tfds.download.DownloadManager, names: Iterable[str], instructions: str
) -> Path:
    """The manual directory, checked to hold `names`; a DataError naming what is missing and
    repeating the manual download instructions otherwise."""
    names = list(names)
    try:
        root = Path(dl_manager.manual_dir)
    except AssertionError as e:
        what = f"missing files: {', '.join(names)}" if names else "no manual data directory"
        raise DataError(f"{what}: {str(e).splitlines()[0]}\n{instructions.strip()}") from None
    return require_files(root, names, instructions)


def first_source(
    what: str,
    names: Sequence[str],
    *,
    manual_dir: str | os.PathLike | None,
    sources: Sequence[tuple[str, Callable[[], Path]]],
    verify: Callable[[Path], Path],
    instructions: str,
) -> Path:
    """The folder of the first source that yields the files `names`, verified by `verify`.

    A user folder (`manual_dir`) holding all the files is used, and must pass `verify` (it was
    named on purpose: a failure there is an error at once). Otherwise each of `sources`
    (a description and a function returning a folder) is tried in order, a failure noted and
    the next one tried; when all fail, one DataError lists each source and why it failed.
    """
    tried = []
    if manual_dir is not None:
        missing = [n for n in names if not (Path(manual_dir) / n).exists()]
        if not missing:
            return verify(Path(manual_dir))
        tried.append(f"folder {manual_dir}: missing {', '.join(missing)}")
    for name, source in sources:
        try:
            return verify(source())
        except (OSError, DataError) as e:
            tried.append(f"{name}: {e}".splitlines()[0])
    raise DataError(f"could not obtain {what}; tried:\n  " + "\n  ".join(tried) + instructions)
