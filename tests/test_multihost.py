"""Two `jax.distributed` processes on this machine (CPU collectives): each reads only its share
of every global batch, and the run equals a single-process run of the same global batch (losses,
BatchNorm statistics, evaluation) to float tolerance; checkpoints are written once and resume
on either topology; only process 0 logs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    process, processes, port, run_dir, steps = sys.argv[1:]
    import jax
    if int(processes) > 1:
        jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}",
                                   num_processes=int(processes), process_id=int(process))
    import numpy as np, optax
    from flax import nnx
    from lnorm.data.pipeline import ArraySource, Pipeline
    from lnorm.logger import RunLogger
    from lnorm.metrics import evaluate
    from lnorm.norms import NormSpec
    from lnorm.trainer import Task, TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(256, 8)).astype(np.float32)
    y = (x @ rng.normal(size=(8, 3))).argmax(-1).astype(np.int32)
    source = ArraySource({"x": x, "y": y})
    pipe = Pipeline(source, batch_size=32, seed=0, drop_remainder=True)  # the global batch
    assert pipe.process_count == jax.process_count()
    eval_pipe = Pipeline(source, batch_size=64, shuffle=False)

    class Net(nnx.Module):  # batch norm: its statistics must be those of the global batch
        def __init__(self, rngs):
            self.l1 = NormSpec("batch").normed_dense(8, 16, rngs=rngs)
            self.l2 = nnx.Linear(16, 3, rngs=rngs)
        def __call__(self, x):
            return self.l2(nnx.relu(self.l1(x)))

    def loss_fn(model, batch, rng):
        logits = model(batch["x"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, batch["y"]).mean(), {}

    def metric_fn(model, batch):
        nll = optax.softmax_cross_entropy_with_integer_labels(model(batch["x"]), batch["y"])
        return {"nll": nll.sum(), "count": nll.shape[0]}

    task = Task(Net(nnx.Rngs(0)), loss_fn, pipe.batches, len(pipe),
                {"eval": lambda m, ctx: evaluate(m, metric_fn, eval_pipe.batches(0))})
    config = TrainConfig(steps=int(steps), log_every=4, checkpoint_every=8, eval_every=8,
                         progress=False)
    with RunLogger(run_dir, config={}) as logger:
        final = train(task, config, run_dir, logger)
    print("RESULT" + json.dumps(final), flush=True)
""")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(run_dir: Path, processes: int, steps: int) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    port = _port()
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(i), str(processes), str(port),
                               str(run_dir), str(steps)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for i in range(processes)]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.split("RESULT", 1)[1]))
    assert all(r == results[0] for r in results)  # every process ends with the same numbers
    return results[0]


def _records(run_dir: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/")}
            for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_close(a: list[dict], b: list[dict]) -> None:
    assert [r.keys() for r in a] == [r.keys() for r in b]  # one writer: no duplicated lines
    for ra, rb in zip(a, b, strict=True):
        for key in ra:
            np.testing.assert_allclose(ra[key], rb[key], rtol=2e-5, err_msg=key)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("multihost")
    _run(root / "one", 1, 16)
    _run(root / "two", 2, 16)
    return {"one": root / "one", "two": root / "two"}


def test_two_processes_equal_one_process_of_the_same_global_batch(runs):
    _assert_close(_records(runs["two"]), _records(runs["one"]))
    steps = sorted(int(p.name) for p in (runs["two"] / "checkpoints").iterdir())
    assert steps == [8, 16]  # written once, into the shared directory


def test_checkpoints_resume_on_either_topology(runs, tmp_path):
    shutil.copytree(runs["one"], tmp_path / "one_then_two")
    shutil.copytree(runs["two"], tmp_path / "two_then_one")
    a = _run(tmp_path / "one_then_two", 2, 24)
    b = _run(tmp_path / "two_then_one", 1, 24)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=2e-5, err_msg=key)
    _assert_close(_records(tmp_path / "one_then_two"), _records(tmp_path / "two_then_one"))


def test_the_entry_point_starts_jax_distributed_from_the_environment(monkeypatch):
    from lnorm import parallel

    calls = []
    monkeypatch.setattr(parallel, "initialize_distributed", lambda **kw: calls.append(kw))
    assert not parallel.initialize_from_environment({"SLURM_NTASKS": "1"})
    assert parallel.initialize_from_environment({"SLURM_NTASKS": "4"})
    assert parallel.initialize_from_environment(
        {"LNORM_COORDINATOR": "10.0.0.1:1234", "LNORM_NUM_PROCESSES": "2",
         "LNORM_PROCESS_ID": "1"})
    assert calls == [{}, {"coordinator_address": "10.0.0.1:1234", "num_processes": 2,
                          "process_id": 1}]
