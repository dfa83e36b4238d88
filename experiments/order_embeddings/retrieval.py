"""Retrieval evaluation of order embeddings: embeddings of a split, jitted memory-bounded score
functions, the validation metrics and the 5-fold 1k test protocol with a Table-2-shaped table.

Ranks and recalls are the platform's (`lnorm.eval.retrieval`): caption retrieval (`caption_*`)
ranks the captions for each image, its rank being that of its best own caption; image retrieval
(`image_*`) ranks the images for each caption. The scores come from jitted JAX functions:
numpy's order scores take ~15 s per 1k-image fold, too slow for a validation every 300 updates.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.order_embeddings.model import OrderEmbedding, l2_normalize
from lnorm.data.coco import CAPTION_BUCKETS
from lnorm.data.pipeline import bucket_length
from lnorm.eval.retrieval import RECALL_AT, ScoreFn, kfold_retrieval, recall_metrics

SCORE_BLOCK_BYTES = 1 << 25  # the [rows, captions, dim] differences of one order-score block
# Table 2 of the paper (docs/paper.md §4.1): test, mean over 5 folds of 1k images.
PAPER_TABLE2 = {
    "paper: order embeddings (GRU)": (46.6, 79.3, 89.1, 5.2, 37.8, 73.6, 85.7, 7.9),
    "paper: order embeddings + LN": (48.5, 80.6, 89.8, 5.1, 38.9, 74.3, 86.3, 7.6),
}
TABLE2_KEYS = tuple(f"{side}_{m}" for side in ("caption", "image")
                    for m in (*(f"r{k}" for k in RECALL_AT), "mean_rank"))


@functools.partial(jax.jit, static_argnames="rows")
def _order_scores(im: jax.Array, s: jax.Array, rows: int) -> jax.Array:
    def one_image(row: jax.Array) -> jax.Array:
        return -jnp.sum(jnp.square(jnp.maximum(s - row, 0.0)), axis=-1)

    return jax.lax.map(one_image, im, batch_size=rows)


@jax.jit
def _cosine_scores(im: jax.Array, s: jax.Array) -> jax.Array:
    return l2_normalize(im) @ l2_normalize(s).T


def order_scores(im: np.ndarray, s: np.ndarray) -> np.ndarray:
    """`-||max(0, s - im)||^2`, `[len(im), len(s)]`, as `lnorm.eval.retrieval.order_scores`
    but jitted, `rows` images at a time so that their differences stay within
    `SCORE_BLOCK_BYTES`."""
    rows = max(1, min(len(im), SCORE_BLOCK_BYTES // max(1, 4 * s.shape[0] * s.shape[1])))
    return np.asarray(_order_scores(jnp.asarray(im), jnp.asarray(s), rows=rows))


def cosine_scores(im: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Cosine similarity `[len(im), len(s)]`, jitted."""
    return np.asarray(_cosine_scores(jnp.asarray(im), jnp.asarray(s)))


SCORES: dict[str, ScoreFn] = {"order": order_scores, "cosine": cosine_scores}


@functools.partial(jax.jit, static_argnums=0)
def _embed_captions(graphdef: nnx.GraphDef, state: nnx.State, tokens: jax.Array,
                    lengths: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).embed_captions(tokens, lengths)


@functools.partial(jax.jit, static_argnums=0)
def _embed_images(graphdef: nnx.GraphDef, state: nnx.State, features: jax.Array) -> jax.Array:
    return nnx.merge(graphdef, state).embed_images(features)


def embed(model: OrderEmbedding, arrays: Mapping[str, np.ndarray], *,
          batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """`(images [N, dim], captions [5N, dim])` of `lnorm.data.coco.split_arrays` output, in
    batches of `batch_size`. Captions go shortest first, each batch padded to the bucket of its
    longest (`CAPTION_BUCKETS`), so a few long captions do not make every batch long."""
    graphdef, state = nnx.split(model)
    features = arrays["image"]
    images = np.concatenate([
        np.asarray(_embed_images(graphdef, state, jnp.asarray(features[lo : lo + batch_size])))
        for lo in range(0, len(features), batch_size)])
    tokens, lengths = arrays["caption"], np.asarray(arrays["caption_length"])
    captions = np.empty((len(tokens), images.shape[1]), np.float32)
    order = np.argsort(lengths, kind="stable")
    for lo in range(0, len(order), batch_size):
        idx = order[lo : lo + batch_size]
        width = bucket_length(int(lengths[idx].max()), CAPTION_BUCKETS)
        batch = np.zeros((len(idx), width), np.int32)
        kept = min(width, tokens.shape[1])
        batch[:, :kept] = tokens[idx, :kept]
        captions[idx] = np.asarray(
            _embed_captions(graphdef, state, jnp.asarray(batch), jnp.asarray(lengths[idx])))
    return images, captions


def retrieval_metrics(model: OrderEmbedding, arrays: Mapping[str, np.ndarray], *,
                      batch_size: int) -> dict[str, float]:
    """Both directions' R@1/5/10 and median and mean ranks on one set of images with five
    captions each, `rsum` (the six recalls) and `image_rsum` (text-to-image R@1+R@5+R@10, the
    original's validation criterion)."""
    images, captions = embed(model, arrays, batch_size=batch_size)
    return recall_metrics(images, captions, SCORES[model.method])


def kfold_metrics(model: OrderEmbedding, arrays: Mapping[str, np.ndarray], *, folds: int,
                  fold_size: int, batch_size: int
                  ) -> tuple[dict[str, float], list[dict[str, float]]]:
    """The k-fold test protocol (`kfold_retrieval`) on the first `folds * fold_size` images:
    the mean over folds of every metric, and the per-fold values."""
    images, captions = embed(model, arrays, batch_size=batch_size)
    return kfold_retrieval(images, captions, SCORES[model.method], folds=folds,
                           fold_size=fold_size)


def table2(results: Mapping[str, float], *, label: str, note: str,
           per_fold: list[Mapping[str, float]] | None = None) -> str:
    """A Markdown table shaped like the paper's Table 2 (R@1, R@5, R@10, mean rank of caption
    and image retrieval), the paper's two rows above this run's `results` (keys as
    `recall_metrics`', the mean over folds, with the spread over folds when given)."""
    head = ("| model | caption R@1 | R@5 | R@10 | mean r | image R@1 | R@5 | R@10 | mean r |\n"
            "|---|---|---|---|---|---|---|---|---|")
    rows = [f"| {name} | " + " | ".join(f"{v:.1f}" for v in values) + " |"
            for name, values in PAPER_TABLE2.items()]
    ours = [f"{results[k]:.1f}" for k in TABLE2_KEYS]
    if per_fold and len(per_fold) > 1:
        ours = [f"{v} ± {np.std([f[k] for f in per_fold]):.1f}"
                for v, k in zip(ours, TABLE2_KEYS, strict=True)]
    rows.append(f"| {label} | " + " | ".join(ours) + " |")
    return "\n".join([head, *rows, "", note, ""])

