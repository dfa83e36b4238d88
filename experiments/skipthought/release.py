"""The authors' released uni-skip model as a `SkipThoughts` encoder, so `encode` works without
training: `encode(*import_uniskip(npz, table, dictionary), sentences, lowercase=False, eos=False)`.

The skip-thoughts release (`skipthoughts.py`) ships `uni_skip.npz` (the encoder's parameters:
`encoder_W [E, 2H]`, `encoder_b [2H]`, `encoder_U [H, 2H]`, `encoder_Wx [E, H]`,
`encoder_Ux [H, H]`, `encoder_bx [H]`; the 20k training embeddings `Wemb` are not used, as their
tools do not use them), `utable.npy` (the word table after vocabulary expansion, `[N, E]`) and
`dictionary.txt` (its N words, one a line, `UNK` and `<eos>` among them). Their GRU is

    [r, u] = sigmoid(h U + x W + b),  h~ = tanh(r * (h Ux) + x Wx + bx),  h' = u h + (1 - u) h~

which is `lnorm.cells.GRUCell(norm="none")` with `z = 1 - u`: the update gate's weights and bias
enter negated and the two gates swap places (`[z, r]` here). The table's words become an
`ExpandedVocab` (identity map; `<unk>` and `<eos>` are `UNK`'s and `<eos>`'s rows). The release
holds no decoders: those of the returned model are freshly initialised and only the encoder is
meaningful. Their tools encode case-sensitive NLTK tokens without `<eos>`, hence
`lowercase=False, eos=False` (tokenise the sentences as they did before encoding).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from flax import nnx

from experiments.skipthought.encode import ExpandedVocab
from experiments.skipthought.model import SkipThoughts
from lnorm.data.bookcorpus import EOS
from lnorm.data.common import DataError, where
from lnorm.data.vocab import PAD, UNK, Vocab
from lnorm.norms import NormSpec

ENCODER_KEYS = ("encoder_W", "encoder_b", "encoder_U", "encoder_Wx", "encoder_Ux", "encoder_bx")
RELEASE_UNK = "UNK"


def _encoder_arrays(path: Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as archive:
            missing = [k for k in ENCODER_KEYS if k not in archive.files]
            if missing:
                raise DataError(f"{where(path)}: missing {', '.join(missing)}; expected the "
                                "skip-thoughts uni_skip.npz layout")
            arrays = {k: np.asarray(archive[k], np.float32) for k in ENCODER_KEYS}
    except (OSError, ValueError) as e:
        raise DataError(f"{where(path)}: not a readable .npz archive ({e})") from None
    e_dim, two_h = arrays["encoder_W"].shape
    h = two_h // 2
    expected = {"encoder_W": (e_dim, 2 * h), "encoder_b": (2 * h,), "encoder_U": (h, 2 * h),
                "encoder_Wx": (e_dim, h), "encoder_Ux": (h, h), "encoder_bx": (h,)}
    for key, shape in expected.items():
        if arrays[key].shape != shape:
            raise DataError(f"{where(path)}: {key} has shape {arrays[key].shape}; expected "
                            f"{shape} for words of {e_dim} and a GRU of {h}")
    return arrays


def _table(table_path: Path, dictionary_path: Path, word_dim: int) -> tuple[list[str], np.ndarray]:
    table = np.load(table_path)
    words = dictionary_path.read_text(encoding="utf-8").splitlines()
    if table.ndim != 2 or table.shape[1] != word_dim:
        raise DataError(f"{where(table_path)}: shape {table.shape}; expected [N, {word_dim}], "
                        "the encoder's word size")
    if len(words) != len(table):
        raise DataError(f"{where(dictionary_path)}: {len(words)} words for the {len(table)} rows "
                        f"of {table_path}")
    for token in (RELEASE_UNK, EOS):
        if token not in words:
            raise DataError(f"{where(dictionary_path)}: no {token!r} entry")
    return [w.strip() for w in words], np.asarray(table, np.float32)


def import_uniskip(
    model_npz: str | os.PathLike, table_npy: str | os.PathLike, dictionary_txt: str | os.PathLike
) -> tuple[SkipThoughts, ExpandedVocab]:
    """`(model, vocabulary)` from the release's three files (see the module docstring)."""
    arrays = _encoder_arrays(Path(model_npz))
    word_dim, hidden = arrays["encoder_Wx"].shape
    words, table = _table(Path(table_npy), Path(dictionary_txt), word_dim)
    index = {w: i for i, w in enumerate(words)}
    vocab = Vocab([PAD, UNK, EOS])
    model = SkipThoughts(len(vocab), word_dim=word_dim, hidden=hidden, norm=NormSpec("none"),
                         rngs=nnx.Rngs(0))
    embeddings = np.zeros((len(vocab), word_dim), np.float32)
    embeddings[vocab.unk_id] = table[index[RELEASE_UNK]]
    embeddings[vocab.index[EOS]] = table[index[EOS]]
    model.embed.embedding[...] = embeddings

    def gates(w: np.ndarray) -> np.ndarray:  # [r, u] -> [z, r] with z = 1 - u
        return np.concatenate([-w[..., hidden:], w[..., :hidden]], axis=-1)

    cell = model.encoder.cell
    cell.input_proj.dense.kernel[...] = np.concatenate(
        [gates(arrays["encoder_W"]), arrays["encoder_Wx"]], axis=1)
    cell.input_proj.dense.bias[...] = np.concatenate(
        [gates(arrays["encoder_b"]), arrays["encoder_bx"]])
    cell.recurrent_proj.dense.kernel[...] = np.concatenate(
        [gates(arrays["encoder_U"]), arrays["encoder_Ux"]], axis=1)
    cell.recurrent_proj.dense.bias[...] = np.zeros(3 * hidden, np.float32)
    others = {w: i for w, i in index.items() if w not in (RELEASE_UNK, EOS)}
    expanded = ExpandedVocab(vocab=vocab, embeddings=embeddings,
                             words={w: j for j, w in enumerate(others)},
                             vectors=table[list(others.values())],
                             weight=np.eye(word_dim, dtype=np.float32),
                             bias=np.zeros(word_dim, np.float32))
    return model, expanded


__all__ = ["import_uniskip"]
