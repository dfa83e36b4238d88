"""The order-embedding objective: order-violation energy and the in-batch contrastive hinge.

Energy (docs/paper.md §6.1): `E(s, im) = ||max(0, s - im)||^2`, zero exactly when
the image embedding dominates the caption's in every coordinate (the image is the more specific
of the two, below the caption in the reversed product order). The cosine baseline's error is
`-s . im`. For a batch whose pair `k` is (caption `s_k`, image `im_k`), with `E_ij = E(s_i, im_j)`:

    hinge_caption = sum_{i != j} max(0, margin + E_jj - E_ij)  # image j against other captions
    hinge_image   = sum_{i != j} max(0, margin + E_ii - E_ij)  # caption i against other images
    loss = hinge_caption + hinge_image

summed over the batch as the original does (not averaged: the loss grows with the batch size
squared). Pairs showing the same image (`image_index`) are not negatives of each other: the
original's batches never have any, since it draws one caption per image.

Retrieval ranks with `-E` (higher is better): `lnorm.eval.retrieval.order_scores`, or its
`cosine_scores` for the baseline, on the embeddings of `embed_images` / `embed_captions`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from experiments.order_embeddings.model import OrderEmbedding

Array = jax.Array


def order_energy(captions: Array, images: Array) -> Array:
    """`E[i, j] = ||max(0, captions[i] - images[j])||^2`, shape `[captions, images]`."""
    return jnp.sum(jnp.square(jnp.maximum(captions[:, None, :] - images[None, :, :], 0.0)), -1)


def errors(captions: Array, images: Array, method: str) -> Array:
    """The `[captions, images]` error matrix: order energy, or minus the cosine similarity
    (the embeddings are unit vectors)."""
    if method == "order":
        return order_energy(captions, images)
    if method == "cosine":
        return -(captions @ images.T)
    raise ValueError(f"method={method!r}: expected 'order' or 'cosine'")


def contrastive_hinge(errs: Array, margin: float, negatives: Array) -> tuple[Array, Array]:
    """`(hinge_caption, hinge_image)` summed over the `negatives[i, j]` pairs of a square error
    matrix whose diagonal holds the true pairs (see the module docstring)."""
    positive = jnp.diagonal(errs)
    caption_terms = jnp.maximum(margin + positive[None, :] - errs, 0.0)
    image_terms = jnp.maximum(margin + positive[:, None] - errs, 0.0)
    return jnp.sum(caption_terms * negatives), jnp.sum(image_terms * negatives)


def negative_pairs(batch: dict) -> Array:
    """`[B, B]` mask of the pairs that count as negatives: different images (by `image_index`
    where the batch has it, else every off-diagonal pair)."""
    if "image_index" in batch:
        index = jnp.asarray(batch["image_index"])
        return index[:, None] != index[None, :]
    size = len(batch["image"])
    return ~jnp.eye(size, dtype=bool)


def embed_images(model: OrderEmbedding, features: Array) -> Array:
    """`[N, dim]` image embeddings of `[N, feature_dim]` features (evaluation, batch-wise)."""
    return model.embed_images(features)


def embed_captions(model: OrderEmbedding, tokens: Array, lengths: Array) -> Array:
    """`[N, dim]` caption embeddings of padded `tokens [N, L]` with `lengths [N]`."""
    return model.embed_captions(tokens, lengths)


def _hinges(model: OrderEmbedding, batch: dict) -> tuple[Array, Array, Array]:
    captions, images = model(batch["image"], batch["caption"], batch["caption_length"])
    errs = errors(captions, images, model.method)
    hinge_caption, hinge_image = contrastive_hinge(errs, model.margin, negative_pairs(batch))
    return hinge_caption, hinge_image, jnp.mean(jnp.diagonal(errs))


def loss_fn(model: OrderEmbedding, batch: dict, rng: Array) -> tuple[Array, dict[str, Array]]:
    """The summed contrastive loss of a batch of (caption, image) pairs; metrics: both hinge
    terms and the mean error of the true pairs (`positive_error`)."""
    del rng  # deterministic model
    hinge_caption, hinge_image, positive = _hinges(model, batch)
    metrics = {
        "hinge_caption": hinge_caption,
        "hinge_image": hinge_image,
        "positive_error": positive,
    }
    return hinge_caption + hinge_image, metrics


def metric_sums(model: OrderEmbedding, batch: dict) -> dict[str, Array]:
    """Both hinge terms of the batch and its size: averaged by the count, they are per-pair
    values, comparable between runs with the same evaluation batch size only."""
    hinge_caption, hinge_image, _ = _hinges(model, batch)
    count = jnp.asarray(len(batch["image"]), jnp.float32)
    return {"hinge_caption": hinge_caption, "hinge_image": hinge_image, "count": count}


__all__ = [
    "contrastive_hinge",
    "embed_captions",
    "embed_images",
    "errors",
    "loss_fn",
    "metric_sums",
    "negative_pairs",
    "order_energy",
]
