"""Order embeddings of images and captions with an LN-GRU caption encoder (paper §6.1, Table 2).

Vendrov et al.'s model (docs/paper.md §4.1, §6.1): images (VGG19 fc7 features, 10-crop
average) and captions (a GRU over word embeddings) are mapped to non-negative unit vectors, and
a caption should be dominated coordinate-wise by its image, scored by the order-violation energy
`||max(0, s - im)||^2` in a contrastive hinge over all in-batch negatives (margin 0.05, summed,
both directions). The paper swaps the GRU for its LN-GRU and reports caption and image retrieval
on COCO (1k test images, 5 folds), and that LN reaches its best validation model sooner.
`method="cosine"` is the symmetric baseline of the same code (no `abs`, cosine, margin 0.2).

From the authors' code (ivendrov/order-embedding): the initialisation (word embeddings and GRU
input kernels uniform +-0.1, each recurrent block orthogonal, Xavier-uniform image map, zero
biases), unit-normalised image features, the state at each caption's true length (`<eos>`
read last), the energy's direction (the image dominates), summed hinge with the diagonal
excluded, per-tensor gradient clipping at norm 2 (`lnorm.optim`), Adam 1e-3, batches of 128
images each paired with one of its five captions drawn afresh every epoch (the last partial
batch dropped), 100 epochs, the vocabulary from the training captions and those of the 1,000
validation images, validation every 300 updates on the first 1,000 dev images (5,000 captions),
the checkpoint kept by text-to-image R@1+R@5+R@10 (`validation/image_rsum`), and the test
protocol: 5 folds of 1,000 test images, caption retrieval ranking an image's best own caption.

Ours: pairs showing the same image are not negatives of each other (the original's batches,
one caption per image, never hold such pairs); the GRU is `lnorm.cells.GRUCell`, whose plain
variant also has a (zero-initialised) bias on `U h` and whose gate kernels are fused, so the
per-tensor clip sees `[W_z W_r W]` and `[U_z U_r U]` as one tensor each (the original clipped
`W`, `Wx`, `U`, `Ux` separately); where the normaliser also covers output layers (batch and
weight norm, `placement=everywhere`) the image map is normalised too (the paper's LN changes the
GRU only); L2 normalisation guards all-zero rows; optax's Adam with the textbook bias
correction (the original's corrects with 0.1^t and 0.001^t instead of 0.9^t and 0.999^t, so its
steps are up to 6.6x larger around update 12, still 1.3x at update 1,000); the validation
images' captions join the vocabulary up to `data.validation_images` (the original: its 1,000).

Evaluation (`retrieval.py`): `validation/*` every `train.eval_every` updates (both directions'
R@1/5/10, median and mean rank, `rsum`, `image_rsum`); the stage `retrieval` (also run once on
the selected checkpoint at the end of training) logs `test/caption_r1` ... `test/image_mean_rank`
(means over the folds) and writes a Table-2-shaped Markdown table beside the paper's numbers
(`artifacts/retrieval/table2/step_<N>.txt`). Data (`data.py`): the release, the MNIST-strips
real-image check (`mnist_strips.py`), or the synthetic stand-in.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from experiments.order_embeddings.data import Corpus, load_corpus
from experiments.order_embeddings.model import OrderEmbedding
from experiments.order_embeddings.objective import loss_fn
from experiments.order_embeddings.retrieval import kfold_metrics, retrieval_metrics, table2
from experiments.schema import RunConfig
from lnorm.artifacts import Artifact
from lnorm.data.coco import make_pipeline
from lnorm.trainer import EvalContext, Evaluator, Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 128  # images per batch, one caption each (global)
    eval_batch_size: int = 1000  # images or captions embedded at once in evaluation
    data_dir: str | None = None  # prepared data; None: $LNORM_DATA_DIR or ~/lnorm_data
    manual_dir: str | None = None  # the release's files (lnorm.data.coco's instructions)
    dataset: str = "coco"  # coco | mnist_strips (the real-image check, not the paper's data)
    synthetic: bool = False  # the COCO stand-in instead (objects and colours)
    synthetic_size: int = 2000  # training images of the stand-in (dev and test: a quarter)
    strips_train: int = 10000  # training strips of mnist_strips (dev 1,000, test 5,000)
    feature_dim: int = 4096
    sampler: str = "image"  # image: one random caption per image per epoch; caption: all
    vocab: str = "train+validation"  # the original's; train: training captions only
    validation_images: int = 1000  # the first dev images (5 captions each)
    test_folds: int = 5
    fold_size: int = 1000  # test images per fold


@dataclasses.dataclass
class ModelConfig:
    dim: int = 1024  # the joint space and the GRU
    word_dim: int = 300
    method: str = "order"  # order | cosine (the symmetric baseline)
    margin: float | None = None  # None: 0.05 for order, 0.2 for cosine
    t_max: int = 64  # norm=batch only: per-step statistics for the first t_max words


def _model(conf: RunConfig, vocab_size: int) -> OrderEmbedding:
    m = conf.model
    return OrderEmbedding(vocab_size, norm=conf.norm.resolved(conf.data.batch_size),
                          feature_dim=conf.data.feature_dim, dim=m.dim, word_dim=m.word_dim,
                          method=m.method, margin=m.margin, t_max=m.t_max,
                          rngs=nnx.Rngs(conf.seed))


def _test_results(model: OrderEmbedding, corpus: Corpus, conf: RunConfig,
                  step: int) -> dict[str, float | Artifact]:
    mean, per_fold = kfold_metrics(model, corpus.test(), folds=corpus.folds,
                                   fold_size=corpus.fold_size,
                                   batch_size=conf.data.eval_batch_size)
    label = (f"this run: norm={conf.norm.name}, scale={conf.scale}, seed={conf.seed}, "
             f"step {step}")
    note = (f"Test: {corpus.folds} folds of {corpus.fold_size} images, mean (± std over folds). "
            f"Data: {corpus.description}.")
    if not corpus.comparable:
        note += " These numbers are not comparable to the paper's Table 2."
    results: dict[str, float | Artifact] = {f"test/{k}": v for k, v in mean.items()}
    results["table2"] = Artifact.text(table2(mean, label=label, note=note, per_fold=per_fold))
    return results


def retrieval_stage(model: OrderEmbedding, ctx: EvalContext) -> dict[str, float | Artifact]:
    """The 5-fold 1k-image test protocol on the run's test split (`experiments.evaluate RUN_DIR
    --stage retrieval`): `test/<metric>` means over the folds and the `table2` table."""
    if ctx.config is None:
        raise ValueError("the retrieval stage reads its data from the run's config: run it "
                         "through experiments.run or experiments.evaluate")
    return _test_results(model, load_corpus(ctx.config.data), ctx.config, ctx.step)


STAGES = {"retrieval": retrieval_stage}


def build(conf: RunConfig, run_dir: Path) -> Task:
    del run_dir
    data: DataConfig = conf.data
    corpus = load_corpus(data)
    model = _model(conf, len(corpus.vocab))
    train = make_pipeline(corpus.builder.as_data_source("train"), corpus.vocab,
                          batch_size=data.batch_size, seed=conf.seed, sampler=data.sampler)
    validation = corpus.validation()

    def validate(model: OrderEmbedding, ctx: EvalContext) -> dict[str, float]:
        return retrieval_metrics(model, validation, batch_size=data.eval_batch_size)

    def init_fn(model: OrderEmbedding, first_batch: dict) -> None:
        """Weight norm's data-dependent initialisation, from the first training batch."""
        inputs = (first_batch[k] for k in ("image", "caption", "caption_length"))
        conf.norm.data_init(model, model, *map(jnp.asarray, inputs))

    return Task(
        model=model,
        loss_fn=loss_fn,
        train_batches=train.batches,
        steps_per_epoch=len(train),
        evaluators={"validation": Evaluator(validate),
                    "retrieval": Evaluator(lambda model, ctx: _test_results(
                        model, corpus, conf, ctx.step), final=True)},
        init_fn=init_fn,
        data_source=corpus.description,
    )
