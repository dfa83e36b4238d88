"""Evaluate a saved run without training it:

    python -m experiments.evaluate RUN_DIR [--step best|last|all|N] [--stage NAME ...]

Rebuilds the run's model from its recorded config (`run_info.json`), loads the checkpoint, runs
the experiment's evaluators (periodic and final) and the named heavy stages (the package's
`STAGES`: SentEval probes, 5-fold retrieval, sampling), prints the results and writes them to
`RUN_DIR/eval/step_<N>.json`. It never trains and never touches the run's checkpoints.
`--step all` evaluates every saved checkpoint in turn (e.g. downstream scores against training
iterations).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import experiments
from experiments.run import resolve
from experiments.schema import ConfigError
from lnorm.checkpoint import checkpoint_steps, load_model
from lnorm.data.common import DataError
from lnorm.logger import write_json_atomic
from lnorm.runinfo import EVAL_DIR, RUN_INFO_FILE
from lnorm.trainer import Evaluator, run_evaluators


def _steps(run_dir: Path, step: str) -> list[int | str]:
    if step != "all":
        return [step]
    saved = checkpoint_steps(run_dir)
    steps = sorted(set(saved["last"] + saved["best"]))
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {run_dir}")
    return steps


def evaluate_run(run_dir: str | Path, *, step: str = "best", stages: Sequence[str] = (),
                 evaluators: bool = True) -> dict[int, dict[str, float]]:
    """Evaluates checkpoint(s) `step` of the run in `run_dir`; returns {step: results}.
    `step="best"` falls back to the last checkpoint for a run without `select_metric`."""
    run_dir = Path(run_dir)
    info_path = run_dir / RUN_INFO_FILE
    if not info_path.exists():
        raise FileNotFoundError(f"{info_path}: not a run directory (no {RUN_INFO_FILE})")
    conf, _, module = resolve(json.loads(info_path.read_text())["config"])
    known = dict(getattr(module, "STAGES", {}))
    unknown = [s for s in stages if s not in known]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown} for experiment {conf.name!r}; "
                          f"its stages: {sorted(known) or 'none'}")
    if step == "best" and conf.train.select_metric is None:
        step = "last"
    task = module.build(conf, run_dir)
    chosen = dict(task.evaluators) if evaluators else {}
    chosen.update({name: Evaluator(known[name], final=True) for name in stages})
    out: dict[int, dict[str, float]] = {}
    for wanted in _steps(run_dir, step):
        loaded = load_model(run_dir, task.model, wanted)
        results = run_evaluators(task.model, chosen, loaded, seed=conf.seed, run_dir=run_dir,
                                 config=conf, dtype=conf.train.dtype)
        write_json_atomic(run_dir / EVAL_DIR / f"step_{loaded}.json",
                          {"step": loaded, "requested": str(wanted), "results": results})
        out[loaded] = results
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory (holding run_info.json, checkpoints/)")
    parser.add_argument("--step", default="best", help="best | last | all | a step number")
    parser.add_argument("--stage", nargs="*", default=[], help="heavy evaluation stages to run")
    parser.add_argument("--no-evaluators", action="store_true",
                        help="run only the named stages, not the experiment's evaluators")
    args = parser.parse_args(argv)
    if args.step not in ("best", "last", "all") and not args.step.isdigit():
        parser.error(f"--step {args.step}: expected best, last, all or a step number")
    try:
        results = evaluate_run(args.run_dir, step=args.step, stages=args.stage,
                               evaluators=not args.no_evaluators)
    except (FileNotFoundError, ConfigError, DataError, experiments.UnknownExperimentError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for step, values in results.items():
        print(f"step {step}: " + ", ".join(f"{k}={_fmt(v)}" for k, v in sorted(values.items())))
    print(f"written to {Path(args.run_dir) / EVAL_DIR}/")
    return 0


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


if __name__ == "__main__":
    sys.exit(main())
