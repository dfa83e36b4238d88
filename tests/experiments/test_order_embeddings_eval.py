"""Order embeddings' evaluation and data: the jitted score functions against the platform's
numpy ones (several blocks included), embeddings independent of batching and padding, the
Table-2 table, the MNIST-strips writer against its definition, the label-only ceiling, and a
clear error for each bad data option."""

import dataclasses

import numpy as np
import pytest
from flax import nnx

from experiments.order_embeddings import DataConfig, mnist_strips, retrieval
from experiments.order_embeddings.data import load_corpus
from experiments.order_embeddings.model import OrderEmbedding
from lnorm.data import coco
from lnorm.data.common import DataError
from lnorm.data.pipeline import ArraySource
from lnorm.eval import retrieval as platform
from lnorm.norms import NormSpec


def test_jitted_scores_match_numpy(monkeypatch):
    rng = np.random.default_rng(0)
    im, s = np.abs(rng.normal(size=(30, 8))), np.abs(rng.normal(size=(70, 8)))
    im, s = im.astype(np.float32), s.astype(np.float32)
    want = platform.order_scores(im, s)
    np.testing.assert_allclose(retrieval.order_scores(im, s), want, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(retrieval, "SCORE_BLOCK_BYTES", 4 * 70 * 8 * 7)  # blocks of 7 images
    np.testing.assert_allclose(retrieval.order_scores(im, s), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(retrieval.cosine_scores(im, s), platform.cosine_scores(im, s),
                               rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """The release layout (data.manual_dir) filled with the stand-in: 40 training images, 10
    dev and 10 test images, 16-d features."""
    return coco.write_synthetic(tmp_path_factory.mktemp("oe_release"), num_examples=40, seed=0,
                                feature_dim=16)


def _data(release, tmp_path, **kw) -> DataConfig:
    base = DataConfig(manual_dir=str(release), data_dir=str(tmp_path / "prepared"),
                      feature_dim=16, validation_images=10, test_folds=2, fold_size=5,
                      eval_batch_size=7)
    return dataclasses.replace(base, **kw)


def test_embeddings_do_not_depend_on_batching(synthetic, tmp_path):
    corpus = load_corpus(_data(synthetic, tmp_path))
    arrays = corpus.validation()
    assert arrays["image"].shape == (10, 16) and len(arrays["caption"]) == 50
    model = OrderEmbedding(len(corpus.vocab), norm=NormSpec("layer"), feature_dim=16, dim=8,
                           word_dim=6, rngs=nnx.Rngs(0))
    images, captions = retrieval.embed(model, arrays, batch_size=7)  # sorted, bucketed batches
    whole_images = nnx.jit(lambda m, x: m.embed_images(x))(model, arrays["image"])
    np.testing.assert_allclose(images, whole_images, rtol=1e-5, atol=1e-6)
    whole = nnx.jit(lambda m, t, n: m.embed_captions(t, n))(
        model, arrays["caption"], arrays["caption_length"])
    np.testing.assert_allclose(captions, whole, rtol=1e-5, atol=1e-6)
    metrics = retrieval.retrieval_metrics(model, arrays, batch_size=64)
    assert metrics == pytest.approx(
        platform.recall_metrics(images, captions, platform.order_scores))
    mean, folds = retrieval.kfold_metrics(model, corpus.test(), folds=2, fold_size=5,
                                          batch_size=7)
    assert len(folds) == 2 and mean["caption_r1"] == pytest.approx(
        np.mean([f["caption_r1"] for f in folds]))


def test_table2_sets_the_run_beside_the_paper():
    results = {k: float(i) for i, k in enumerate(retrieval.TABLE2_KEYS)}
    folds = [results, {k: v + 2 for k, v in results.items()}]
    text = retrieval.table2(results, label="this run", note="a note", per_fold=folds)
    lines = text.splitlines()
    assert lines[0].startswith("| model | caption R@1 |") and lines[0].count("|") == 10
    assert lines[2] == "| paper: order embeddings (GRU) | 46.6 | 79.3 | 89.1 | 5.2 | 37.8 | " \
                       "73.6 | 85.7 | 7.9 |"
    assert lines[4].startswith("| this run | 0.0 ± 1.0 | 1.0 ± 1.0 |") and "a note" in text


def test_data_options_fail_clearly(synthetic, tmp_path):
    cases = {
        "data.dataset='imagenet'": dict(dataset="imagenet"),
        "data.vocab='all'": dict(vocab="all"),
        "data.sampler='word'": dict(sampler="word"),
        "cannot be combined with data.dataset=mnist_strips": dict(synthetic=True,
                                                                  dataset="mnist_strips"),
        "the MNIST strips' features are 4096-d": dict(dataset="mnist_strips"),
        "data.fold_size=0": dict(fold_size=0),
        r"data.validation_images=11: the validation \(dev\) split .* holds 10 images":
            dict(validation_images=11),
        "data.test_folds=3 x data.fold_size=5: the test split .* holds 10 images":
            dict(test_folds=3),
    }
    for message, kw in cases.items():
        with pytest.raises(DataError, match=message):
            load_corpus(_data(synthetic, tmp_path, **kw))
    with pytest.raises(DataError, match=r"(?s)missing files.*train\.txt.*coco\.zip"):
        load_corpus(_data(synthetic, tmp_path, manual_dir=str(tmp_path),
                          data_dir=str(tmp_path / "fresh")))


def test_vocabulary_options(synthetic, tmp_path):
    train_only = load_corpus(_data(synthetic, tmp_path, vocab="train"))
    original = load_corpus(_data(synthetic, tmp_path, validation_images=5))
    assert original.builder.builder_config.vocab_dev_images == 5
    assert train_only.builder.builder_config.vocab_dev_images == 0
    assert set(train_only.vocab.tokens) <= set(original.vocab.tokens)


def _fake_mnist(num: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    split = {"image": rng.integers(0, 256, (num, 28, 28), dtype=np.uint8),
             "label": rng.integers(0, 10, num)}
    return {name: ArraySource(split) for name in ("train", "validation", "test")}


def test_mnist_strips_follow_their_definition(tmp_path):
    mnist = _fake_mnist(24, 0)
    out = mnist_strips.write_mnist_strips(tmp_path, num_examples=5, seed=1, mnist=mnist,
                                          dev_strips=2, test_strips=8)
    captions, features = coco.read_split(out, "test", mnist_strips.FEATURE_DIM)
    labels = np.load(out / "test_labels.npy")
    assert len(captions) == 40 and features.shape == (8, 4096) and labels.shape == (8, 4)
    images = mnist["test"].arrays["image"]
    cells = mnist_strips.strip_features(images[:, None].repeat(4, 1), mnist_strips.projection())
    cells = cells[:, :1024]  # each digit's own 1024 features
    for s in range(8):
        for j in range(4):  # every cell is one of the digits, with that digit's label
            match = np.flatnonzero(np.all(np.isclose(cells, features[s, 1024 * j : 1024 * (j + 1)],
                                                     atol=1e-5), axis=1))
            assert len(match) >= 1 and mnist["test"].arrays["label"][match[0]] == labels[s, j]
        names = [mnist_strips.NAMES.index(w) for c in captions[5 * s : 5 * s + 5]
                 for w in c.split() if w in mnist_strips.NAMES]
        assert names == labels[s].tolist() * 5  # five captions, each the digits left to right
        assert len(set(captions[5 * s : 5 * s + 5])) == 5
    assert np.all(features >= 0)
    with pytest.raises(ValueError, match=r"data\.strips_train=20000"):
        mnist_strips.write_mnist_strips(tmp_path, num_examples=20000, seed=0, mnist=mnist)


def test_label_ceiling():
    a, b = [1, 2, 3, 4], [5, 6, 7, 8]
    assert mnist_strips.label_ceiling(np.array([a, a, b]), fold_size=3) == pytest.approx(200 / 3)
    # Folds are separate: [a, b] (both unique), then [a, a] (each ranked first half the time).
    assert mnist_strips.label_ceiling(np.array([a, b, a, a]), fold_size=2) == 75.0
