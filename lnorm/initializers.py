"""Initialisers the original experiments' Theano code used and Flax does not ship.

Kiros's skip-thoughts and Vendrov's order embeddings draw input weights uniformly from
`[-0.1, 0.1]` (`norm_weight`) and make each recurrent gate block its own orthogonal matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
_ORTHOGONAL = nnx.initializers.orthogonal()


def symmetric_uniform(scale: float) -> nnx.Initializer:
    """Uniform on `[-scale, scale]` (flax's `uniform` draws from `[0, scale)`)."""

    def init(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


def block_orthogonal(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    """`[H, k H]` as k independent orthogonal `H x H` blocks, one per gate term, as the originals
    initialised `U = [ortho, ortho]` and `U_x = ortho` (an orthogonal init of the whole `[H, 3H]`
    matrix would shrink each block's singular values to about 1/sqrt(3))."""
    rows, cols = shape
    if cols % rows:
        raise ValueError(f"block_orthogonal: shape {shape} is not [H, k H]")
    keys = jax.random.split(key, cols // rows)
    return jnp.concatenate([_ORTHOGONAL(k, (rows, rows), dtype) for k in keys], axis=1)
