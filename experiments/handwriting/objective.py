"""The handwriting network's loss: the NLL of each next pen point under the mixture density.

The network reads the points `x_1..x_{T-1}` of a line and predicts `x_2..x_T` (the first point,
a zero offset, only starts the sequence). A point's density is a mixture of M bivariate
Gaussians over the offset times a Bernoulli end-of-stroke (Graves 2013, Eq. 23-26), computed in
log space with a logsumexp over the components. sigma = exp(sigma_hat) and rho = tanh(rho_hat)
with `sigma_hat` and `rho_hat` clamped to `LOG_SIGMA_RANGE` and `RHO_HAT_LIMIT`, only so that a
collapsing component cannot overflow. The end-of-stroke probability is `sigmoid(e_hat)`
(Graves writes `1 / (1 + exp(e_hat))`: the same model with e_hat's sign flipped).

Padded points are excluded by the mask (`jnp.where`, which selects and never averages), and
nothing else is masked: a NaN or inf anywhere in the valid points makes the loss non-finite, so
the trainer's check stops the run (a popular reimplementation drops such terms silently).

Units: `nll` is per sequence (total NLL / number of sequences, Graves' unit, which is also the
training loss) and `nll_per_point` per predicted point. For evaluation, `metric_sums` returns
sums with `count` = number of sequences (rows with a point to predict), so
`lnorm.metrics.evaluate` gives `nll` per sequence and `points` = mean points per sequence;
`with_per_point` then adds the exact per-point average (total NLL / total points).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp

from experiments.handwriting.model import HandwritingSynthesis

Array = jax.Array

LOG_SIGMA_RANGE = (-7.0, 7.0)  # sigma within [1e-3, 1e3] std units of the offsets
RHO_HAT_LIMIT = 5.0  # |rho| <= tanh(5) = 0.99991


class Mixture(NamedTuple):
    """The output distribution of one or more points; components on the last axis."""

    eos_logit: Array  # [...]
    log_pi: Array  # [..., M]
    mu1: Array
    mu2: Array
    log_sigma1: Array
    log_sigma2: Array
    rho: Array


def mixture(y: Array, *, bias: float = 0.0) -> Mixture:
    """The distribution that outputs `y[..., 1 + 6M]` parametrise. `bias` (sampling only,
    Graves §5.4) sharpens it: weights `softmax(pi_hat * (1 + bias))`, sigmas times exp(-bias).
    In at least float32 whatever the network computes in (`train.dtype`): the NLL's
    log-softmax and logsumexp, and the points drawn from it, are float32."""
    y = y.astype(jnp.promote_types(y.dtype, jnp.float32))
    m = (y.shape[-1] - 1) // 6
    if y.shape[-1] != 1 + 6 * m:
        raise ValueError(f"expected outputs of size 1 + 6M; got {y.shape[-1]}")
    e_hat, pi_hat, mu1, mu2, s1, s2, rho_hat = jnp.split(y, [1, *range(1 + m, 6 * m + 1, m)], -1)
    log_pi = jax.nn.log_softmax(pi_hat * (1.0 + bias), axis=-1)
    s1, s2 = (jnp.clip(s, *LOG_SIGMA_RANGE) - bias for s in (s1, s2))
    rho = jnp.tanh(jnp.clip(rho_hat, -RHO_HAT_LIMIT, RHO_HAT_LIMIT))
    return Mixture(e_hat[..., 0], log_pi, mu1, mu2, s1, s2, rho)


def bivariate_normal_log_prob(
    x1: Array, x2: Array, mu1: Array, mu2: Array, log_s1: Array, log_s2: Array, rho: Array
) -> Array:
    """log N(x | mu, sigma, rho) of a bivariate normal, elementwise (Graves Eq. 24-25)."""
    z1 = (x1 - mu1) * jnp.exp(-log_s1)
    z2 = (x2 - mu2) * jnp.exp(-log_s2)
    one_minus = 1.0 - rho * rho
    quad = (z1 * z1 + z2 * z2 - 2.0 * rho * z1 * z2) / one_minus
    return -math.log(2 * math.pi) - log_s1 - log_s2 - 0.5 * jnp.log(one_minus) - 0.5 * quad


def point_nll(y: Array, target: Array) -> Array:
    """`-log p(target | y)` per point: outputs `y[..., 1 + 6M]`, `target[..., 3]`."""
    d = mixture(y)
    x1, x2, eos = target[..., :1], target[..., 1:2], target[..., 2]
    log_n = bivariate_normal_log_prob(x1, x2, d.mu1, d.mu2, d.log_sigma1, d.log_sigma2, d.rho)
    log_offset = jax.nn.logsumexp(d.log_pi + log_n, axis=-1)
    log_eos = eos * jax.nn.log_sigmoid(d.eos_logit) + (1 - eos) * jax.nn.log_sigmoid(-d.eos_logit)
    return -(log_offset + log_eos)


@jax.custom_vjp
def clip_gradient(x: Array, limit: Array | float) -> Array:
    """The identity, with the derivative w.r.t. `x` clipped to [-limit, limit] (Graves)."""
    return x


def _clip_fwd(x, limit):
    return x, limit


def _clip_bwd(limit, g):
    return jnp.clip(g, -limit, limit).astype(g.dtype), jnp.zeros_like(limit)


clip_gradient.defvjp(_clip_fwd, _clip_bwd)


def _nll_sums(model: HandwritingSynthesis, batch: Mapping[str, Array]) -> dict[str, Array]:
    """Summed NLL, number of predicted points and number of sequences of a batch."""
    strokes, mask = jnp.asarray(batch["strokes"]), jnp.asarray(batch["strokes_mask"], bool)
    target_mask = mask[:, 1:]  # point t+1 is predicted from point t; both must be real
    num_sequences = jnp.sum(jnp.any(target_mask, axis=1))  # padding rows are no sequences
    y = model(strokes[:, :-1], batch["chars"], mask=target_mask, chars_mask=batch["chars_mask"])
    if model.output_grad_clip is not None:  # Graves' bound on d(NLL of one sequence)/dy
        y = clip_gradient(y, model.output_grad_clip / jnp.maximum(num_sequences, 1.0))
    nll = jnp.where(target_mask, point_nll(y, strokes[:, 1:]), 0.0)
    return {
        "nll": jnp.sum(nll),
        "points": jnp.sum(target_mask).astype(jnp.float32),
        "count": num_sequences.astype(jnp.float32),
    }


def loss_fn(
    model: HandwritingSynthesis, batch: Mapping[str, Array], rng: Array
) -> tuple[Array, dict[str, Array]]:
    """The batch's NLL per sequence (the training loss) and, as metrics, per sequence and per
    point."""
    del rng
    sums = _nll_sums(model, batch)
    loss = sums["nll"] / jnp.maximum(sums["count"], 1.0)
    return loss, {"nll": loss, "nll_per_point": sums["nll"] / jnp.maximum(sums["points"], 1.0)}


def metric_sums(model: HandwritingSynthesis, batch: Mapping[str, Array]) -> dict[str, Array]:
    """`nll` (summed) and `points` with `count` = sequences; see `with_per_point`."""
    return _nll_sums(model, batch)


def with_per_point(means: Mapping[str, float]) -> dict[str, float]:
    """`lnorm.metrics.evaluate(model, metric_sums, ...)`'s averages plus `nll_per_point`:
    (total NLL / sequences) / (total points / sequences) = total NLL / total points."""
    return {**means, "nll_per_point": means["nll"] / means["points"]}
