"""A run killed with SIGKILL (no chance to clean up) and started again in the same directory
ends exactly where an uninterrupted run ends: the same metrics.jsonl, bitwise on CPU (all but
the wall-clock `time/elapsed_s`)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, optax
    from flax import nnx
    from lnorm.logger import RunLogger
    from lnorm.norms import NormedDense
    from lnorm.trainer import Interrupted, Task, TrainConfig, train

    class Net(nnx.Module):
        def __init__(self, rngs):
            self.l1 = NormedDense(8, 32, norm="batch", rngs=rngs)
            self.l2 = NormedDense(32, 3, norm="none", rngs=rngs)
        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    def loss_fn(model, batch, rng):
        logits = model(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(-1).astype(np.int32)

    def batches(epoch, start):
        perm = np.random.default_rng(epoch).permutation(64)
        for i in range(start, 8):
            time.sleep(float(sys.argv[2]))  # slow enough to be killed mid-run
            idx = perm[i * 8:(i + 1) * 8]
            yield {"x": x[idx], "y": y[idx]}

    task = Task(model=Net(nnx.Rngs(0)), loss_fn=loss_fn, train_batches=batches,
                steps_per_epoch=8)
    config = TrainConfig(steps=24, log_every=3, checkpoint_every=int(sys.argv[3]),
                         steps_per_call=2, progress=False)
    with RunLogger(sys.argv[1], config={}, wandb=None) as logger:
        try:
            train(task, config, sys.argv[1], logger)
        except Interrupted as e:
            print(f"STOPPED {e.step}", flush=True)
            sys.exit(3)
    """
)


def _start(run_dir: Path, delay: float, checkpoint_every: int = 4) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(run_dir), str(delay), str(checkpoint_every)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _steps_checkpointed(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.exists():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    _finish(_start(run_dir, 0.0))
    return run_dir


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_a_checkpoint_and_resume_equals_uninterrupted(reference, tmp_path,
                                                                   signum):
    """No regular checkpoint before the end (checkpoint_every=1000): Ctrl-C or a preemption's
    SIGTERM mid-run saves the state at the step it stopped at; the re-run resumes from there
    and ends exactly as an uninterrupted run."""
    proc = _start(tmp_path, 0.05, checkpoint_every=1000)
    deadline = time.monotonic() + 240
    metrics = tmp_path / "metrics.jsonl"
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        assert time.monotonic() < deadline
        time.sleep(0.02)
    proc.send_signal(signum)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err[-3000:]
    stopped = int(out.split("STOPPED ")[1])
    assert 0 < stopped < 24 and _steps_checkpointed(tmp_path) == [stopped]
    _finish(_start(tmp_path, 0.0, checkpoint_every=1000))
    assert _timeless(tmp_path) == _timeless(reference)


def test_sigkill_then_rerun_equals_uninterrupted(reference, tmp_path):
    killed = tmp_path / "killed"

    rng = np.random.default_rng(1)
    for kill_after in (8, 16):  # two kills, at different points of the run
        proc = _start(killed, 0.05)
        deadline = time.monotonic() + 240
        while not [s for s in _steps_checkpointed(killed) if s >= kill_after]:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.2))  # land anywhere: mid-step, mid-save, mid-log
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    _finish(_start(killed, 0.0))

    assert _timeless(killed) == _timeless(reference)


def _timeless(run_dir: Path) -> list[dict]:
    """The logged records without their wall-clock `time/` entries (they differ per run)."""
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
