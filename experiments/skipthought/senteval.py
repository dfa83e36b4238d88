"""The `senteval` stage: skip-thought vectors on the paper's downstream tasks (Table 3, Fig. 3).

    python -m experiments.evaluate RUN_DIR --stage senteval [--step best|all|N]

Sentence vectors come from `encode` (the run's vocabulary, tokenised as in training, `<eos>`
appended, unit-normalised); the probes are `lnorm.eval.probes`, SentEval's protocol:
MR, CR, SUBJ, MPQA by nested stratified k-fold logistic regression (`data.senteval_folds` outer,
`data.senteval_inner_folds` inner; 10 and 10 in the paper), TREC by a C chosen by k-fold CV on
its training set and the test accuracy, SICK relatedness by Tai et al.'s soft-target regression
on `[|u - v|, u * v]` (test Pearson r, Spearman rho, MSE). Results are logged as
`senteval/MR/accuracy` ... `senteval/SICK/mse`, and a Table-3-shaped Markdown table (this run
beside the paper's rows) is written as the artifact `table3`.

Beside each classification task, a bag-of-words baseline of the same sentences and the same
probe: word counts (`CountVectorizer` over the same tokens, the `data.senteval_bow_features`
most frequent words) instead of the sentence vectors (`senteval/MR/bow_accuracy`). It does not
depend on the model, so it is computed once per data set and cached beside the prepared data.

Data: the folder SentEval's downloader makes (`data/downstream`, one folder per task), named by
`data.senteval_dir` or, for a run trained without it, `$LNORM_SENTEVAL_DIR`; with neither,
`data.senteval_vader=true` makes the MR-like and CR-like sets of `vader.py` on first use (from
a PyPI sdist), and `data.synthetic=true` takes `lnorm.data.senteval`'s stand-in. A task whose
files are absent is skipped with a line naming them. Each task is prepared through
`lnorm.data.senteval` into a folder named by a digest of its files, so that two different
folders (SentEval's MR and an MR-like stand-in) never share a prepared copy.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from sklearn.feature_extraction.text import CountVectorizer
from threadpoolctl import threadpool_limits

from experiments.skipthought import vader
from experiments.skipthought.data import load_corpus
from experiments.skipthought.encode import encode
from lnorm.artifacts import Artifact
from lnorm.data import senteval as se
from lnorm.data.bookcorpus import tokenize
from lnorm.data.common import data_root, prepare, synthetic_corpus
from lnorm.eval import probes
from lnorm.logger import write_json_atomic
from lnorm.trainer import EvalContext

if TYPE_CHECKING:
    from experiments.skipthought import DataConfig
    from experiments.skipthought.model import SkipThoughts
    from lnorm.data.vocab import Vocab

ENV = "LNORM_SENTEVAL_DIR"
TASKS = ("mr", "cr", "subj", "mpqa", "trec", "sick")
KFOLD_TASKS = ("mr", "cr", "subj", "mpqa")
# Table 3 of the paper (docs/paper.md §6.3): SICK r / rho / MSE, then accuracies in percent.
COLUMNS = (("SICK", "pearson", "SICK r"), ("SICK", "spearman", "SICK ρ"),
           ("SICK", "mse", "SICK MSE"), ("MR", "accuracy", "MR"), ("CR", "accuracy", "CR"),
           ("SUBJ", "accuracy", "SUBJ"), ("MPQA", "accuracy", "MPQA"),
           ("TREC", "accuracy", "TREC"))
PAPER_ROWS = (
    ("paper: original skip-thoughts", (0.848, 0.778, 0.287, 75.5, 79.3, 92.1, 86.9, None)),
    ("paper: their rerun (1M iter.)", (0.842, 0.767, 0.298, 77.3, 81.8, 92.6, 87.9, None)),
    ("paper: + LN (1M iter.)", (0.854, 0.785, 0.277, 79.5, 82.6, 93.4, 89.0, None)),
)


def folder(task: str) -> str:
    return se.TASKS[task].folder


def probe_data(data: DataConfig) -> tuple[Path | None, Path, str]:
    """`(files root or None, prepared-data root, description)` of the SentEval data to use."""
    prepared = data_root(data.data_dir) / "senteval"
    given = data.senteval_dir or os.environ.get(ENV)
    if given:
        return Path(given).expanduser(), prepared, f"SentEval-layout files in {given}"
    if data.senteval_vader:
        files = vader.probes_folder(data.data_dir)
        return files, prepared, f"MR-/CR-like VADER snippets, NOT SentEval's MR/CR ({files})"
    if data.synthetic:
        files, prepared = synthetic_corpus(data.data_dir, "senteval", se.write_synthetic,
                                           num_examples=data.senteval_synthetic_size)
        return files, prepared, f"synthetic SentEval stand-in ({files})"
    return None, prepared, (f"no SentEval data (set data.senteval_dir or ${ENV}, or "
                            "data.senteval_vader=true)")


def missing_files(root: Path | None, task: str) -> list[str]:
    names = [f"{folder(task)}/{f}" for f in se.TASKS[task].files]
    return names if root is None else [n for n in names if not (root / n).is_file()]


def _digest(root: Path, task: str) -> str:
    sha = hashlib.sha256()
    for name in se.TASKS[task].files:
        sha.update((root / folder(task) / name).read_bytes())
    return sha.hexdigest()[:12]


def prepared_task(root: Path, prepared: Path, task: str) -> tuple[Any, Path]:
    """The prepared builder of `task` and its folder (one per content of the task's files)."""
    data_dir = prepared / f"{task}-{_digest(root, task)}"
    return prepare(se.SentEval, data_dir, manual_dir=root, config=task), data_dir


def bag_of_words(sentences: Sequence[str], features: int) -> Callable[[Sequence[str]], Any]:
    """Word counts over the `features` most frequent tokens of `sentences` (tokenised as the
    encoder tokenises), as a function from sentences to a dense float32 matrix."""
    vectorizer = CountVectorizer(tokenizer=tokenize, lowercase=False, token_pattern=None,
                                 max_features=features, dtype=np.float32)
    vectorizer.fit(sentences)
    return lambda s: vectorizer.transform(s).toarray()


class _Probe:
    """One task's probe on any featurisation: `run(featurize) -> {metric: value}`."""

    def __init__(self, builder: Any, task: str, data: DataConfig):
        self.task, self.data = task, data
        kind = se.TASKS[task].kind
        names = se.SPLIT_NAMES.get(kind, ("train",))
        self.splits = {s: se.load_split(builder, s) for s in names}

    def sentences(self) -> list[str]:
        fields = ("sentence_a", "sentence_b") if self.task == "sick" else ("sentence",)
        return [s for split in self.splits.values() for f in fields for s in split[f]]

    def run(self, featurize: Callable[[Sequence[str]], np.ndarray]) -> dict[str, float]:
        d = self.data
        if self.task in KFOLD_TASKS:
            train = self.splits["train"]
            out = probes.kfold_classification(featurize(train["sentence"]), train["label"],
                                              k=d.senteval_folds, inner_k=d.senteval_inner_folds)
            return {"accuracy": out["accuracy"]}
        if self.task == "trec":
            train, test = self.splits["train"], self.splits["test"]
            out = probes.train_test_classification(
                featurize(train["sentence"]), train["label"], featurize(test["sentence"]),
                test["label"], k=d.senteval_inner_folds)
            return {"accuracy": out["accuracy"]}
        pairs = [(featurize(s["sentence_a"]), featurize(s["sentence_b"]), s["relatedness"])
                 for s in (self.splits[k] for k in ("train", "validation", "test"))]
        out = probes.sick_relatedness(*pairs)
        return {k: out[k] for k in ("pearson", "spearman", "mse")}


def _bow_results(probe: _Probe, data_dir: Path, data: DataConfig) -> dict[str, float]:
    """The bag-of-words baseline of a classification task, cached in its prepared folder."""
    d = data
    cache = (data_dir / f"bow-{d.senteval_bow_features}-k{d.senteval_folds}-"
             f"i{d.senteval_inner_folds}.json")
    if cache.exists():
        return json.loads(cache.read_text())
    results = probe.run(bag_of_words(probe.sentences(), d.senteval_bow_features))
    write_json_atomic(cache, results)
    return results


def evaluate_tasks(model: SkipThoughts, vocab: Vocab, data: DataConfig,
                   log: Callable[[str], None] = print) -> tuple[dict[str, float], list[str]]:
    """Every task of `data.senteval_tasks` whose files are present: `{"senteval/TASK/metric":
    value}` and the notes (skipped tasks, data used)."""
    root, prepared, description = probe_data(data)
    results: dict[str, float] = {}
    notes = [f"Data: {description}."]
    for task in data.senteval_tasks:
        name = folder(task)
        missing = missing_files(root, task)
        if missing:
            line = f"senteval: {name} skipped, missing {', '.join(missing)}"
            log(line + (f" in {root}" if root else f" ({description})"))
            notes.append(f"{name} skipped: missing {', '.join(missing)}.")
            continue
        start = time.perf_counter()
        builder, data_dir = prepared_task(root, prepared, task)
        probe = _Probe(builder, task, data)
        # The probes' matrices are small: BLAS threads only add overhead (on the shared 2-core
        # machine one thread took 1/20 of the CPU time of the default).
        with threadpool_limits(limits=1):
            values = probe.run(lambda s: encode(model, vocab, list(s),
                                                batch_size=data.eval_batch_size))
            if data.senteval_bow and task != "sick":
                values["bow_accuracy"] = _bow_results(probe, data_dir, data)["accuracy"]
        results.update({f"senteval/{name}/{k}": v for k, v in values.items()})
        shown = ", ".join(f"{k} {v:.4g}" for k, v in values.items())
        log(f"senteval: {name}: {shown} ({time.perf_counter() - start:.0f} s)")
    return results, notes


def _cell(value: float | None, metric: str) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if metric in ("pearson", "spearman", "mse") else f"{value:.1f}"


def table3(results: dict[str, float], *, label: str, notes: Sequence[str] = ()) -> str:
    """A Markdown table shaped like the paper's Table 3 (plus TREC): this run, its
    bag-of-words baseline where computed, and the paper's rows."""
    header = "| model | " + " | ".join(c[2] for c in COLUMNS) + " |"
    lines = [header, "|" + "---|" * (len(COLUMNS) + 1)]

    def row(name: str, values: Sequence[float | None]) -> str:
        cells = (_cell(v, c[1]) for v, c in zip(values, COLUMNS, strict=True))
        return f"| {name} | " + " | ".join(cells) + " |"

    lines.append(row(label, [results.get(f"senteval/{t}/{m}") for t, m, _ in COLUMNS]))
    bow = [results.get(f"senteval/{t}/bow_{m}") if m == "accuracy" else None
           for t, m, _ in COLUMNS]
    if any(v is not None for v in bow):
        lines.append(row("bag of words, same probe", bow))
    lines += [row(name, values) for name, values in PAPER_ROWS]
    footer = ["", "SICK: test Pearson r, Spearman ρ, MSE; MR, CR, SUBJ, MPQA: "
              "k-fold CV accuracy (%); TREC: test accuracy (%), not in the paper's Table 3.",
              *notes]
    return "\n".join(lines + footer) + "\n"


def senteval_stage(model: SkipThoughts, ctx: EvalContext) -> dict[str, float | Artifact]:
    """The stage `senteval` (see the module docstring)."""
    if ctx.config is None:
        raise ValueError("the senteval stage reads its data from the run's config: run it "
                         "through experiments.evaluate or experiments.run")
    conf = ctx.config
    vocab = load_corpus(conf.data).vocab
    results, notes = evaluate_tasks(model, vocab, conf.data)
    label = (f"this run: norm={conf.norm.name}, scale={conf.scale}, seed={conf.seed}, "
             f"step {ctx.step}")
    folds = f"{conf.data.senteval_folds}-fold (inner {conf.data.senteval_inner_folds})"
    notes = [*notes, f"Probes: {folds} CV logistic regression, SentEval's grids of C."]
    return {**results, "table3": Artifact.text(table3(results, label=label, notes=notes))}


__all__ = ["TASKS", "evaluate_tasks", "senteval_stage", "table3"]
