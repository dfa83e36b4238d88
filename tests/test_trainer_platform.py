"""The trainer's platform features: evaluator cadence and artifacts, the best checkpoint and
early stopping (exact under kill-and-resume), final evaluators on the selected checkpoint,
schedules and their logged rate, gradient clipping, training time, `gather`, and the
multi-process share of a pipeline."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_trainer import _config, _records, make_task

from lnorm.artifacts import Artifact
from lnorm.checkpoint import checkpoint_steps, load_model
from lnorm.data.pipeline import ArraySource, Pipeline
from lnorm.metrics import gather
from lnorm.optim import OptimConfig, learning_rate_schedule, make_optimizer, schedule_length
from lnorm.trainer import Evaluator, train


def _scripted(values):
    """An evaluator returning `values[k]` at its k-th call (a validation curve we choose)."""
    calls = []

    def fn(model, ctx):
        calls.append(ctx.step)
        return {"metric": values[len(calls) - 1]}

    return fn, calls


def test_evaluators_run_on_their_own_cadence_and_write_artifacts(tmp_path):
    task = make_task()
    seen = []

    def sampler(model, ctx):
        seen.append((ctx.step, np.asarray(jax.random.key_data(ctx.rng))))
        return {"mean_rng": float(jax.random.uniform(ctx.rng)),
                "grid": Artifact.image(np.full((4, 6), 0.5)), "note": Artifact.text("hi")}

    task.evaluators = {"often": Evaluator(sampler, every=3), "rare": Evaluator(
        lambda m, ctx: {"x": 1.0}, every=10)}
    train(task, _config(steps=12), tmp_path)
    steps = {name: [r["step"] for r in _records(tmp_path) if f"{name}/" + k in r]
             for name, k in (("often", "mean_rng"), ("rare", "x"))}
    assert steps == {"often": [3, 6, 9, 12], "rare": [10, 12]}  # and always at the end
    assert len({k.tobytes() for _, k in seen}) == 4  # a different key at every step
    png = tmp_path / "artifacts" / "often" / "grid" / "step_6.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "artifacts" / "often" / "note" / "step_12.txt").read_text() == "hi"


def test_best_checkpoint_early_stopping_and_final_evaluators(tmp_path):
    """Validation (every 2 steps) improves until step 6, then not for 3 evaluations: the run
    stops at step 12, the best checkpoint is step 6 and the final evaluator sees its state."""
    task = make_task()
    fn, calls = _scripted([5.0, 4.0, 3.0, 3.5, 3.1, 3.0, 1.0, 0.5])
    final_states = []

    def final(model, ctx):
        final_states.append((ctx.step, jax.tree.leaves(nnx.state(model, nnx.Param))))
        return {"test/score": 42.0}

    task.evaluators = {"val": Evaluator(fn, every=2), "test": Evaluator(final, final=True)}
    config = _config(steps=40, select_metric="val/metric", early_stop_patience=3,
                     checkpoint_every=100)
    result = train(task, config, tmp_path)
    assert calls == [2, 4, 6, 8, 10, 12]
    assert result["best/step"] == 6 and result["best/val/metric"] == 3.0
    assert result["test/score"] == 42.0 and final_states[0][0] == 6
    assert checkpoint_steps(tmp_path) == {"last": [12], "best": [6]}
    best = make_task(seed=3).model
    load_model(tmp_path, best, "best")
    for a, b in zip(jax.tree.leaves(nnx.state(best, nnx.Param)), final_states[0][1], strict=True):
        np.testing.assert_array_equal(a, b)
    last = [r for r in _records(tmp_path) if "selected_step" in r]
    assert last == [{"step": 12, "selected_step": 6, "test/score": 42.0}]
    # A finished (early-stopped) run returns its summary without training or evaluating again.
    again = make_task()
    again.train_batches = None
    again.evaluators = task.evaluators
    assert train(again, config, tmp_path) == result
    assert calls == [2, 4, 6, 8, 10, 12]


def test_selection_survives_a_crash_and_resume(tmp_path):
    """A crash after the best evaluation but before the next checkpoint, then a resume: the
    same selected step, values and log as an uninterrupted run."""
    values = [5.0, 4.0, 3.0, 3.5, 2.0, 2.5, 2.6, 2.7, 2.8, 2.9]
    config = _config(steps=20, select_metric="val/metric", checkpoint_every=4)

    def run(run_dir, fail_at_step=None):
        task = make_task(fail_at_step=fail_at_step)
        fn, _ = _scripted(values)
        task.evaluators = {"val": Evaluator(fn, every=2)}
        return train(task, config, run_dir)

    reference = run(tmp_path / "ref")
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "crash", fail_at_step=11)

    # The scripted curve restarts where the checkpoint (step 8) left it: evaluations 5.. on.
    task = make_task()
    fn, _ = _scripted(values[4:])
    task.evaluators = {"val": Evaluator(fn, every=2)}
    resumed = train(task, config, tmp_path / "crash")
    assert reference["best/step"] == resumed["best/step"] == 10
    assert resumed == reference
    assert _records(tmp_path / "crash") == _records(tmp_path / "ref")


def test_time_and_learning_rate_are_logged(tmp_path):
    optim = OptimConfig(learning_rate=0.1, schedule="cosine", warmup_steps=4)
    train(make_task(), _config(steps=16, optim=optim, log_every=4), tmp_path)
    records = [r for r in _records(tmp_path, with_time=True) if "train/loss" in r]
    schedule = learning_rate_schedule(optim, 16)
    assert [r["train/learning_rate"] for r in records] == pytest.approx(
        [float(schedule(s - 1)) for s in (4, 8, 12, 16)])
    times = [r["time/elapsed_s"] for r in records]
    assert all(t > 0 for t in times) and times == sorted(times)


def test_schedules_against_hand_computed_values():
    def rate(**kw):
        return learning_rate_schedule(OptimConfig(learning_rate=1.0, **kw), 10)

    assert float(rate()(7)) == 1.0
    assert float(rate(warmup_steps=4)(2)) == pytest.approx(0.5)
    assert float(rate(schedule="linear", final_lr_fraction=0.5)(5)) == pytest.approx(0.75)
    assert float(rate(schedule="cosine")(5)) == pytest.approx(0.5)
    assert float(rate(schedule="cosine", warmup_steps=2)(6)) == pytest.approx(0.5)
    assert float(rate(schedule="exponential", decay_rate=0.5, transition_steps=2)(4)) == 0.25
    with pytest.raises(ValueError, match="decay needs steps"):
        rate(schedule="cosine", warmup_steps=10)


def test_runs_of_other_lengths_reuse_the_compiled_step_unless_the_decay_needs_it(tmp_path):
    from lnorm.trainer import _train_chunk_fn

    assert schedule_length(OptimConfig(), 500) == 1
    assert schedule_length(OptimConfig(schedule="cosine", decay_steps=100), 500) == 1
    assert schedule_length(OptimConfig(schedule="linear"), 500) == 500
    task = make_task()
    train(task, _config(steps=4), tmp_path / "a")
    misses = _train_chunk_fn.cache_info().misses
    train(task, _config(steps=8), tmp_path / "b")  # constant rate: same compiled step
    assert _train_chunk_fn.cache_info().misses == misses


def test_element_wise_and_per_tensor_clipping():
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    grads = {"a": jnp.array([3.0, -4.0]), "b": jnp.array([0.3, 0.4])}  # norms 5 and 0.5

    def updates(**kw):
        tx = make_optimizer(OptimConfig(name="sgd", learning_rate=1.0, **kw))
        return jax.tree.map(np.asarray, tx.update(grads, tx.init(params), params)[0])

    np.testing.assert_allclose(updates(grad_clip_value=1.0)["a"], [-1.0, 1.0])
    per_tensor = updates(grad_clip_tensor_norm=1.0)
    np.testing.assert_allclose(per_tensor["a"], [-0.6, 0.8], rtol=1e-6)
    np.testing.assert_allclose(per_tensor["b"], [-0.3, -0.4], rtol=1e-6)  # under the bound
    glob = updates(grad_clip_norm=1.0)  # global norm sqrt(25.25)
    np.testing.assert_allclose(glob["b"], -np.array([0.3, 0.4]) / np.sqrt(25.25), rtol=1e-6)


def test_gather_returns_every_example_in_order():
    model = nnx.Linear(3, 2, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).normal(size=(11, 3)).astype(np.float32)
    out = gather(model, lambda m, b: {"y": m(b["x"]), "sq": jnp.sum(b["x"] ** 2, -1)},
                 [{"x": x[:4]}, {"x": x[4:8]}, {"x": x[8:]}])
    w, b = np.asarray(model.kernel[...]), np.asarray(model.bias[...])
    np.testing.assert_allclose(out["y"], x @ w + b, rtol=1e-5)
    np.testing.assert_allclose(out["sq"], (x ** 2).sum(-1), rtol=1e-5)


def test_each_process_reads_its_contiguous_share_of_the_global_batch():
    source = ArraySource({"x": np.arange(30)})
    kw = dict(batch_size=8, seed=3, shuffle=True, drop_remainder=True)
    whole = list(Pipeline(source, process_index=0, process_count=1, **kw).batches(1))
    shares = [list(Pipeline(source, process_index=i, process_count=2, **kw).batches(1))
              for i in range(2)]
    for k, batch in enumerate(whole):
        np.testing.assert_array_equal(
            np.concatenate([shares[0][k]["x"], shares[1][k]["x"]]), batch["x"])
    with pytest.raises(ValueError, match="split evenly over the 3 processes"):
        Pipeline(source, process_index=0, process_count=3, **kw)


def test_early_stopping_needs_a_metric(tmp_path):
    with pytest.raises(ValueError, match=r"needs train\.select_metric"):
        train(make_task(), _config(steps=4, early_stop_patience=2), tmp_path)


def test_summary_is_the_final_result(tmp_path):
    result = train(make_task(), _config(steps=8), tmp_path)
    assert json.loads((tmp_path / "summary.json").read_text()) == result


def test_a_lost_summary_is_rewritten_by_rerunning_the_finished_run(tmp_path):
    """summary.json lost (a failed write, a deleted file): re-running the finished run writes it
    again from the checkpoints, without training, and the log keeps one final record."""
    task = make_task()
    task.evaluators = {"test": Evaluator(lambda m, ctx: {"score": 1.0}, final=True)}
    result = train(task, _config(steps=8), tmp_path)
    (tmp_path / "summary.json").unlink()
    again = make_task()
    again.train_batches = None  # a finished run must not ask for data
    again.evaluators = task.evaluators
    assert train(again, _config(steps=8), tmp_path) == result
    assert json.loads((tmp_path / "summary.json").read_text()) == result
    assert sum("selected_step" in r for r in _records(tmp_path)) == 1
