"""Mixed precision (`train.dtype`): compute in a low-precision dtype, keep the master copy in
float32.

The policy is one rule: a model computes in the dtype of its parameters. The trainer keeps the
parameters and the optimiser state in float32 and, inside the differentiated function, hands the
loss a copy of the model whose floating `nnx.Param`s are cast to the compute dtype
(`cast_params`); the cast's transpose brings the gradients back in float32, so the optimiser
update is float32 throughout. Evaluators get the same cast copy (`cast_model`), so validation
numbers measure the model that training optimises.

What stays float32, and where that is decided:
- everything that is not an `nnx.Param` (BatchNorm's running statistics, RNG counts): never cast;
- normaliser statistics: `lnorm.norms` computes means and variances in at least float32;
- inputs are not cast by the trainer: a model casts the inputs it computes on to its own dtype
  (`module_dtype`), and the loss compares with the batch's float32 targets;
- losses: each objective casts logits / mixture parameters to float32 before its log-softmax,
  logsumexp or NLL; accumulators that must not round (DRAW's canvas, the handwriting window's
  position) stay float32 inside the models.

float16 is not offered: its range needs loss scaling, which this trainer does not do.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> Any:
    """The compute dtype that `train.dtype=name` selects; a clear error for any other name."""
    if name not in DTYPES:
        raise ValueError(f"train.dtype={name!r}: expected one of {tuple(DTYPES)} (float16 needs "
                         "loss scaling, which lnorm does not do)")
    return DTYPES[name]


def _is_float(x: Any) -> bool:
    return jnp.issubdtype(jnp.result_type(x), jnp.floating)


def cast_floating(tree: Any, dtype: Any) -> Any:
    """`tree` with its floating-point leaves cast to `dtype` (integer, bool and key leaves kept)."""
    return jax.tree.map(lambda x: x.astype(dtype) if _is_float(x) else x, tree)


def cast_params(params: nnx.State, dtype: Any) -> nnx.State:
    """An `nnx.Param` state (`nnx.split(model, nnx.Param, ...)[1]`) in the compute dtype.
    Differentiating through this cast gives gradients in the params' own (float32) dtype."""
    return params if dtype == jnp.float32 else cast_floating(params, dtype)


def cast_model(model: nnx.Module, dtype: Any) -> nnx.Module:
    """A copy of `model` whose floating `nnx.Param`s are in `dtype`; its other state (batch
    statistics, RNG counts) unchanged. `model` itself for float32, which needs no copy."""
    if dtype == jnp.float32:
        return model
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    return nnx.merge(graphdef, cast_params(params, dtype), rest, copy=True)


def loop_invariant(params: nnx.State) -> tuple[nnx.State, Callable[[nnx.State], nnx.State]]:
    """`(wide, narrow)`: `params` in at least float32, and the function casting such a copy
    back to the params' own dtypes. For a `jax.lax.scan` whose body reads parameters: pass
    `wide` into the loop and use `narrow(wide)` inside the body. Differentiating a scan sums
    the per-step gradients of its loop-invariant inputs in their dtype, and a bfloat16 sum over
    hundreds of steps rounds most of each step's contribution away."""
    dtypes = jax.tree.map(lambda x: x.dtype, params)
    wide = jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32))
                        if _is_float(x) else x, params)
    return wide, lambda w: jax.tree.map(lambda x, d: x.astype(d), w, dtypes)


def module_dtype(module: nnx.Module) -> Any:
    """The dtype `module` computes in: that of its floating parameters (float32 if it has none).
    Models cast the inputs they compute on to it, so that a cast model runs in its dtype
    instead of being promoted back to float32 by a float32 input."""
    for leaf in jax.tree.leaves(nnx.state(module, nnx.Param)):
        if _is_float(leaf):
            return leaf.dtype
    return jnp.dtype(jnp.float32)


__all__ = ["DTYPES", "cast_floating", "cast_model", "cast_params", "compute_dtype",
           "loop_invariant", "module_dtype"]
