"""Mixed precision, `train.dtype=bfloat16` (lnorm.precision): the loss computes in bfloat16,
parameters, optimiser state, normaliser statistics and losses stay float32, and every
experiment's tiny scale trains like float32 from the same initialisation.

Tolerances. bfloat16 keeps 8 significant bits: one rounding is off by at most
u = 2^-8 ~ 3.9e-3 of the value. At the first step both runs hold the same float32 parameters
and differ only by the rounding of the parameters and of every intermediate in the forward and
backward pass; errors of independent roundings partly cancel in the loss's sums, so the losses
must agree within 2u of the loss (observed: <= 1.5e-3 relative). After that the trajectories
differ too (Adam divides each gradient by its own magnitude, so a rounding flips the sign of
the updates of parameters whose gradient is near zero): at the last step the bfloat16 run must
have made the float32 run's progress within 15% (observed: <= 7%), besides the 2u band.
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from flax import nnx
from hydra import compose, initialize_config_dir

from experiments.run import resolve
from experiments.schema import ConfigError
from lnorm.cells import GRUCell, LSTMCell
from lnorm.norms import BatchNorm
from lnorm.precision import cast_model, cast_params, compute_dtype, module_dtype
from lnorm.rnn import RNN
from lnorm.runinfo import config_changes
from lnorm.trainer import Evaluator, Task, TrainConfig, run_evaluators, train

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
U = 2.0**-8  # bfloat16's unit roundoff
STEPS = 3


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return compose("config", overrides=list(overrides))


# --- the policy ---------------------------------------------------------------------------------


def test_a_bad_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match=r"train\.dtype='float16'.*'float32', 'bfloat16'"):
        compute_dtype("float16")
    with pytest.raises(ValueError, match=r"train\.dtype='bf16'"):
        TrainConfig(steps=1, dtype="bf16")
    with pytest.raises(ConfigError, match=r"train\.dtype='half'"):
        resolve(_compose("+exp=pmnist", "train.dtype=half"))
    assert resolve(_compose("+exp=pmnist", "train.dtype=bfloat16"))[0].train.dtype == "bfloat16"


def test_the_dtype_defines_a_run():
    """A resume with another dtype is refused like any defining key (experiments.run)."""
    old = {"train": {"dtype": "float32", "steps": 10}}
    assert config_changes(old, {"train": {"dtype": "bfloat16", "steps": 10}}) == {
        "train.dtype": ["float32", "bfloat16"]}
    assert config_changes(old, {"train": {"dtype": "float32", "steps": 20}}) == {}


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.dense = nnx.Linear(3, 4, rngs=rngs)
        self.norm = BatchNorm(4, rngs=rngs)
        self.step = nnx.Variable(jnp.int32(0))

    def __call__(self, x):
        return self.norm(self.dense(x.astype(module_dtype(self))))


def test_cast_model_casts_the_params_only():
    model = _Net(nnx.Rngs(0))
    model.norm.mean[...] = jnp.full((4,), 1 / 3)  # not representable in bfloat16
    cast = cast_model(model, jnp.bfloat16)
    for original, low in zip(jax.tree.leaves(nnx.state(model, nnx.Param)),
                             jax.tree.leaves(nnx.state(cast, nnx.Param)), strict=True):
        assert original.dtype == jnp.float32 and low.dtype == jnp.bfloat16
        np.testing.assert_array_equal(low, original.astype(jnp.bfloat16))
    assert cast.norm.mean[...].dtype == jnp.float32
    np.testing.assert_array_equal(cast.norm.mean[...], model.norm.mean[...])
    assert cast.step[...].dtype == jnp.int32
    assert module_dtype(cast) == jnp.bfloat16 and module_dtype(model) == jnp.float32
    assert cast_model(model, jnp.float32) is model


def test_gradients_through_the_cast_are_float32_and_those_of_the_rounded_weights():
    """d/dW sum((x W~)^2) with W~ = bf16(W) is 2 x^T (x W~), computed in bfloat16: float32 out
    of the cast, equal to the float64 value of the rounded weights within the products'
    roundings."""
    w = jax.random.normal(jax.random.key(0), (16, 8))
    x = jax.random.normal(jax.random.key(1), (32, 16)).astype(jnp.bfloat16)

    def loss(params):
        low = cast_params(params, jnp.bfloat16)
        return jnp.sum(jnp.square((x @ low["w"]).astype(jnp.float32)))

    grad = jax.grad(loss)({"w": w})["w"]
    assert grad.dtype == jnp.float32
    xd, wd = np.asarray(x, np.float64), np.asarray(w.astype(jnp.bfloat16), np.float64)
    expected = 2 * xd.T @ (xd @ wd)
    np.testing.assert_allclose(grad, expected, rtol=0, atol=4 * U * np.abs(expected).max())
    assert not np.allclose(grad, 2 * xd.T @ (xd @ np.asarray(w, np.float64)), rtol=U / 8)


@pytest.mark.parametrize(("cell_type", "norm"), [(LSTMCell, "layer"), (GRUCell, "batch")])
def test_recurrences_run_in_bf16_with_float32_gradients_and_statistics(cell_type, norm):
    """The fused LN scans (`layer`) and the step-by-step path with per-step batch statistics
    (`batch`): bf16 outputs and states, float32 parameter gradients and running statistics,
    all close to float32. Outputs in [-1, 1] within 8u after 12 steps of rounding (observed
    3.5u); statistics within 2u (they average bf16-rounded activations; observed 0.06u).
    Gradients have no such bound: the normalisers' backward passes subtract the mean and the
    projection of the incoming gradient, and what is left of a bf16-rounded sum can be far
    smaller than its terms; each tensor's gradient within 25% of its float32 norm (observed
    up to 9%), which still catches a gradient that bf16 breaks (lost, rescaled, cut)."""
    rnn = RNN(cell_type(4, 8, norm=norm, t_max=12, rngs=nnx.Rngs(0)))
    x = jax.random.normal(jax.random.key(1), (3, 12, 4))
    lengths = jnp.array([12, 7, 3])
    graphdef, params, rest = nnx.split(rnn, nnx.Param, ...)

    def loss(p, dtype):
        model = nnx.merge(graphdef, cast_params(p, dtype), rest, copy=True)
        outputs, final = model(x, lengths=lengths)
        value = jnp.sum(jnp.sin(outputs.astype(jnp.float32)))
        return value, (outputs, final, nnx.state(model, nnx.BatchStat))

    grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
    g32, (out32, _, stats32) = grad(params, jnp.float32)
    g16, (out16, final16, stats16) = grad(params, jnp.bfloat16)
    assert out16.dtype == jnp.bfloat16
    assert {a.dtype for a in jax.tree.leaves(final16)} == {jnp.dtype(jnp.bfloat16)}
    assert {a.dtype for a in jax.tree.leaves(g16)} == {jnp.dtype(jnp.float32)}
    np.testing.assert_allclose(out16.astype(jnp.float32), out32, atol=8 * U)
    for a, b in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), strict=True):
        assert np.linalg.norm(a - b) <= 0.25 * np.linalg.norm(b)
    assert (norm == "batch") == bool(jax.tree.leaves(stats16))
    for a, b in zip(jax.tree.leaves(stats16), jax.tree.leaves(stats32), strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=2 * U, atol=2 * U)


def test_evaluators_get_a_bf16_copy_and_the_loss_must_be_float32(tmp_path):
    model = _Net(nnx.Rngs(0))
    seen = {}

    def probe(m, ctx):
        seen["dtypes"] = {a.dtype for a in jax.tree.leaves(nnx.state(m, nnx.Param))}
        return {"value": float(jnp.sum(m(jnp.ones((2, 3)))))}

    run_evaluators(model, {"probe": Evaluator(probe)}, 1, seed=0, run_dir=tmp_path,
                   dtype="bfloat16")
    assert seen["dtypes"] == {jnp.dtype(jnp.bfloat16)}
    assert {a.dtype for a in jax.tree.leaves(nnx.state(model))} <= {
        jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}

    batches = lambda epoch, start: ({"x": np.ones((4, 3), np.float32)} for _ in range(8))
    low_loss = lambda m, batch, rng: (jnp.mean(m(batch["x"])), {})  # bf16, not cast up
    task = Task(model=model, loss_fn=low_loss, train_batches=batches, steps_per_epoch=8)
    with pytest.raises(TypeError, match=r"bfloat16 loss under train\.dtype=bfloat16"):
        train(task, TrainConfig(steps=2, dtype="bfloat16", progress=False), tmp_path / "run")


# --- every experiment's tiny scale ----------------------------------------------------------------

# Matmuls deliberately left in float32 (forward and backward), per experiment: DRAW's attention
# read and write (filters over pixel positions), the handwriting window (a position along the
# text). Every other matmul must run in bfloat16.
FLOAT32_MATMULS = {"draw": 12, "handwriting": 2}
CASES = {
    "pmnist": ("pmnist", []),
    "pmnist_batchnorm": ("pmnist", ["norm=batch"]),  # BN on every layer: running statistics
    "skipthought": ("skipthought", []),
    "order_embeddings": ("order_embeddings", []),
    "draw": ("draw", []),
    "attentive_reader": ("attentive_reader", []),
    "handwriting": ("handwriting", ["model.layers=1"]),  # one LSTM: half the compile time
}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("data")


def _matmul_dtypes(task: Task, batch) -> Counter:
    """How many matmuls of one bf16 training step (loss and gradient) run in which dtypes."""
    graphdef, params, rest = nnx.split(task.model, nnx.Param, ...)

    def loss(p):
        model = nnx.merge(graphdef, cast_params(p, jnp.bfloat16), rest, copy=True)
        return task.loss_fn(model, batch, jax.random.key(0))[0]

    counts: Counter = Counter()

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "dot_general":
                counts["bf16" if all(v.aval.dtype == jnp.bfloat16 for v in eqn.invars)
                       else "other"] += 1
            for value in eqn.params.values():
                for sub in value if isinstance(value, list | tuple) else [value]:
                    inner = getattr(sub, "jaxpr", sub)
                    if hasattr(inner, "eqns"):
                        walk(inner)

    walk(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
    return counts


def _stored_dtypes(step_dir: Path) -> set[str]:
    metadata = ocp.StandardCheckpointer().metadata(step_dir).item_metadata
    return {str(leaf.dtype) for leaf in jax.tree.leaves(metadata.tree)}


@pytest.mark.parametrize("case", list(CASES))
def test_bf16_trains_like_float32(case, data_dir, tmp_path):
    exp, overrides = CASES[case]
    conf, _, module = resolve(_compose(
        f"+exp={exp}", "scale=tiny", "data.synthetic=true", f"data.data_dir={data_dir}",
        "logger=none", *overrides))
    task = dataclasses.replace(module.build(conf, tmp_path / "build"), evaluators={})
    graphdef, init = nnx.split(task.model)
    batch = next(iter(task.train_batches(0, 0)))
    matmuls = _matmul_dtypes(task, batch)
    assert matmuls["bf16"] > 0 and matmuls["other"] == FLOAT32_MATMULS.get(exp, 0), matmuls

    losses, stats = {}, {}
    for dtype in ("float32", "bfloat16"):
        task.model = nnx.merge(graphdef, jax.tree.map(jnp.copy, init))  # donated by train
        config = dataclasses.replace(
            conf.train, steps=STEPS, log_every=1, eval_every=None, checkpoint_every=STEPS,
            select_metric=None, early_stop_patience=None, progress=False, dtype=dtype)
        train(task, config, tmp_path / dtype)
        rows = (tmp_path / dtype / "metrics.jsonl").read_text().splitlines()
        losses[dtype] = np.array([r["train/loss"] for r in map(json.loads, rows)
                                  if "train/loss" in r])
        stats[dtype] = jax.tree.leaves(nnx.state(task.model, nnx.BatchStat))
        assert {a.dtype for a in jax.tree.leaves(nnx.state(task.model))} <= {
            jnp.dtype(jnp.float32), jnp.dtype(jnp.int32), jnp.dtype(jnp.uint32)}
        step_dir = tmp_path / dtype / "checkpoints" / str(STEPS)
        for item in ("model", "train"):  # params and optimiser state as saved
            assert _stored_dtypes(step_dir / item) <= {"float32", "int32"}, item

    f32, bf16 = losses["float32"], losses["bfloat16"]
    assert len(f32) == len(bf16) == STEPS
    assert abs(bf16[0] - f32[0]) <= 2 * U * abs(f32[0]), (f32, bf16)
    assert not np.array_equal(f32, bf16)  # the bf16 run did compute in bf16
    progress = abs(f32[0] - f32[-1])
    assert abs(bf16[-1] - f32[-1]) <= 2 * U * abs(f32[-1]) + 0.15 * progress, (f32, bf16)
    assert bool(stats["float32"]) == (case == "pmnist_batchnorm")
    for a, b in zip(stats["bfloat16"], stats["float32"], strict=True):
        assert a.dtype == jnp.float32
        np.testing.assert_allclose(a, b, rtol=4 * U, atol=4 * U)
