"""Sentence vectors from a trained skip-thoughts model, with optional vocabulary expansion.

`encode` tokenises as training did (`lnorm.data.bookcorpus.tokenize`, the run's vocabulary,
unknown words as `<unk>`, `<eos>` appended: the training masks counted it, so the encoder was
trained to summarise a sentence after reading its `<eos>`; the authors' `tools.encode` defaults
to leaving it out), encodes in batches of similar length padded to a few bucketed lengths (few
programs to compile) and returns the vectors in input order, unit-normalised as the authors'
tools do by default.

`load_encoder(run_dir, step)` rebuilds a saved run's model and vocabulary from its recorded
config (`run_info.json`, as `experiments.evaluate` does) and loads a checkpoint, so that
`encode(*load_encoder(run_dir), sentences)` works on any run.

Vocabulary expansion (Kiros et al. 2015, §3.2; the authors' `tools.py`): a linear map (with an
intercept, as their `sklearn.linear_model.LinearRegression`) from a word-vector file's space
to the model's word-embedding space, fitted by least squares on the words both vocabularies
hold; a word the model never saw but the file holds then gets `vector @ weight + bias` instead
of `<unk>`. The model's own words keep their own embeddings. Words are looked up as tokenised
(lowercased by default), so a cased file contributes its lowercase entries.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from experiments.run import resolve
from experiments.skipthought.data import load_corpus
from experiments.skipthought.model import SkipThoughts
from lnorm.checkpoint import load_model
from lnorm.data.bookcorpus import EOS, tokenize
from lnorm.data.common import DataError, where
from lnorm.data.pipeline import bucket_length
from lnorm.data.vocab import PAD, UNK, Vocab
from lnorm.runinfo import RUN_INFO_FILE, read_run_info

BUCKETS = (8, 16, 24, 32)  # as `lnorm.data.bookcorpus.make_pipeline`


@dataclasses.dataclass(frozen=True)
class ExpandedVocab:
    """The model's vocabulary and embeddings plus the words of a word-vector file mapped into
    the embedding space: `embed(tokens)` looks a token up in the model's vocabulary first, then
    among the file's words (`vectors[words[w]] @ weight + bias`), else gives `<unk>`'s row."""

    vocab: Vocab
    embeddings: np.ndarray  # [len(vocab), E], the model's table
    words: dict[str, int]  # the file's words that the vocabulary lacks -> row of `vectors`
    vectors: np.ndarray  # [len(words), D]
    weight: np.ndarray  # [D, E]
    bias: np.ndarray  # [E]

    @classmethod
    def plain(cls, vocab: Vocab, embeddings: np.ndarray) -> ExpandedVocab:
        """The model's vocabulary alone (no file words)."""
        dim = embeddings.shape[1]
        return cls(vocab, np.asarray(embeddings, np.float32), {}, np.zeros((0, 0), np.float32),
                   np.zeros((0, dim), np.float32), np.zeros(dim, np.float32))

    def embed(self, tokens: Sequence[str]) -> np.ndarray:
        rows = np.empty((len(tokens), self.embeddings.shape[1]), np.float32)
        for i, token in enumerate(tokens):
            if token in self.vocab or token not in self.words:
                rows[i] = self.embeddings[self.vocab.index.get(token, self.vocab.unk_id)]
            else:
                rows[i] = self.vectors[self.words[token]] @ self.weight + self.bias
        return rows


def read_word_vectors(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """Words and vectors `[N, D]` of a text-format word-vector file: GloVe (`word v_1 ... v_D`
    a line) or word2vec text (the same after a `count dim` header line). `D` is taken from the
    header or the first line; a word may hold spaces (the last `D` fields are the numbers)."""
    path = Path(path)
    words: list[str] = []
    rows: list[np.ndarray] = []
    dim = expected = None
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8").rstrip()
            except UnicodeDecodeError as e:
                raise DataError(
                    f"{where(path, line_no)}: expected UTF-8 text (word2vec's binary format is "
                    f"not read; save the vectors in the text format): {e}"
                ) from None
            if not line:
                continue
            fields = line.split(" ")
            if line_no == 1 and len(fields) == 2 and all(x.isdigit() for x in fields):
                expected, dim = int(fields[0]), int(fields[1])
                continue
            if dim is None:
                dim = len(fields) - 1
            parts = line.rsplit(" ", dim)
            try:
                if len(parts) != dim + 1 or not parts[0]:
                    raise ValueError(f"{len(parts) - 1} numbers")
                rows.append(np.asarray(parts[1:], dtype=np.float32))
            except ValueError as e:
                raise DataError(
                    f"{where(path, line_no)}: expected a word and {dim} numbers separated by "
                    f"spaces; got {e}"
                ) from None
            words.append(parts[0])
    if not rows or dim is None or dim < 1:
        raise DataError(f"{where(path)}: no word vectors in the file")
    if expected is not None and expected != len(rows):
        raise DataError(
            f"{where(path, 1)}: the header announces {expected} vectors, the file holds "
            f"{len(rows)}"
        )
    return words, np.stack(rows)


def expand_vocabulary(
    embeddings: np.ndarray, vocab: Vocab, vectors_path: str | os.PathLike
) -> ExpandedVocab:
    """Fits the map from the file's vectors to `embeddings` (the model's word-embedding table,
    `model.embed.embedding`) on the words both hold, and keeps the file's other words."""
    embeddings = np.asarray(embeddings, np.float32)
    if embeddings.shape[0] != len(vocab):
        raise ValueError(
            f"expand_vocabulary: {embeddings.shape[0]} embedding rows for a vocabulary of "
            f"{len(vocab)} tokens"
        )
    words, vectors = read_word_vectors(vectors_path)
    first = {}
    for i, w in enumerate(words):
        first.setdefault(w, i)  # a repeated word keeps its first vector
    shared = [w for w in vocab.tokens if w in first and w not in (PAD, UNK)]
    dim = vectors.shape[1]
    if len(shared) <= dim:
        raise DataError(
            f"{where(vectors_path)}: only {len(shared)} of its words are in the model's "
            f"vocabulary; fitting a map from {dim}-dimensional vectors needs more than {dim}"
        )
    x = np.concatenate([vectors[[first[w] for w in shared]], np.ones((len(shared), 1))], 1)
    y = embeddings[vocab.encode(shared)]
    solution, *_ = np.linalg.lstsq(x.astype(np.float64), y.astype(np.float64), rcond=None)
    new = {w: i for w, i in first.items() if w not in vocab}
    return ExpandedVocab(
        vocab=vocab,
        embeddings=embeddings,
        words={w: j for j, w in enumerate(new)},
        vectors=vectors[list(new.values())],
        weight=solution[:-1].astype(np.float32),
        bias=solution[-1].astype(np.float32),
    )


@functools.partial(jax.jit, static_argnums=0)
def _encode_batch(graphdef: Any, state: Any, embedded: jax.Array, lengths: jax.Array):
    model = nnx.merge(graphdef, state)
    model.eval()  # batch norm's running averages; a no-op for the other normalisers
    return model.encode_embedded(embedded, lengths)


def encode(
    model: SkipThoughts,
    vocab: Vocab | ExpandedVocab,
    sentences: Sequence[str],
    *,
    batch_size: int = 128,
    normalize: bool = True,
    lowercase: bool = True,
    buckets: tuple[int, ...] | None = BUCKETS,
    eos: bool = True,
) -> np.ndarray:
    """Sentence vectors `[len(sentences), H]` (float32) in the order of `sentences`.

    `eos=False` leaves `<eos>` out, as the authors' tools do by default (for their released
    model, `experiments.skipthought.release`); a model trained here read it.

    `vocab` is the run's vocabulary (the model's own embeddings are used) or an `ExpandedVocab`
    fitted on this model's embeddings (its own copy of them is used). The encoder runs in eval
    mode (batch norm's running averages), jitted once per bucketed length."""
    if batch_size < 1:
        raise ValueError(f"encode: batch_size must be positive; got {batch_size}")
    if isinstance(vocab, Vocab):
        vocab = ExpandedVocab.plain(vocab, np.asarray(model.embed.embedding[...]))
    end = [EOS] if eos else []
    rows = [vocab.embed([*tokenize(s, lowercase=lowercase), *end]) for s in sentences]
    lengths = np.array([len(r) for r in rows], np.int32)
    order = np.argsort(lengths, kind="stable")
    graphdef, state = nnx.split(model)
    out = np.zeros((len(rows), model.hidden), np.float32)
    dim = vocab.embeddings.shape[1]
    for lo in range(0, len(rows), batch_size):
        index = order[lo : lo + batch_size]
        # Full batches only (zero-length rows fill the last): one program per bucketed length.
        length = bucket_length(int(lengths[index].max()), buckets)
        embedded = np.zeros((batch_size, length, dim), np.float32)
        for j, i in enumerate(index):
            embedded[j, : lengths[i]] = rows[i]
        batch_lengths = np.zeros(batch_size, np.int32)
        batch_lengths[: len(index)] = lengths[index]
        vectors = _encode_batch(graphdef, state, embedded, batch_lengths)
        out[index] = np.asarray(vectors)[: len(index)]
    if normalize:
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        out = out / np.where(norms > 0, norms, 1.0)
    return out


def load_encoder(run_dir: str | os.PathLike,
                 step: int | str = "best") -> tuple[SkipThoughts, Vocab]:
    """`(model, vocab)` of the run in `run_dir` at checkpoint `step` ("best", "last" or a step
    number; "best" is the last one for a run without `train.select_metric`), with the corpus
    vocabulary the run trained on (prepared again from its config where it is not there)."""
    run_dir = Path(run_dir)
    info = read_run_info(run_dir)
    if info is None:
        raise FileNotFoundError(f"{run_dir / RUN_INFO_FILE}: not a run directory")
    conf, _, module = resolve(info["config"])
    if conf.name != "skipthought":
        raise ValueError(f"{run_dir} is a run of experiment {conf.name!r}, not skipthought")
    if step == "best" and conf.train.select_metric is None:
        step = "last"
    vocab = load_corpus(conf.data).vocab
    model = module.make_model(conf, len(vocab))
    load_model(run_dir, model, step)
    return model, vocab


__all__ = ["BUCKETS", "ExpandedVocab", "encode", "expand_vocabulary", "load_encoder",
           "read_word_vectors"]
