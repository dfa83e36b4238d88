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

SCRIPT = textwrap.dedent(
    """
    import sys, time
    import numpy as np, optax
    from flax import nnx
    from lnorm.logger import RunLogger
    from lnorm.norms import NormedDense
    from lnorm.trainer import Task, TrainConfig, train

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
    config = TrainConfig(steps=24, log_every=3, checkpoint_every=4, steps_per_call=2,
                         progress=False)
    with RunLogger(sys.argv[1], config={}, wandb=None) as logger:
        train(task, config, sys.argv[1], logger)
    """
)


def _start(run_dir: Path, delay: float) -> subprocess.Popen:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    return subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(run_dir), str(delay)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def _finish(proc: subprocess.Popen) -> None:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]


def _steps_checkpointed(run_dir: Path) -> list[int]:
    ckpts = run_dir / "checkpoints"
    if not ckpts.exists():
        return []
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def test_sigkill_then_rerun_equals_uninterrupted(tmp_path):
    reference, killed = tmp_path / "reference", tmp_path / "killed"
    _finish(_start(reference, 0.0))

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
