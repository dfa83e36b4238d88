"""DRAW's negative variational bound in nats (Gregor et al. 2015, Eq. 9-12; docs/paper.md §6.4).

`bound = reconstruction + kl` per image: the Bernoulli negative log-likelihood of the image
under `sigmoid(c_T)` (binary cross-entropy from the logits, summed over pixels) plus the
analytic KL of every glimpse's posterior from the N(0, I) prior, summed over glimpses and
latent units; averaged over the batch (jbornschein/draw's `nll_bound`).

Training draws the noise from the step's rng. Evaluation (`metric_sums`, `importance_weighted_
sums`) needs noise too and must be deterministic: each image's noise comes from a key derived
from the image's own pixels (`example_keys`), so a result does not depend on the batch size,
the order, or which other images share the batch, and the same checkpoint always scores the
same.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from experiments.draw.model import DRAW

Array = jax.Array
EVAL_SEED = 0


def bernoulli_nll(logits: Array, x: Array) -> Array:
    """`-sum [x log sigmoid(l) + (1 - x) log(1 - sigmoid(l))]` over all axes but the first,
    computed stably as `softplus(l) - x l`."""
    nll = jax.nn.softplus(logits) - x * logits
    return jnp.sum(nll.reshape(nll.shape[0], -1), axis=-1)


def _images(model: DRAW, batch: dict) -> Array:
    """`batch["image"]` as float32 `[B, H, W]` (a flat `[B, H * W]` is reshaped)."""
    x = jnp.asarray(batch["image"], jnp.float32)
    if x.ndim == 2:
        x = x.reshape(x.shape[0], *model.image_shape)
    return x


def _terms(model: DRAW, x: Array, eps: Array) -> tuple[Array, Array]:
    """Per-image `(reconstruction, kl)`, each `[B]`."""
    out = model(x, eps)
    return bernoulli_nll(out.logits, x), jnp.sum(out.kl, axis=0)


def loss_fn(model: DRAW, batch: dict, rng: Array) -> tuple[Array, dict[str, Array]]:
    """The batch-mean bound (the training loss) and its parts, with fresh noise from `rng`."""
    x = _images(model, batch)
    rec, kl = _terms(model, x, model.noise(rng, x.shape[0]))
    bound = jnp.mean(rec + kl)
    return bound, {"bound": bound, "reconstruction": jnp.mean(rec), "kl": jnp.mean(kl)}


def example_keys(images: Array, seed: int = EVAL_SEED) -> Array:
    """One PRNG key per image, a function of its pixels only (a random linear hash of the
    pixels thresholded at 0.5, folded into `key(seed)`)."""
    bits = (images.reshape(images.shape[0], -1) > 0.5).astype(jnp.uint32)
    weights = np.random.default_rng(seed).integers(0, 2**32, size=bits.shape[-1], dtype=np.uint32)
    hashes = jnp.sum(bits * weights, axis=-1, dtype=jnp.uint32)  # wraps modulo 2^32
    base = jax.random.key(seed)
    return jax.vmap(lambda h: jax.random.fold_in(base, h))(hashes)


def example_noise(model: DRAW, x: Array, draws: int) -> Array:
    """`eps[draws, T, B, Z]`, each image's from its own key (`example_keys`)."""
    shape = (draws, model.glimpses, model.latent)
    eps = jax.vmap(lambda k: jax.random.normal(k, shape))(example_keys(x))  # [B, k, T, Z]
    return eps.transpose(1, 2, 0, 3)


def metric_sums(model: DRAW, batch: dict) -> dict[str, Array]:
    """Sums over the batch of the bound and its parts, and the `count`; deterministic (one
    noise sample per image from `example_keys`)."""
    x = _images(model, batch)
    rec, kl = _terms(model, x, example_noise(model, x, 1)[0])
    return {
        "bound": jnp.sum(rec + kl),
        "reconstruction": jnp.sum(rec),
        "kl": jnp.sum(kl),
        "count": jnp.asarray(x.shape[0], jnp.float32),
    }


def importance_weighted_sums(model: DRAW, batch: dict, *, k: int) -> dict[str, Array]:
    """`{"iwae_bound": sum over images, "count"}`: the importance-weighted bound (Burda et al.
    2016) `-log (1/k) sum_j p(x, z_j) / q(z_j | x)` with k posterior samples per image, in
    nats; never above the variational bound in expectation, equal to it in expectation at
    k = 1 (save for the KL being sampled instead of analytic). Deterministic like
    `metric_sums`; runs the k samples as one batch of k B images."""
    x = _images(model, batch)
    batch_size = x.shape[0]
    eps = example_noise(model, x, k)  # [k, T, B, Z]
    eps = eps.transpose(1, 0, 2, 3).reshape(model.glimpses, k * batch_size, model.latent)
    x_rep = jnp.tile(x, (k, 1, 1))  # row j * B + b is image b
    out = model(x_rep, eps)
    log_w = -bernoulli_nll(out.logits, x_rep) + jnp.sum(out.log_ratio, axis=0)
    log_w = log_w.reshape(k, batch_size)
    bound = math.log(k) - jax.nn.logsumexp(log_w, axis=0)
    return {"iwae_bound": jnp.sum(bound), "count": jnp.asarray(batch_size, jnp.float32)}
