"""DRAW through the real CLI: `scale=tiny data.synthetic=true` trains on the stand-in (written
in the .amat format and read through the binarized-MNIST builder), learns, selects a
checkpoint by validation bound, writes its pictures; `experiments.evaluate` then re-scores the
selected checkpoint and runs the `iwae` and `sample` stages on it. Bad configs are clear errors."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from PIL import Image

from experiments.run import ConfigError, resolve

ROOT = Path(__file__).resolve().parents[2]


def _python(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("draw")
    run_dir = tmp / "run"
    result = _python("experiments.run", [
        "+exp=draw", "scale=tiny", "data.synthetic=true", f"data.data_dir={tmp / 'data'}",
        "logger=none", "train.progress=false", f"hydra.run.dir={run_dir}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synthetic stand-in" in result.stdout
    return run_dir


def test_tiny_run_learns_and_draws(tiny_run):
    rows = _rows(tiny_run)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert rows[-1]["step"] == 60 and rows[-1]["selected_step"] == summary["best/step"]
    bounds = [r["train/bound"] for r in rows if "train/bound" in r]
    assert bounds[-1] < 0.7 * bounds[0], bounds  # from ~540 nats (p = 1/2 per pixel)
    for row in rows:
        if "train/bound" in row:
            assert row["train/bound"] == pytest.approx(row["train/reconstruction"]
                                                       + row["train/kl"], rel=1e-4)
    validation = [r for r in rows if "validation/bound" in r]
    assert [r["step"] for r in validation] == [30, 60]
    assert summary["test/bound"] < 0.7 * bounds[0]
    assert summary["best/validation/bound"] == min(r["validation/bound"] for r in validation)

    pictures = tiny_run / "artifacts" / "pictures"
    for step in (30, 60):
        with Image.open(pictures / "samples" / f"step_{step}.png") as grid:
            assert grid.size == (4 * 29 + 1, 4 * 29 + 1)  # 16 samples, 4 x 4 tiles
        with Image.open(pictures / "canvases" / f"step_{step}.gif") as gif:
            assert gif.n_frames == 4  # one frame per glimpse
        with Image.open(pictures / "canvas_strip" / f"step_{step}.png") as strip:
            assert strip.size == (5 * 29 + 1, 4 * 29 + 1)  # 4 glimpses + the digit, 4 digits


def test_evaluate_rescores_the_best_checkpoint_and_runs_the_stages(tiny_run):
    result = _python("experiments.evaluate",
                     [str(tiny_run), "--step", "best", "--stage", "iwae", "sample"], tiny_run)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tiny_run / "summary.json").read_text())
    step = summary["best/step"]
    evaluated = json.loads((tiny_run / "eval" / f"step_{step}.json").read_text())["results"]
    for key in ("validation/bound", "test/bound", "test/kl"):
        assert evaluated[key] == pytest.approx(summary[key if "test" in key else f"best/{key}"],
                                               rel=1e-5)
    # k = 4 importance samples: never far above the single-sample bound, not absurdly below.
    assert summary["test/bound"] - 30 < evaluated["test/iwae_bound"] < summary["test/bound"] + 1
    samples = np.load(tiny_run / "artifacts" / "sample" / "samples_array" / f"step_{step}.npy")
    assert samples.shape == (20, 28, 28) and samples.min() >= 0 and samples.max() <= 1
    assert (tiny_run / "artifacts" / "sample" / "samples" / f"step_{step}.png").exists()


def test_a_bad_config_ends_in_one_line_and_leaves_nothing(tmp_path):
    run_dir = tmp_path / "run"
    result = _python("experiments.run", [
        "+exp=draw", "scale=tiny", "data.binarization=otsu", "logger=none",
        f"hydra.run.dir={run_dir}"], tmp_path)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.startswith("error: ") and "data.binarization='otsu'" in result.stderr
    assert not run_dir.exists()


@pytest.mark.parametrize(("override", "message"), [
    ("norm.placement=everywhere", "norm=layer: DRAW: norm.placement='everywhere'"),
    ("model.read_size=1", "norm=layer: DRAW: read_size=1"),
    ("model.cell_variant=gru", "cell_variant='gru'"),
])
def test_a_model_it_cannot_build_is_a_config_error_naming_the_norm(override, message):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=draw", "scale=tiny", override])
    conf, _, module = resolve(cfg)
    with pytest.raises(ConfigError, match=re.escape(message)):
        module.make_model(conf)


@pytest.mark.parametrize(("norm", "variant"), [
    ("none", "draw"), ("layer", "draw"), ("layer", "paper"), ("rms", "draw"), ("batch", "draw"),
    ("weight", "draw"),
])
def test_every_normaliser_builds_from_the_config(norm, variant):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=draw", "scale=tiny", f"norm={norm}",
                                           f"model.cell_variant={variant}"])
    conf, _, module = resolve(cfg)
    model = module.make_model(conf)
    assert model.glimpses == 4 and model.encoder.hidden_features == 32
