"""Which caption/feature files a run reads, prepared through the one COCO builder
(`lnorm.data.coco`): the release (`data.dataset=coco`), the real-image check
(`data.dataset=mnist_strips`, `experiments.order_embeddings.mnist_strips`) or the synthetic
stand-in (`data.synthetic=true`), and the validation and test arrays of each."""

from __future__ import annotations

import dataclasses
import functools
from typing import TYPE_CHECKING, Any

import numpy as np

from experiments.order_embeddings.mnist_strips import FEATURE_DIM as STRIPS_FEATURE_DIM
from experiments.order_embeddings.mnist_strips import mnist_strips_files
from lnorm.data import coco
from lnorm.data.common import DataError, data_root, prepare, synthetic_corpus
from lnorm.data.vocab import Vocab, load_vocab

if TYPE_CHECKING:
    from experiments.order_embeddings import DataConfig

DATASETS = ("coco", "mnist_strips")
VOCABS = ("train+validation", "train")


@dataclasses.dataclass
class Corpus:
    """A prepared dataset with its vocabulary, and how the run evaluates on it."""

    builder: Any  # the prepared lnorm.data.coco.Coco builder
    vocab: Vocab
    description: str  # one line: what the data is and where it comes from
    comparable: bool  # whether test numbers may be set beside the paper's Table 2
    validation_images: int
    folds: int
    fold_size: int

    def arrays(self, split: str) -> dict[str, np.ndarray]:
        """`coco.split_arrays` of a (sliced) split, e.g. `validation[:1000]`."""
        return coco.split_arrays(self.builder.as_data_source(split), self.vocab)

    def validation(self) -> dict[str, np.ndarray]:
        return self.arrays(f"validation[:{self.validation_images}]")

    def test(self) -> dict[str, np.ndarray]:
        return self.arrays(f"test[:{self.folds * self.fold_size}]")


def _check(data: DataConfig) -> None:
    if data.dataset not in DATASETS:
        raise DataError(f"data.dataset={data.dataset!r}: expected one of {DATASETS}")
    if data.vocab not in VOCABS:
        raise DataError(f"data.vocab={data.vocab!r}: expected one of {VOCABS}")
    if data.sampler not in coco.SAMPLERS:
        raise DataError(f"data.sampler={data.sampler!r}: expected one of {coco.SAMPLERS}")
    if data.synthetic and data.dataset != "coco":
        raise DataError(f"data.synthetic=true replaces the data with the COCO stand-in; it "
                        f"cannot be combined with data.dataset={data.dataset}")
    if data.dataset == "mnist_strips" and data.feature_dim != STRIPS_FEATURE_DIM:
        raise DataError(f"data.feature_dim={data.feature_dim}: the MNIST strips' features are "
                        f"{STRIPS_FEATURE_DIM}-d")
    for key in ("validation_images", "test_folds", "fold_size", "eval_batch_size"):
        if getattr(data, key) < 1:
            raise DataError(f"data.{key}={getattr(data, key)}: expected a positive integer")


def load_corpus(data: DataConfig) -> Corpus:
    """Prepares (once) and opens the data the config names; a DataError naming the key or file
    for anything that does not fit (missing release files, too few validation or test
    images)."""
    _check(data)
    validation_images, fold_size = data.validation_images, data.fold_size
    if data.synthetic:
        write = functools.partial(coco.write_synthetic, feature_dim=data.feature_dim)
        files, prepared = synthetic_corpus(data.data_dir, f"coco-dim{data.feature_dim}", write,
                                           num_examples=data.synthetic_size)
        held_out = max(2, data.synthetic_size // 4)  # write_synthetic's dev and test sizes
        validation_images = min(validation_images, held_out)
        fold_size = min(fold_size, max(1, held_out // data.test_folds))
        description = (f"synthetic stand-in (objects and colours: summed random feature "
                       f"vectors, template captions; files in {files})")
    elif data.dataset == "mnist_strips":
        files, prepared = mnist_strips_files(data.data_dir, num_examples=data.strips_train)
        description = (f"MNIST strips: four real MNIST digits per image, 4096-d fixed random "
                       f"ReLU features, captions generated from the labels (NOT comparable to "
                       f"Table 2; files in {files})")
    else:
        files, prepared = data.manual_dir, data_root(data.data_dir)
        description = (f"COCO, the order-embedding release (10-crop VGG19 fc7 features; "
                       f"files from {files}, prepared under {prepared})")
    vocab_dev = validation_images if data.vocab == "train+validation" else 0
    config = coco.coco_config(feature_dim=data.feature_dim, vocab_dev_images=vocab_dev)
    builder = prepare(coco.Coco, prepared, manual_dir=files, config=config)
    splits = builder.info.splits
    dev, test = splits["validation"].num_examples, splits["test"].num_examples
    if validation_images > dev:
        raise DataError(f"data.validation_images={validation_images}: the validation (dev) "
                        f"split of {builder.data_dir} holds {dev} images")
    if data.test_folds * fold_size > test:
        raise DataError(f"data.test_folds={data.test_folds} x data.fold_size={fold_size}: the "
                        f"test split of {builder.data_dir} holds {test} images")
    return Corpus(builder, load_vocab(builder), description,
                  comparable=not data.synthetic and data.dataset == "coco",
                  validation_images=validation_images, folds=data.test_folds,
                  fold_size=fold_size)
