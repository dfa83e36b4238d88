"""The paper's results on one page: `python -m scripts.report DIR... [--out OUT]`.

Reads every run under the given sweep or run directories (through scripts/compare.py: each run's
`run_info.json`, `metrics.jsonl` and `eval/step_N.json`), sorts the runs by experiment and writes
one markdown page (default `docs/results/README.md`) with, per experiment of the paper:
- a figure beside the page, `report_<experiment>.png`: its curves against updates, the mean over
  seeds with a min-max band (scripts/compare.py's figure);
- a table per normaliser: the checkpoint-selection metric's final and best value (mean ± sample
  sd over seeds), the step at which the seed-mean curve reaches the baseline's best (norm=none at
  the same other settings) against the step at which the baseline does, the experiment's test
  metrics (last logged value) and the training time;
- the paper's numbers beside ours and each of the paper's claims checked on the data: "holds" or
  "does not hold" at the scale that ran, with the numbers that decide it;
- the hardware (device, host, jax version from run_info.json) and the training time in all (the
  sum of each run's last `time/elapsed_s`).
An experiment without runs is listed as not run, with a link to its own page. What the paper
reports and claims is in PAPER below, taken from docs/paper.md §4.

    python -m experiments.run -m +sweep=paper scale=small        # writes multirun/paper/<date>
    python -m scripts.report multirun/paper/<date>               # docs/results/README.md
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnorm.runinfo import RUN_INFO_FILE
from scripts import compare

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = Path("docs/results/README.md")
NONE = {"norm.name": "none"}
NORM_ORDER = ("none", "layer", "batch", "weight", "rms")
LAYER = {"norm.name": "layer"}


@dataclass(frozen=True)
class Faster:
    """`norm`'s seed-mean curve of `metric` reaches `base`'s best value by `within` times the step
    at which `base` itself first reaches it (and before it)."""

    claim: str  # the paper's words
    metric: str
    within: float = 1.0
    norm: Mapping[str, Any] = field(default_factory=lambda: LAYER)
    base: Mapping[str, Any] = field(default_factory=lambda: NONE)


@dataclass(frozen=True)
class Better:
    """`norm`'s value of `metric` (`stat` of each run: best or final; mean over seeds) is better
    than `other`'s."""

    claim: str
    metric: str
    stat: str = "best"
    norm: Mapping[str, Any] = field(default_factory=lambda: LAYER)
    other: Mapping[str, Any] = field(default_factory=lambda: NONE)


@dataclass(frozen=True)
class PaperValue:
    """A number the paper reports per normaliser, beside our `metric` (`stat` of each run, mean
    over seeds)."""

    what: str
    metric: str
    values: Mapping[str, str]  # normaliser -> the paper's value
    stat: str = "final"


@dataclass(frozen=True)
class Experiment:
    title: str
    where: str  # the paper's figure or table and docs/paper.md's section
    figure: tuple[str, ...]  # metrics drawn against updates (those logged)
    columns: tuple[str, ...] = ()  # more metrics in the table, final value
    paper: tuple[PaperValue, ...] = ()
    claims: tuple[Faster | Better, ...] = ()
    panel: str | None = None  # one panel column per value of this key (pmnist: batch size)
    raw: bool = True  # training metrics as logged; False: per-epoch means


def _b(batch: int, norm: str = "layer") -> dict[str, Any]:
    return {"norm.name": norm, "data.batch_size": batch}


def _pair(none: str, layer: str) -> dict[str, str]:
    """The paper's baseline and LN values."""
    return {"none": none, "layer": layer}


# What the paper reports (docs/paper.md §4), and its claims as checks on our runs.
PAPER: dict[str, Experiment] = {
    "order_embeddings": Experiment(
        "Order embeddings, image-caption retrieval", "Table 2, docs/paper.md §4.1",
        figure=("validation/image_rsum", "train/loss"),
        columns=("test/caption_r1", "test/image_r1"),
        paper=(PaperValue("caption R@1 (test)", "test/caption_r1", _pair("46.6", "48.5")),
               PaperValue("caption R@10 (test)", "test/caption_r10",
                          _pair("89.1", "89.8")),
               PaperValue("image R@1 (test)", "test/image_r1", _pair("37.8", "38.9")),
               PaperValue("image R@10 (test)", "test/image_r10", _pair("85.7", "86.3"))),
        claims=(Better("LN retrieves better: caption R@1 48.5 vs 46.6", "test/caption_r1",
                       "final"),
                Better("LN retrieves better: image R@1 38.9 vs 37.8", "test/image_r1", "final"),
                Faster("LN reached its best validation model in 60% of the baseline's time",
                       "validation/image_rsum"))),
    "attentive_reader": Experiment(
        "Attentive reader, CNN cloze questions", "Fig. 2, docs/paper.md §4.2",
        figure=("validation/error", "train/error"), columns=("test/error",),
        paper=(PaperValue("best validation error (the recurrent-BN paper's)",
                          "validation/error", {"none": "0.503", "batch": "0.495"}, "best"),),
        claims=(Faster("LN-LSTM converges faster than the LSTM", "validation/error"),
                Faster("LN-LSTM converges faster than BN-LSTM", "validation/error",
                       base={"norm.name": "batch", "norm.placement": "paper"}),
                Faster("LN-LSTM converges faster than BN-everywhere", "validation/error",
                       base={"norm.name": "batch", "norm.placement": "everywhere"}))),
    "skipthought": Experiment(
        "Skip-thought vectors", "Table 3 and Fig. 3, docs/paper.md §4.3",
        figure=("validation/nll_per_word", "train/nll_per_word", "senteval/MR/accuracy"),
        columns=("senteval/MR/accuracy", "senteval/CR/accuracy"),
        paper=(PaperValue("MR accuracy", "senteval/MR/accuracy", _pair("77.3", "79.5")),
               PaperValue("CR accuracy", "senteval/CR/accuracy", _pair("81.8", "82.6"))),
        claims=(Faster("LN trains faster (every experiment of §4)", "validation/nll_per_word"),
                Better("LN's sentence vectors are better on MR: 79.5 vs 77.3",
                       "senteval/MR/accuracy", "final"),
                Better("LN's sentence vectors are better on CR: 82.6 vs 81.8",
                       "senteval/CR/accuracy", "final"))),
    "draw": Experiment(
        "DRAW on binarized MNIST", "Fig. 4, docs/paper.md §4.4",
        figure=("validation/bound", "train/bound"), columns=("test/bound",),
        paper=(PaperValue("test variational bound (nats)", "test/bound",
                          _pair("82.36", "82.09")),),
        claims=(Faster("LN converges about twice as fast", "validation/bound", within=0.5),
                Better("LN's test bound is lower: 82.09 vs 82.36 nats", "test/bound", "final"))),
    "handwriting": Experiment(
        "Handwriting synthesis", "Fig. 5, docs/paper.md §4.5",
        figure=("validation/nll", "train/nll"), raw=False,
        claims=(Faster("LN reaches a comparable log likelihood much faster", "validation/nll"),)),
    "pmnist": Experiment(
        "Permutation-invariant MNIST", "Fig. 6, docs/paper.md §4.6",
        figure=("train/nll", "test/error"), columns=("test/error",), panel="data.batch_size",
        raw=False,
        claims=(Faster("LN converges faster than the baseline (batch size 128)", "train/nll",
                       norm=_b(128), base=_b(128, "none")),
                Faster("LN converges faster than the baseline (batch size 4)", "train/nll",
                       norm=_b(4), base=_b(4, "none")),
                Better("BN degrades at batch size 4, LN does not", "test/error", "final",
                       norm=_b(4), other=_b(4, "batch")))),
}


class Section:
    """One experiment's runs: groups (runs differing only by seed), curves and statistics."""

    def __init__(self, name: str, runs: Sequence[compare.Run]):
        self.name, self.runs = name, list(runs)
        self.spec = PAPER.get(name, Experiment(name, "not among the paper's experiments", ()))
        self.keys = compare.differing_keys(self.runs)
        self.short = compare.short_names(self.keys)
        # The paper's order (baseline first), batch norm's "everywhere" after its own.
        self.groups = sorted(compare.group_runs(self.runs, self.keys), key=lambda g: (
            NORM_ORDER.index(n) if (n := g.config.get("norm.name")) in NORM_ORDER else 99,
            g.config.get("norm.placement", "paper") != "paper"))
        self.select = str(self.runs[0].config.get("train.select_metric"))
        self.select_mode = str(self.runs[0].config.get("train.select_mode", "min"))
        logged = set().union(*(r.metrics for r in self.runs))
        wanted = [self.select, *self.spec.figure, *self.spec.columns]
        wanted += [c.metric for c in self.spec.claims] + [p.metric for p in self.spec.paper]
        self.metrics = [m for m in dict.fromkeys(wanted) if m in logged]
        drawn = {self.select, *self.spec.figure,
                 *(c.metric for c in self.spec.claims if isinstance(c, Faster))}
        self.curves = compare.group_curves(self.groups, [m for m in self.metrics if m in drawn],
                                           self.short, raw=self.spec.raw)
        self.panel = self.spec.panel if self.spec.panel in self.keys else None

    def mode(self, metric: str) -> str:
        return self.select_mode if metric == self.select else compare.default_mode(metric)

    def label(self, g: compare.Group) -> str:
        return compare.label(g, self.short)

    def find(self, selector: Mapping[str, Any]) -> compare.Group | None:
        """The one group whose config has the selector's values (None if none or several)."""
        found = [g for g in self.groups
                 if all(g.config.get(k, compare.MISSING) == v for k, v in selector.items())]
        return found[0] if len(found) == 1 else None

    def per_seed(self, g: compare.Group, metric: str, stat: str) -> np.ndarray:
        """Each run's final or best value of `metric` (runs that never logged it left out)."""
        values = []
        for r in g.runs:
            s = r.series(metric, raw=self.spec.raw)
            if s is None:
                continue
            # By step: evaluations of saved checkpoints (eval/step_N.json) come after the log.
            by_step = s.value[np.argsort(s.step, kind="stable")]
            values.append(by_step[-1] if stat == "final" else compare.best(s.value,
                                                                         self.mode(metric)))
        return np.array(values, dtype=float)

    def reach(self, g: compare.Group, base: compare.Group, metric: str
              ) -> tuple[float, int | None, int | None]:
        """(the base's best value of its seed-mean curve, the step at which `g`'s seed-mean curve
        first reaches it, the step at which the base's does); None where never / not logged."""
        mode = self.mode(metric)
        bc, gc = (self.curves.get((self.groups.index(x), metric)) for x in (base, g))
        if bc is None or gc is None:
            return math.nan, None, None
        target = compare.best(bc.mean, mode)
        hits = [compare.first_reach(c, target, mode) for c in (gc, bc)]
        return target, *(None if h is None else int(c.step[h]) for h, c in zip(hits, (gc, bc),
                                                                                 strict=True))

    def baseline(self, g: compare.Group) -> compare.Group | None:
        if not any(x.config.get("norm.name") == "none" for x in self.groups):
            return None
        return compare.baseline_of(g, self.groups, "norm.name", "none")


def mean_sd(values: np.ndarray) -> str:
    """`mean ± sample sd` over seeds (the mean alone for one seed); '-' for none."""
    if not len(values):
        return "-"
    if len(values) == 1:
        return f"{values[0]:.4g}"
    return f"{values.mean():.4g} ± {values.std(ddof=1):.2g}"


def _steps(step: int | None, base_step: int | None) -> str:
    if step is None or base_step is None:
        return "never" if base_step is not None else "-"
    return f"{step} of {base_step} ({100 * step / base_step:.0f}%)"


def table(sec: Section) -> str:
    """One row per group: the selection metric's final and best, the steps to the baseline's
    best, the extra columns' final values and the training time."""
    sel = f"`{sec.select}`"
    extra = [m for m in sec.spec.columns if m in sec.metrics and m != sec.select]
    head = ["group", "seeds", f"{sel} final", f"{sel} best", "reaches the baseline's best at "
            "step (of the baseline's)", *(f"`{m}` final" for m in extra), "training time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for g in sec.groups:
        base = sec.baseline(g)
        _, step, base_step = sec.reach(g, base, sec.select) if base else (None, None, None)
        row = [sec.label(g), str(len(g.runs)), mean_sd(sec.per_seed(g, sec.select, "final")),
               mean_sd(sec.per_seed(g, sec.select, "best")), _steps(step, base_step)]
        row += [mean_sd(sec.per_seed(g, m, "final")) for m in extra]
        times = np.array([t for r in g.runs if not math.isnan(t := run_time(r))])
        row.append("-" if not len(times) else f"{times.mean():.0f}" + (
            f" ± {times.std(ddof=1):.0f}" if len(times) > 1 else ""))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def paper_table(sec: Section) -> str:
    """The paper's numbers beside ours (final values, mean ± sd over seeds)."""
    if not sec.spec.paper:
        return "The paper reports curves only (no numbers to set beside ours)."
    lines = ["| quantity | normaliser | paper | ours (mean ± sd over seeds) |",
             "|---|---|---|---|"]
    for p in sec.spec.paper:
        for norm, value in p.values.items():
            g = sec.find({"norm.name": norm, "norm.placement": "paper"}) or sec.find(
                {"norm.name": norm})
            ours = mean_sd(sec.per_seed(g, p.metric, p.stat)) if g else "not run"
            lines.append(f"| {p.what} | {norm} | {value} | {ours} |")
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    claim: str
    holds: bool | None  # None: not measurable from these runs
    text: str

    def markdown(self) -> str:
        word = {True: "**holds**", False: "**does not hold**", None: "**not measured**"}
        return f"- *{self.claim}.* {self.text}: {word[self.holds]} at this scale."


def check(sec: Section, claim: Faster | Better) -> Verdict:
    """A claim measured on the section's runs."""
    m = claim.metric
    if isinstance(claim, Faster):
        g, base = sec.find(claim.norm), sec.find(claim.base)
        if g is None or base is None or (sec.groups.index(g), m) not in sec.curves:
            return Verdict(claim.claim, None, f"no runs of {_sel(claim.norm)} and "
                           f"{_sel(claim.base)} logging `{m}`")
        target, step, base_step = sec.reach(g, base, m)
        if base_step is None:
            return Verdict(claim.claim, None, f"`{m}` of {sec.label(base)} is never finite")
        ratio = math.inf if step is None else step / base_step
        reached = ("never reaches it" if step is None else
                   f"reaches it at step {step}, {100 * ratio:.0f}% of the steps")
        text = (f"{sec.label(g)}'s seed-mean `{m}` {reached}; {sec.label(base)}'s best "
                f"{target:.4g} comes at step {base_step} (needed: at most "
                f"{100 * claim.within:.0f}% and sooner)")
        if _close(sec.per_seed(g, m, "best"), sec.per_seed(base, m, "best")):
            text += "; the two best values are within the seeds' spread"
        return Verdict(claim.claim, ratio <= claim.within and ratio < 1, text)
    g, other = sec.find(claim.norm), sec.find(claim.other)
    a = sec.per_seed(g, m, claim.stat) if g else np.array([])
    b = sec.per_seed(other, m, claim.stat) if other else np.array([])
    if not len(a) or not len(b):
        return Verdict(claim.claim, None, f"no runs of {_sel(claim.norm)} and "
                       f"{_sel(claim.other)} logging `{m}`")
    better = a.mean() > b.mean() if sec.mode(m) == "max" else a.mean() < b.mean()
    noise = ", within the seeds' spread" if _close(a, b) else ""
    text = (f"{claim.stat} `{m}` ({'higher' if sec.mode(m) == 'max' else 'lower'} is better): "
            f"{sec.label(g)} {mean_sd(a)} vs {sec.label(other)} {mean_sd(b)}{noise}")
    return Verdict(claim.claim, bool(better), text)


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two sets of per-seed values differ in mean by at most the larger sample sd
    (always, for two single seeds with equal values; never when either is empty)."""
    if not len(a) or not len(b):
        return False
    spread = max(a.std(ddof=1) if len(a) > 1 else 0.0, b.std(ddof=1) if len(b) > 1 else 0.0)
    return bool(abs(a.mean() - b.mean()) <= spread)


def _sel(selector: Mapping[str, Any]) -> str:
    return ", ".join(f"{k.split('.')[-2] if k.endswith('.name') else k}={v}"
                     for k, v in selector.items())


def run_time(run: compare.Run) -> float:
    """The run's training time: its last logged `time/elapsed_s` (nan if none)."""
    times = [r[compare.TIME] for r in run.records if isinstance(r.get(compare.TIME), int | float)]
    return float(max(times)) if times else math.nan


def hardware(runs: Sequence[compare.Run]) -> str:
    """The devices and hosts, jax versions and commits the runs recorded (each distinct one)."""
    seen: dict[str, dict[str, None]] = {"devices": {}, "jax": {}, "commits": {}}
    for r in runs:
        info = json.loads((r.path / RUN_INFO_FILE).read_text())
        dev = info.get("devices") or {}
        kinds = "/".join(dev.get("kinds") or ["?"])
        seen["devices"][f"{dev.get('count', '?')} x {kinds} on {info.get('hostname', '?')}"] = None
        seen["jax"][str((info.get("versions") or {}).get("jax", "?"))] = None
        seen["commits"][str((info.get("git") or {}).get("commit", "?"))[:7]] = None
    return "; ".join(f"{k} {', '.join(v)}" for k, v in seen.items())


def section_markdown(sec: Section, figure: str | None, out: Path | None = None) -> str:
    """The experiment's section; `out` the page it goes into (links relative to it)."""
    spec = sec.spec
    times = np.array([run_time(r) for r in sec.runs])
    ok = times[np.isfinite(times)]
    data = sorted({f"{k}={compare.fmt_value(v)}" for r in sec.runs for k, v in r.config.items()
                   if k.startswith("data.") and k.split(".")[1] in DATA_KEYS
                   and v not in (None, False)})
    scales = ", ".join(sorted({str(r.config.get("scale")) for r in sec.runs}))
    about = (f"{len(sec.runs)} runs in {len(sec.groups)} groups, scale {scales}"
             + (f"; data: {', '.join(data)}" if data else "")
             + f". Hardware: {hardware(sec.runs)}.")
    if len(ok):
        about += (f" Training time {ok.sum() / 60:.1f} min in all (the sum of each run's last "
                  f"`time/elapsed_s`), {ok.min():.0f}-{ok.max():.0f} s per run.")
    lines = [f"## {spec.title} (`{sec.name}`; paper: {spec.where})", "", about, ""]
    if (own := _page_link(sec.name, out)) is not None:
        lines += [f"The data, the settings and a discussion of the result: {own}.", ""]
    if figure:
        lines += [f"![{sec.name}: curves against updates]({figure})", ""]
    lines += [table(sec), "", "The paper's numbers beside ours:", "", paper_table(sec), "",
              "The paper's claims, checked on these runs:", ""]
    verdicts = [check(sec, c) for c in spec.claims]
    lines += [v.markdown() for v in verdicts] or ["- (no claims recorded for this experiment)"]
    return "\n".join(lines) + "\n"


# The data choices worth naming on the page (the real-data stand-ins of docs/results/).
DATA_KEYS = ("synthetic", "cloze", "dataset", "corpus", "binarization", "files")


def load(paths: Sequence[str | os.PathLike]) -> dict[str, list[compare.Run]]:
    """Every run under `paths`, by experiment name (CompareError if there is none)."""
    runs: dict[str, list[compare.Run]] = {}
    for path in compare.find_runs(paths):
        run = compare.load_run(path)
        runs.setdefault(str(run.config.get("name")), []).append(run)
    return runs


def sections(runs: Mapping[str, Sequence[compare.Run]]) -> list[Section]:
    """One section per experiment: the paper's order, then any other experiment found."""
    names = [n for n in PAPER if n in runs] + sorted(n for n in runs if n not in PAPER)
    return [Section(n, runs[n]) for n in names]


def draw(sec: Section, x: str = "step"):
    """The section's figure: its metrics against `x` (scripts/compare.py's figure)."""
    metrics = [m for m in dict.fromkeys([sec.select, *sec.spec.figure]) if m in sec.metrics]
    return compare.figure(sec.curves, sec.groups, metrics, sec.short, sec.panel, x)


def page(paths: Sequence[str | os.PathLike], out: Path) -> str:
    """Writes the page `out` and its figures beside it; returns the page."""
    out.parent.mkdir(parents=True, exist_ok=True)
    secs = sections(load(paths))
    done = {s.name: s for s in secs}
    verdicts = {s.name: [check(s, c) for c in s.spec.claims] for s in secs}
    lines = ["# The paper's experiments, reproduced", "",
             "Written by `python -m scripts.report "
             + " ".join(str(p) for p in paths) + "` from the runs in those directories: per "
             "experiment its curves (mean over seeds, band min-max over seeds), a table per "
             "normaliser (values: mean ± sample sd over seeds), the paper's numbers beside ours "
             "(docs/paper.md §4) and each of the paper's claims checked on the data. The runs "
             "are at the scale named in each section: the claims are checked at that scale and "
             "on the data named there, not at the paper's.", "",
             "| experiment | paper | runs | claims that hold |", "|---|---|---|---|"]
    for name, spec in {**PAPER, **{s.name: s.spec for s in secs}}.items():
        if name in done:
            held = sum(v.holds is True for v in verdicts[name])
            cell = f"{held} of {len(verdicts[name])}" if verdicts[name] else "-"
            lines.append(f"| [{spec.title}](#{_anchor(done[name])}) | {spec.where} | "
                         f"{len(done[name].runs)} | {cell} |")
        else:
            lines.append(f"| {spec.title} | {spec.where} | not run | {_elsewhere(name, out)} |")
    lines.append("")
    for sec in secs:
        png = out.parent / f"report_{sec.name}.png"
        compare.save_figure(draw(sec), png)
        lines.append(section_markdown(sec, png.name, out))
    for name in PAPER:
        if name not in done:
            lines += [f"## {PAPER[name].title} (`{name}`; paper: {PAPER[name].where})", "",
                      f"Not run: no runs of `{name}` in these directories. "
                      f"{_elsewhere(name, out)}", ""]
    text = "\n".join(lines)
    compare.write_atomic(out, lambda p: p.write_text(text))
    return text


def _anchor(sec: Section) -> str:
    """GitHub's anchor of the section's heading."""
    heading = f"{sec.spec.title} ({sec.name}; paper: {sec.spec.where})".lower()
    kept = "".join(c for c in heading if c.isalnum() or c in " -_")
    return kept.replace(" ", "-")


def _page_link(name: str, out: Path | None) -> str | None:
    """A link from the page `out` to the experiment's own result page (its path for no page),
    if it has one."""
    own = ROOT / "docs" / "results" / f"{name}.md"
    if not own.exists():
        return None
    if out is None:
        return f"`{own.relative_to(ROOT)}`"
    return f"[{own.relative_to(ROOT)}]({os.path.relpath(own, out.resolve().parent)})"


def _elsewhere(name: str, out: Path) -> str:
    link = _page_link(name, out)
    return f"See {link}." if link else "-"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("paths", nargs="+", help="sweep or run directories")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT,
                   help=f"the page to write, figures beside it (default {DEFAULT_OUT})")
    args = p.parse_args(argv)
    try:
        page(args.paths, args.out)
    except compare.CompareError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.out} and its figures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
