"""Runs that survive people: one run per directory, a fresh start that forgets an earlier
attempt, a resume that refuses a changed config unless forced, a state that never checkpoints
non-finite, and bad values that end with one line and leave nothing behind."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_trainer import _config, _records, make_task

from lnorm.checkpoint import checkpoint_steps, load_model
from lnorm.runinfo import config_changes
from lnorm.runlock import RunLock, RunLockedError
from lnorm.trainer import NonFiniteStateError, train

ROOT = Path(__file__).resolve().parents[1]
HOLD = textwrap.dedent("""
    import sys, time
    from lnorm.runlock import RunLock
    with RunLock(sys.argv[1]):
        print("held", flush=True)
        time.sleep(120)
""")


def test_second_run_in_a_live_directory_fails_naming_the_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLockedError, match=rf"pid {holder.pid} on .* started"):
            train(make_task(), _config(steps=4), tmp_path)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock is taken over.
    train(make_task(), _config(steps=4), tmp_path)
    assert checkpoint_steps(tmp_path)["last"] == [4]
    with RunLock(tmp_path), RunLock(tmp_path):  # re-entrant within one process
        pass


def test_fresh_start_drops_what_an_earlier_attempt_logged(tmp_path):
    """Killed after logging step 2 but before the first checkpoint (4): the re-run starts at
    step 0 and its log equals an uninterrupted run's (no duplicated steps)."""
    with pytest.raises(KeyboardInterrupt):
        train(make_task(fail_at_step=4), _config(steps=8), tmp_path / "a")
    assert [r["step"] for r in _records(tmp_path / "a")] == [2]
    train(make_task(), _config(steps=8), tmp_path / "a")
    train(make_task(), _config(steps=8), tmp_path / "b")
    assert _records(tmp_path / "a") == _records(tmp_path / "b")


def _poison_params_loss(model, batch, rng):
    """A finite loss whose gradient is NaN at the poisoned step: the update makes every
    parameter NaN while the loss never is."""
    logits = model(batch["x"], rng)
    loss = -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(batch["y"])), batch["y"]])
    kernel = model.l2.kernel[...]
    bad = jax.lax.cond(batch["poison"].any(),
                       lambda k: jnp.sqrt(jnp.abs(k - jax.lax.stop_gradient(k))).sum(),
                       lambda k: jnp.zeros(()), kernel)
    return loss + bad, {}


def test_non_finite_parameters_are_never_checkpointed(tmp_path):
    task = make_task(poison_step=8)  # the last update before the checkpoint at step 8
    task.loss_fn = _poison_params_loss
    with pytest.raises(NonFiniteStateError, match=r"step 8.*last good checkpoint is step 4"):
        train(task, _config(steps=20, checkpoint_every=4), tmp_path)
    assert checkpoint_steps(tmp_path)["last"] == [4]
    model = make_task().model
    load_model(tmp_path, model)
    assert np.isfinite(np.asarray(model.l2.kernel[...])).all()


def test_config_changes_ignore_progress_keys():
    old = {"seed": 0, "optim": {"learning_rate": 0.1}, "train": {"steps": 10, "log_every": 5},
           "logger": {"wandb": {"mode": "offline"}}}
    new = {"seed": 1, "optim": {"learning_rate": 0.1}, "train": {"steps": 99, "log_every": 1},
           "logger": {"wandb": {"mode": "disabled"}}}
    assert config_changes(old, new) == {"seed": [0, 1]}


def test_a_key_added_since_the_record_is_unchanged_at_its_default():
    old = {"train": {"steps": 10}}  # written before train.dtype existed
    defaults = {"train.dtype": "float32", "train.steps": 1}
    at_default = {"train": {"steps": 10, "dtype": "float32"}}
    assert config_changes(old, at_default, defaults=defaults) == {}
    other = {"train": {"steps": 10, "dtype": "bfloat16"}}
    assert config_changes(old, other, defaults=defaults) == {"train.dtype": [None, "bfloat16"]}
    assert config_changes(old, at_default) == {"train.dtype": [None, "float32"]}  # no defaults


def _cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _tiny(tmp_path: Path, *extra: str) -> list[str]:
    return ["+exp=pmnist", "scale=tiny", "data.synthetic=true", "logger=none",
            f"data.data_dir={tmp_path / 'data'}", "train.progress=false",
            f"hydra.run.dir={tmp_path / 'run'}", *extra]


def test_cli_resume_refuses_a_changed_config_unless_forced(tmp_path):
    first = _cli(_tiny(tmp_path, "train.steps=20"), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    changed = _cli(_tiny(tmp_path, "train.steps=40", "seed=1", "optim.learning_rate=0.01"),
                   tmp_path)
    assert changed.returncode == 2
    err = changed.stderr.strip().splitlines()[-1]
    assert "seed: 0 -> 1" in err and "optim.learning_rate: 0.001 -> 0.01" in err
    assert "force_resume=true" in err and "Traceback" not in changed.stderr
    assert checkpoint_steps(tmp_path / "run")["last"] == [20]  # untouched
    extended = _cli(_tiny(tmp_path, "train.steps=40"), tmp_path)  # longer: allowed
    assert extended.returncode == 0, extended.stderr[-3000:]
    forced = _cli(_tiny(tmp_path, "train.steps=60", "seed=1", "force_resume=true"), tmp_path)
    assert forced.returncode == 0, forced.stderr[-3000:]
    info = json.loads((tmp_path / "run" / "run_info.json").read_text())
    assert info["history"][-1]["forced_changes"] == {"seed": [0, 1]}
    assert len(info["history"]) == 2


@pytest.mark.parametrize("override, message", [
    ("data.batch_size=0", "data.batch_size=0: expected a positive integer"),
    ("logger.wandb.mode=bogus", "logger.wandb.mode='bogus'"),
    ("data.synthetic_size=5", "data"),
])
def test_cli_bad_values_end_with_one_line_and_leave_nothing(tmp_path, override, message):
    result = _cli([*_tiny(tmp_path), override], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert message in result.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "run").exists()
