"""A sweep through Hydra's submitit launcher (`hydra/launcher=local`: submitit's local executor,
one process per job, as `hydra/launcher=slurm` starts them on a cluster): the same run
directories as a local sweep, and re-launching the sweep resumes each job (here: finished
jobs return without training)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _sweep(tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(ROOT)}
    args = ["-m", "hydra/launcher=local", "+exp=pmnist", "scale=tiny", "data.synthetic=true",
            f"data.data_dir={tmp_path / 'data'}", "logger=none", "train.progress=false",
            "train.steps=20", "norm=none,layer", f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    return subprocess.run([sys.executable, "-m", "experiments.run", *args], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=900)


def test_submitit_local_sweep_runs_each_job_in_its_own_run_directory(tmp_path):
    result = _sweep(tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if (p / "metrics.jsonl").exists())
    assert [p.name.split("_")[0] for p in jobs] == ["0", "1"]
    norms = [json.loads((p / "run_info.json").read_text())["config"]["norm"]["name"] for p in jobs]
    assert norms == ["none", "layer"]
    assert list((tmp_path / "sweep" / ".submitit").iterdir())  # submitit ran the jobs
    first = [(p / "metrics.jsonl").read_text() for p in jobs]

    again = _sweep(tmp_path)  # the same sweep again: every job finds its finished run
    assert again.returncode == 0, again.stderr[-3000:]
    assert [(p / "metrics.jsonl").read_text() for p in jobs] == first
