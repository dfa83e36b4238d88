"""Binarized MNIST for DRAW: 50,000 / 10,000 / 10,000 images of 28x28 zeros and ones.

Two configs:
- `larochelle` (the paper's): the fixed binarization of Larochelle & Murray (2011),
  `binarized_mnist_{train,valid,test}.amat`, one image a line, 784 space-separated 0/1 values.
  Files come from the manual directory, else an earlier download, else the public host
  (short timeout); each is sha256-checked against the values TFDS publishes for the same files.
- `stochastic`: the documented stand-in where those files are unavailable: the MNIST IDX files
  (obtained by `lnorm.data.mnist.fetch`) binarized once with pixel/255 as the probability of a
  one, from a fixed seed; the first 50,000 training images are `train`, the last 10,000
  `validation`, t10k `test`. The same seed always gives the same bits.

Splits are `train`, `validation`, `test`; one feature, `image` uint8 `[28, 28]`, file order kept.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.download.checksums import compute_url_info

from lnorm.data import mnist
from lnorm.data.common import (
    DataError,
    download_with_timeout,
    first_source,
    manual_dir_or_none,
    prepare,
    require_files,
    where,
)
from lnorm.data.pipeline import ArraySource, Pipeline

URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"
FILES = {  # split -> (file, size in bytes, sha256), as in TFDS's binarized_mnist checksums
    "train": (
        "binarized_mnist_train.amat",
        78400000,
        "ad693b29f94c14277b095f5238ddefbbdaaae0939789dd2f4f0205278cee3e4d",
    ),
    "validation": (
        "binarized_mnist_valid.amat",
        15680000,
        "1de3d397c40fe8eeb33dafd4099a1f665ec01e96d9be234aaeeac8a34930e2e2",
    ),
    "test": (
        "binarized_mnist_test.amat",
        15680000,
        "e6687bfea3f820c174f33b7865140b2a2dd2930ef786f35d45795fc193b5ab2c",
    ),
}
NAMES = tuple(name for name, _, _ in FILES.values())
IMAGE_SHAPE = mnist.IMAGE_SHAPE
PIXELS = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
HOST_TIMEOUT_S = 10.0

INSTRUCTIONS = f"""
Binarized MNIST (Larochelle & Murray): put {", ".join(NAMES)} in a folder and pass it as
`manual_dir` (they are at {URL}). Without them, the `stochastic` config binarizes the MNIST
IDX files instead (see lnorm.data.mnist for those).
"""


def read_amat(path: str | os.PathLike) -> np.ndarray:
    """Images `[N, 28, 28]` uint8 of an `.amat` file; a line that is not 784 values 0/1 is a
    DataError naming the file, line and column."""
    rows = []
    with open(path, "rb") as f:
        for line_no, line in enumerate(f, 1):
            values = line.split()
            if len(values) != PIXELS:
                raise DataError(
                    f"{where(path, line_no)}: {len(values)} values, expected "
                    f"{PIXELS} space-separated 0/1 values"
                )
            if not set(values) <= {b"0", b"1"}:
                col = next(i for i, v in enumerate(values, 1) if v not in (b"0", b"1"))
                raise DataError(
                    f"{where(path, line_no)}: value {values[col - 1].decode()!r} "
                    f"in column {col}, expected 0 or 1"
                )
            rows.append(np.frombuffer(b"".join(values), np.uint8) - ord("0"))
    if not rows:
        raise DataError(f"{path}: no images, expected one line of {PIXELS} values per image")
    return np.stack(rows).reshape(-1, *IMAGE_SHAPE)


def verify(folder: Path, *, check: bool = True) -> Path:
    """Checks that `folder` holds the three files, with the canonical size and sha256 when
    `check`."""
    require_files(folder, NAMES, INSTRUCTIONS)
    for name, size, sha256 in FILES.values() if check else ():
        info = compute_url_info(folder / name)
        if (int(info.size), info.checksum) != (size, sha256):
            raise DataError(
                f"{folder / name}: {int(info.size)} bytes with sha256 {info.checksum}, "
                f"expected {size} bytes with {sha256} (corrupt or not the canonical "
                "file; synthetic data needs verify_checksums=False)"
            )
    return folder


def _from_host(dest: Path) -> Path:
    for name in NAMES:
        download_with_timeout(URL + name, dest / name, timeout=HOST_TIMEOUT_S)
    return dest


def fetch(
    download_dir: str | os.PathLike,
    *,
    manual_dir: str | os.PathLike | None = None,
    verify_checksums: bool = True,
) -> Path:
    """The folder of the first source with the three verified files: `manual_dir` (an error
    at once when its files fail the checks), an earlier download, the public host. When all
    fail, the DataError lists each source and why."""
    cache = Path(download_dir) / "binarized_mnist"
    cache.mkdir(parents=True, exist_ok=True)
    return first_source(
        "binarized MNIST", NAMES, manual_dir=manual_dir,
        sources=[(f"earlier download {cache}", lambda: cache), (URL, lambda: _from_host(cache))],
        verify=lambda folder: verify(folder, check=verify_checksums or folder == cache),
        instructions=INSTRUCTIONS,
    )


def binarize(images: np.ndarray, seed: int) -> np.ndarray:
    """One Bernoulli draw per pixel with probability pixel/255 (uint8 0/1), fixed by `seed`."""
    rng = np.random.default_rng(seed)
    return (rng.random(images.shape) < images / 255.0).astype(np.uint8)


@dataclasses.dataclass(eq=False)
class BinarizedMnistConfig(tfds.core.BuilderConfig):
    """`source`: `larochelle` (the .amat files) or `stochastic` (binarized MNIST IDX files, with
    `seed` and the last `validation_size` training images as validation); `verify_checksums`:
    False only for non-canonical (synthetic) files in `manual_dir`."""

    source: str = "larochelle"
    seed: int = 0
    validation_size: int = 10000
    verify_checksums: bool = True

    def __post_init__(self):
        if self.source not in ("larochelle", "stochastic"):
            raise ValueError(
                f"BinarizedMnistConfig.source must be 'larochelle' or "
                f"'stochastic'; got {self.source!r}"
            )


class BinarizedMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Binarized MNIST, `image` uint8 `[28, 28]` in {0, 1}. Not registered with TFDS (whose
    own `binarized_mnist` would clash); use it through `prepare` or `load_binarized_mnist`."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS = [  # noqa: RUF012 (TFDS API)
        BinarizedMnistConfig(name="larochelle", description="Larochelle & Murray's .amat files"),
        BinarizedMnistConfig(
            name="stochastic",
            source="stochastic",
            description="MNIST binarized with pixel/255 as p(1), seed 0",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {"image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8)}
            ),
            homepage=URL,
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        manual_dir = manual_dir_or_none(dl_manager)
        if cfg.source == "larochelle":
            folder = fetch(
                dl_manager.download_dir,
                manual_dir=manual_dir,
                verify_checksums=cfg.verify_checksums,
            )
            return {
                split: self._generate_examples(read_amat(folder / name))
                for split, (name, _, _) in FILES.items()
            }
        folder = mnist.fetch(
            dl_manager.download_dir, manual_dir=manual_dir, verify_md5=cfg.verify_checksums
        )
        images, _ = mnist.read_pair(folder / mnist.TRAIN_IMAGES, folder / mnist.TRAIN_LABELS)
        test, _ = mnist.read_pair(folder / mnist.TEST_IMAGES, folder / mnist.TEST_LABELS)
        n_val = cfg.validation_size
        if not 0 < n_val < len(images):
            raise DataError(
                f"{folder / mnist.TRAIN_IMAGES}: {len(images)} training images, too "
                f"few for validation_size={n_val}"
            )
        images, test = binarize(images, cfg.seed), binarize(test, cfg.seed + 1)
        return {
            "train": self._generate_examples(images[:-n_val]),
            "validation": self._generate_examples(images[-n_val:]),
            "test": self._generate_examples(test),
        }

    def _generate_examples(self, images: np.ndarray):
        for i, image in enumerate(images):
            yield i, {"image": image}


def load_binarized_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    manual_dir: str | os.PathLike | None = None,
    config: str | BinarizedMnistConfig = "larochelle",
) -> dict[str, ArraySource]:
    """Prepares binarized MNIST (once) and returns each split in memory as `image [N, 28, 28]`
    uint8 (55 MB in all; batches are then gathered by fancy indexing)."""
    builder = prepare(BinarizedMnist, data_dir, manual_dir=manual_dir, config=config)
    return {
        split: ArraySource.from_source(builder.as_data_source(split=split))
        for split in ("train", "validation", "test")
    }


def make_pipeline(
    source: ArraySource,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Pipeline:
    """Batches `image [B, 28, 28]` float32 in {0, 1}, the DRAW input and Bernoulli target."""
    return Pipeline(
        source,
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        batch_transform=lambda b: {"image": b["image"].astype(np.float32)},
    )


def write_synthetic(out_dir: str | os.PathLike, *, num_examples: int, seed: int) -> Path:
    """Writes the three `.amat` files with `num_examples` training images (validation and test:
    a fifth each, at least 1): each image is one of 10 fixed random stroke prototypes with 3% of
    its pixels flipped, so a generative model can learn the classes. Prepare with
    `verify_checksums=False`."""
    rng = np.random.default_rng(seed)
    prototypes = np.zeros((10, *IMAGE_SHAPE), np.uint8)
    for proto in prototypes:  # a few thick random line segments per class
        for _ in range(3):
            (r0, c0), (r1, c1) = rng.integers(4, 24, size=(2, 2))
            for t in np.linspace(0, 1, 30):
                r, c = round(r0 + t * (r1 - r0)), round(c0 + t * (c1 - c0))
                proto[r - 1 : r + 2, c - 1 : c + 2] = 1
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    held_out = max(1, num_examples // 5)
    for split, n in (("train", num_examples), ("validation", held_out), ("test", held_out)):
        images = prototypes[rng.integers(0, 10, size=n)] ^ (rng.random((n, *IMAGE_SHAPE)) < 0.03)
        lines = (" ".join(map(str, image.reshape(-1))) for image in images.astype(np.uint8))
        (out / FILES[split][0]).write_text("\n".join(lines) + "\n")
    return out
