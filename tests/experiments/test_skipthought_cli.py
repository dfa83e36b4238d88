"""Skip-thoughts through the real CLI: `scale=tiny data.synthetic=true` trains on the BookCorpus
stand-in read through the real builder, logs `train/nll_per_word` and `validation/nll_per_word`
and keeps the best checkpoint by the latter; `experiments.evaluate --stage senteval` probes the
saved run's vectors on SentEval-layout files (tasks without files skipped with a line), writes
the Table-3 table and `eval/step_N.json`; `load_encoder` + `encode` work on the saved run."""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from experiments.skipthought.encode import encode, load_encoder
from lnorm.data import senteval as se

ROOT = Path(__file__).resolve().parents[2]
PRESENT = ("MR", "TREC", "SICK")  # the SentEval folders the stage test leaves in place


def _python(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT), **env}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("st_cli")
    run = tmp / "run"
    result = _python(["experiments.run", "+exp=skipthought", "scale=tiny", "data.synthetic=true",
                      f"data.data_dir={tmp / 'data'}", "logger=none", "train.progress=false",
                      f"hydra.run.dir={run}"], tmp)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synthetic stand-in" in result.stdout
    return run


def _rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_tiny_run_learns_and_selects_by_held_out_nll(run_dir):
    rows = _rows(run_dir)
    assert max(r["step"] for r in rows) == 60
    train = [r["train/nll_per_word"] for r in rows if "train/nll_per_word" in r]
    validations = [r for r in rows if "validation/nll_per_word" in r]
    assert [r["step"] for r in validations] == [30, 60]
    vocab_size = len(load_encoder(run_dir)[1])
    # Uniform guessing costs log(V) nats a word; the templated stories are far more predictable.
    assert validations[-1]["validation/nll_per_word"] < 0.5 * math.log(vocab_size)
    assert train[-1] < 0.5 * train[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    best = min(validations, key=lambda r: r["validation/nll_per_word"])
    assert summary["best/step"] == best["step"]
    assert (run_dir / "best" / str(best["step"])).is_dir()


@pytest.fixture(scope="module")
def senteval_dir(tmp_path_factory) -> Path:
    """The SentEval stand-in's files with every folder but PRESENT removed."""
    root = se.write_synthetic(tmp_path_factory.mktemp("senteval"), num_examples=60, seed=0)
    for cfg in se.TASKS.values():
        if cfg.folder not in PRESENT:
            shutil.rmtree(root / cfg.folder)
    return root


def test_senteval_stage_on_the_saved_run(run_dir, senteval_dir):
    result = _python(["experiments.evaluate", str(run_dir), "--step", "best", "--stage",
                      "senteval"], run_dir.parent, LNORM_SENTEVAL_DIR=str(senteval_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "senteval: CR skipped, missing CR/custrev.neg, CR/custrev.pos" in result.stdout
    assert "senteval: SUBJ skipped" in result.stdout and "MPQA skipped" in result.stdout
    step = json.loads((run_dir / "summary.json").read_text())["best/step"]
    evaluated = json.loads((run_dir / "eval" / f"step_{step}.json").read_text())["results"]
    keys = {"senteval/MR/accuracy", "senteval/MR/bow_accuracy", "senteval/TREC/accuracy",
            "senteval/TREC/bow_accuracy", "senteval/SICK/pearson", "senteval/SICK/spearman",
            "senteval/SICK/mse", "validation/nll_per_word"}
    assert keys <= set(evaluated)
    assert not any(k.startswith(("senteval/CR", "senteval/SUBJ")) for k in evaluated)
    # The stand-in's sentiment words never occur in the story corpus (all <unk> to the model),
    # so its vectors carry no sentiment; a bag of words separates the classes.
    assert 35 <= evaluated["senteval/MR/accuracy"] <= 65
    assert evaluated["senteval/MR/bow_accuracy"] > 95
    assert -1 <= evaluated["senteval/SICK/pearson"] <= 1 and evaluated["senteval/SICK/mse"] > 0
    table = (run_dir / "artifacts" / "senteval" / "table3" / f"step_{step}.txt").read_text()
    assert "| paper: + LN (1M iter.) | 0.854 | 0.785 | 0.277 | 79.5 | 82.6 | 93.4 | 89.0 | – |" \
        in table
    assert f"| this run: norm=layer, scale=tiny, seed=0, step {step} |" in table
    assert "CR skipped: missing CR/custrev.neg, CR/custrev.pos." in table
    assert f"SentEval-layout files in {senteval_dir}" in table
    # The bag-of-words baseline is cached beside the prepared MR data.
    assert list((run_dir.parent / "data" / "senteval").glob("mr-*/bow-200-k3-i3.json"))


def test_load_encoder_and_encode_on_the_saved_run(run_dir):
    model, vocab = load_encoder(run_dir)
    sentences = ["then anna walked from the kitchen to the garden .", "", "unknown words here"]
    vectors = encode(model, vocab, sentences)
    assert vectors.shape == (3, 32) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    step = json.loads((run_dir / "summary.json").read_text())["best/step"]
    same, _ = load_encoder(run_dir, step=step)
    np.testing.assert_allclose(encode(same, vocab, sentences), vectors, rtol=1e-5, atol=1e-6)
    other, _ = load_encoder(run_dir, step=30 if step == 60 else 60)
    assert not np.allclose(encode(other, vocab, sentences), vectors, atol=1e-4)
    with pytest.raises(FileNotFoundError, match="not a run directory"):
        load_encoder(run_dir.parent)
