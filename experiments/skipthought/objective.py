"""The skip-thoughts cost and its metrics.

The authors' cost (`training/model.py`) is the summed token NLL of the previous-sentence decoder
plus that of the next-sentence decoder, SUMMED over the batch (not averaged), and the gradient of
that sum is clipped to global norm 5. `loss_fn` returns exactly that sum, so that the clipping
acts as in the original. The targets are each sentence's words and its `<eos>`; the mask is
built from the `_length` fields. The logged metric is the NLL per target word (nats), which
does not depend on the batch size or sentence lengths.

`metric_sums` is for `lnorm.metrics.evaluate`, which divides every sum by `count`: `count` is
the number of target words, so `nll_per_word` and `accuracy` average exactly per word over a
whole validation set. It also measures how much the decoders use the sentence vector (the NLL
with the vectors of other sentences, `nll_per_word_shuffled`): early in training the decoders
are language models that may ignore it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from experiments.skipthought.model import SkipThoughts

Array = jax.Array


def _sums(model: SkipThoughts, batch: dict, context: Array | None = None) -> dict[str, Array]:
    """Total NLL, number of target words and of correctly predicted ones over both decoders,
    given the sentence vectors `context` (default: the encoder's, i.e. `model(batch)`)."""
    if context is None:
        context = model.encode(batch["cur"], batch["cur_length"])
    sums = {"nll": 0.0, "words": 0.0, "correct": 0.0}
    for decoder, field in ((model.decoder_prev, "prev"), (model.decoder_next, "next")):
        targets = batch[field]
        # float32 logits whatever the model computes in (train.dtype): the NLL is float32
        logits = model.decode(decoder, context, targets, batch[f"{field}_length"]).astype(
            jnp.float32)
        mask = jnp.arange(targets.shape[1]) < batch[f"{field}_length"][:, None]
        nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
        sums["nll"] += jnp.sum(jnp.where(mask, nll, 0.0))
        sums["words"] += jnp.sum(mask)
        sums["correct"] += jnp.sum(mask & (jnp.argmax(logits, -1) == targets))
    return sums


def loss_fn(model: SkipThoughts, batch: dict, rng: Array) -> tuple[Array, dict[str, Array]]:
    """The authors' cost (summed over the batch) and, per word and per triple, its means."""
    del rng  # the model is deterministic
    s = _sums(model, batch)
    words = jnp.maximum(s["words"], 1.0)
    return s["nll"], {
        "nll_per_word": s["nll"] / words,
        "nll_per_triple": s["nll"] / batch["cur"].shape[0],
        "accuracy": s["correct"] / words,
    }


def metric_sums(model: SkipThoughts, batch: dict) -> dict[str, Array]:
    """Sums over the batch with `count` = target words: averages are per word.

    `nll_per_word_shuffled` is the NLL when each triple's decoders get the sentence vector of
    another triple of the batch (rolled by one): its gap to `nll_per_word` is what the sentence
    vector tells the decoders, zero for an encoder whose vectors carry nothing they use."""
    context = model.encode(batch["cur"], batch["cur_length"])
    s = _sums(model, batch, context)
    shuffled = _sums(model, batch, jnp.roll(context, 1, axis=0))
    return {"nll_per_word": s["nll"], "accuracy": s["correct"],
            "nll_per_word_shuffled": shuffled["nll"], "count": s["words"]}


__all__ = ["loss_fn", "metric_sums"]
