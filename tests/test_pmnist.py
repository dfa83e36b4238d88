"""The pmnist experiment: the model's normaliser placement, and the CLI end to end on a
synthetic dataset in the real MNIST file format (single runs, a sweep, and curve comparison)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from experiments.pmnist.model import MLP
from lnorm.data.mnist import pixel_permutation, write_synthetic
from lnorm.norms import BatchNorm, Identity, LayerNorm, NormSpec, WeightNormDense
from scripts import compare

ROOT = Path(__file__).resolve().parents[1]


def _norm_types(norm: NormSpec) -> list[type]:
    model = MLP([784, 16, 16, 10], norm=norm, rngs=nnx.Rngs(0))
    return [type(layer.norm) for layer in model.layers]


def test_layer_norm_on_hidden_layers_only_batch_norm_on_all():
    assert _norm_types(NormSpec("layer")) == [LayerNorm, LayerNorm, Identity]
    assert _norm_types(NormSpec("layer", placement="everywhere")) == [LayerNorm] * 3
    assert _norm_types(NormSpec("batch")) == [BatchNorm, BatchNorm, BatchNorm]
    assert _norm_types(NormSpec("none")) == [Identity, Identity, Identity]
    model = MLP([784, 16, 10], norm=NormSpec("weight"), rngs=nnx.Rngs(0))
    assert all(isinstance(layer.dense, WeightNormDense) for layer in model.layers)


def test_batch_norm_uses_unbiased_variance_at_batch_size_4_only():
    assert NormSpec("batch").resolved(4).options["unbiased"] is True
    assert NormSpec("batch").resolved(128).options["unbiased"] is False
    assert NormSpec("batch", unbiased=False).resolved(4).options["unbiased"] is False
    assert NormSpec("layer", epsilon=1e-3).resolved(4).options == {"epsilon": 1e-3}
    model = MLP([784, 16, 10], norm=NormSpec("batch").resolved(4), rngs=nnx.Rngs(0))
    assert all(layer.norm.unbiased for layer in model.layers)


@pytest.fixture(scope="module")
def synthetic_mnist(tmp_path_factory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("idx"), num_examples=640, seed=0)


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "experiments.run", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
    )


def _small(synthetic: Path, data_dir: Path) -> list[str]:
    return [
        "+exp=pmnist",
        f"data.manual_dir={synthetic}",
        f"data.data_dir={data_dir}",
        "data.verify_md5=false",
        "data.validation_size=128",
        "data.batch_size=32",
        "data.eval_batch_size=64",
        "model.hidden=[64,64]",
        "train.log_every=4",
        "train.steps_per_call=4",
        "train.checkpoint_every=8",
        "train.progress=false",
    ]


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_cli_trains_and_records_a_run(synthetic_mnist, tmp_path):
    run_dir = tmp_path / "run"
    args = [*_small(synthetic_mnist, tmp_path / "data"), "train.epochs=2", "seed=3",
            "optim.schedule=cosine", "optim.warmup_steps=2", f"hydra.run.dir={run_dir}"]
    result = _run(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    rows = _rows(run_dir)
    train_nll = [r["train/nll"] for r in rows if "train/nll" in r]
    test_error = [r["test/error"] for r in rows if "test/error" in r]
    assert train_nll[-1] < 0.5 * train_nll[0]
    assert test_error[-1] < 0.5  # ten classes: chance is 0.9
    assert len(test_error) == 2  # evaluated at each epoch end
    rates = [r["train/learning_rate"] for r in rows if "train/learning_rate" in r]
    assert rates[0] > rates[-1] and all(r["time/elapsed_s"] > 0 for r in rows)

    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["seed"] == 3 and info["config"]["norm"]["name"] == "layer"
    assert "git" in json.dumps(info) and "jax" in json.dumps(info)
    np.testing.assert_array_equal(np.load(run_dir / "permutation.npy"), pixel_permutation(3))
    assert any((run_dir / "checkpoints").iterdir())
    assert list(run_dir.rglob("offline-run-*")), "no W&B offline run was written"

    # Evaluation without training, on the checkpoint selected by validation error: the same
    # numbers as logged at that step, and nothing of the run changed.
    summary = json.loads((run_dir / "summary.json").read_text())
    before = sorted((p, p.stat().st_mtime_ns) for p in (run_dir / "checkpoints").rglob("*"))
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "experiments.evaluate", str(run_dir),
                             "--step", "best"], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = summary["best/step"]
    evaluated = json.loads((run_dir / "eval" / f"step_{best}.json").read_text())["results"]
    logged = next(r for r in rows if r["step"] == best and "validation/error" in r)
    for key in ("validation/error", "validation/nll", "test/error"):
        assert evaluated[key] == pytest.approx(logged[key], rel=1e-5)
    assert sorted((p, p.stat().st_mtime_ns) for p in (run_dir / "checkpoints").rglob("*")) == before


def test_cli_sweep_runs_separate_jobs_and_compare_plots_them(synthetic_mnist, tmp_path):
    sweep_dir = tmp_path / "sweep"
    args = ["-m", *_small(synthetic_mnist, tmp_path / "data"), "train.epochs=1",
            "norm=none,batch", f"hydra.sweep.dir={sweep_dir}"]
    result = _run(args, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]

    runs = compare.find_runs([sweep_dir])
    assert len(runs) == 2
    assert {compare.load_run(r).norm for r in runs} == {"none", "batch"}
    assert all(list(r.rglob("offline-run-*")) for r in runs), "each job needs its own W&B run"

    out = tmp_path / "figs"
    assert compare.main([str(sweep_dir), "--out", str(out), "--name", "fig6"]) == 0
    assert (out / "fig6.png").stat().st_size > 10_000
    table = (out / "fig6.md").read_text()
    assert "| norm=batch | 1 |" in table and "| norm=none | 1 |" in table


def test_cli_tiny_scale_on_the_synthetic_stand_in(tmp_path):
    """`scale=tiny data.synthetic=true`: the stand-in corpus is written in the IDX format and
    read through the real builder; the tiny run learns it."""
    run_dir = tmp_path / "run"
    result = _run(["+exp=pmnist", "scale=tiny", "data.synthetic=true",
                   f"data.data_dir={tmp_path / 'data'}", "train.progress=false",
                   "logger=none", f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert list((tmp_path / "data" / "synthetic").glob("mnist-*/files/*-idx3-ubyte.gz"))
    rows = _rows(run_dir)
    assert rows[-1]["step"] == 40
    errors = [r["validation/error"] for r in rows if "validation/error" in r]
    assert errors[-1] < 0.5


def test_cli_without_experiment_lists_them_and_leaves_nothing(tmp_path):
    result = _run([], tmp_path)
    assert result.returncode == 2
    assert "pmnist" in result.stderr
    assert not (tmp_path / "outputs").exists()
