"""The attentive reader through the real CLI: `scale=tiny data.synthetic=true` trains, selects
and evaluates a checkpoint and writes the attention artifacts; `experiments.evaluate` runs the
`reader` stage on the saved run; bad data options are one-line config errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lnorm.data import cnn_qa
from lnorm.data.common import prepare, synthetic_corpus

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "WANDB_MODE": "offline", "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _python(module: str, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("reader")
    run_dir, data_dir = tmp / "run", tmp / "data"
    result = _python("experiments.run", "+exp=attentive_reader", "scale=tiny",
                     "data.synthetic=true", f"data.data_dir={data_dir}", "logger=none",
                     "train.progress=false", f"hydra.run.dir={run_dir}", cwd=tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    return run_dir, data_dir


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _random_candidate_error(data_dir: Path, split: str) -> float:
    files, prepared = synthetic_corpus(data_dir, "cnn_qa", cnn_qa.write_synthetic,
                                       num_examples=1024)
    source = prepare(cnn_qa.CnnQa, prepared, manual_dir=files).as_data_source(split)
    return 1 - float(np.mean([1 / len(source[i]["candidates"]) for i in range(len(source))]))


def test_tiny_run_learns_the_stand_in_and_writes_the_attention(tiny_run):
    run_dir, data_dir = tiny_run
    rows = _rows(run_dir)
    assert rows[-1]["step"] == 300 and rows[-1]["selected_step"] in (100, 200, 300)
    errors = [r["validation/error"] for r in rows if "validation/error" in r]
    nlls = [r["train/nll"] for r in rows if "train/nll" in r]
    assert len(errors) == 3 and nlls[-1] < 0.7 * nlls[0]
    # Better than picking one of the document's entities at random (the answer is always one).
    assert min(errors) < _random_candidate_error(data_dir, "validation") - 0.05
    final = rows[-1]
    assert {"test/error", "test/nll"} <= set(final) and 0 <= final["test/error"] <= 1
    page = (run_dir / "artifacts/test/attention_html" / f"step_{final['selected_step']}.html")
    text = page.read_text()
    assert "@placeholder" in text and text.count("<span title=") > 10
    png = run_dir / "artifacts/test/attention_png" / f"step_{final['selected_step']}.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    info = json.loads((run_dir / "run_info.json").read_text())
    assert info["config"]["data"]["top_k_sentences"] == 4


def test_reader_stage_evaluates_the_best_checkpoint(tiny_run):
    run_dir, _ = tiny_run
    result = _python("experiments.evaluate", str(run_dir), "--step", "best", "--stage",
                     "reader", cwd=run_dir.parent)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    best = summary["best/step"]
    evaluated = json.loads((run_dir / "eval" / f"step_{best}.json").read_text())["results"]
    logged = next(r for r in _rows(run_dir) if r["step"] == best and "validation/error" in r)
    for key in ("validation/error", "validation/nll"):
        assert evaluated[key] == pytest.approx(logged[key], rel=1e-5)
    assert evaluated["test/error"] == pytest.approx(_rows(run_dir)[-1]["test/error"], rel=1e-5)
    # The stand-in's query repeats a context sentence, which top-4 always keeps.
    assert evaluated["validation/answer_in_context"] == evaluated["test/answer_in_context"] == 1
    assert (run_dir / "artifacts/reader/attention_html" / f"step_{best}.html").exists()
    assert (run_dir / "artifacts/reader/attention_png" / f"step_{best}.png").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["data.synthetic=true", "data.cloze=true"], "choose one data source"),
    (["data.top_k_sentences=0"], "data.top_k_sentences=0"),
    (["model.answer_mask=entities"], "model.answer_mask='entities'"),
])
def test_bad_options_are_one_line_errors(tmp_path, args, words):
    result = _python("experiments.run", "+exp=attentive_reader", "scale=tiny", *args,
                     f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert result.returncode == 2 and words in result.stderr, result.stderr[-2000:]
    assert "Traceback" not in result.stderr and not (tmp_path / "run").exists()
