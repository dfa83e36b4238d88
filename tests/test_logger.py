"""RunLogger (metrics.jsonl, W&B offline, W&B failures only warn) and run_info.json."""

from __future__ import annotations

import json
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lnorm.logger import RunLogger, WandbConfig, read_metrics
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
    assert re.fullmatch(r"[0-9a-f]{40}", info["git"]["commit"])
    assert isinstance(info["git"]["dirty"], bool)
    assert [p.name for p in tmp_path.iterdir()] == ["run_info.json"]  # no temp file left


def test_git_state_outside_a_checkout(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
