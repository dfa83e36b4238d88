"""Data parallelism: on 8 (forced host) devices an MLP with LayerNorm and BatchNorm trains
to the 1-device losses (batch statistics global, not per shard)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys, tempfile
    import jax, numpy as np, optax
    from flax import nnx
    from lnorm import norms
    from lnorm.metrics import evaluate
    from lnorm.parallel import DataParallel
    from lnorm.optim import OptimConfig
    from lnorm.trainer import Task, TrainConfig, train

    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 4))).argmax(-1).astype(np.int32)

    class MLP(nnx.Module):
        # Both normalisers in one net (one compilation per device count): layer norm, then
        # batch norm, whose statistics must be global over the 8 shards, not per shard.

        def __init__(self, rngs):
            # No bias before a normaliser (as in lnorm.norms.NormedDense): under BatchNorm its
            # gradient is pure rounding noise, which Adam would blow up to full-size steps.
            self.l1 = nnx.Linear(8, 32, use_bias=False, rngs=rngs)
            self.ln = norms.LayerNorm(32, rngs=rngs)
            self.l2 = nnx.Linear(32, 32, use_bias=False, rngs=rngs)
            self.bn = norms.BatchNorm(32, momentum=0.5, rngs=rngs)
            self.l3 = nnx.Linear(32, 4, rngs=rngs)

        def __call__(self, x):
            h = nnx.relu(self.ln(self.l1(x)))
            return self.l3(nnx.relu(self.bn(self.l2(h))))

    def loss_fn(model, batch, rng):
        logits = model(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    def metric_fn(model, batch):
        nll = optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])
        return {"nll": nll.sum(), "count": nll.shape[0]}

    def run(devices, batch):
        def train_batches(epoch, start):
            perm = np.random.default_rng(epoch).permutation(64)
            for i in range(start, 64 // batch):
                idx = perm[i * batch:(i + 1) * batch]
                yield {"x": x[idx], "y": y[idx]}

        task = Task(MLP(nnx.Rngs(0)), loss_fn, train_batches, 64 // batch,
                    {"eval": lambda m, ctx: evaluate(m, metric_fn, [{"x": x, "y": y}])})
        config = TrainConfig(epochs=2, log_every=1, progress=False,
                             optim=OptimConfig(learning_rate=1e-2))
        run_dir = tempfile.mkdtemp()
        final = train(task, config, run_dir, parallel=DataParallel(devices))
        losses = [json.loads(l)["train/loss"] for l in open(run_dir + "/metrics.jsonl")
                  if "train/loss" in l]
        return {"losses": losses, "eval_nll": final["eval/nll"],
                "param_devices": len(task.model.l1.kernel[...].sharding.device_set)}

    out = {"one": run(jax.devices()[:1], 16), "eight": run(None, 16)}
    try:
        run(None, 12)
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT" + json.dumps(out))
""")


@pytest.fixture(scope="module")
def results():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


def test_eight_devices_match_one(results):
    one, eight = results["one"], results["eight"]
    assert (one["param_devices"], eight["param_devices"]) == (1, 8)
    assert len(one["losses"]) == 8
    np.testing.assert_allclose(eight["losses"], one["losses"], rtol=1e-5)
    # Evaluation uses BatchNorm's running averages, accumulated from the global statistics.
    np.testing.assert_allclose(eight["eval_nll"], one["eval_nll"], rtol=1e-5)
    assert one["losses"][-1] < one["losses"][0]


def test_indivisible_batch_is_a_clear_error(results):
    assert "batch size (axis 1) must be divisible by the 8 local devices" in results["error"]
    assert "['x']" in results["error"]
