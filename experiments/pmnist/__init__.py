"""Permutation-invariant MNIST (docs/paper.md §4.6, Fig. 6): the normaliser's robustness to batch
size.

An MLP 784-1000-1000-10 with ReLU, trained with Adam on 55,000 training images, at batch size
128 and 4. Following the paper, layer norm (and RMS norm) sit on the hidden layers only, batch
norm on all layers, with the unbiased variance at batch size 4; weight norm reparametrises every
layer. Pixels are scaled to [0, 1] and shuffled by one fixed permutation drawn from the run's
seed and saved in the run directory (`permutation.npy`): the model gets no spatial prior.

Not stated in the paper, chosen here: Adam's learning rate (1e-3, the optimiser's default), the
data-dependent weight-norm initialisation batch (256 training images), and the checkpoint
selected by validation error.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.pmnist.model import MLP
from experiments.pmnist.objective import loss_fn, metric_sums
from experiments.schema import RunConfig
from lnorm.data.common import data_root, synthetic_corpus
from lnorm.data.mnist import load_mnist, pixel_permutation, write_synthetic
from lnorm.data.pipeline import Pipeline
from lnorm.metrics import evaluate
from lnorm.trainer import EvalContext, Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 128  # global: split over processes and devices
    eval_batch_size: int = 1000
    data_dir: str | None = None  # prepared array_record data; None: $LNORM_DATA_DIR or ~/lnorm_data
    manual_dir: str | None = None  # a folder holding the four IDX .gz files, if you have them
    validation_size: int = 5000  # the paper's 55,000 / 5,000 split of the training file
    verify_md5: bool = True
    synthetic: bool = False  # the stand-in: class prototypes + noise in the IDX format
    synthetic_size: int = 2000  # training images of the stand-in (validation: a tenth of them)


@dataclasses.dataclass
class ModelConfig:
    hidden: list[int] = dataclasses.field(default_factory=lambda: [1000, 1000])
    wn_init_examples: int = 256


def _save_permutation(run_dir: Path, perm: np.ndarray) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "permutation.tmp.npy"
    np.save(tmp, perm)
    os.replace(tmp, run_dir / "permutation.npy")


def _sources(data: DataConfig) -> tuple[dict, str]:
    """The three splits in memory, and a line saying where they come from."""
    if not data.synthetic:
        sources = load_mnist(data.data_dir, manual_dir=data.manual_dir,
                             validation_size=data.validation_size, verify_md5=data.verify_md5)
        return sources, f"MNIST (prepared under {data_root(data.data_dir)})"
    files, prepared = synthetic_corpus(data.data_dir, "mnist", write_synthetic,
                                       num_examples=data.synthetic_size)
    sources = load_mnist(prepared, manual_dir=files, verify_md5=False,
                         validation_size=min(data.validation_size, data.synthetic_size // 10))
    return sources, f"synthetic stand-in (class prototypes + noise, IDX files in {files})"


def build(conf: RunConfig, run_dir: Path) -> Task:
    data: DataConfig = conf.data
    sources, data_source = _sources(data)
    perm = pixel_permutation(conf.seed)
    _save_permutation(run_dir, perm)

    def to_inputs(batch: dict) -> dict:
        image = batch["image"].reshape(len(batch["image"]), -1)[:, perm]
        return {"image": image.astype(np.float32) / 255.0, "label": batch["label"].astype(np.int32)}

    def pipeline(split: str, batch_size: int, shuffle: bool) -> Pipeline:
        return Pipeline(sources[split], batch_size=batch_size, seed=conf.seed, shuffle=shuffle,
                        drop_remainder=shuffle, batch_transform=to_inputs)

    train_pipe = pipeline("train", data.batch_size, shuffle=True)
    norm = conf.norm.resolved(data.batch_size)
    model = MLP([784, *conf.model.hidden, 10], norm=norm, rngs=nnx.Rngs(conf.seed))

    def evaluator(split: str):
        pipe = pipeline(split, data.eval_batch_size, shuffle=False)

        def run(model: MLP, ctx: EvalContext) -> dict[str, float]:
            return evaluate(model, metric_sums, pipe.batches(0))

        return run

    def init_fn(model: MLP, first_batch: dict) -> None:
        """Weight norm's data-dependent initialisation, from a fixed slice of training data."""
        del first_batch
        if norm.needs_data_init:
            x = next(pipeline("train", conf.model.wn_init_examples, shuffle=True).batches(0))
            norm.data_init(model, model, jnp.asarray(x["image"]))

    return Task(
        model=model,
        loss_fn=loss_fn,
        train_batches=train_pipe.batches,
        steps_per_epoch=len(train_pipe),
        evaluators={"validation": evaluator("validation"), "test": evaluator("test")},
        init_fn=init_fn,
        data_source=data_source,
    )
