"""The attentive reader's loss and metrics: the answer's negative log-likelihood under the
softmax over the output classes, and the error rate of its argmax (docs/paper.md, §6.2).

Batches are those of `lnorm.data.cnn_qa.make_pipeline`: `context`, `context_mask`, `query`,
`query_mask`, `answer` (entity number) and `candidate_mask` (used by `answer_mask="candidates"`).
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from experiments.attentive_reader.model import AttentiveReader

Array = jax.Array


def nll_and_error(logits: Array, target: Array) -> tuple[Array, Array]:
    """Per-example `-log softmax(logits)[target]` and `argmax(logits) != target` (as float)."""
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, target[:, None], axis=-1)[:, 0]
    error = (jnp.argmax(logits, axis=-1) != target).astype(jnp.float32)
    return nll, error


def _per_example(
    model: AttentiveReader, batch: Mapping[str, Array], rng: Array | None
) -> tuple[Array, Array]:
    logits = model(batch, rng).logits.astype(jnp.float32)  # the NLL in float32 (train.dtype)
    return nll_and_error(logits, model.answer_class(jnp.asarray(batch["answer"])))


def loss_fn(
    model: AttentiveReader, batch: Mapping[str, Array], rng: Array
) -> tuple[Array, dict[str, Array]]:
    """Mean NLL over the batch (dropout from `rng` in train mode); metrics `nll`, `error`."""
    nll, error = _per_example(model, batch, rng)
    loss = jnp.mean(nll)
    return loss, {"nll": loss, "error": jnp.mean(error)}


def metric_sums(model: AttentiveReader, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Sums of `nll` and `error` over the batch and its `count` (no dropout)."""
    nll, error = _per_example(model, batch, None)
    return {"nll": jnp.sum(nll), "error": jnp.sum(error), "count": jnp.asarray(nll.shape[0])}


def attention_weights(model: AttentiveReader, batch: Mapping[str, Array]) -> Array:
    """The attention over the document steps `[B, T_doc]` (no dropout; zero on padding)."""
    return model(batch).attention


__all__ = ["attention_weights", "loss_fn", "metric_sums", "nll_and_error"]
