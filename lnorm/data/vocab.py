"""Word and character vocabularies, built from a training split and saved with the dataset.

Ids 0 and 1 are always `<pad>` and `<unk>` (padding is id 0 so that a zero-filled batch is
all padding); further specials (e.g. `<eos>`) follow, then tokens by descending count with
ties broken alphabetically, so the same corpus always gives the same ids.
"""

from __future__ import annotations

import collections
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, UNK = "<pad>", "<unk>"
VOCAB_FILE = "vocab.json"  # saved beside a prepared dataset's records


class Vocab:
    def __init__(self, tokens: Sequence[str]):
        if list(tokens[:2]) != [PAD, UNK]:
            raise ValueError(f"a vocabulary starts with {PAD!r}, {UNK!r}; got {list(tokens[:2])}")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError("vocabulary tokens must be unique")

    pad_id = 0
    unk_id = 1

    @classmethod
    def build(
        cls,
        sequences: Iterable[Iterable[str]],
        *,
        max_size: int | None = None,
        min_count: int = 1,
        specials: Sequence[str] = (),
    ) -> Vocab:
        """Counts tokens over `sequences`; keeps those seen at least `min_count` times, at most
        `max_size` entries in all (specials included)."""
        counts = collections.Counter(t for seq in sequences for t in seq)
        head = [PAD, UNK, *specials]
        ranked = sorted(
            (t for t, c in counts.items() if c >= min_count and t not in head),
            key=lambda t: (-counts[t], t),
        )
        if max_size is not None:
            ranked = ranked[: max(0, max_size - len(head))]
        return cls(head + ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def __contains__(self, token: str) -> bool:
        return token in self.index

    def encode(self, tokens: Iterable[str]) -> list[int]:
        return [self.index.get(t, self.unk_id) for t in tokens]

    def decode(self, ids: Iterable[int]) -> list[str]:
        return [self.tokens[i] for i in ids]

    def save(self, path: str | os.PathLike) -> None:
        """Writes the vocabulary as JSON atomically (temp file, then rename)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"tokens": self.tokens}, ensure_ascii=False))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> Vocab:
        return cls(json.loads(Path(path).read_text())["tokens"])


def load_vocab(builder) -> Vocab:
    """The vocabulary saved with a prepared dataset (`VOCAB_FILE` in the builder's data_dir)."""
    return Vocab.load(Path(builder.data_dir) / VOCAB_FILE)
