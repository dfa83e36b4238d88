"""The uni-skip model of Kiros et al. (2015) with a normalised GRU (docs/paper.md, skip-thoughts).

As the authors' training code (`training/model.py`, `layers.py`, `utils.py` of skip-thoughts):
- one word-embedding table for the encoder and both decoders;
- a GRU encoder whose state at each sentence's true length (its `<eos>` included, as the
  training masks counted it) is the sentence vector;
- two GRU decoders, for the previous and the next sentence, of the encoder's size, conditioned
  through their initial state: it IS the sentence vector (`condition="init"`, the authors' code;
  the LN paper notes this). `condition="every_step"` instead feeds the sentence vector, next to
  the word, to every decoder step from a zero state (the equations of Kiros et al.; ours);
- teacher forcing: the decoder input at step 0 is a zero vector, at step t the embedding of
  target word t - 1 (the authors' shifted embeddings; no start token);
- one output layer (logits) shared by both decoders, separate from the embedding.

Initialisation as the original: embedding, input kernels and output kernel uniform on
[-0.1, 0.1], each recurrent block orthogonal, biases zero (normaliser gains 1).

The normaliser is the GRUs' (`lnorm.cells.GRUCell`): `norm=layer` is the paper's LN-GRU,
`none` the original GRU, `batch` recurrent batch norm with per-step statistics (needs `t_max`),
`weight` and `rms` the successors. The embedding and the output layer stay plain for every
normaliser: the paper's LN skip-thoughts normalised the GRUs only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.cells import GRUCell
from lnorm.initializers import block_orthogonal, symmetric_uniform
from lnorm.norms import NormSpec
from lnorm.rnn import RNN

Array = jax.Array

CONDITIONS = ("init", "every_step")
INIT_SCALE = 0.1  # the original's `norm_weight`: uniform on [-0.1, 0.1]


def teacher_forcing_inputs(embedded: Array) -> Array:
    """Decoder inputs `[B, T, E]` from the embedded targets: zeros at step 0, then target t - 1."""
    return jnp.concatenate([jnp.zeros_like(embedded[:, :1]), embedded[:, :-1]], axis=1)


class SkipThoughts(nnx.Module):
    """Encoder, previous- and next-sentence decoders; `model(batch)` gives both decoders' logits.

    `t_max` (norm=batch only) is the longest training sequence in tokens, `<eos>` included
    (`max_length + 1`); longer steps reuse the last step's statistics.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        word_dim: int = 620,
        hidden: int = 2400,
        norm: NormSpec,
        condition: str = "init",
        t_max: int | None = None,
        rngs: nnx.Rngs,
    ):
        if condition not in CONDITIONS:
            raise ValueError(f"SkipThoughts: condition={condition!r}; expected one of {CONDITIONS}")
        if norm.name == "batch" and t_max is None:
            raise ValueError(
                "SkipThoughts: norm=batch keeps statistics per time step and needs t_max, the "
                "longest training sentence in tokens with <eos> (the data's max_length + 1)"
            )
        uniform = symmetric_uniform(INIT_SCALE)

        def gru(in_features: int) -> RNN:
            cell = GRUCell(
                in_features, hidden, norm=norm, t_max=t_max, kernel_init=uniform,
                recurrent_kernel_init=block_orthogonal, rngs=rngs,
            )
            return RNN(cell)

        self.embed = nnx.Embed(vocab_size, word_dim, embedding_init=uniform, rngs=rngs)
        self.encoder = gru(word_dim)
        decoder_in = word_dim + (hidden if condition == "every_step" else 0)
        self.decoder_prev = gru(decoder_in)
        self.decoder_next = gru(decoder_in)
        self.output = nnx.Linear(hidden, vocab_size, kernel_init=uniform, rngs=rngs)
        self.condition = condition
        self.hidden = hidden

    def encode_embedded(self, embedded: Array, lengths: Array) -> Array:
        """Sentence vectors `[B, H]` from embedded words `[B, T, E]` (the vocabulary-expansion
        path feeds vectors that are no row of `embed`)."""
        _, final = self.encoder(embedded, lengths=lengths)
        return final

    def encode(self, ids: Array, lengths: Array) -> Array:
        """Sentence vectors `[B, H]` of token ids `[B, T]` whose first `lengths[B]` are valid."""
        return self.encode_embedded(self.embed(ids), lengths)

    def decode(self, decoder: RNN, context: Array, targets: Array, lengths: Array) -> Array:
        """Logits `[B, T, V]` of `decoder` predicting `targets [B, T]` given the sentence
        vectors `context [B, H]`, by teacher forcing."""
        inputs = teacher_forcing_inputs(self.embed(targets))
        if self.condition == "every_step":
            steps = jnp.broadcast_to(context[:, None], (*inputs.shape[:2], self.hidden))
            outputs, _ = decoder(jnp.concatenate([inputs, steps], axis=-1), lengths=lengths)
        else:
            outputs, _ = decoder(inputs, lengths=lengths, initial_state=context)
        return self.output(outputs)

    def __call__(self, batch: dict) -> tuple[Array, Array]:
        """`(logits_prev, logits_next)` for a batch of triples (`prev`, `cur`, `next` ids and
        their `_length`s, as `lnorm.data.bookcorpus.make_pipeline` yields them)."""
        context = self.encode(batch["cur"], batch["cur_length"])
        return (
            self.decode(self.decoder_prev, context, batch["prev"], batch["prev_length"]),
            self.decode(self.decoder_next, context, batch["next"], batch["next_length"]),
        )


__all__ = ["CONDITIONS", "SkipThoughts"]
