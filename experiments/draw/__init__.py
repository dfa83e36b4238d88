"""DRAW on binarized MNIST with layer-normalised LSTMs (paper Fig. 4; docs/paper.md §4.4, §6.4).

DRAW (Gregor et al. 2015) with a 2x2 read and a 5x5 write attention, 64 glimpses, 256-unit
encoder and decoder LSTMs and 100 latent units per glimpse, trained with Adam at batch size
128 for 200 epochs on the variational bound (nats). The paper reports a test bound of 82.36
(baseline) against 82.09 (LN), with LN converging about twice as fast. Its LN variant
normalises only the cell before the output nonlinearity, `h = sigmoid(o) tanh(LN(c))`
(docs/paper.md §1.5; `norm=layer`, `LSTMCell(variant="draw")`); the full LN-LSTM is the
option `cell_variant="paper"`.

From the paper (Gregor et al.): the attention (grid centres, stride, Gaussian filters,
intensity), the 1-indexed grid, the glimpse recurrence, the bound. From jbornschein/draw
(where the papers are silent): zero initial canvas and decoder state, separate linear layers
from h_dec to the read and write attention parameters, the +1e-4 in the filter normalisation,
weights N(0, 0.01^2) and zero biases, the posterior parametrised by log sigma, summed BCE plus
summed KL averaged over the batch; Adam at 3e-4 (its README's command for this model) after
clipping the gradient's global norm at 10. Ours: the attention's log-parameters clipped to +-10 (an
overflow guard), no peephole connections (Blocks' LSTM has them; the paper's LSTM equations do
not), the deterministic evaluation noise (keys derived from each image, see `objective`).

Platform wiring (ours): the data (`data.py`: the fixed binarization when its files can be had,
else the stochastic binarization of real MNIST, and the run's data line says which); the
checkpoint selected by `validation/bound` (the paper reports the test bound only); at every
evaluation a grid of prior samples and the canvas sequence of a few test digits (an animated GIF
and a strip) under `artifacts/pictures/`; `test/bound` once, on the selected checkpoint; the
stages `iwae` (the importance-weighted test bound) and `sample` (`model.samples` samples), run
by `python -m experiments.evaluate RUN_DIR --stage iwae sample`. `norm=weight` reparametrises
the LSTMs' matrices without the data-dependent init (the LSTMs' inputs only exist inside the
glimpse loop); `norm.placement=everywhere` has no meaning here and is refused.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from flax import nnx

from experiments.draw.data import BINARIZATIONS, load_splits
from experiments.draw.evaluate import bound, iwae_stage, pictures, sample_stage
from experiments.draw.model import DRAW
from experiments.draw.objective import loss_fn
from experiments.schema import ConfigError, RunConfig, require_positive
from lnorm.data.binarized_mnist import make_pipeline
from lnorm.data.common import DataError
from lnorm.trainer import EvalContext, Evaluator, Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 128  # global: split over processes and devices
    eval_batch_size: int = 500  # images per evaluation batch (divides the 10,000 of a split)
    data_dir: str | None = None  # prepared data; None: $LNORM_DATA_DIR or ~/lnorm_data
    manual_dir: str | None = None  # the three .amat files, or the four MNIST IDX files
    binarization: str = "auto"  # auto | larochelle (the paper's) | stochastic (data.py)
    validation_examples: int | None = None  # evaluate the first N validation images; None: all
    synthetic: bool = False  # the stand-in (stroke prototypes) in the .amat format instead
    synthetic_size: int = 1000  # training images of the stand-in (validation, test: a fifth)

    def __post_init__(self) -> None:
        if self.binarization not in BINARIZATIONS:
            raise ValueError(f"data.binarization={self.binarization!r}: expected one of "
                             f"{BINARIZATIONS}")
        require_positive("data", self, ("eval_batch_size", "validation_examples",
                                         "synthetic_size"))


@dataclasses.dataclass
class ModelConfig:
    glimpses: int = 64
    encoder_features: int = 256
    decoder_features: int = 256
    latent: int = 100  # z per glimpse
    read_size: int = 2  # N x N read attention
    write_size: int = 5  # N x N write attention
    cell_variant: str = "draw"  # LN/RMS/BN LSTM: draw (only tanh(N(c)), the paper's) | paper
    init_std: float | None = 0.01  # weights N(0, std^2) (jbornschein/draw); None: lnorm's
    # What the evaluations draw (they do not change training):
    pictures: int = 8  # test digits whose canvas sequence each evaluation shows
    grid_samples: int = 64  # prior samples in each evaluation's grid
    samples: int = 1000  # N of the `sample` stage
    iwae_samples: int = 50  # importance samples per test image of the `iwae` stage

    def __post_init__(self) -> None:
        require_positive("model", self, ("glimpses", "encoder_features", "decoder_features",
                                          "latent", "pictures", "grid_samples", "samples",
                                          "iwae_samples"))


def make_model(conf: RunConfig) -> DRAW:
    """The run's DRAW; a normaliser or size it cannot have is a ConfigError naming it."""
    m = conf.model
    try:
        return DRAW(norm=conf.norm.resolved(conf.data.batch_size), glimpses=m.glimpses,
                    encoder_features=m.encoder_features, decoder_features=m.decoder_features,
                    latent=m.latent, read_size=m.read_size, write_size=m.write_size,
                    cell_variant=m.cell_variant, init_std=m.init_std, rngs=nnx.Rngs(conf.seed))
    except ValueError as e:
        raise ConfigError(f"norm={conf.norm.name}: {e}") from None


STAGES = {"iwae": iwae_stage, "sample": sample_stage}


def build(conf: RunConfig, run_dir: Path) -> Task:
    del run_dir
    data: DataConfig = conf.data
    splits = load_splits(data)
    model = make_model(conf)
    train = make_pipeline(splits.train, batch_size=data.batch_size, seed=conf.seed,
                          shuffle=True, drop_remainder=True)
    if len(train) < 1:
        raise DataError(f"data.batch_size={data.batch_size} is more than the "
                        f"{len(splits.train)} training images of {splits.description}")
    digits = splits.test.arrays["image"][: conf.model.pictures].astype(np.float32)

    def validate(model: DRAW, ctx: EvalContext) -> dict[str, float]:
        return bound(model, splits.validation, data.eval_batch_size)

    def draw_pictures(model: DRAW, ctx: EvalContext) -> dict:
        return pictures(model, ctx.rng, digits, samples=conf.model.grid_samples)

    def test(model: DRAW, ctx: EvalContext) -> dict[str, float]:
        return bound(model, splits.test, data.eval_batch_size)

    return Task(
        model=model,
        loss_fn=loss_fn,
        train_batches=train.batches,
        steps_per_epoch=len(train),
        evaluators={"validation": Evaluator(validate), "pictures": Evaluator(draw_pictures),
                    "test": Evaluator(test, final=True)},
        data_source=splits.description,
    )
