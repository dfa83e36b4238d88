"""pmnist's loss and evaluation sums: softmax cross-entropy (NLL) and classification error."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from experiments.pmnist.model import MLP


def loss_fn(model: MLP, batch: dict, rng: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    del rng
    logits = model(batch["image"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    error = jnp.mean(jnp.argmax(logits, -1) != batch["label"])
    return nll, {"nll": nll, "error": error}  # logged as train/nll, train/error


def metric_sums(model: MLP, batch: dict) -> dict[str, jax.Array]:
    logits = model(batch["image"])
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
    return {
        "nll": nll.sum(),
        "error": jnp.sum(jnp.argmax(logits, -1) != batch["label"]),
        "count": jnp.asarray(batch["label"].shape[0], jnp.float32),
    }
