"""Checkpoints: exactly `keep` kept, checksums recorded at save, damaged checkpoints named and
set aside with a fall back to the previous one (also through the trainer and after kill -9
while saving), and a damaged checkpoint never diagnosed as a changed model, nor the reverse."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm.checkpoint import (
    CHECKSUM_FILE,
    Checkpointer,
    CheckpointMismatchError,
    DamagedCheckpointError,
    checkpoint_steps,
    load_model,
)
from lnorm.trainer import Task, TrainConfig, train


def _state(model):
    _, params, rest = nnx.split(model, nnx.Param, ...)
    return {"params": params, "rest": rest}


def _saved(directory, steps, keep=3, features=4):
    """A Checkpointer holding `steps`, the model of step s having all weights s."""
    ckpt = Checkpointer(directory, keep=keep)
    model = nnx.Linear(3, features, rngs=nnx.Rngs(0))
    for s in steps:
        model.kernel[...] = jnp.full(model.kernel.shape, float(s))
        ckpt.save(s, _state(model), {"step": s}, train={"count": jnp.int32(s)})
    return ckpt, model


def _largest_file(step_dir):
    return max((p for p in step_dir.rglob("*") if p.is_file() and p.name != CHECKSUM_FILE),
               key=lambda p: p.stat().st_size)


def _damage(path, how):
    data = bytearray(path.read_bytes())
    if how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    elif how == "garbage":
        path.write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "flipped":
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        path.unlink()


@pytest.mark.parametrize("keep", [1, 2, 3])
def test_keeps_exactly_keep_checkpoints(tmp_path, keep):
    ckpt, _ = _saved(tmp_path, range(1, keep + 3), keep=keep)
    expected = list(range(3, keep + 3))
    assert ckpt.all_steps() == expected
    assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == expected
    # later saves never touch the files of the kept ones
    assert all(Checkpointer(tmp_path).verify(s) is None for s in expected)


@pytest.mark.parametrize("how, what", [
    ("truncated", r"truncated"), ("garbage", "checksum mismatch"),
    ("flipped", "checksum mismatch"), ("missing", "is missing"),
])
def test_damaged_latest_is_named_set_aside_and_the_previous_restored(tmp_path, how, what):
    ckpt, model = _saved(tmp_path, [1, 2, 3])
    ckpt.close()
    damaged = _largest_file(tmp_path / "3")
    _damage(damaged, how)
    ckpt = Checkpointer(tmp_path, keep=3)
    problem = ckpt.verify(3)
    assert what in problem and str(damaged.relative_to(tmp_path / "3")) in problem
    with pytest.raises(DamagedCheckpointError, match=r"checkpoints?.*/3 is damaged") as e:
        ckpt.restore(3, model=_state(model))
    assert "changed architecture" not in str(e.value)
    with pytest.warns(UserWarning, match=rf"checkpoint {tmp_path}/3 is damaged \(.*{what}.*"
                                         r"previous checkpoint \(step 2\)"):
        assert ckpt.latest_good_step() == 2
    assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
    assert (tmp_path / "3.damaged").is_dir() and not (tmp_path / "3").exists()
    out = ckpt.restore(2, model=_state(model), train={"count": jnp.int32(0)})
    np.testing.assert_array_equal(out["model"]["params"]["kernel"][...], 2.0)
    assert out["meta"] == {"step": 2} and int(out["train"]["count"]) == 2
    # the run goes on: step 3 is saved again and kept as an ordinary checkpoint
    ckpt.save(3, _state(model), {"step": 3})
    assert ckpt.latest_good_step() == 3 and ckpt.verify(3) is None


def test_changed_model_is_a_mismatch_not_damage(tmp_path):
    ckpt, _ = _saved(tmp_path, [1])
    wider = nnx.Linear(3, 5, rngs=nnx.Rngs(0))
    with pytest.raises(CheckpointMismatchError, match=r"does not match this model") as e:
        ckpt.restore(1, model=_state(wider))
    assert "model/params/bias: shape (4,) saved, (5,) in this model" in str(e.value)
    assert "damaged" not in str(e.value)
    deeper = {**_state(wider), "extra": {"w": jnp.zeros(2)}}
    with pytest.raises(CheckpointMismatchError, match=r"the checkpoint lacks: \['extra/w'\]"):
        ckpt.restore(1, model=deeper)


def test_unrecorded_checkpoint_that_cannot_be_read_is_called_damaged(tmp_path):
    """Without checksums (an older checkpoint) a read failure with matching shapes is damage."""
    ckpt, model = _saved(tmp_path, [1])
    (tmp_path / "1" / CHECKSUM_FILE).unlink()
    assert ckpt.verify(1) is None
    data = [p for p in (tmp_path / "1" / "model").rglob("*") if p.is_file() and "d" in p.parts]
    for p in data:
        _damage(p, "garbage")
    with pytest.raises(DamagedCheckpointError, match=r"could not be read.*damaged") as e:
        ckpt.restore(1, model=_state(model))
    assert "changed architecture" not in str(e.value)


def test_load_model_skips_a_damaged_last_checkpoint(tmp_path):
    ckpt, model = _saved(tmp_path / "checkpoints", [1, 2])
    ckpt.close()
    _damage(_largest_file(tmp_path / "checkpoints" / "2"), "flipped")
    with pytest.warns(UserWarning, match="is damaged"):
        assert load_model(tmp_path, model) == 1
    np.testing.assert_array_equal(model.kernel[...], 1.0)


# --- through the trainer ------------------------------------------------------------------------

N, BATCH = 32, 4


class _Linear(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 1, rngs=rngs)


def _task():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    y = (x @ np.arange(1.0, 5.0)).astype(np.float32)

    def loss_fn(model, batch, rng):
        return jnp.mean((model.dense(batch["x"])[:, 0] - batch["y"]) ** 2), {}

    def batches(epoch, start):
        for i in range(start, N // BATCH):
            yield {"x": x[i * BATCH:(i + 1) * BATCH], "y": y[i * BATCH:(i + 1) * BATCH]}

    return Task(model=_Linear(nnx.Rngs(0)), loss_fn=loss_fn, train_batches=batches,
                steps_per_epoch=N // BATCH)


def _records(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in lines]


def test_trainer_resumes_from_the_previous_checkpoint_when_the_latest_is_damaged(tmp_path):
    config = TrainConfig(steps=12, log_every=2, checkpoint_every=4, keep_checkpoints=3,
                         progress=False)
    reference = train(_task(), config, tmp_path / "reference")
    run = tmp_path / "run"
    train(_task(), config, run)
    _damage(_largest_file(run / "checkpoints" / "12"), "flipped")
    (run / "summary.json").unlink()
    with pytest.warns(UserWarning, match=r"checkpoints/12 is damaged.*\(step 8\)"):
        final = train(_task(), config, run)
    assert final == pytest.approx(reference)
    assert _records(run) == _records(tmp_path / "reference")
    assert checkpoint_steps(run)["last"] == [4, 8, 12] and (run / "checkpoints/12.damaged").is_dir()
    assert load_model(run, _task().model) == 12


# --- kill -9 while saving -----------------------------------------------------------------------

SAVER = textwrap.dedent("""
    import sys
    import jax.numpy as jnp
    from lnorm.checkpoint import Checkpointer

    ckpt = Checkpointer(sys.argv[1], keep=2)
    for step in range(1, 10_000):
        ckpt.save(step, {"w": jnp.full((512, 512), float(step))}, {"step": step})
        print(step, flush=True)
""")


@pytest.mark.parametrize("delay", [0.0, 0.03])
def test_kill_while_saving_leaves_a_restorable_latest_checkpoint(tmp_path, delay):
    proc = subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True, env=os.environ.copy())
    try:
        for line in proc.stdout:
            if int(line) >= 3:
                break
        time.sleep(delay)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    ckpt = Checkpointer(tmp_path, keep=2)
    step = ckpt.latest_good_step()
    assert step is not None and step >= 3
    out = ckpt.restore(step, model={"w": jnp.zeros((512, 512))})
    np.testing.assert_array_equal(out["model"]["w"], float(step))
    assert out["meta"] == {"step": step}
