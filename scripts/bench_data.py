"""Benchmark of the data pipelines on synthetic corpora (not a test).

    python -m scripts.bench_data [--examples 10000] [--batches 400] [--warmup 20]
                                 [--only mnist,coco]

For each dataset module in `lnorm.data`: writes its synthetic corpus (`write_synthetic`) into a
temp dir, prepares it with the real builder (timed, reported per 10k examples), builds the train
pipeline (timed: `build s`, the first one also reads the split into memory where the pipeline
does) and reads it at the paper's batch sizes (docs/paper.md §4), reporting batches/s,
examples/s and ms/batch in the steady state, after `--warmup` batches. Rows `dataset:train` use
the experiment's training options where they differ from the defaults. A dataset whose module is
missing or fails is reported as such, not fatal. Compare the per-batch time with the model's
training step: the target is at least 5x faster.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import itertools
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import tensorflow_datasets as tfds

from lnorm.data.common import prepare
from lnorm.data.pipeline import Pipeline
from lnorm.data.vocab import load_vocab


@dataclasses.dataclass(frozen=True)
class Case:
    """One dataset: how to prepare its synthetic files and build its train pipeline."""

    experiment: str
    module: str
    batch_sizes: tuple[int, ...]
    setup: Callable[[Any, Path, Path, int], Any]  # (module, raw dir, data dir, n) -> state
    pipeline: Callable[[Any, Any, int], Pipeline]  # (module, state, batch size) -> pipeline
    train: Callable[[Any, Any, int], Pipeline] | None = None  # the experiment's, if different


def _builder(name: str, config: Callable[[Any], Any] | None = None):
    """Setup that prepares builder `name` of the module (with `config(module)` if given)."""
    return lambda m, raw, out, n: prepare(
        getattr(m, name), out, manual_dir=raw, config=config(m) if config else None
    )


def _train(m, builder, batch_size, **options):
    return m.make_pipeline(builder.as_data_source("train"), batch_size=batch_size, seed=0,
                           **options)


def _train_vocab(m, builder, batch_size, **options):
    source, vocab = builder.as_data_source("train"), load_vocab(builder)
    return m.make_pipeline(source, vocab, batch_size=batch_size, seed=0, **options)


CASES = (
    Case(
        "pmnist",
        "mnist",
        (128, 4),
        lambda m, raw, out, n: m.load_mnist(
            out, manual_dir=raw, validation_size=n // 10, verify_md5=False
        ),
        lambda m, splits, b: Pipeline(splits["train"], batch_size=b, seed=0),
    ),
    Case(
        "draw",
        "binarized_mnist",
        (128,),
        lambda m, raw, out, n: m.load_binarized_mnist(
            out,
            manual_dir=raw,
            config=m.BinarizedMnistConfig(name="bench", verify_checksums=False),
        ),
        lambda m, splits, b: m.make_pipeline(splits["train"], batch_size=b, seed=0),
    ),
    Case("order_embeddings", "coco", (128,), _builder("Coco"), _train_vocab),
    Case(
        "attentive_reader",
        "cnn_qa",
        (64,),
        _builder("CnnQa"),
        _train_vocab,
        functools.partial(_train_vocab, relabel_entities=True, top_k_sentences=4,
                          drop_remainder=True),
    ),
    Case(
        "skipthought",
        "bookcorpus",
        (64,),
        _builder("BookCorpus", lambda m: m.BookCorpusConfig(name="bench", validation_size=0.1)),
        _train,
        functools.partial(_train, bucket_by_length=True, drop_remainder=True),
    ),
    Case("handwriting", "iam_ondb", (8,), _builder("IamOnDB"), _train),
)


def time_batches(pipeline: Pipeline, num_batches: int, warmup: int = 20) -> float:
    """Seconds per batch over `num_batches` batches after `warmup` (epochs chained): the
    steady state, past grain's start and the first block of batches it reads."""
    stream = itertools.chain.from_iterable(pipeline.batches(e) for e in itertools.count())
    for _ in itertools.islice(stream, max(1, warmup)):
        pass
    start = time.perf_counter()
    for _ in itertools.islice(stream, num_batches):
        pass
    return (time.perf_counter() - start) / num_batches


def run(case: Case, tmp: Path, num_examples: int, num_batches: int, warmup: int) -> list[str]:
    m = importlib.import_module(f"lnorm.data.{case.module}")
    raw = m.write_synthetic(tmp / case.module / "raw", num_examples=num_examples, seed=0)
    start = time.perf_counter()
    state = case.setup(m, raw, tmp / case.module / "prepared", num_examples)
    prep_s = (time.perf_counter() - start) / num_examples * 10_000
    variants = [(case.module, case.pipeline)]
    if case.train is not None:
        variants.append((f"{case.module}:train", case.train))
    rows = []
    for b in case.batch_sizes:
        for name, make in variants:
            start = time.perf_counter()
            pipeline = make(m, state, b)
            build_s = time.perf_counter() - start
            sec = time_batches(pipeline, num_batches, warmup)
            rows.append(
                f"{case.experiment:17} {name:17} {b:5d} {prep_s:10.1f} {build_s:8.2f} "
                f"{1 / sec:10.0f} {b / sec:12.0f} {sec * 1e3:10.3f}"
            )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=10_000, help="synthetic training examples")
    parser.add_argument("--batches", type=int, default=400, help="timed batches per row")
    parser.add_argument("--warmup", type=int, default=20, help="untimed batches before those")
    parser.add_argument("--only", default="", help="comma-separated dataset modules")
    args = parser.parse_args(argv)
    tfds.disable_progress_bar()
    only = set(filter(None, args.only.split(",")))
    print(
        f"{'experiment':17} {'dataset':17} {'batch':>5} {'prep s/10k':>10} {'build s':>8} "
        f"{'batches/s':>10} {'examples/s':>12} {'ms/batch':>10}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for case in CASES:
            if only and case.module not in only:
                continue
            try:
                rows = run(case, Path(tmp), args.examples, args.batches, args.warmup)
            except Exception as e:  # a benchmark reports a broken dataset and goes on
                rows = [
                    f"{case.experiment:17} {case.module:17} failed: "
                    f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"
                ]
            print("\n".join(rows), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
