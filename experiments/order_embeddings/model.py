"""The order-embedding model (Vendrov et al. 2016) with a normalised GRU caption encoder.

Both sides map into one `dim`-dimensional space (docs/paper.md §4.1, §6.1):
- image: the 4096-d VGG feature scaled to unit norm, a linear map (Xavier uniform init, zero
  bias), L2-normalised, then made non-negative with `abs`;
- caption: word embeddings (uniform +-0.1), a GRU of `dim` units (input kernels uniform +-0.1,
  each recurrent block orthogonal, as the original's `norm_weight`/`ortho_weight`), the state at
  each caption's true length, L2-normalised, `abs`.
`abs` puts both in the non-negative orthant, where the order energy lives; the symmetric cosine
baseline (`method="cosine"`) keeps the signs.

The normaliser is the GRU's (`lnorm.cells.GRUCell`, the paper's LN-GRU for `norm=layer`); the
image map is plain unless the spec normalises output layers (batch and weight norm, or
`placement=everywhere`), where it becomes `norm.normed_dense` before the L2 normalisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.cells import GRUCell
from lnorm.initializers import block_orthogonal, symmetric_uniform
from lnorm.norms import NormSpec
from lnorm.precision import module_dtype
from lnorm.rnn import RNN

Array = jax.Array

METHODS = ("order", "cosine")
MARGINS = {"order": 0.05, "cosine": 0.2}  # the original's driver.py, per method
_L2_EPS = 1e-12  # guards only all-zero rows (e.g. a zero feature vector)


def l2_normalize(x: Array) -> Array:
    """Rows of `x` scaled to unit L2 norm, in at least float32 (the embeddings the loss and
    retrieval compare stay float32 under `train.dtype=bfloat16`)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), _L2_EPS))


class OrderEmbedding(nnx.Module):
    """Caption and image encoders into one space; `model(image, caption, lengths)` returns
    `(captions [B, dim], images [B, dim])`.

    `method` ("order" or "cosine") and `margin` (default per method: 0.05 / 0.2) travel with the
    model because the objective reads them from it. `t_max` is needed by `norm=batch` only
    (per-time-step statistics; longer captions reuse the last step's).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        norm: NormSpec,
        feature_dim: int = 4096,
        dim: int = 1024,
        word_dim: int = 300,
        method: str = "order",
        margin: float | None = None,
        t_max: int | None = None,
        rngs: nnx.Rngs,
    ):
        if method not in METHODS:
            raise ValueError(f"model.method={method!r}: expected one of {METHODS}")
        uniform = symmetric_uniform(0.1)
        self.words = nnx.Embed(vocab_size, word_dim, embedding_init=uniform, rngs=rngs)
        cell = GRUCell(
            word_dim,
            dim,
            norm=norm,
            t_max=t_max,
            kernel_init=uniform,
            recurrent_kernel_init=block_orthogonal,
            rngs=rngs,
        )
        self.encoder = RNN(cell)
        if norm.normalizes_output:
            self.image_proj = norm.normed_dense(feature_dim, dim, rngs=rngs)
        else:
            self.image_proj = nnx.Linear(
                feature_dim,
                dim,
                kernel_init=nnx.initializers.glorot_uniform(),
                bias_init=nnx.initializers.zeros,
                rngs=rngs,
            )
        self.method = method
        self.margin = MARGINS[method] if margin is None else float(margin)

    def _finish(self, x: Array) -> Array:
        x = l2_normalize(x)
        return jnp.abs(x) if self.method == "order" else x

    def embed_images(self, features: Array) -> Array:
        """`[N, feature_dim]` image features -> `[N, dim]` embeddings."""
        x = l2_normalize(jnp.asarray(features, jnp.float32))
        return self._finish(self.image_proj(x.astype(module_dtype(self))))

    def embed_captions(self, tokens: Array, lengths: Array) -> Array:
        """`[N, L]` token ids with `lengths[N]` (`<eos>` counted) -> `[N, dim]` embeddings."""
        _, final = self.encoder(self.words(tokens), lengths=lengths)
        return self._finish(final)

    def __call__(self, image: Array, caption: Array, lengths: Array) -> tuple[Array, Array]:
        return self.embed_captions(caption, lengths), self.embed_images(image)


__all__ = ["MARGINS", "METHODS", "OrderEmbedding", "l2_normalize"]
