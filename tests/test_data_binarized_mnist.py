"""Binarized MNIST: `.amat` parsing to exact pixels, bad lines, checksums and the manual
instructions, the fixed stochastic binarization, and the synthetic corpus through builder and
pipeline."""

import numpy as np
import pytest

from lnorm.data import binarized_mnist as bm
from lnorm.data import mnist
from lnorm.data.common import DataError, prepare

UNCHECKED = bm.BinarizedMnistConfig(name="synthetic", verify_checksums=False)


def _amat(images: np.ndarray) -> str:
    return "".join(" ".join(str(v) for v in im.reshape(-1)) + "\n" for im in images)


def _two_images() -> np.ndarray:
    corners = np.zeros((28, 28), np.uint8)
    corners[0, 0] = corners[27, 27] = 1
    checker = (np.add.outer(np.arange(28), np.arange(28)) % 2).astype(np.uint8)
    return np.stack([corners, checker])


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    raw = bm.write_synthetic(tmp_path_factory.mktemp("bm_raw"), num_examples=60, seed=0)
    return raw, bm.load_binarized_mnist(tmp_path_factory.mktemp("bm_out"), manual_dir=raw,
                                        config=UNCHECKED)


def test_read_amat_exact(tmp_path):
    path = tmp_path / "x.amat"
    path.write_text(_amat(_two_images()))
    images = bm.read_amat(path)
    assert images.dtype == np.uint8 and images.shape == (2, 28, 28)
    np.testing.assert_array_equal(images, _two_images())


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (" ".join(["0"] * 783), r"x\.amat:2: 783 values, expected 784"),
        (" ".join(["0"] * 4 + ["2"] + ["1"] * 779), r"x\.amat:2: value '2' in column 5"),
        (" ".join(["0"] * 783 + ["0.5"]), r"x\.amat:2: value '0.5' in column 784"),
    ],
)
def test_bad_line_names_file_line_and_column(tmp_path, line, message):
    path = tmp_path / "x.amat"
    path.write_text(_amat(_two_images()[:1]) + line + "\n")
    with pytest.raises(DataError, match=message):
        bm.read_amat(path)


def test_checksums_are_checked(tmp_path):
    bm.write_synthetic(tmp_path, num_examples=5, seed=0)
    with pytest.raises(DataError, match=r"binarized_mnist_train\.amat: \d+ bytes with sha256 .*"
                                        r"expected 78400000 bytes"):
        bm.verify(tmp_path)
    assert bm.verify(tmp_path, check=False) == tmp_path


def test_missing_files_give_instructions_without_network(tmp_path, monkeypatch):
    def offline(url, dest, timeout):
        raise OSError(f"offline: {url}")

    monkeypatch.setattr(bm, "download_with_timeout", offline)
    (tmp_path / "manual").mkdir()
    (tmp_path / "manual" / "binarized_mnist_train.amat").write_text("")
    with pytest.raises(DataError, match=r"(?s)manual: missing binarized_mnist_valid\.amat, "
                                        r"binarized_mnist_test\.amat.*offline: http://www\.cs\."
                                        r"toronto.*stochastic"):
        prepare(bm.BinarizedMnist, tmp_path / "out", manual_dir=tmp_path / "manual")


def test_synthetic_round_trip(synthetic):
    raw, splits = synthetic
    assert {k: len(v) for k, v in splits.items()} == {"train": 60, "validation": 12, "test": 12}
    for split, (name, _, _) in bm.FILES.items():  # file order kept, pixels exact
        np.testing.assert_array_equal(splits[split].arrays["image"], bm.read_amat(raw / name))
    p = bm.make_pipeline(splits["train"], batch_size=16, seed=2)
    batches = list(p.batches(0))
    assert [b["image"].shape for b in batches] == [(16, 28, 28)] * 3 + [(12, 28, 28)]
    assert all(b["image"].dtype == np.float32 for b in batches)
    seen = np.concatenate([b["image"] for b in batches]).astype(np.uint8)
    assert sorted(map(bytes, seen)) == sorted(map(bytes, splits["train"].arrays["image"]))


def test_synthetic_images_fall_into_classes(synthetic):
    _, splits = synthetic
    x = splits["train"].arrays["image"].reshape(60, -1).astype(int)
    dist = np.abs(x[:, None] - x[None]).sum(-1) + 784 * np.eye(60, dtype=int)
    # Each image has a near twin (same prototype, 3% of pixels flipped each) ...
    assert np.median(dist.min(1)) < 0.1 * 784
    # ... while most pairs are far apart (different prototypes).
    assert np.median(dist) > 2 * np.median(dist.min(1))


def test_binarize_is_fixed_and_has_the_right_probabilities():
    images = np.repeat(np.array([0, 64, 128, 255], np.uint8), 20000).reshape(4, 20000)
    bits = bm.binarize(images, seed=7)
    np.testing.assert_array_equal(bits, bm.binarize(images, seed=7))
    assert not np.array_equal(bits, bm.binarize(images, seed=8))
    assert set(np.unique(bits)) <= {0, 1}
    np.testing.assert_allclose(bits.mean(1), [0, 64 / 255, 128 / 255, 1], atol=0.01)


def test_stochastic_config_binarizes_mnist_files(tmp_path):
    raw = mnist.write_synthetic(tmp_path / "mnist", num_examples=30, seed=1)
    config = bm.BinarizedMnistConfig(name="stochastic_synthetic", source="stochastic", seed=5,
                                     validation_size=10, verify_checksums=False)
    splits = bm.load_binarized_mnist(tmp_path / "out", manual_dir=raw, config=config)
    train, _ = mnist.read_pair(raw / mnist.TRAIN_IMAGES, raw / mnist.TRAIN_LABELS)
    test, _ = mnist.read_pair(raw / mnist.TEST_IMAGES, raw / mnist.TEST_LABELS)
    bits = bm.binarize(train, 5)
    np.testing.assert_array_equal(splits["train"].arrays["image"], bits[:20])
    np.testing.assert_array_equal(splits["validation"].arrays["image"], bits[20:])
    np.testing.assert_array_equal(splits["test"].arrays["image"], bm.binarize(test, 6))
    with pytest.raises(ValueError, match="'larochelle' or 'stochastic'"):
        bm.BinarizedMnistConfig(name="x", source="dynamic")
