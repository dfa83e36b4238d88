"""The pmnist MLP: every summed input through the normaliser the spec names (docs/paper.md §4.6)."""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import jax
from flax import nnx

from lnorm.norms import NONE, NormSpec
from lnorm.precision import module_dtype


class MLP(nnx.Module):
    """ReLU MLP of `NormedDense` layers. Following the paper, layer (and RMS) norm sit on the
    hidden layers only; batch and weight norm on all layers (`NormSpec.normalizes_output`)."""

    def __init__(self, sizes: Sequence[int], *, norm: NormSpec, rngs: nnx.Rngs):
        last = len(sizes) - 2
        self.layers = nnx.List([
            (norm if i < last or norm.normalizes_output else NONE).normed_dense(
                din, dout, rngs=rngs)
            for i, (din, dout) in enumerate(itertools.pairwise(sizes))
        ])

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(module_dtype(self))  # the parameters' dtype (train.dtype)
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)
