"""Run logging: `metrics.jsonl` in the run directory, always, plus Weights & Biases.

`metrics.jsonl` is the project's own record (one JSON object per `log` call, flushed at once)
because offline W&B history can only be read back through wandb's internal format. W&B is a
convenience: every W&B failure (init, log, finish) is a warning, never a crash, so a broken
W&B install or a missing API key cannot cost a training run, and an unreachable server costs
at most `WandbConfig.init_timeout_s` before the run goes on with metrics.jsonl only.

A run directory is one W&B run: its id is kept in `run_dir/wandb_id` and a resumed run
continues it (`resume="allow"`; offline runs of one id are synced into one W&B run). A run
that ends by an interrupt or an error is finished with a non-zero exit code, so W&B does not
show it as finished.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import secrets
import string
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
WANDB_ID_FILE = "wandb_id"
WANDB_MODES = ("online", "offline", "disabled")


@dataclass
class WandbConfig:
    """W&B settings; `mode="disabled"` (or passing no WandbConfig at all) turns W&B off."""

    mode: str = "offline"
    project: str = "lnorm"
    entity: str | None = None
    group: str | None = None
    tags: tuple[str, ...] = ()
    name: str | None = None
    init_timeout_s: float = 20.0  # online mode: how long to wait for the server at start

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"WandbConfig.mode={self.mode!r}: expected one of {WANDB_MODES}")
        if not isinstance(self.init_timeout_s, (int, float)) or self.init_timeout_s <= 0:
            raise ValueError(f"WandbConfig.init_timeout_s={self.init_timeout_s!r}: expected a "
                             "positive number of seconds")


def _plain(value: Any) -> Any:
    """JSON-friendly scalar: numpy / jax scalars become Python numbers."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    try:
        return value.item()
    except (AttributeError, ValueError) as e:
        raise TypeError(f"metric value {value!r} is not a scalar") from e


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Writes `text` to `path` via a temporary file in the same folder (flushed to disk) and a
    rename: a crash leaves the old file or the new one, never half of one, and a failed write
    removes its temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        with open(tmp, "x") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name beside `path` (unique across processes and threads),
    for writing it atomically; created with the umask's permissions, unlike `mkstemp`'s."""
    return path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")


def file_digest(path: str | os.PathLike, algorithm: str = "sha256",
                chunk: int = 1 << 20) -> str:
    """The hex digest of a file, read in chunks: SHA-256 for what checkpoints and data caches
    record, MD5 where a dataset publishes that."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as JSON to `path` atomically (`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def wandb_run_id(run_dir: str | os.PathLike) -> str:
    """The W&B run id of a run directory: read from `run_dir/wandb_id`, created once."""
    path = Path(run_dir) / WANDB_ID_FILE
    if path.exists():
        run_id = path.read_text().strip()
        if run_id:
            return run_id
    alphabet = string.ascii_lowercase + string.digits
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    write_text_atomic(path, run_id + "\n")
    return run_id


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a `metrics.jsonl` file; an unreadable line (a write cut off by a crash)
    is skipped with a warning naming the file and line."""
    records = []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                warnings.warn(f"{path}:{lineno}: unreadable metrics line dropped", stacklevel=2)
    return records


class RunLogger:
    """Logs metrics to `run_dir/metrics.jsonl` and, when configured, to W&B.

    Use as a context manager (or call `close()` in a `finally`): Hydra multirun jobs share one
    process, and an unfinished W&B run would swallow the next job's metrics. Leaving the
    context by an exception, or `close(interrupted=True)`, marks the W&B run as interrupted.
    In a multi-host run only process 0 writes; the others' loggers do nothing.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        *,
        config: Mapping[str, Any],
        wandb: WandbConfig | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self._file = None
        self._run = None
        self.wandb_id: str | None = None
        if jax.process_index() != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed in close()
        if wandb is not None and wandb.mode != "disabled":
            self.wandb_id = wandb_run_id(self.run_dir)
            self._run = self._wandb_call("init", lambda wb: wb.init(
                mode=wandb.mode, project=wandb.project, entity=wandb.entity, group=wandb.group,
                tags=list(wandb.tags), name=wandb.name, dir=str(self.run_dir),
                config=dict(config), reinit="finish_previous", id=self.wandb_id,
                resume="allow", settings=wb.Settings(init_timeout=float(wandb.init_timeout_s)),
            ))

    def _wandb_call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Runs `fn(wandb)`; on any failure warns and switches W&B off for this logger."""
        try:
            import wandb as wandb_lib

            return fn(wandb_lib)
        except Exception as e:  # W&B must never crash a run
            warnings.warn(f"W&B {what} failed ({e!r}); continuing with {self.path} only",
                          stacklevel=3)
            self._run = None
            return None

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Appends `{"step": step, **metrics}` to metrics.jsonl (flushed) and logs to W&B."""
        if self._file is None:
            return
        record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._run is not None:
            run = self._run
            self._wandb_call("log", lambda _: run.log(dict(metrics), step=int(step)))

    def log_artifact(self, step: int, key: str, path: Path) -> None:
        """Logs a written artifact file to W&B as media (images, GIFs, HTML; other files as
        W&B artifacts are not worth it: they stay in the run directory)."""
        if self._run is None:
            return
        run = self._run

        def media(wb):
            if path.suffix in (".png", ".gif"):
                return wb.Image(str(path))
            if path.suffix in (".html", ".svg"):
                return wb.Html(path.read_text())
            if path.suffix == ".txt":
                return wb.Html(f"<pre>{html.escape(path.read_text())}</pre>")
            return None

        def log(wb):
            item = media(wb)
            if item is not None:
                run.log({key: item}, step=int(step))

        self._wandb_call("log", log)

    def summary_exists(self) -> bool:
        return (self.run_dir / SUMMARY_FILE).exists()

    def read_summary(self) -> dict[str, Any]:
        return json.loads((self.run_dir / SUMMARY_FILE).read_text())

    def summary(self, metrics: Mapping[str, Any]) -> None:
        """Final numbers of the run: `run_dir/summary.json` and the W&B run summary."""
        if self._file is None:
            return
        plain = {k: _plain(v) for k, v in metrics.items()}
        write_json_atomic(self.run_dir / SUMMARY_FILE, plain)
        if self._run is not None:
            run = self._run
            self._wandb_call("summary", lambda _: run.summary.update(plain))

    def truncate(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Rewrites metrics.jsonl (atomically) with only the records for which `keep` is true.
        A resumed run uses it to drop what was logged after its checkpoint."""
        if self._file is None:
            return
        self._file.close()
        try:
            kept = [r for r in read_metrics(self.path) if keep(r)]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        finally:
            self._file = open(self.path, "a")  # noqa: SIM115 -- closed in close()

    def truncate_after(self, step: int) -> None:
        """Drops the records with `step > step`."""
        self.truncate(lambda r: r["step"] <= step)

    def close(self, interrupted: bool = False) -> None:
        """Closes metrics.jsonl and finishes the W&B run (idempotent); an `interrupted` run
        (Ctrl-C, preemption, an error) is marked preempted and finished with exit code 1."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._run is not None:
            run = self._run
            if interrupted:
                self._wandb_call("finish", lambda _: run.mark_preempting())
            self._wandb_call("finish", lambda _: run.finish(exit_code=1 if interrupted else 0))
            self._run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        self.close(interrupted=exc_type is not None)
