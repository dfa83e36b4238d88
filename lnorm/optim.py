"""Optimisers, learning-rate schedules and gradient clipping, all built from optax.

The paper trains every experiment with Adam; the experiments differ in their gradient clipping:
a global norm (skip-thoughts, attentive reader), each tensor's own norm (Vendrov et al.'s order
embeddings clip every parameter's gradient separately) or element-wise values (Graves'
handwriting network). The schedule is a plain function of the 0-based step, so the trainer can
log the rate a step used without reading optimiser state.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import optax

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("constant", "cosine", "linear", "exponential")


@dataclass
class OptimConfig:
    """Optimiser `name` at `learning_rate` (the peak rate of a schedule), after clipping.

    Schedules (`schedule`), all after `warmup_steps` of linear warm-up from 0:
    `constant`; `cosine` and `linear` decay to `final_lr_fraction * learning_rate` at
    `decay_steps` (default: the end of the run); `exponential` multiplies the rate by
    `decay_rate` every `transition_steps` steps. Clipping, applied in this order before the
    optimiser: `grad_clip_value` (element-wise, Graves), `grad_clip_tensor_norm` (each tensor's
    norm, Vendrov et al.), `grad_clip_norm` (the global norm, the paper's "grad clip").
    `weight_decay` is decoupled for adamw and an L2 term for adam/sgd.
    """

    name: str = "adam"
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: float = 0.0  # sgd only
    grad_clip_norm: float | None = None
    grad_clip_tensor_norm: float | None = None
    grad_clip_value: float | None = None
    schedule: str = "constant"
    warmup_steps: int = 0
    decay_steps: int | None = None  # cosine / linear; None: the run's total steps
    final_lr_fraction: float = 0.0  # cosine / linear: end rate / peak rate
    decay_rate: float = 0.1  # exponential
    transition_steps: int = 1000  # exponential

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise ValueError(f"optim.name={self.name!r}: expected one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"optim.schedule={self.schedule!r}: expected one of {SCHEDULES}")
        if not self.learning_rate > 0:
            raise ValueError(f"optim.learning_rate={self.learning_rate!r}: expected > 0")
        for key in ("grad_clip_norm", "grad_clip_tensor_norm", "grad_clip_value"):
            value = getattr(self, key)
            if value is not None and not value > 0:
                raise ValueError(f"optim.{key}={value!r}: expected a positive number or null")
        if self.warmup_steps < 0 or self.transition_steps < 1:
            raise ValueError(f"optim.warmup_steps={self.warmup_steps}, optim.transition_steps="
                             f"{self.transition_steps}: expected >= 0 and >= 1")


def learning_rate_schedule(cfg: OptimConfig, total_steps: int) -> optax.Schedule:
    """The rate as a function of the 0-based step index (optax's update count)."""
    peak, warmup = cfg.learning_rate, cfg.warmup_steps
    if cfg.schedule == "constant":
        main = optax.constant_schedule(peak)
    elif cfg.schedule == "exponential":
        main = optax.exponential_decay(peak, cfg.transition_steps, cfg.decay_rate)
    else:
        decay = (cfg.decay_steps or total_steps) - warmup
        if decay < 1:
            raise ValueError(f"optim.decay_steps={cfg.decay_steps} (run of {total_steps} steps): "
                             f"the {cfg.schedule} decay needs steps after the {warmup} warm-up "
                             "steps")
        end = peak * cfg.final_lr_fraction
        main = (optax.cosine_decay_schedule(peak, decay, alpha=cfg.final_lr_fraction)
                if cfg.schedule == "cosine" else optax.linear_schedule(peak, end, decay))
    if not warmup:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), main], [warmup])


def schedule_length(cfg: OptimConfig, total_steps: int) -> int:
    """The run length the optimiser depends on: `total_steps` only for a cosine or linear decay
    that ends with the run, else 1. Compiled steps are cached on it, so runs of other lengths
    (a sweep, a resume with more steps, a benchmark's warm-up) reuse one compilation."""
    decays_to_end = cfg.schedule in ("cosine", "linear") and cfg.decay_steps is None
    return total_steps if decays_to_end else 1


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """Rescales each gradient tensor whose L2 norm exceeds `max_norm` to that norm (the order-
    embedding code's per-parameter clipping; not the global norm)."""

    def update(updates, state, params=None):
        del params

        def clip(g):
            norm = jnp.sqrt(jnp.sum(jnp.square(g)))
            return g * jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))

        return jax.tree.map(clip, updates), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(cfg: OptimConfig, total_steps: int = 1) -> optax.GradientTransformation:
    """The optax chain for `cfg` over a run of `total_steps`: clipping, weight decay (L2 for
    adam/sgd), then the optimiser driven by the schedule."""
    rate = learning_rate_schedule(cfg, total_steps)
    if cfg.name == "adam":
        opt = optax.adam(rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = optax.adamw(rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay)
    else:
        opt = optax.sgd(rate, momentum=cfg.momentum or None)
    parts = []
    if cfg.grad_clip_value is not None:
        parts.append(optax.clip(cfg.grad_clip_value))
    if cfg.grad_clip_tensor_norm is not None:
        parts.append(clip_by_tensor_norm(cfg.grad_clip_tensor_norm))
    if cfg.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay and cfg.name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    return optax.chain(*parts, opt)
