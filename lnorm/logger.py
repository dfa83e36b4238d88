"""Run logging: `metrics.jsonl` in the run directory, always, plus Weights & Biases.

`metrics.jsonl` is the project's own record (one JSON object per `log` call, flushed at once)
because offline W&B history can only be read back through wandb's internal format. W&B is a
convenience: every W&B failure (init, log, finish) is a warning, never a crash, so a broken
W&B install or a missing API key cannot cost a training run.
"""

from __future__ import annotations

import html
import json
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jax

METRICS_FILE = "metrics.jsonl"
SUMMARY_FILE = "summary.json"
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

    def __post_init__(self) -> None:
        if self.mode not in WANDB_MODES:
            raise ValueError(f"WandbConfig.mode={self.mode!r}: expected one of {WANDB_MODES}")


def _plain(value: Any) -> Any:
    """JSON-friendly scalar: numpy / jax scalars become Python numbers."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    try:
        return value.item()
    except (AttributeError, ValueError) as e:
        raise TypeError(f"metric value {value!r} is not a scalar") from e


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes `obj` as JSON to `path` via a temporary file and a rename, so a crash never leaves
    a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
    process, and an unfinished W&B run would swallow the next job's metrics. In a multi-host
    run only process 0 writes; the others' loggers do nothing.
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
        if jax.process_index() != 0:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed in close()
        if wandb is not None and wandb.mode != "disabled":
            self._run = self._wandb_call("init", lambda wb: wb.init(
                mode=wandb.mode, project=wandb.project, entity=wandb.entity, group=wandb.group,
                tags=list(wandb.tags), name=wandb.name, dir=str(self.run_dir),
                config=dict(config), reinit="finish_previous",
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
        kept = [r for r in read_metrics(self.path) if keep(r)]
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, self.path)
        self._file = open(self.path, "a")  # noqa: SIM115 -- closed in close()

    def truncate_after(self, step: int) -> None:
        """Drops the records with `step > step`."""
        self.truncate(lambda r: r["step"] <= step)

    def close(self) -> None:
        """Closes metrics.jsonl and finishes the W&B run (idempotent)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._run is not None:
            run = self._run
            self._wandb_call("finish", lambda _: run.finish())
            self._run = None

    def __enter__(self) -> RunLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

