"""Compare logged curves as the paper's figures: `python -m scripts.compare RUN_OR_SWEEP_DIR ...`.

Reads each run's `metrics.jsonl` and `run_info.json` (no network, no W&B), then writes
`<out>/<name>.png` (one panel column per batch size, one row per metric, one line per
normaliser) and `<out>/<name>.md` (final and best values, and for each run the epoch at which
it first reaches the baseline's final value of each metric). Training metrics, logged every
`log_every` steps, are averaged over each epoch (the mean over that epoch's training batches)
unless `--raw` is given; evaluation metrics are plotted as logged.

    python -m scripts.compare multirun/pmnist/2026-11-25_23-00-00 --out docs/results --name pmnist
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_METRICS = ("train/nll", "test/error")


@dataclass
class Run:
    path: Path
    norm: str
    batch_size: int | None
    seed: int | None
    curves: dict[str, list[tuple[float, float]]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.norm if self.seed is None else f"{self.norm} (seed {self.seed})"


def find_runs(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """Run directories (those holding a metrics.jsonl) at or below each path, sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if not p.exists():
            raise FileNotFoundError(f"{p}: no such run or sweep directory")
        found.update(m.parent for m in p.rglob("metrics.jsonl"))
    if not found:
        raise FileNotFoundError(f"no metrics.jsonl under {', '.join(map(str, paths))}")
    return sorted(found)


def load_run(path: Path, *, raw: bool = False) -> Run:
    info = json.loads((path / "run_info.json").read_text())
    config = info.get("config", {})
    run = Run(
        path=path,
        norm=config.get("norm", {}).get("name", "?"),
        batch_size=config.get("data", {}).get("batch_size"),
        seed=info.get("seed", config.get("seed")),
    )
    with open(path / "metrics.jsonl") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path / 'metrics.jsonl'}:{lineno}: not JSON ({e})") from None
            x = row.get("epoch", row.get("step"))
            for key, value in row.items():
                if key not in ("step", "epoch") and isinstance(value, int | float):
                    run.curves.setdefault(key, []).append((float(x), float(value)))
    if not raw:
        for key in [k for k in run.curves if k.startswith("train/")]:
            run.curves[key] = per_epoch(run.curves[key])
    return run


def per_epoch(curve: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Means of the points in each epoch (x in (e-1, e] goes to epoch e)."""
    bins: dict[int, list[float]] = {}
    for x, y in curve:
        bins.setdefault(math.ceil(x - 1e-9), []).append(y)
    return [(float(e), sum(ys) / len(ys)) for e, ys in sorted(bins.items())]


def first_reach(curve: list[tuple[float, float]], target: float) -> float | None:
    """The first x at which a lower-is-better curve is at or below `target`."""
    return next((x for x, y in curve if y <= target), None)


def table(runs: list[Run], metrics: Sequence[str], baseline: str) -> str:
    lines = []
    for metric in metrics:
        lines += [
            f"### {metric}",
            "",
            f"| batch size | norm | final | best | epochs to reach {baseline}'s final |",
            "|---|---|---|---|---|",
        ]
        for bs in sorted({r.batch_size for r in runs}, key=lambda b: (b is None, b)):
            group = [r for r in runs if r.batch_size == bs and metric in r.curves]
            base = next((r for r in group if r.norm == baseline), None)
            target = base.curves[metric][-1][1] if base else None
            for r in sorted(group, key=lambda r: (r.norm, r.seed or 0)):
                curve = r.curves[metric]
                reach = first_reach(curve, target) if target is not None else None
                lines.append(
                    f"| {bs} | {r.label} | {curve[-1][1]:.4f} | {min(y for _, y in curve):.4f} | "
                    f"{'-' if reach is None else f'{reach:.2f}'} |"
                )
        lines.append("")
    return "\n".join(lines)


def figure(runs: list[Run], metrics: Sequence[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = sorted({r.batch_size for r in runs}, key=lambda b: (b is None, b), reverse=True)
    fig, axes = plt.subplots(
        len(metrics), len(sizes), figsize=(4.5 * len(sizes), 3.2 * len(metrics)), squeeze=False
    )
    for col, bs in enumerate(sizes):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            for r in sorted((r for r in runs if r.batch_size == bs), key=lambda r: r.label):
                if metric in r.curves:
                    xs, ys = zip(*r.curves[metric], strict=True)
                    ax.plot(xs, ys, label=r.label)
            ax.set_title(f"batch size {bs}" if row == 0 else "")
            ax.set_xlabel("epoch")
            ax.set_ylabel(metric)
            if metric.endswith("nll"):
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="+", help="run directories or sweep directories")
    parser.add_argument("--out", default=".", help="output directory")
    parser.add_argument("--name", default="compare", help="file stem of the figure and table")
    parser.add_argument("--metrics", nargs="+", default=list(DEFAULT_METRICS))
    parser.add_argument("--baseline", default="none", help="normaliser the table compares to")
    parser.add_argument("--raw", action="store_true", help="train metrics as logged, not per epoch")
    args = parser.parse_args(argv)

    try:
        runs = [load_run(p, raw=args.raw) for p in find_runs(args.paths)]
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    missing = [m for m in args.metrics if not any(m in r.curves for r in runs)]
    if missing:
        known = sorted({k for r in runs for k in r.curves})
        print(f"error: no run logged {missing}; logged metrics: {known}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    figure(runs, args.metrics, out / f"{args.name}.png")
    md = out / f"{args.name}.md"
    tmp = md.with_name(md.name + ".tmp")
    tmp.write_text(table(runs, args.metrics, args.baseline))
    os.replace(tmp, md)
    print(f"wrote {out / f'{args.name}.png'} and {md} ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
