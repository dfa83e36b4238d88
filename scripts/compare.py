"""Compare the logged curves of any sweep: `python -m scripts.compare RUN_OR_SWEEP_DIR ...`.

Reads each run's `metrics.jsonl` (through `lnorm.logger.read_metrics`: a line cut off by a
killed run is dropped with a warning), the evaluations of its saved checkpoints that
`experiments.evaluate` wrote (`eval/step_N.json`) and `run_info.json`, then writes
`<out>/<name>.png` and `<out>/<name>.md` (each via a temporary file and a rename). No network,
no W&B.

Grouping. The resolved configs are flattened to dotted keys; the keys whose values differ
between runs (bookkeeping keys and seeds excluded, see IGNORED; a key that merely repeats
another, such as `train.optim.*` = `optim.*`, is dropped) define the groups, so runs that
differ only by seed form one group. A group is drawn as the mean over its seeds, taken at the
steps every seed logged (a seed that stopped early shortens the curve, with a warning), with a
min-max band over the seeds; a one-point curve is drawn as a marker.

Panels. One row per metric; one column per value of `--panel KEY` (default: `data.batch_size`
when it differs between runs, as in the paper's Fig. 6).

x axis. `--x step|epoch|time`: time is the trainer's `time/elapsed_s` (training time). A record
without it (an evaluation record of a trainer that stamps only training records) gets it
interpolated linearly in the step between the timed records around it (the one at the same
step when there is one; the first / last timed record's value before / after them).

Training metrics are averaged over each epoch (records with epoch in (e-1, e] make the point
of epoch e, placed at the last of their steps and times) unless `--raw`; evaluation metrics are
plotted as logged. Metrics whose name holds "nll" or "loss" get a log-scale y axis.

Table. Per metric and group: the n seeds, the final and the best value of the seed-mean curve,
and the first step (and elapsed time) at which that curve reaches the best value of the
baseline group, '-' if never. The baseline (`--baseline KEY=VALUE`, default `norm.name=none`
when such runs exist) of a group is the group with KEY=VALUE that agrees with it on every other
differing key outside KEY's own config section (so a per-batch-size baseline at each batch size;
a sweep of `norm.epsilon` still finds the `none` runs); among several, the one agreeing on most
keys. Better is higher for metrics whose name holds accuracy, r1, r5, r10, rsum, pearson or
spearman, lower otherwise; `--mode` overrides.

    python -m scripts.compare multirun/pmnist/2026-11-25_23-00-00 --out docs/results --name pmnist
    python -m scripts.compare runs/oe --metric validation/rsum --x time --baseline norm=none
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lnorm.logger import METRICS_FILE, read_metrics
from lnorm.runinfo import EVAL_DIR, RUN_INFO_FILE, flatten

# Keys that never tell runs apart: seeds, and settings that do not change the numbers.
IGNORED = (
    "seed", "train.seed", "train.progress", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.steps_per_call", "logger.*", "data.data_dir",
    "data.manual_dir", "data.verify_md5", "compile_cache", "force_resume",
)
MAX_WORDS = ("accuracy", "r1", "r5", "r10", "rsum", "pearson", "spearman")
LOG_WORDS = ("nll", "loss")
TIME = "time/elapsed_s"
X_LABELS = {"step": "step", "epoch": "epoch", "time": "elapsed time (s)"}
MISSING = "<absent>"  # the value of a key a run's config does not have


class CompareError(ValueError):
    """A user error: main prints it as one line and exits with code 2."""


@dataclass(frozen=True)
class Series:
    """One metric of one run: parallel arrays, one entry per point."""

    step: np.ndarray
    epoch: np.ndarray
    time: np.ndarray
    value: np.ndarray


@dataclass(frozen=True)
class Curve:
    """A group's metric over its seeds: mean with min-max band, at the steps all seeds logged."""

    step: np.ndarray
    epoch: np.ndarray
    time: np.ndarray
    mean: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n: int

    def x(self, axis: str) -> np.ndarray:
        return {"step": self.step, "epoch": self.epoch, "time": self.time}[axis]


@dataclass
class Run:
    path: Path
    config: dict[str, Any]  # flattened resolved config, dotted keys
    seed: int | None
    records: list[dict[str, Any]]

    @property
    def norm(self) -> str:
        return str(self.config.get("norm.name", "?"))

    @property
    def metrics(self) -> set[str]:
        return {k for r in self.records for k, v in r.items() if _is_metric(k, v)}

    def series(self, metric: str, *, raw: bool = False) -> Series | None:
        """The points of `metric` (None if never logged); training metrics per epoch unless raw."""
        rows = [r for r in self.records if _is_number(r.get(metric))]
        if not rows:
            return None
        s = Series(
            step=np.array([r["step"] for r in rows], dtype=float),
            epoch=np.array([r.get("epoch", math.nan) for r in rows], dtype=float),
            time=self._times(rows),
            value=np.array([r[metric] for r in rows], dtype=float),
        )
        if metric.startswith("train/") and not raw and np.isfinite(s.epoch).all():
            s = per_epoch(s)
        return s

    def _times(self, rows: list[dict[str, Any]]) -> np.ndarray:
        timed = sorted((r["step"], r[TIME]) for r in self.records if _is_number(r.get(TIME)))
        if not timed:
            return np.full(len(rows), math.nan)
        steps, times = (np.array(a, dtype=float) for a in zip(*timed, strict=True))
        return np.array([r[TIME] if _is_number(r.get(TIME)) else np.interp(r["step"], steps, times)
                         for r in rows], dtype=float)


@dataclass
class Group:
    values: dict[str, Any]  # the differing keys' values (panel key included)
    runs: list[Run]

    @property
    def config(self) -> dict[str, Any]:
        return self.runs[0].config


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _is_metric(key: str, value: Any) -> bool:
    return key not in ("step", "epoch") and not key.startswith("time/") and _is_number(value)


def _hashable(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return tuple(_hashable(x) for x in v)
    if isinstance(v, dict):
        return json.dumps(v, sort_keys=True)
    return v


def fmt_value(v: Any) -> str:
    """A config value as the command line writes it: layer, 4, 1e-05, null, true."""
    return v if isinstance(v, str) else json.dumps(v)


def per_epoch(s: Series) -> Series:
    """Means of the points of each epoch (epoch in (e-1, e] goes to e), at the bin's last step."""
    bins = np.ceil(s.epoch - 1e-9)
    keys = np.unique(bins)
    last = [np.flatnonzero(bins == e)[np.argmax(s.step[bins == e])] for e in keys]
    return Series(
        step=s.step[last], epoch=keys, time=s.time[last],
        value=np.array([s.value[bins == e].mean() for e in keys]),
    )


def _nanmean(a: np.ndarray) -> np.ndarray:
    ok = np.isfinite(a)
    count = ok.sum(0)
    return np.where(count > 0, np.where(ok, a, 0).sum(0) / np.maximum(count, 1), math.nan)


def aggregate(series: Sequence[Series], *, label: str = "") -> Curve:
    """Mean and min-max over seeds at the steps every seed logged."""
    common = series[0].step
    for s in series[1:]:
        common = np.intersect1d(common, s.step)
    common = np.unique(common)
    if any(len(np.setdiff1d(s.step, common)) for s in series):
        warnings.warn(f"{label}: seeds logged different steps; curve kept at the {len(common)} "
                      "steps every seed has", stacklevel=2)
    # The last point at a step wins (a resumed run may repeat one).
    idx = [np.array([np.flatnonzero(s.step == c)[-1] for c in common], dtype=int) for s in series]
    take = [(s, i) for s, i in zip(series, idx, strict=True)]
    values = np.stack([s.value[i] for s, i in take])
    return Curve(
        step=common, epoch=_nanmean(np.stack([s.epoch[i] for s, i in take])),
        time=_nanmean(np.stack([s.time[i] for s, i in take])),
        mean=values.mean(0), lo=values.min(0), hi=values.max(0), n=len(series),
    )


def group_curves(groups: Sequence[Group], metrics: Sequence[str], short: Mapping[str, str], *,
                 raw: bool = False) -> dict[tuple[int, str], Curve]:
    """Each group's seed-aggregated curve of each metric it logged, keyed (group index, metric)."""
    curves: dict[tuple[int, str], Curve] = {}
    for i, g in enumerate(groups):
        for metric in metrics:
            series = [s for r in g.runs if (s := r.series(metric, raw=raw)) is not None]
            if series:
                curves[(i, metric)] = aggregate(series, label=f"{label(g, short)}: {metric}")
    return curves


def default_mode(metric: str) -> str:
    leaf = metric.rsplit("/", 1)[-1].lower()
    return "max" if any(w in leaf for w in MAX_WORDS) else "min"


def best(values: np.ndarray, mode: str) -> float:
    finite = values[np.isfinite(values)]
    if not len(finite):
        return math.nan
    return float(finite.max() if mode == "max" else finite.min())


def first_reach(curve: Curve, target: float, mode: str) -> int | None:
    """Index of the first point of the mean curve at least as good as `target`."""
    if math.isnan(target):
        return None
    # A tie up to rounding counts: seed means computed in another order differ in the last bit.
    close = np.isclose(curve.mean, target, rtol=1e-9, atol=0)
    good = close | (curve.mean >= target if mode == "max" else curve.mean <= target)
    hits = np.flatnonzero(good)
    return int(hits[0]) if len(hits) else None


def find_runs(paths: Iterable[str | os.PathLike]) -> list[Path]:
    """Run directories (those holding a metrics.jsonl) at or below each path, sorted."""
    paths = list(map(Path, paths))
    found: set[Path] = set()
    for p in paths:
        if not p.exists():
            raise CompareError(f"{p}: no such run or sweep directory")
        found.update(m.parent for m in p.rglob(METRICS_FILE))
    if not found:
        raise CompareError(f"no {METRICS_FILE} under {', '.join(map(str, paths))}")
    return sorted(found)


def load_run(path: str | os.PathLike) -> Run:
    """A run's flattened config, seed and metric records; CompareError if run_info is bad."""
    path = Path(path)
    info_path = path / RUN_INFO_FILE
    try:
        info = json.loads(info_path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CompareError(f"{info_path}: unreadable run info ({e})") from None
    if not isinstance(info, dict) or not isinstance(info.get("config"), dict):
        raise CompareError(f"{info_path}: expected an object with a 'config' object")
    config = {k: _hashable(v) for k, v in flatten(info["config"]).items()}
    seed = info.get("seed", config.get("seed"))
    if seed is not None and not _is_number(seed):
        raise CompareError(f"{info_path}: seed {seed!r} is not a number")
    records = [r for r in read_metrics(path / METRICS_FILE) + _evaluations(path)
               if isinstance(r, dict) and _is_number(r.get("step"))]
    return Run(path=path, config=config, seed=seed, records=records)


def _evaluations(path: Path) -> list[dict[str, Any]]:
    """What `python -m experiments.evaluate RUN --step ...` wrote (`eval/step_N.json`), as
    records at their steps: heavy evaluations of saved checkpoints (e.g. SentEval scores
    against training iterations, the paper's Fig. 3)."""
    records = []
    for file in sorted((path / EVAL_DIR).glob("step_*.json")):
        try:
            saved = json.loads(file.read_text())
            records.append({"step": saved["step"], **saved["results"]})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            warnings.warn(f"{file}: unreadable evaluation ({e}); skipped", stacklevel=2)
    return records


def _ignored(key: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(key, p) for p in patterns)


def differing_keys(runs: Sequence[Run], ignore: Sequence[str] = IGNORED) -> list[str]:
    """Config keys whose value differs between runs, `norm.*` first, then shallow before deep,
    then alphabetical. An interpolated alias (`train.optim.lr` of `optim.lr`: a key ending in an
    earlier key with the same value in every run) is dropped."""
    keys = sorted({k for r in runs for k in r.config if not _ignored(k, ignore)},
                  key=lambda k: (not k.startswith("norm."), k.count("."), k))
    columns: dict[str, tuple] = {}
    for k in keys:
        col = tuple(r.config.get(k, MISSING) for r in runs)
        alias = any(k.endswith(f".{j}") and c == col for j, c in columns.items())
        if len(set(col)) > 1 and not alias:
            columns[k] = col
    return list(columns)


def short_names(keys: Sequence[str]) -> dict[str, str]:
    """`norm.name` -> `norm`, `data.batch_size` -> `batch_size`; the full key where two collide."""
    def short(k: str) -> str:
        parts = k.split(".")
        return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]

    names = [short(k) for k in keys]
    return {k: s if names.count(s) == 1 else k for k, s in zip(keys, names, strict=True)}


def resolve_key(name: str, runs: Sequence[Run], keys: Sequence[str]) -> str:
    """A config key given in full or by its short name among the differing keys."""
    if any(name in r.config for r in runs):
        return name
    matches = [k for k, s in short_names(keys).items() if s == name]
    if len(matches) == 1:
        return matches[0]
    raise CompareError(f"unknown config key {name!r}; differing keys: {', '.join(keys) or 'none'}")


def _sort_value(v: Any) -> tuple:
    return (0, v, "") if _is_number(v) else (1, 0, fmt_value(v))


def group_runs(runs: Sequence[Run], keys: Sequence[str]) -> list[Group]:
    """Runs with equal values of `keys` (so differing only by seed) as one group each."""
    groups: dict[tuple, Group] = {}
    for r in sorted(runs, key=lambda r: str(r.path)):
        values = {k: r.config.get(k, MISSING) for k in keys}
        groups.setdefault(tuple(values.values()), Group(values, [])).runs.append(r)
    return sorted(groups.values(), key=lambda g: [_sort_value(v) for v in g.values.values()])


def label(group: Group, short: Mapping[str, str], *, skip: str | None = None) -> str:
    parts = [f"{short[k]}={fmt_value(v)}" for k, v in group.values.items() if k != skip]
    return ", ".join(parts) or "all runs"


def _matches(value: Any, text: str) -> bool:
    if fmt_value(value) == text:
        return True
    try:
        return json.loads(text) == value
    except json.JSONDecodeError:
        return False


def baseline_of(group: Group, groups: Sequence[Group], key: str, text: str) -> Group | None:
    """The baseline group a group is measured against (see the module docstring)."""
    keys = list(group.values)
    section = key.split(".")[0]
    outside = [k for k in keys if k != key and k.split(".")[0] != section]
    candidates = [g for g in groups if _matches(g.config.get(key, MISSING), text)
                  and all(g.values[k] == group.values[k] for k in outside)]
    if not candidates:
        return None
    return max(candidates, key=lambda g: sum(g.values[k] == group.values[k] for k in keys))


def _num(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4g}"


def _seconds(v: float) -> str:
    return "-" if math.isnan(v) else (f"{v:.0f}" if abs(v) >= 100 else f"{v:.3g}")


def table(curves: Mapping[tuple[int, str], Curve], groups: Sequence[Group],
          metrics: Sequence[str], modes: Mapping[str, str], short: Mapping[str, str],
          panel: str | None, baseline: tuple[str, str] | None) -> str:
    """The markdown tables, one per metric; `curves[(group index, metric)]`."""
    lines = []
    for metric in metrics:
        mode = modes[metric]
        head = ([short[panel]] if panel else []) + ["group", "seeds", "final", "best"]
        if baseline:
            head += ["baseline best", "reached at step", "at time (s)"]
        lines += [f"### {metric} ({'higher' if mode == 'max' else 'lower'} is better)", "",
                  "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        order = sorted(range(len(groups)),
                       key=lambda i: _sort_value(groups[i].values[panel]) if panel else 0)
        for i in order:
            g, c = groups[i], curves.get((i, metric))
            if c is None:
                continue
            row = ([fmt_value(g.values[panel])] if panel else []) + [
                label(g, short, skip=panel), str(c.n), _num(float(c.mean[-1])),
                _num(best(c.mean, mode))]
            if baseline:
                base = baseline_of(g, groups, *baseline)
                bc = curves.get((groups.index(base), metric)) if base else None
                target = best(bc.mean, mode) if bc else math.nan
                hit = first_reach(c, target, mode)
                row += [_num(target), "-" if hit is None else str(int(c.step[hit])),
                        "-" if hit is None else _seconds(float(c.time[hit]))]
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    return "\n".join(lines)


def figure(curves: Mapping[tuple[int, str], Curve], groups: Sequence[Group],
           metrics: Sequence[str], short: Mapping[str, str], panel: str | None, x: str):
    """One row per metric, one column per panel value; returns the matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = sorted({g.values[panel] for g in groups} if panel else {None},
                    key=_sort_value)
    labels = list(dict.fromkeys(label(g, short, skip=panel) for g in groups))
    colors = {lab: f"C{i % 10}" for i, lab in enumerate(labels)}
    fig, axes = plt.subplots(len(metrics), len(panels), squeeze=False,
                             figsize=(4.5 * len(panels), 3.2 * len(metrics)))
    for col, pv in enumerate(panels):
        for row, metric in enumerate(metrics):
            ax = axes[row][col]
            positive = True
            for i, g in enumerate(groups):
                c = curves.get((i, metric))
                if c is None or (panel and g.values[panel] != pv):
                    continue
                xs, keep = c.x(x), np.isfinite(c.x(x))
                lab = label(g, short, skip=panel)
                color = colors[lab]
                xs, mean, lo, hi = xs[keep], c.mean[keep], c.lo[keep], c.hi[keep]
                if not len(xs):
                    continue
                positive &= bool(np.all(lo > 0))
                name = lab if c.n == 1 else f"{lab} (n={c.n})"
                ax.plot(xs, mean, color=color, label=name, marker="o" if len(xs) == 1 else None)
                if c.n > 1 and len(xs) > 1:
                    ax.fill_between(xs, lo, hi, color=color, alpha=0.2, linewidth=0)
                elif c.n > 1:
                    ax.vlines(xs, lo, hi, color=color)
            if row == 0 and panel:
                ax.set_title(f"{short[panel]}={fmt_value(pv)}")
            ax.set_xlabel(X_LABELS[x])
            ax.set_ylabel(metric)
            if positive and any(w in metric.lower() for w in LOG_WORDS) and ax.has_data():
                ax.set_yscale("log")
            ax.grid(alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize=7)
    if any(c.n > 1 for c in curves.values()):
        fig.suptitle("mean over seeds; band: min-max over seeds", fontsize=9)
    fig.tight_layout()
    return fig


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """`write(tmp)` then a rename: a reader never sees a half-written file."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def save_figure(fig, path: Path, *, dpi: int = 120) -> None:
    """Writes a matplotlib figure as PNG (atomically) and closes it."""
    import matplotlib.pyplot as plt

    write_atomic(path, lambda p: fig.savefig(p, format="png", dpi=dpi))
    plt.close(fig)


def _modes(metrics: Sequence[str], given: Sequence[str]) -> dict[str, str]:
    modes = {m: default_mode(m) for m in metrics}
    for item in given:
        name, _, mode = item.rpartition("=")
        if mode not in ("min", "max"):
            raise CompareError(f"--mode {item!r}: expected min, max, METRIC=min or METRIC=max")
        for m in ([name] if name else metrics):
            if m not in modes:
                raise CompareError(f"--mode {item!r}: {m} is not among the chosen metrics")
            modes[m] = mode
    return modes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="run directories or sweep directories")
    p.add_argument("--out", default=".", help="output directory")
    p.add_argument("--name", default="compare", help="file stem of the figure and the table")
    p.add_argument("--metric", "--metrics", dest="metrics", nargs="+", metavar="NAME",
                   help="metrics, one panel row each (default: train/loss, validation/*, test/*)")
    p.add_argument("--x", choices=tuple(X_LABELS), default="epoch", help="x axis")
    p.add_argument("--panel", metavar="KEY", help="one panel column per value of this config "
                   "key (default: data.batch_size when it differs)")
    p.add_argument("--no-panel", action="store_true", help="one panel column for all runs")
    p.add_argument("--baseline", metavar="KEY=VALUE",
                   help="the groups the table compares to (default: norm.name=none if present)")
    p.add_argument("--mode", nargs="+", default=[], metavar="[METRIC=]min|max",
                   help="whether lower or higher is better (default from the metric name)")
    p.add_argument("--ignore", nargs="+", default=[], metavar="PATTERN",
                   help="more config keys (fnmatch patterns) that do not tell runs apart")
    p.add_argument("--raw", action="store_true", help="training metrics as logged, not per epoch")
    return p


def _choose_metrics(runs: Sequence[Run], wanted: Sequence[str] | None) -> list[str]:
    logged = sorted(set().union(*(r.metrics for r in runs)))
    if wanted:
        missing = [m for m in wanted if m not in logged]
        if missing:
            raise CompareError(f"no run logged {', '.join(missing)}; logged metrics: "
                               f"{', '.join(logged)}")
        return list(wanted)
    chosen = [m for m in ["train/loss"] if m in logged]
    chosen += [m for m in logged if m.startswith("validation/")]
    chosen += [m for m in logged if m.startswith("test/")]
    return chosen or logged


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _compare(args)
    except CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _compare(args: argparse.Namespace) -> int:
    runs = [load_run(p) for p in find_runs(args.paths)]
    metrics = _choose_metrics(runs, args.metrics)
    if not metrics:
        raise CompareError("the runs logged no metrics")
    modes = _modes(metrics, args.mode)
    keys = differing_keys(runs, (*IGNORED, *args.ignore))
    panel = None
    if args.panel and not args.no_panel:
        panel = resolve_key(args.panel, runs, keys)
        if panel not in keys:
            raise CompareError(f"--panel {args.panel}: the runs do not differ in {panel}")
    elif "data.batch_size" in keys and not args.no_panel:
        panel = "data.batch_size"
    short = short_names(keys)

    baseline = None
    if args.baseline:
        key, eq, text = args.baseline.partition("=")
        if not eq:
            raise CompareError(f"--baseline {args.baseline!r}: expected KEY=VALUE")
        baseline = (resolve_key(key, runs, keys), text)
        if not any(_matches(r.config.get(baseline[0], MISSING), text) for r in runs):
            raise CompareError(f"--baseline {args.baseline}: no run has {baseline[0]}={text}")
    elif any(r.config.get("norm.name") == "none" for r in runs):
        baseline = ("norm.name", "none")

    groups = group_runs(runs, keys)
    curves = group_curves(groups, metrics, short, raw=args.raw)
    if args.x == "time" and not any(np.isfinite(c.time).any() for c in curves.values()):
        raise CompareError(f"--x time: no run logged {TIME}")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png, md = out / f"{args.name}.png", out / f"{args.name}.md"
    save_figure(figure(curves, groups, metrics, short, panel, args.x), png)
    about = [
        f"# {args.name}", "",
        f"{len(runs)} runs in {len(groups)} groups; groups differ in "
        f"{', '.join(keys) or 'nothing'}"
        + (f" (panels: {panel})" if panel else "") + ". "
        "Values are those of each group's seed-mean curve (band in the figure: min-max over "
        f"seeds); x axis: {args.x}; training metrics "
        + ("as logged." if args.raw else "averaged over each epoch."),
        "",
    ]
    if baseline:
        about += [f"Baseline: {baseline[0]}={baseline[1]}, matched on the other differing keys; "
                  "'reached at' is the first point where a group's mean curve is at least as "
                  "good as its baseline's best value.", ""]
    text = "\n".join(about) + "\n" + table(curves, groups, metrics, modes, short, panel, baseline)
    write_atomic(md, lambda p: p.write_text(text))
    print(f"wrote {png} and {md} ({len(runs)} runs, {len(groups)} groups)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
