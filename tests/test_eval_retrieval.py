"""lnorm.eval.retrieval against brute-force references (double loops over every pair)."""

import statistics

import numpy as np
import pytest

from lnorm.eval import retrieval
from lnorm.eval.retrieval import (
    cosine_scores,
    kfold_retrieval,
    order_scores,
    recall_metrics,
    retrieval_ranks,
)

KEYS = [
    f"{d}_{m}"
    for d in ("caption", "image")
    for m in ("r1", "r5", "r10", "median_rank", "mean_rank")
] + ["image_rsum", "rsum"]


def dot_scores(im, s):
    return im @ s.T


def pair_score(name, a, b):
    if name == "dot":
        return sum(float(x) * float(y) for x, y in zip(a, b, strict=True))
    return -sum(max(0.0, float(y) - float(x)) ** 2 for x, y in zip(a, b, strict=True))


def brute_ranks(images, captions, name, k):
    """Ranks by definition: 1 + strictly better candidates; an image's rank is the minimum
    over its own captions' ranks."""
    n_im, n_cap = len(images), len(captions)
    S = [[pair_score(name, images[i], captions[c]) for c in range(n_cap)] for i in range(n_im)]
    caption = [
        min(1 + sum(S[i][o] > S[i][c] for o in range(n_cap)) for c in range(i * k, (i + 1) * k))
        for i in range(n_im)
    ]
    image = [1 + sum(S[j][c] > S[c // k][c] for j in range(n_im)) for c in range(n_cap)]
    return caption, image


def brute_summary(ranks, prefix):
    out = {f"{prefix}_r{n}": 100.0 * sum(r <= n for r in ranks) / len(ranks) for n in (1, 5, 10)}
    out[f"{prefix}_median_rank"] = float(int(statistics.median(ranks)))
    out[f"{prefix}_mean_rank"] = sum(ranks) / len(ranks)
    return out


def tied_data(n_im, k, d, seed):
    """Small integers (every score exact in floating point), with duplicated rows: many ties."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 3, (n_im, d)).astype(np.float64)
    captions = rng.integers(0, 3, (n_im * k, d)).astype(np.float64)
    images[1] = images[0]  # two identical images
    captions[2 * k] = captions[0]  # a caption of image 2 equal to one of image 0
    captions[k + 1] = captions[k]  # two identical captions of image 1
    return images, captions


SCORES = {"dot": dot_scores, "order": order_scores}


@pytest.mark.parametrize("name", ["dot", "order"])
@pytest.mark.parametrize("chunk", [None, 1, 3, 7])
def test_ranks_match_brute_force_with_ties(name, chunk):
    images, captions = tied_data(13, 3, 4, seed=0)
    caption, image = retrieval_ranks(images, captions, SCORES[name], k=3, chunk=chunk)
    want_caption, want_image = brute_ranks(images, captions, name, 3)
    np.testing.assert_array_equal(caption, want_caption)
    np.testing.assert_array_equal(image, want_image)
    assert len(set(want_image)) > 1 and max(want_caption) > 1  # not a trivial case


@pytest.mark.parametrize("name", ["dot", "order"])
def test_metrics_match_brute_force(name):
    images, captions = tied_data(23, 5, 3, seed=1)
    got = recall_metrics(images, captions, SCORES[name], chunk=4)
    caption, image = brute_ranks(images, captions, name, 5)
    want = brute_summary(caption, "caption") | brute_summary(image, "image")
    want["image_rsum"] = want["image_r1"] + want["image_r5"] + want["image_r10"]
    want["rsum"] = (
        want["image_rsum"] + want["caption_r1"] + want["caption_r5"] + want["caption_r10"]
    )
    assert sorted(got) == sorted(KEYS)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-12), key


@pytest.mark.parametrize("score_fn", [cosine_scores, order_scores])
def test_no_ties_matches_argsort_protocol(score_fn):
    """Continuous data: the original code's argsort positions give the same ranks."""
    rng = np.random.default_rng(2)
    images = np.abs(rng.normal(size=(17, 6)))
    captions = np.abs(images.repeat(5, axis=0) + rng.normal(size=(85, 6)))
    S = score_fn(images, captions)  # [17, 85]
    want_image = [1 + np.where(np.argsort(-S[:, c]) == c // 5)[0][0] for c in range(85)]
    want_caption = [1 + np.where(np.argsort(-S[i]) // 5 == i)[0][0] for i in range(17)]
    caption, image = retrieval_ranks(images, captions, score_fn, chunk=5)
    np.testing.assert_array_equal(caption, want_caption)
    np.testing.assert_array_equal(image, want_image)


def test_best_of_k():
    """Image 0 ranks its own captions 4th, 1st and 5th: its caption rank is 1. Image 1's best
    own caption comes 4th."""
    images = np.array([[1.0, 0.0], [0.0, 1.0]])  # dot = first / second coordinate
    captions = np.array([[0.5, 0.8], [0.9, 0.5], [0.1, 0.45], [0.7, 0.2], [0.6, 0.3], [0.0, 0.4]])
    caption, image = retrieval_ranks(images, captions, dot_scores, k=3)
    assert caption.tolist() == [1, 4]
    assert image.tolist() == [2, 1, 2, 2, 2, 1]


def test_perfect_embeddings_give_full_recall():
    n, k = 12, 5
    images = np.eye(n)  # order: each caption lies below its image and above no other image
    captions = images.repeat(k, axis=0) * np.tile(np.linspace(0.2, 1.0, k), n)[:, None]
    for score_fn in (order_scores, cosine_scores):
        got = recall_metrics(images, captions, score_fn, k=k, chunk=5)
        for d in ("caption", "image"):
            assert got[f"{d}_r1"] == 100.0 and got[f"{d}_median_rank"] == 1.0
            assert got[f"{d}_mean_rank"] == 1.0
        assert got["rsum"] == 600.0 and got["image_rsum"] == 300.0


def test_kfold_is_per_fold_and_averaged():
    images, captions = tied_data(12, 2, 3, seed=3)
    mean, folds = kfold_retrieval(images, captions, dot_scores, folds=3, fold_size=4, k=2, chunk=3)
    assert len(folds) == 3
    for f, got in enumerate(folds):
        caption, image = brute_ranks(
            images[4 * f : 4 * f + 4], captions[8 * f : 8 * f + 8], "dot", 2
        )
        want = brute_summary(caption, "caption") | brute_summary(image, "image")
        for key, value in want.items():
            assert got[key] == pytest.approx(value), (f, key)
    for key in KEYS:
        assert mean[key] == pytest.approx(np.mean([m[key] for m in folds]))
    with pytest.raises(ValueError, match="folds"):
        kfold_retrieval(images, captions, dot_scores, folds=5, fold_size=4, k=2)


@pytest.mark.parametrize("max_bytes", [1, 200, 10**9])
def test_order_scores_reference(max_bytes):
    rng = np.random.default_rng(4)
    im, s = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(11, 5)).astype(np.float32)
    want = np.array([[pair_score("order", a, b) for b in s] for a in im])
    got = order_scores(im, s, max_bytes=max_bytes)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cosine_scores_reference():
    rng = np.random.default_rng(5)
    im, s = rng.normal(size=(4, 3)), rng.normal(size=(6, 3))
    want = [[a @ b / np.linalg.norm(a) / np.linalg.norm(b) for b in s] for a in im]
    np.testing.assert_allclose(cosine_scores(im, s), want, rtol=1e-12)


def test_blocks_respect_the_memory_bound(monkeypatch):
    monkeypatch.setattr(retrieval, "SCORE_BYTES", 8 * 100)  # 100 float64 scores
    shapes = []

    def recording(im, s):
        shapes.append((len(im), len(s)))
        return dot_scores(im, s)

    images, captions = tied_data(30, 5, 3, seed=6)
    caption, image = retrieval_ranks(images, captions, recording)
    assert max(a * b for a, b in shapes) <= 150  # one query row of 150 captions is the minimum
    assert all(a * b <= 100 for a, b in shapes if a > 1)
    want_caption, want_image = brute_ranks(images, captions, "dot", 5)
    np.testing.assert_array_equal(caption, want_caption)
    np.testing.assert_array_equal(image, want_image)


def test_bad_inputs_raise():
    images, captions = tied_data(4, 5, 3, seed=7)
    with pytest.raises(ValueError, match="captions per image"):
        recall_metrics(images, captions[:-1], dot_scores)
    with pytest.raises(ValueError, match="NaN"):
        recall_metrics(images, captions, lambda im, s: np.full((len(im), len(s)), np.nan))
    with pytest.raises(ValueError, match="want \\[images, captions\\]"):
        recall_metrics(images, captions, lambda im, s: s @ im.T)
