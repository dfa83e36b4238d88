"""Permutation-invariant MNIST (paper §6.7, Fig. 6): the normaliser's robustness to batch size.

An MLP 784-1000-1000-10 with ReLU, trained with Adam on 55,000 training images, at batch size
128 and 4. Following the paper, layer norm (and RMS norm) sit on the hidden layers only, batch
norm on all layers, with the unbiased variance at batch size 4; weight norm reparametrises every
layer. Pixels are scaled to [0, 1] and shuffled by one fixed permutation drawn from the run's
seed and saved in the run directory (`permutation.npy`): the model gets no spatial prior.

Not stated in the paper, chosen here: Adam's learning rate (1e-3, the optimiser's default) and
the data-dependent weight-norm initialisation batch (256 training images).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from experiments.common import norm_options
from experiments.schema import RunConfig
from lnorm.data.mnist import load_mnist, pixel_permutation
from lnorm.data.pipeline import Pipeline
from lnorm.metrics import evaluate
from lnorm.norms import NormedDense, weight_norm_init
from lnorm.trainer import Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 128
    eval_batch_size: int = 1000
    data_dir: str | None = None  # prepared array_record data; None: $LNORM_DATA_DIR or ~/lnorm_data
    manual_dir: str | None = None  # a folder holding the four IDX .gz files, if you have them
    validation_size: int = 5000  # the paper's 55,000 / 5,000 split of the training file
    verify_md5: bool = True  # false only for synthetic stand-in files (tests, demos)


@dataclasses.dataclass
class ModelConfig:
    hidden: list[int] = dataclasses.field(default_factory=lambda: [1000, 1000])
    norm_output: bool | None = None  # None: true for batch and weight norm (paper: "all layers")
    wn_init_examples: int = 256


class MLP(nnx.Module):
    """ReLU MLP whose every summed input passes through `NormedDense` with the chosen norm."""

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        norm: str,
        norm_output: bool,
        rngs: nnx.Rngs,
        **norm_kw,
    ):
        last = len(sizes) - 2
        self.layers = nnx.List(
            [
                NormedDense(
                    din,
                    dout,
                    norm=norm if (i < last or norm_output) else "none",
                    rngs=rngs,
                    **(norm_kw if (i < last or norm_output) else {}),
                )
                for i, (din, dout) in enumerate(itertools.pairwise(sizes))
            ]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


def loss_fn(model: MLP, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng
    logits = model(batch["image"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    error = jnp.mean(jnp.argmax(logits, -1) != batch["label"])
    return nll, {"nll": nll, "error": error}  # logged as train/nll, train/error


def metric_sums(model: MLP, batch: dict) -> dict[str, jax.Array]:
    logits = model(batch["image"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "nll": nll.sum(),
        "error": jnp.sum(jnp.argmax(logits, -1) != batch["label"]),
        "count": jnp.asarray(batch["label"].shape[0], jnp.float32),
    }


def _save_permutation(run_dir: Path, perm: np.ndarray) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / "permutation.tmp.npy"
    np.save(tmp, perm)
    os.replace(tmp, run_dir / "permutation.npy")


def build(conf: RunConfig, run_dir: Path) -> Task:
    data: DataConfig = conf.data
    model_cfg: ModelConfig = conf.model
    sources = load_mnist(
        Path(data.data_dir).expanduser() if data.data_dir else None,
        manual_dir=data.manual_dir,
        validation_size=data.validation_size,
        verify_md5=data.verify_md5,
    )
    perm = pixel_permutation(conf.seed)
    _save_permutation(run_dir, perm)

    def to_inputs(batch: dict) -> dict:
        image = batch["image"].reshape(len(batch["image"]), -1)[:, perm]
        return {"image": image.astype(np.float32) / 255.0, "label": batch["label"].astype(np.int32)}

    def pipeline(split: str, batch_size: int, shuffle: bool) -> Pipeline:
        return Pipeline(
            sources[split], batch_size=batch_size, seed=conf.seed, shuffle=shuffle,
            drop_remainder=shuffle, batch_transform=to_inputs,
        )

    train_pipe = pipeline("train", data.batch_size, shuffle=True)
    norm_output = (
        conf.norm.name in ("batch", "weight")
        if model_cfg.norm_output is None
        else model_cfg.norm_output
    )
    model = MLP(
        [784, *model_cfg.hidden, 10],
        norm=conf.norm.name,
        norm_output=norm_output,
        rngs=nnx.Rngs(conf.seed),
        **norm_options(conf.norm, data.batch_size),
    )

    def evaluator(split: str):
        pipe = pipeline(split, data.eval_batch_size, shuffle=False)

        def run(model: MLP) -> dict[str, float]:
            sums = evaluate(model, metric_sums, pipe.batches(0))
            return {f"{split}/{k}": v for k, v in sums.items()}

        return run

    def init_fn(model: MLP, first_batch: dict) -> None:
        """Weight norm's data-dependent initialisation, from a fixed slice of training data."""
        del first_batch
        if conf.norm.name == "weight":
            x = next(pipeline("train", model_cfg.wn_init_examples, shuffle=True).batches(0))
            weight_norm_init(model, model, jnp.asarray(x["image"]))

    return Task(
        model=model,
        loss_fn=loss_fn,
        train_batches=train_pipe.batches,
        steps_per_epoch=len(train_pipe),
        evaluators={"val": evaluator("validation"), "test": evaluator("test")},
        init_fn=init_fn,
    )
