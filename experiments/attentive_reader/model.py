"""The attentive reader (Hermann et al. 2015) as Cooijmans et al.'s recurrent-batch-norm code
builds it, the model of the paper's question-answering experiment (docs/paper.md, §6.2).

    e = Embed(x)                                   one embedding for document and query
    d_t = LSTM_d(e_doc)_t,  q = LSTM_q(e_query) at the query's true last step
    s_t = v^T tanh(W_d d_t + b + W_q q + (B d_t).(B q))    masked softmax over t -> alpha
    r = sum_t alpha_t d_t
    g = tanh(W_r r + W_g q + b_g + W_m mean_t(d_t))        mean over valid steps only
    p(a) = softmax(W_o g + b_o)                    over the output vocabulary

The similarity `(B d_t).(B q)` is one scalar per step added to every unit (the authors'
`use_dq_sims`); `W_m mean(d)` is their `use_desc_skip_c_g`. Dropout (rate 0.5) on the
embeddings of both readers and on `g`. Both LSTMs are `lnorm.cells.LSTMCell(norm=spec)` with a
learned initial state. `spec.placement == "everywhere"` also normalises the five feed-forward
projections `W_d, W_q, W_r, W_g, W_m` (the authors' "BN-everywhere", `bnff` layers with
gamma 0.1); the embedding, the similarity matrix `B` and the output layer stay plain, as there.

Initialisation follows the authors' Theano code: square weight blocks that they mark orthogonal
(the LSTMs' input and recurrent blocks, `W_d`, `B`) are orthogonal scaled by 0.05, every other
matrix Glorot-uniform (so the embedding's scale shrinks with the vocabulary), `v` uniform in
+-1/sqrt(H), biases 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnorm.cells import LSTMCell
from lnorm.norms import Identity, NormedDense, NormSpec
from lnorm.rnn import RNN

Array = jax.Array
Initializer = Callable[..., Array]

OUTPUT_VOCABS = ("words", "entities")
ANSWER_MASKS = ("none", "candidates")

_SMALL_ORTHO = nnx.initializers.orthogonal(scale=0.05)  # the authors' `ortho_weight`
_GLOROT = nnx.initializers.xavier_uniform()  # their `norm_weight` for the other matrices
_BN_GAMMA = nnx.initializers.constant(0.1)  # their `bnff` and BN-LSTM gamma init


def _gate_blocks(init: Initializer, gates: int = 4) -> Initializer:
    """Initialises a `[in, gates * H]` kernel as `gates` independent `[in, H]` blocks."""

    def blocks(key: Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
        keys = jax.random.split(key, gates)
        block = (*shape[:-1], shape[-1] // gates)
        return jnp.concatenate([init(k, block, dtype) for k in keys], axis=-1)

    return blocks


def masked_softmax(scores: Array, mask: Array) -> Array:
    """Softmax over the last axis restricted to `mask`: masked entries get exactly 0.
    Normalised in float32 (a bfloat16 sum over a long document would round), returned in the
    scores' dtype."""
    dtype = scores.dtype
    scores = jnp.where(mask, scores.astype(jnp.promote_types(dtype, jnp.float32)), -jnp.inf)
    top = jnp.max(scores, axis=-1, keepdims=True)
    weights = jnp.where(mask, jnp.exp(scores - jax.lax.stop_gradient(top)), 0.0)
    return (weights / jnp.sum(weights, axis=-1, keepdims=True)).astype(dtype)


class _Projection(nnx.Module):
    """`W x (+ b)`, or `N(W x)` for a normalised layer (`norm` given): `mask` reaches batch norm."""

    def __init__(
        self,
        din: int,
        dout: int,
        *,
        use_bias: bool,
        init: Initializer,
        norm: NormSpec | None,
        rngs: nnx.Rngs,
    ):
        if norm is None:
            self.norm = Identity(dout)
            self.dense = nnx.Linear(din, dout, use_bias=use_bias, kernel_init=init, rngs=rngs)
            return
        kw = norm.options
        if norm.name == "batch":  # Cooijmans et al.'s gamma 0.1 unless the spec says otherwise
            kw = {"scale_init": _BN_GAMMA, **kw}
        layer = NormedDense(din, dout, norm=norm.name, rngs=rngs, **kw)
        self.norm, self.dense = layer.norm, layer.dense
        kernel = self.dense.kernel
        kernel[...] = init(rngs.params(), kernel.shape, kernel.dtype)

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        return self.norm(self.dense(x), mask=mask)


class ReaderOutput(NamedTuple):
    logits: Array  # [B, classes]; -inf outside the candidates under answer_mask="candidates"
    attention: Array  # [B, T_doc], zero on padding, rows sum to 1


class AttentiveReader(nnx.Module):
    """The unidirectional attentive reader; see the module docstring for the equations.

    The output classes are the whole word vocabulary (`output_vocab="words"`, the authors' code:
    the answer is the entity marker's word id, `entity_offset + answer`) or only the entity
    markers (`"entities"`: class = entity number). `answer_mask="candidates"` restricts the
    softmax to the entities of the document (Hermann et al.); `"none"` is the authors' code.
    `context_t_max`/`query_t_max` (the longest training document/query) are needed by batch
    norm's per-step statistics only.
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        entity_offset: int,
        num_entities: int,
        hidden: int,
        norm: NormSpec,
        output_vocab: str = "words",
        answer_mask: str = "none",
        dropout_rate: float = 0.5,
        context_t_max: int | None = None,
        query_t_max: int | None = None,
        rngs: nnx.Rngs,
    ):
        if output_vocab not in OUTPUT_VOCABS:
            raise ValueError(f"output_vocab={output_vocab!r}: expected one of {OUTPUT_VOCABS}")
        if answer_mask not in ANSWER_MASKS:
            raise ValueError(f"answer_mask={answer_mask!r}: expected one of {ANSWER_MASKS}")
        if entity_offset < 0 or num_entities < 1 or entity_offset + num_entities > vocab_size:
            raise ValueError(
                f"entity markers at ids {entity_offset}..{entity_offset + num_entities - 1} do "
                f"not fit a vocabulary of {vocab_size} words"
            )
        h = hidden
        self.embed = nnx.Embed(vocab_size, h, embedding_init=_GLOROT, rngs=rngs)
        self.document = self._reader(h, norm, context_t_max, rngs)
        self.query = self._reader(h, norm, query_t_max, rngs)
        ff = norm if norm.placement == "everywhere" else None
        proj = lambda use_bias, init: _Projection(
            h, h, use_bias=use_bias, init=init, norm=ff, rngs=rngs
        )
        self.att_document = proj(True, _SMALL_ORTHO)
        self.att_query = proj(False, _GLOROT)
        self.similarity = nnx.Linear(h, h, use_bias=False, kernel_init=_SMALL_ORTHO, rngs=rngs)
        bound = 1.0 / np.sqrt(h)
        self.att_v = nnx.Param(jax.random.uniform(rngs.params(), (h,), minval=-bound, maxval=bound))
        self.out_read = proj(False, _GLOROT)
        self.out_query = proj(True, _GLOROT)
        self.out_mean = proj(False, _GLOROT)
        classes = vocab_size if output_vocab == "words" else num_entities
        self.output = nnx.Linear(h, classes, kernel_init=_GLOROT, rngs=rngs)
        self.dropout = nnx.Dropout(dropout_rate)
        self.answer_offset = entity_offset if output_vocab == "words" else 0
        self.num_entities = num_entities
        self.answer_mask = answer_mask

    @staticmethod
    def _reader(h: int, norm: NormSpec, t_max: int | None, rngs: nnx.Rngs) -> RNN:
        cell = LSTMCell(
            h,
            h,
            norm=norm,
            t_max=t_max,
            kernel_init=_gate_blocks(_SMALL_ORTHO),
            recurrent_kernel_init=_gate_blocks(_SMALL_ORTHO),
            rngs=rngs,
        )
        return RNN(cell, learn_initial_state=True)

    def answer_class(self, answer: Array) -> Array:
        """The output class of entity number `answer`."""
        return answer + self.answer_offset

    def class_mask(self, candidate_mask: Array) -> Array:
        """`candidate_mask [B, E]` (entities of the document) as a mask over the classes."""
        before = self.answer_offset
        after = self.output.out_features - before - self.num_entities
        return jnp.pad(candidate_mask, ((0, 0), (before, after)))

    def _drop(self, x: Array, rng: Array | None) -> Array:
        return self.dropout(x, rngs=rng, deterministic=True if rng is None else None)

    def read(self, batch: Mapping[str, Array], rng: Array | None = None) -> tuple[Array, Array]:
        """`(d [B, T, H], q [B, H])`: the document states (zero on padding) and the query's
        state at its last valid step. `rng` drives dropout (none without it or in eval mode)."""
        k_doc, k_query = (None, None) if rng is None else jax.random.split(rng)
        d, _ = self.document(
            self._drop(self.embed(batch["context"]), k_doc), mask=batch["context_mask"]
        )
        _, (_, q) = self.query(
            self._drop(self.embed(batch["query"]), k_query), mask=batch["query_mask"]
        )
        return d, q

    def __call__(self, batch: Mapping[str, Array], rng: Array | None = None) -> ReaderOutput:
        """Class logits and attention weights for a batch of `lnorm.data.cnn_qa.make_pipeline`
        (`context`, `context_mask`, `query`, `query_mask`; `candidate_mask` for
        `answer_mask="candidates"`)."""
        k_read, k_out = (None, None) if rng is None else jax.random.split(rng)
        d, q = self.read(batch, k_read)
        mask = jnp.asarray(batch["context_mask"], bool)
        sim = jnp.einsum("bth,bh->bt", self.similarity(d), self.similarity(q))
        hidden = jnp.tanh(
            self.att_document(d, mask=mask) + self.att_query(q)[:, None] + sim[..., None]
        )
        attention = masked_softmax(hidden @ self.att_v[...], mask)
        read = jnp.einsum("bt,bth->bh", attention, d)
        valid = mask[..., None]  # the mean over valid steps, summed in float32 (train.dtype)
        total = jnp.sum(jnp.where(valid, d, 0), axis=1, dtype=jnp.promote_types(d.dtype, "f4"))
        mean = (total / jnp.sum(valid, axis=1)).astype(d.dtype)
        g = jnp.tanh(self.out_read(read) + self.out_query(q) + self.out_mean(mean))
        logits = self.output(self._drop(g, k_out))
        if self.answer_mask == "candidates":
            logits = jnp.where(self.class_mask(batch["candidate_mask"]), logits, -jnp.inf)
        return ReaderOutput(logits, attention)


__all__ = ["ANSWER_MASKS", "OUTPUT_VOCABS", "AttentiveReader", "ReaderOutput", "masked_softmax"]
