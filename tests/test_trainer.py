"""The trainer: learning, exact resume, chunked steps, the NaN stop, config errors, evaluate."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lnorm.checkpoint import Checkpointer, load_model
from lnorm.metrics import evaluate
from lnorm.optim import OptimConfig, make_optimizer
from lnorm.trainer import NonFiniteLossError, Task, TrainConfig, train

N, BATCH, FEATURES, CLASSES = 64, 8, 6, 3
SPE = N // BATCH


class Net(nnx.Module):
    """Linear -> BatchNorm -> relu -> Dropout -> Linear: exercises carried batch statistics
    and the per-step rng."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(FEATURES, 16, rngs=rngs)
        self.bn = nnx.BatchNorm(16, momentum=0.9, rngs=rngs)
        self.drop = nnx.Dropout(0.1)
        self.l2 = nnx.Linear(16, CLASSES, rngs=rngs)

    def __call__(self, x, rng=None):
        return self.l2(self.drop(nnx.relu(self.bn(self.l1(x))), rngs=rng))


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, FEATURES)).astype(np.float32)
    y = (x @ rng.normal(size=(FEATURES, CLASSES))).argmax(-1).astype(np.int32)
    return x, y


def _loss_fn(model, batch, rng):
    logits = model(batch["x"], rng)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean()
    loss = loss * jnp.where(batch["poison"].any(), jnp.nan, 1.0)
    return loss, {"accuracy": (logits.argmax(-1) == batch["y"]).mean()}


def _metric_fn(model, batch):
    logits = model(batch["x"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"])
    return {"nll": nll.sum(), "accuracy": (logits.argmax(-1) == batch["y"]).sum(),
            "count": batch["y"].shape[0]}


def make_task(*, poison_step=None, fail_at_step=None, seed=0):
    """Batches of a shuffled toy classification set; the batch of (1-based) step
    `poison_step` makes the loss NaN; asking for step `fail_at_step` raises (an interruption)."""
    x, y = _data()

    def train_batches(epoch, start):
        perm = np.random.default_rng(epoch).permutation(N)
        for i in range(start, SPE):
            step = epoch * SPE + i + 1
            if step == fail_at_step:
                raise KeyboardInterrupt(f"interrupted before step {step}")
            idx = perm[i * BATCH:(i + 1) * BATCH]
            yield {"x": x[idx], "y": y[idx],
                   "poison": np.full(BATCH, step == poison_step)}

    evaluators = {"eval": lambda m, ctx: evaluate(m, _metric_fn, [{"x": x, "y": y}])}
    return Task(model=Net(nnx.Rngs(seed)), loss_fn=_loss_fn, train_batches=train_batches,
                steps_per_epoch=SPE, evaluators=evaluators)


def _config(**kw):
    base = dict(log_every=2, checkpoint_every=4, progress=False,
                optim=OptimConfig(learning_rate=5e-2, grad_clip_norm=5.0))
    return TrainConfig(**{**base, **kw})


def _records(run_dir, *, with_time=False):
    """The logged records; without their wall-clock `time/` entries (which differ from run
    to run) unless `with_time`."""
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    if with_time:
        return records
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def _state(model):
    return jax.tree.leaves(nnx.state(model, nnx.Not(nnx.RngState)))


def _assert_same(a, b):
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 20-step run (2.5 epochs): its dir, final metrics and final state."""
    run_dir = tmp_path_factory.mktemp("reference")
    task = make_task()
    final = train(task, _config(steps=20), run_dir)
    return run_dir, final, _state(task.model)


def test_learns_and_logs(reference):
    run_dir, final, _ = reference
    records = _records(run_dir)
    train_recs = [r for r in records if "train/loss" in r]
    eval_recs = [r for r in records if "eval/nll" in r]
    assert [r["step"] for r in train_recs] == list(range(2, 21, 2))
    assert train_recs[3]["epoch"] == pytest.approx(8 / SPE)
    assert [r["step"] for r in eval_recs] == [8, 16, 20]  # epoch ends and the end
    assert train_recs[-1]["train/loss"] < 0.6 * train_recs[0]["train/loss"]
    assert eval_recs[-1]["eval/nll"] < eval_recs[0]["eval/nll"]
    assert final["eval/accuracy"] > 0.8
    assert final["train/loss"] == train_recs[-1]["train/loss"]
    assert json.loads((run_dir / "summary.json").read_text()) == final


def test_interval_means_match_per_step_losses(tmp_path):
    """A logged value is the mean of the losses of its interval's steps (log_every=1 gives
    the per-step losses)."""
    train(make_task(), _config(steps=6, log_every=1, checkpoint_every=100), tmp_path / "a")
    train(make_task(), _config(steps=6, log_every=3, checkpoint_every=100), tmp_path / "b")
    per_step = [r["train/loss"] for r in _records(tmp_path / "a") if "train/loss" in r]
    means = [r["train/loss"] for r in _records(tmp_path / "b") if "train/loss" in r]
    np.testing.assert_allclose(means, [np.mean(per_step[:3]), np.mean(per_step[3:])], rtol=1e-6)


@pytest.mark.parametrize("interruption", ["crash", "short_run"])
def test_resume_is_exact(reference, tmp_path, interruption):
    """Crash after step 9 (last checkpoint 8) or a finished 11-step run (a partial log
    interval), then re-run to 20: the same final state and the same metrics.jsonl, bitwise."""
    ref_dir, ref_final, ref_state = reference
    if interruption == "crash":
        with pytest.raises(KeyboardInterrupt):
            train(make_task(fail_at_step=10), _config(steps=20), tmp_path)
        assert max(r["step"] for r in _records(tmp_path)) == 8  # logged 8, not yet 10
        assert Checkpointer(tmp_path / "checkpoints").latest_step() == 8
    else:
        train(make_task(), _config(steps=11), tmp_path)
        assert _records(tmp_path)[-1]["step"] == 11  # a partial interval [11]
    task = make_task(seed=1)  # different init: everything must come from the checkpoint
    final = train(task, _config(steps=20), tmp_path)
    assert final == ref_final
    assert _records(tmp_path) == _records(ref_dir)
    _assert_same(_state(task.model), ref_state)


def test_finished_run_returns_without_training(reference):
    run_dir, ref_final, ref_state = reference

    def no_batches(epoch, start):
        raise AssertionError("a finished run must not ask for data")

    task = make_task(seed=2)
    task.train_batches = no_batches
    assert train(task, _config(steps=20), run_dir) == ref_final
    _assert_same(_state(task.model), ref_state)
    model = Net(nnx.Rngs(3))
    assert load_model(run_dir, model) == 20
    _assert_same(_state(model), ref_state)


def test_steps_per_call_does_not_change_results(tmp_path):
    """3 steps per call, chunks cut at the 4-step log/checkpoint boundaries (a full chunk of 3
    and a partial one of 1), against 1 step per call: the same on CPU to the bit."""
    results = []
    for k in (1, 3):
        task = make_task()
        final = train(task, _config(steps=20, steps_per_call=k, log_every=4), tmp_path / str(k))
        results.append((final, _records(tmp_path / str(k)), _state(task.model)))
    (final1, records1, state1), (final3, records3, state3) = results
    assert final3 == final1
    assert records3 == records1
    _assert_same(state3, state1)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(reference, tmp_path):
    """Step 7's loss is NaN: the error names step 7, nothing after step 6 is logged, and the
    latest checkpoint is step 4, equal to the clean run's state after 4 steps."""
    task = make_task(poison_step=7)
    with pytest.raises(NonFiniteLossError, match="step 7") as err:
        train(task, _config(steps=20), tmp_path)
    assert (err.value.step, err.value.last_checkpoint) == (7, 4)
    records = _records(tmp_path)
    assert max(r["step"] for r in records) == 6
    assert all(np.isfinite(r["train/loss"]) for r in records if "train/loss" in r)
    clean = make_task()
    train(clean, _config(steps=4), tmp_path / "clean")
    poisoned = Net(nnx.Rngs(5))
    assert load_model(tmp_path, poisoned) == 4
    _assert_same(_state(poisoned), _state(clean.model))


def test_config_errors(tmp_path):
    task = make_task()
    with pytest.raises(ValueError, match=r"train\.steps or train\.epochs"):
        train(task, _config(), tmp_path)
    with pytest.raises(ValueError, match="log_every=0"):
        train(task, _config(steps=4, log_every=0), tmp_path)
    with pytest.raises(ValueError, match=r"'rmsprop'.*\('adam', 'adamw', 'sgd'\)"):
        OptimConfig(name="rmsprop")
    train(task, _config(steps=4), tmp_path)
    with pytest.raises(ValueError, match="beyond this run's 2 steps"):
        train(task, _config(steps=2), tmp_path)


def test_short_epoch_data_is_an_error(tmp_path):
    task = make_task()
    batches = task.train_batches
    task.train_batches = lambda epoch, start: iter(list(batches(epoch, start))[:3])
    with pytest.raises(ValueError, match=r"ran out at batch 3: expected steps_per_epoch=8"):
        train(task, _config(steps=10), tmp_path)


def test_optimizer_clip_and_weight_decay():
    """Hand-computed: clipping by global norm first, then L2 weight decay, then SGD."""
    params = {"w": jnp.array([1.0, -2.0])}
    grads = {"w": jnp.array([3.0, 4.0])}  # global norm 5
    tx = make_optimizer(OptimConfig(name="sgd", learning_rate=0.1, grad_clip_norm=1.0,
                                    weight_decay=0.5))
    updates, _ = tx.update(grads, tx.init(params), params)
    expected = -0.1 * (np.array([0.6, 0.8]) + 0.5 * np.array([1.0, -2.0]))
    np.testing.assert_allclose(updates["w"], expected, rtol=1e-6)


def test_evaluate_averages_sums_over_uneven_batches():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32)

    def metric_fn(m, batch):
        out = m(batch["x"])
        return {"sq": jnp.sum(out ** 2), "count": out.size}

    got = evaluate(model, metric_fn, [{"x": x[:4]}, {"x": x[4:]}])
    w, b = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    np.testing.assert_allclose(got["sq"], np.mean((x @ w + b) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="'count'"):
        evaluate(model, lambda m, batch: {"sq": m(batch).sum()}, [x])
