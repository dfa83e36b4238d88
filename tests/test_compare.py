"""scripts.compare on hand-made run directories (metrics.jsonl + run_info.json)."""

from __future__ import annotations

import itertools
import json

import matplotlib
import numpy as np
import pytest

from scripts import compare

matplotlib.use("Agg")

SPE = 20  # steps per epoch of the fake runs


def config(norm="none", batch_size=128, lr=1e-3, seed=0, tag="a"):
    """A resolved config shaped like the platform's, with bookkeeping keys that vary by tag."""
    return {
        "name": "fake", "seed": seed,
        "norm": {"name": norm, "epsilon": 1e-5},
        "data": {"batch_size": batch_size, "data_dir": f"/data/{tag}"},
        "optim": {"name": "adam", "learning_rate": lr},
        "train": {"seed": seed, "epochs": 2, "log_every": 10, "progress": tag == "a",
                  "optim": {"name": "adam", "learning_rate": lr}},
        "logger": {"wandb": {"mode": "offline", "project": tag}},
    }


def records(errors, *, time_per_step=0.5, loss=None, metric="validation/error"):
    """Train records every 10 steps (with elapsed time), an eval record at each epoch end."""
    out = []
    for e, err in enumerate(errors, 1):
        for step in (e * SPE - 10, e * SPE):
            rec = {"step": step, "epoch": step / SPE, "train/loss": loss or 1.0 / step}
            if time_per_step is not None:
                rec["time/elapsed_s"] = time_per_step * step
            out.append(rec)
        out.append({"step": e * SPE, "epoch": float(e), metric: err})
    return out


def write_run(path, cfg, recs, *, tail=""):
    path.mkdir(parents=True)
    (path / "run_info.json").write_text(json.dumps({"config": cfg, "seed": cfg["seed"]}))
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs) + tail)
    return path


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    return err


def test_groups_by_the_keys_that_differ_and_averages_seeds(tmp_path):
    grid = itertools.product(["none", "layer"], [4, 128], [1e-3, 1e-2], [0, 1])
    for i, (norm, bs, lr, seed) in enumerate(grid):
        cfg = config(norm, bs, lr, seed, tag=f"t{i}")  # data_dir, logger, progress vary too
        write_run(tmp_path / "sweep" / str(i), cfg, records([0.5 - 0.1 * seed, 0.3]))
    runs = [compare.load_run(p) for p in compare.find_runs([tmp_path / "sweep"])]
    assert len(runs) == 16 and {r.norm for r in runs} == {"none", "layer"}

    keys = compare.differing_keys(runs)
    assert keys == ["norm.name", "data.batch_size", "optim.learning_rate"]
    groups = compare.group_runs(runs, keys)
    assert len(groups) == 8 and all(sorted(r.seed for r in g.runs) == [0, 1] for g in groups)
    short = compare.short_names(keys)
    assert compare.label(groups[0], short) == "norm=layer, batch_size=4, learning_rate=0.001"

    out = tmp_path / "figs"
    assert compare.main([str(tmp_path / "sweep"), "--out", str(out), "--name", "g"]) == 0
    md = (out / "g.md").read_text()
    assert "(panels: data.batch_size)" in md  # chosen automatically, as for the paper's Fig. 6
    # validation/error at the last epoch is 0.3 for both seeds; the first epoch averages to 0.45.
    assert "| 4 | norm=layer, learning_rate=0.01 | 2 | 0.3 | 0.3 |" in md
    assert sorted(p.name for p in out.iterdir()) == ["g.md", "g.png"]  # no temporary left


def test_band_is_the_min_max_over_seeds(tmp_path):
    rng = np.random.default_rng(0)
    values = rng.uniform(0, 1, size=(3, 5))
    runs = []
    for seed, row in enumerate(values):
        write_run(tmp_path / str(seed), config(seed=seed), records(list(row)))
        runs.append(compare.load_run(tmp_path / str(seed)))
    curve = compare.aggregate([r.series("validation/error") for r in runs])
    np.testing.assert_allclose(curve.mean, values.mean(0))
    np.testing.assert_array_equal(curve.lo, values.min(0))
    np.testing.assert_array_equal(curve.hi, values.max(0))
    np.testing.assert_array_equal(curve.step, SPE * np.arange(1, 6))
    assert curve.n == 3

    groups = compare.group_runs(runs, [])
    fig = compare.figure({(0, "validation/error"): curve}, groups, ["validation/error"], {},
                         None, "epoch")
    (band,) = fig.axes[0].collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert np.isin(values.min(0), ys).all() and np.isin(values.max(0), ys).all()


def test_train_metrics_per_epoch_unless_raw(tmp_path):
    write_run(tmp_path / "r", config(), records([0.5, 0.4]))
    run = compare.load_run(tmp_path / "r")
    s = run.series("train/loss")
    np.testing.assert_allclose(s.value, [(1 / 10 + 1 / 20) / 2, (1 / 30 + 1 / 40) / 2])
    np.testing.assert_array_equal(s.epoch, [1, 2])
    np.testing.assert_array_equal(s.step, [20, 40])
    assert len(run.series("train/loss", raw=True).value) == 4


def test_single_point_curves_get_a_marker(tmp_path, capsys):
    for seed in (0, 1):
        write_run(tmp_path / str(seed), config(seed=seed), records([0.5 + seed / 10]))
    runs = [compare.load_run(tmp_path / str(s)) for s in (0, 1)]
    curve = compare.aggregate([r.series("validation/error") for r in runs])
    fig = compare.figure({(0, "validation/error"): curve}, compare.group_runs(runs, []),
                         ["validation/error"], {}, None, "step")
    (line,) = fig.axes[0].get_lines()
    assert line.get_marker() == "o" and list(line.get_xdata()) == [SPE]
    assert compare.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0


def test_x_time_uses_elapsed_seconds_interpolated_for_evaluations(tmp_path, capsys):
    recs = records([0.5, 0.4], time_per_step=2.0)
    recs.insert(2, {"step": 15, "epoch": 0.75, "validation/error": 0.6})  # between train records
    write_run(tmp_path / "timed" / "r", config(), recs)
    s = compare.load_run(tmp_path / "timed" / "r").series("validation/error")
    np.testing.assert_array_equal(s.step, [15, 20, 40])
    np.testing.assert_allclose(s.time, [30.0, 40.0, 80.0])  # same-step record; interpolated

    out = tmp_path / "o"
    args = [str(tmp_path / "timed"), "--out", str(out), "--x", "time", "--metric", "train/loss"]
    assert compare.main(args) == 0
    assert "x axis: time" in (out / "compare.md").read_text()

    write_run(tmp_path / "untimed" / "r", config(), records([0.5], time_per_step=None))
    assert compare.main([str(tmp_path / "untimed"), "--out", str(out), "--x", "time"]) == 2
    assert "time/elapsed_s" in one_line_error(capsys)


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    write_run(tmp_path / "r", config(), records([0.5, 0.4]), tail='{"step": 41, "train/lo')
    with pytest.warns(UserWarning, match="unreadable"):
        run = compare.load_run(tmp_path / "r")
    assert max(r["step"] for r in run.records) == 40
    with pytest.warns(UserWarning):
        assert compare.main([str(tmp_path), "--out", str(tmp_path / "o")]) == 0


def test_step_and_time_at_which_a_group_reaches_the_baselines_best(tmp_path):
    # Baseline (norm=none) best error: 0.3 at batch size 4, 0.1 at batch size 128.
    curves = {("none", 4): [0.5, 0.4, 0.3, 0.35], ("layer", 4): [0.45, 0.3, 0.2, 0.1],
              ("batch", 4): [0.6, 0.5, 0.4, 0.4], ("none", 128): [0.3, 0.2, 0.1, 0.1],
              ("layer", 128): [0.25, 0.15, 0.1, 0.05]}
    for (norm, bs), errors in curves.items():
        write_run(tmp_path / "s" / f"{norm}{bs}", config(norm, bs), records(errors))
    out = tmp_path / "o"
    args = [str(tmp_path / "s"), "--out", str(out), "--metric", "validation/error"]
    assert compare.main(args) == 0
    md = (out / "compare.md").read_text()
    # Columns: batch_size | group | seeds | final | best | baseline best | step | time (s).
    assert "| 4 | norm=layer | 1 | 0.1 | 0.1 | 0.3 | 40 | 20 |" in md  # 0.3 <= 0.3 at epoch 2
    assert "| 4 | norm=batch | 1 | 0.4 | 0.4 | 0.3 | - | - |" in md
    assert "| 4 | norm=none | 1 | 0.35 | 0.3 | 0.3 | 60 | 30 |" in md
    assert "| 128 | norm=layer | 1 | 0.05 | 0.05 | 0.1 | 60 | 30 |" in md

    # Higher is better for an accuracy; an explicit baseline by short key name.
    acc = tmp_path / "acc"
    write_run(acc / "a", config("none"), records([0.5, 0.7, 0.6], metric="test/accuracy"))
    write_run(acc / "b", config("layer"), records([0.6, 0.8, 0.9], metric="test/accuracy"))
    args = [str(acc), "--out", str(out), "--name", "acc", "--baseline", "norm=layer"]
    assert compare.main(args) == 0
    md = (out / "acc.md").read_text()
    assert "test/accuracy (higher is better)" in md
    assert "| norm=none | 1 | 0.6 | 0.7 | 0.9 | - | - |" in md
    assert "| norm=layer | 1 | 0.9 | 0.9 | 0.9 | 60 | 30 |" in md


@pytest.mark.parametrize("case", ["missing_path", "no_runs", "unknown_metric", "bad_json",
                                  "no_config", "bad_baseline", "bad_mode"])
def test_errors_exit_2_with_one_line(tmp_path, capsys, case):
    good = write_run(tmp_path / "runs" / "r", config(), records([0.5]))
    args = [str(tmp_path / "runs"), "--out", str(tmp_path / "o")]
    if case == "missing_path":
        args[0] = str(tmp_path / "nowhere")
    elif case == "no_runs":
        (tmp_path / "empty").mkdir()
        args[0] = str(tmp_path / "empty")
    elif case == "unknown_metric":
        args += ["--metrics", "test/nope"]
    elif case == "bad_json":
        (good / "run_info.json").write_text("{not json")
    elif case == "no_config":
        (good / "run_info.json").write_text(json.dumps({"seed": 0}))
    elif case == "bad_baseline":
        args += ["--baseline", "norm.name=rms"]
    elif case == "bad_mode":
        args += ["--mode", "validation/error=up"]
    assert compare.main(args) == 2
    err = one_line_error(capsys)
    if case == "unknown_metric":
        assert "test/nope" in err and "validation/error" in err and "train/loss" in err
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_saved_checkpoint_evaluations_are_curves(tmp_path):
    """`experiments.evaluate RUN --step all` writes eval/step_N.json: compare plots them
    against the step (the paper's Fig. 3: downstream scores against iterations)."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run_info.json").write_text(json.dumps({"config": {"norm": {"name": "layer"}},
                                                   "seed": 0}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 10, "train/loss": 1.0}) + "\n")
    (run / "eval").mkdir()
    for step, acc in ((10, 60.0), (20, 70.0)):
        (run / "eval" / f"step_{step}.json").write_text(json.dumps(
            {"step": step, "requested": "all", "results": {"senteval/MR/accuracy": acc}}))
    loaded = compare.load_run(run)
    assert [(r["step"], r["senteval/MR/accuracy"]) for r in loaded.records
            if "senteval/MR/accuracy" in r] == [(10, 60.0), (20, 70.0)]
