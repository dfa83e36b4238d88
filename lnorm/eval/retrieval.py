"""Image-caption retrieval metrics (order embeddings, Vendrov et al. 2016), numpy on the host.

The protocol (docs/paper.md §4.1, §6.1): N images with k captions each, caption `j`
describing image `j // k`. Caption retrieval (image -> text) ranks every caption for each image,
and the image's rank is that of its best-ranked own caption; image retrieval (text -> image)
ranks every image for each caption. R@K is the percentage of queries ranked K or better; ranks
are 1-based; the median rank is `floor(median)` as in the order-embedding evaluation code.

Ties: a rank is 1 + the number of candidates scored strictly higher than the true one, so a tie
never counts against the query and the result does not depend on a sort's tie order (the
original's argsort gives the same ranks when there are no ties).

Memory: scores are computed block by block, `chunk` queries against all candidates at a time
(by default as many as fit in `SCORE_BYTES`). Each direction makes its own pass, so every
comparison is between scores of the same block: ranks are exact even when a score function's
rounding depends on the block's shape (BLAS), at the price of computing every score twice.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

ScoreFn = Callable[[np.ndarray, np.ndarray], np.ndarray]
"""`score_fn(im [a, D], s [b, D]) -> [a, b]`, higher = better match of image and caption."""

SCORE_BYTES = 64 * 2**20
RECALL_AT = (1, 5, 10)


def cosine_scores(im: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Cosine similarity `[len(im), len(s)]`: the dot product of the rows scaled to unit norm
    (rows of zeros stay zero)."""
    return _unit(im) @ _unit(s).T


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1)


def order_scores(im: np.ndarray, s: np.ndarray, *, max_bytes: int = SCORE_BYTES) -> np.ndarray:
    """Negative order-violation energy `-||max(0, s - im)||^2`, `[len(im), len(s)]`.

    Not a dot product: it needs the `[a, b, D]` differences, built in blocks of at most
    `max_bytes` so that a large caption set never materialises them all.
    """
    im, s = np.asarray(im), np.asarray(s)
    if im.ndim != 2 or s.ndim != 2 or im.shape[1] != s.shape[1]:
        raise ValueError(f"order_scores: want [a, D] and [b, D], got {im.shape} and {s.shape}")
    dtype = np.result_type(im, s, np.float32)
    per_pair = max(1, im.shape[1]) * dtype.itemsize
    cols = max(1, min(len(s), max_bytes // per_pair))
    rows = max(1, max_bytes // (cols * per_pair))
    out = np.empty((len(im), len(s)), dtype)
    for a in range(0, len(im), rows):
        for b in range(0, len(s), cols):
            diff = np.subtract(s[None, b : b + cols], im[a : a + rows, None], dtype=dtype)
            np.maximum(diff, 0, out=diff)
            out[a : a + rows, b : b + cols] = -np.einsum("rcd,rcd->rc", diff, diff)
    return out


def retrieval_ranks(
    images: np.ndarray,
    captions: np.ndarray,
    score_fn: ScoreFn = cosine_scores,
    *,
    k: int = 5,
    chunk: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """1-based ranks `(caption_ranks [N], image_ranks [N * k])`: per image, the rank of its
    best own caption among all captions; per caption, the rank of its image among all images.
    `chunk` is the number of queries scored at once (default: a block fits `SCORE_BYTES`)."""
    images, captions = np.asarray(images), np.asarray(captions)
    if images.ndim != 2 or captions.ndim != 2 or images.shape[1] != captions.shape[1]:
        raise ValueError(
            f"want images [N, D] and captions [N * k, D], got {images.shape} and {captions.shape}"
        )
    n_im, n_cap = len(images), len(captions)
    if k < 1 or n_im == 0 or n_cap != n_im * k:
        raise ValueError(f"{n_cap} captions for {n_im} images: want {k} captions per image")
    if chunk is not None and chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    itemsize = np.result_type(images, captions, np.float32).itemsize

    def rows_per_block(candidates: int) -> int:
        return chunk or max(1, SCORE_BYTES // (candidates * itemsize))

    caption_ranks = np.empty(n_im, np.int64)
    step = rows_per_block(n_cap)
    for a in range(0, n_im, step):
        b = min(a + step, n_im)
        block = _scores(score_fn, images[a:b], captions)  # [b - a, n_cap]
        own = block.reshape(b - a, n_im, k)[np.arange(b - a), np.arange(a, b)]
        # The best-ranked own caption's rank: 1 + captions strictly above the best own score.
        caption_ranks[a:b] = 1 + (block > own.max(axis=1, keepdims=True)).sum(axis=1)

    image_ranks = np.empty(n_cap, np.int64)
    step = rows_per_block(n_im)
    for a in range(0, n_cap, step):
        b = min(a + step, n_cap)
        block = _scores(score_fn, images, captions[a:b])  # [n_im, b - a]
        true = block[np.arange(a, b) // k, np.arange(b - a)]
        image_ranks[a:b] = 1 + (block > true).sum(axis=0)
    return caption_ranks, image_ranks


def _scores(score_fn: ScoreFn, im: np.ndarray, s: np.ndarray) -> np.ndarray:
    block = np.asarray(score_fn(im, s))
    if block.shape != (len(im), len(s)):
        raise ValueError(
            f"score_fn returned {block.shape} for {len(im)} images and {len(s)} captions; "
            f"want [images, captions]"
        )
    if np.isnan(block).any():
        raise ValueError("score_fn returned NaN scores: ranks would be meaningless")
    return block


def rank_summary(ranks: np.ndarray, prefix: str) -> dict[str, float]:
    """`{prefix}_r1/_r5/_r10` (percent), `{prefix}_median_rank`, `{prefix}_mean_rank`."""
    ranks = np.asarray(ranks)
    out = {f"{prefix}_r{n}": 100.0 * float(np.mean(ranks <= n)) for n in RECALL_AT}
    out[f"{prefix}_median_rank"] = float(np.floor(np.median(ranks)))
    out[f"{prefix}_mean_rank"] = float(np.mean(ranks))
    return out


def recall_metrics(
    images: np.ndarray,
    captions: np.ndarray,
    score_fn: ScoreFn = cosine_scores,
    *,
    k: int = 5,
    chunk: int | None = None,
) -> dict[str, float]:
    """Both directions' recalls and ranks: `caption_*` (image -> text, best of the k captions),
    `image_*` (text -> image), `rsum` (the six recalls) and `image_rsum` (text -> image
    R@1 + R@5 + R@10, the order-embedding code's validation criterion)."""
    caption_ranks, image_ranks = retrieval_ranks(images, captions, score_fn, k=k, chunk=chunk)
    out = rank_summary(caption_ranks, "caption") | rank_summary(image_ranks, "image")
    out["image_rsum"] = sum(out[f"image_r{n}"] for n in RECALL_AT)
    out["rsum"] = out["image_rsum"] + sum(out[f"caption_r{n}"] for n in RECALL_AT)
    return out


def kfold_retrieval(
    images: np.ndarray,
    captions: np.ndarray,
    score_fn: ScoreFn = cosine_scores,
    *,
    folds: int = 5,
    fold_size: int = 1000,
    k: int = 5,
    chunk: int | None = None,
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The 5-fold 1k-image test protocol: fold `f` is images `[f * fold_size, (f + 1) *
    fold_size)` with their captions, retrieval within the fold only. Returns `(mean over folds
    of every `recall_metrics` key, the per-fold dicts)`."""
    n = folds * fold_size
    if folds < 1 or fold_size < 1 or len(images) != n or len(captions) != n * k:
        raise ValueError(
            f"{len(images)} images and {len(captions)} captions cannot be cut into {folds} "
            f"folds of {fold_size} images with {k} captions each; pass exactly that many"
        )
    per_fold = [
        recall_metrics(
            images[f * fold_size : (f + 1) * fold_size],
            captions[f * fold_size * k : (f + 1) * fold_size * k],
            score_fn,
            k=k,
            chunk=chunk,
        )
        for f in range(folds)
    ]
    mean = {key: float(np.mean([m[key] for m in per_fold])) for key in per_fold[0]}
    return mean, per_fold
