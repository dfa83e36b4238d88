"""RunLogger (metrics.jsonl, atomic writes, W&B offline, a stable W&B id, interrupted runs,
a bounded online wait, W&B failures only warn) and run_info.json."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnorm import logger as logger_module
from lnorm.logger import WANDB_ID_FILE, RunLogger, WandbConfig, read_metrics, write_json_atomic
from lnorm.runinfo import git_state, write_run_info


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_metrics_jsonl_is_written_flushed_and_truncated(tmp_path):
    with RunLogger(tmp_path, config={}) as logger:
        logger.log(1, {"train/loss": np.float32(0.5), "epoch": 0.25})
        logger.log(2, {"train/loss": jnp.asarray(0.25), "eval/n": np.int64(3)})
        # Flushed at once: readable while the logger is still open.
        assert _lines(tmp_path / "metrics.jsonl") == [
            {"step": 1, "train/loss": 0.5, "epoch": 0.25},
            {"step": 2, "train/loss": 0.25, "eval/n": 3},
        ]
        logger.truncate_after(1)
        logger.log(2, {"train/loss": 0.125})
        logger.summary({"train/loss": np.float32(0.125)})
    assert _lines(tmp_path / "metrics.jsonl") == [
        {"step": 1, "train/loss": 0.5, "epoch": 0.25}, {"step": 2, "train/loss": 0.125}]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"train/loss": 0.125}
    assert not list(tmp_path.glob("wandb"))  # no W&B unless configured


def test_non_scalar_metric_is_an_error(tmp_path):
    with RunLogger(tmp_path, config={}) as logger, pytest.raises(TypeError, match="scalar"):
        logger.log(1, {"x": np.zeros(3)})


def test_cut_off_line_is_skipped_with_warning(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "a": 1.0}\n{"step": 2, "a"')
    with pytest.warns(UserWarning, match=r"metrics.jsonl:2: unreadable"):
        assert read_metrics(path) == [{"step": 1, "a": 1.0}]


def test_wandb_offline_run_directory(tmp_path):
    config = WandbConfig(mode="offline", project="lnorm-test", tags=("a",), name="t")
    with RunLogger(tmp_path, config={"lr": 0.1}, wandb=config) as logger:
        logger.log(1, {"train/loss": 1.0})
        logger.summary({"train/loss": 1.0})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert list(runs[0].glob("run-*.wandb"))


def test_wandb_failures_only_warn(tmp_path, monkeypatch):
    import wandb

    def broken_init(**kwargs):
        raise RuntimeError("no network")

    monkeypatch.setattr(wandb, "init", broken_init)
    with pytest.warns(UserWarning, match="W&B init failed.*no network"):
        logger = RunLogger(tmp_path, config={}, wandb=WandbConfig())
    logger.log(1, {"a": 1.0})
    logger.close()
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "a": 1.0}]

    class BrokenRun:
        calls = 0

        def log(self, *args, **kwargs):
            BrokenRun.calls += 1
            raise OSError("disk full")

        def finish(self):
            raise AssertionError("finish must not be called after W&B was switched off")

    monkeypatch.setattr(wandb, "init", lambda **kwargs: BrokenRun())
    logger = RunLogger(tmp_path, config={}, wandb=WandbConfig())
    with pytest.warns(UserWarning, match="W&B log failed.*disk full"):
        logger.log(2, {"a": 2.0})
    logger.log(3, {"a": 3.0})  # W&B is off now: no second attempt
    logger.close()
    assert BrokenRun.calls == 1
    assert [r["step"] for r in _lines(tmp_path / "metrics.jsonl")] == [1, 2, 3]


def test_wandb_config_checks_mode():
    with pytest.raises(ValueError, match=r"mode='onlin'.*'offline'"):
        WandbConfig(mode="onlin")


def test_run_info(tmp_path):
    path = write_run_info(tmp_path, {"optim": {"lr": 0.1}}, seed=3)
    info = json.loads(path.read_text())
    assert info["config"] == {"optim": {"lr": 0.1}} and info["seed"] == 3
    assert info["versions"]["jax"] == jax.__version__
    assert info["versions"]["python"] == "{}.{}.{}".format(*sys.version_info[:3])
    assert info["devices"]["count"] == jax.device_count()
    assert info["command"][0] == sys.executable
    assert info["git"] == git_state()  # None values outside a git checkout (an sdist, a copy)
    assert [p.name for p in tmp_path.iterdir()] == ["run_info.json"]  # no temp file left


def test_run_info_without_git(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-git-here"))
    info = json.loads(write_run_info(tmp_path / "run", {}, seed=0).read_text())
    assert info["git"] == {"commit": None, "dirty": None}


def test_git_state_of_a_checkout(tmp_path):
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    (tmp_path / "f.txt").write_text("a\n")
    for args in (["init", "-q"], ["add", "f.txt"], ["commit", "-q", "-m", "x"]):
        subprocess.run([*git, *args], cwd=tmp_path, check=True, capture_output=True)
    state = git_state(tmp_path)
    assert re.fullmatch(r"[0-9a-f]{40}", state["commit"]) and state["dirty"] is False
    (tmp_path / "f.txt").write_text("b\n")
    assert git_state(tmp_path)["dirty"] is True


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}


# --- atomic writes --------------------------------------------------------------------------------


def _failing_replace(*args):
    raise OSError("disk full")


def test_failed_writes_leave_no_temp_file_and_a_working_logger(tmp_path, monkeypatch):
    logger = RunLogger(tmp_path, config={})
    logger.log(1, {"a": 1.0})
    logger.summary({"a": 1.0})
    monkeypatch.setattr(logger_module.os, "replace", _failing_replace)
    with pytest.raises(OSError, match="disk full"):
        logger.summary({"a": 2.0})
    with pytest.raises(OSError, match="disk full"):
        logger.truncate(lambda r: False)
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(tmp_path / "other.json", {"x": 1})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 1.0}  # the old one
    logger.log(2, {"a": 2.0})  # metrics.jsonl was reopened after the failed truncation
    monkeypatch.undo()
    logger.summary({"a": 2.0})  # a re-run writes it
    logger.close()
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "a": 1.0}, {"step": 2, "a": 2.0}]
    assert json.loads((tmp_path / "summary.json").read_text()) == {"a": 2.0}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl", "summary.json"]


# --- W&B: one run per run directory, interrupted runs, bounded waits ------------------------------


def test_wandb_run_id_is_stable_in_a_run_directory(tmp_path):
    config = WandbConfig(mode="offline", project="lnorm-test")
    for step in (1, 2):  # a run, then its resume
        with RunLogger(tmp_path / "run", config={}, wandb=config) as logger:
            logger.log(step, {"a": float(step)})
    with RunLogger(tmp_path / "other", config={}, wandb=config) as other:
        pass
    run_id = (tmp_path / "run" / WANDB_ID_FILE).read_text().strip()
    assert re.fullmatch(r"[a-z0-9]{8}", run_id) and logger.wandb_id == run_id
    runs = sorted((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert all(re.fullmatch(rf"offline-run-[\d_]+-{run_id}(-\d+)?", r.name) for r in runs)
    assert other.wandb_id != run_id


class _RecordingRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.calls = kwargs, []

    def log(self, *args, **kwargs):
        self.calls.append("log")

    def mark_preempting(self):
        self.calls.append("preempting")

    def finish(self, exit_code=None):
        self.calls.append(f"finish({exit_code})")


def test_wandb_interrupted_runs_are_not_marked_finished(tmp_path, monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **kw: runs.append(_RecordingRun(**kw)) or runs[-1])
    config = WandbConfig(mode="online", init_timeout_s=7)
    with RunLogger(tmp_path, config={}, wandb=config) as logger:
        logger.log(1, {"a": 1.0})
    with pytest.raises(KeyboardInterrupt), RunLogger(tmp_path, config={}, wandb=config):
        raise KeyboardInterrupt
    RunLogger(tmp_path, config={}, wandb=config).close(interrupted=True)
    assert [r.calls for r in runs] == [
        ["log", "finish(0)"], ["preempting", "finish(1)"], ["preempting", "finish(1)"]]
    kwargs = runs[0].init_kwargs
    assert kwargs["id"] == (tmp_path / WANDB_ID_FILE).read_text().strip()
    assert kwargs["resume"] == "allow" and kwargs["settings"].init_timeout == 7
    assert {r.init_kwargs["id"] for r in runs} == {kwargs["id"]}


@pytest.fixture
def silent_server(monkeypatch):
    """A W&B server address that accepts connections and never answers (a stalled network);
    yields the list of connections it accepted."""
    server = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(server.accept()[0])
            except OSError:
                return

    import wandb

    threading.Thread(target=accept, daemon=True).start()
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{server.getsockname()[1]}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    wandb.teardown()  # W&B reads its settings from the environment once per process
    yield accepted
    server.close()
    for conn in accepted:
        conn.close()
    monkeypatch.undo()
    wandb.teardown()


def test_wandb_online_init_wait_is_bounded(tmp_path, silent_server):
    start = time.monotonic()
    with pytest.warns(UserWarning, match=r"W&B init failed.*continuing with .*metrics.jsonl"):
        logger = RunLogger(tmp_path, config={},
                           wandb=WandbConfig(mode="online", init_timeout_s=2))
    assert time.monotonic() - start < 20  # W&B's own default waits 90 s
    assert silent_server  # it did try the server
    logger.log(1, {"a": 1.0})
    logger.close()
    assert _lines(tmp_path / "metrics.jsonl") == [{"step": 1, "a": 1.0}]


def test_wandb_offline_never_touches_the_network(tmp_path, silent_server):
    with RunLogger(tmp_path, config={}, wandb=WandbConfig(mode="offline")) as logger:
        logger.log(1, {"a": 1.0})
    assert list((tmp_path / "wandb").glob("offline-run-*"))
    assert silent_server == []


def test_wandb_init_timeout_is_checked():
    with pytest.raises(ValueError, match=r"init_timeout_s=0"):
        WandbConfig(init_timeout_s=0)
