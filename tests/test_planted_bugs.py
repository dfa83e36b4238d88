"""Bugs that once passed the suite, each with a test that fails on it (docs: issue 8, item 14).

Elsewhere: keeping the wrong number of checkpoints (tests/test_checkpoint.py), the DRAW cell
normalising its gates and normalisers placed as the cell under test places them
(tests/test_cells.py), half precision computed in bfloat16 (tests/test_norms.py), run info
outside a git checkout (tests/test_logger.py). Here, through `lnorm.trainer.train`: a fresh
random key at every step, and evaluation with BatchNorm's running averages.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnorm.norms import BatchNorm
from lnorm.trainer import Task, TrainConfig, train

STEPS, BATCH = 8, 4


def _batches(x, y):
    def train_batches(epoch, start):
        for i in range(start, len(x) // BATCH):
            yield {"x": x[i * BATCH:(i + 1) * BATCH], "y": y[i * BATCH:(i + 1) * BATCH]}

    return train_batches


def _config(**kw):
    return TrainConfig(**{**dict(steps=STEPS, log_every=4, checkpoint_every=STEPS,
                                 progress=False), **kw})


# --- the training key: folded with the step ------------------------------------------------------


class _KeyRecorder(nnx.Module):
    """Records a draw from the loss's key at each step in its (carried) state."""

    def __init__(self):
        self.w = nnx.Param(jnp.zeros(()))
        self.draws = nnx.BatchStat(jnp.zeros(STEPS))
        self.step = nnx.BatchStat(jnp.zeros((), jnp.int32))


def _recording_loss(model, batch, rng):
    model.draws[...] = model.draws[...].at[model.step[...]].set(jax.random.uniform(rng))
    model.step[...] = model.step[...] + 1
    return jnp.mean((model.w[...] - batch["y"]) ** 2), {}


def _draws(tmp_path, name, seed, steps_per_call):
    y = np.linspace(0, 1, STEPS * BATCH, dtype=np.float32)
    task = Task(model=_KeyRecorder(), loss_fn=_recording_loss, train_batches=_batches(y, y),
                steps_per_epoch=STEPS)
    train(task, _config(seed=seed, steps_per_call=steps_per_call), tmp_path / name)
    assert int(task.model.step[...]) == STEPS
    return np.asarray(task.model.draws[...])


def test_every_training_step_gets_its_own_key(tmp_path):
    draws = _draws(tmp_path, "a", seed=0, steps_per_call=4)  # within one compiled call too
    assert len(set(draws.tolist())) == STEPS, f"a key was reused: {draws}"
    np.testing.assert_array_equal(_draws(tmp_path, "b", seed=0, steps_per_call=1), draws)
    assert not set(_draws(tmp_path, "c", seed=1, steps_per_call=4).tolist()) & set(draws.tolist())


# --- evaluation: eval mode, BatchNorm's running averages ------------------------------------------


class _BNNet(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.bn = BatchNorm(4, momentum=0.5, rngs=rngs)

    def __call__(self, x):
        return self.bn(self.dense(x))


EVAL_X = np.random.default_rng(1).normal(2.0, 3.0, size=(5, 3)).astype(np.float32)


def _eval_outputs(model, ctx):
    out = np.asarray(model(jnp.asarray(EVAL_X)), np.float64)
    return {f"y{i}": v for i, v in enumerate(out.ravel())}


def test_evaluators_use_batch_norm_running_averages(tmp_path):
    """In train mode BatchNorm would normalise the evaluation batch by its own statistics."""
    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, size=(STEPS * BATCH, 3)).astype(np.float32)
    y = rng.normal(size=(STEPS * BATCH, 4)).astype(np.float32)

    def loss_fn(model, batch, rng):
        return jnp.mean((model(batch["x"]) - batch["y"]) ** 2), {}

    task = Task(model=_BNNet(nnx.Rngs(0)), loss_fn=loss_fn, train_batches=_batches(x, y),
                steps_per_epoch=STEPS, evaluators={"eval": _eval_outputs})
    final = train(task, _config(), tmp_path)
    m = task.model  # the final state, which the evaluator at the last step saw
    mean, var = np.asarray(m.bn.mean[...], np.float64), np.asarray(m.bn.var[...], np.float64)
    assert np.abs(mean).max() > 0.1  # the running averages were carried through training
    kernel, bias = np.asarray(m.dense.kernel[...]), np.asarray(m.dense.bias[...])
    pre = EVAL_X.astype(np.float64) @ kernel + bias
    expected = ((pre - mean) / np.sqrt(var + m.bn.epsilon) * np.asarray(m.bn.scale[...])
                + np.asarray(m.bn.bias[...]))
    got = np.array([final[f"eval/y{i}"] for i in range(expected.size)]).reshape(expected.shape)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
