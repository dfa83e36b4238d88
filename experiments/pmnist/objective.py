"""pmnist's loss and evaluation sums: softmax cross-entropy (NLL) and classification error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from experiments.pmnist.model import MLP


def _logits(model: MLP, batch: dict) -> jax.Array:
    """The class logits in float32 whatever the model computes in (`train.dtype`): the loss and
    its log-softmax are float32."""
    return model(batch["image"]).astype(jnp.float32)


def loss_fn(model: MLP, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng
    logits = _logits(model, batch)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    error = jnp.mean(jnp.argmax(logits, -1) != batch["label"])
    return nll, {"nll": nll, "error": error}  # logged as train/nll, train/error


def metric_sums(model: MLP, batch: dict) -> dict[str, jax.Array]:
    logits = _logits(model, batch)
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "nll": nll.sum(),
        "error": jnp.sum(jnp.argmax(logits, -1) != batch["label"]),
        "count": jnp.asarray(batch["label"].shape[0], jnp.float32),
    }
