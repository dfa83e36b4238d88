"""BookCorpus for skip-thoughts: (previous, current, next) sentence triples.

Input: plain-text files with one sentence a line, consecutive lines consecutive in the book
(`books_large_p1.txt`, `books_large_p2.txt` as released, or any `.txt` files named in the
config). A blank line is a book or paragraph boundary, and so is the end of a file: a triple
never spans one.

Tokenisation follows the skip-thoughts release: the corpus comes tokenised, and its training
code only splits on whitespace (`sentence.split()`). The released BookCorpus text is already
lowercase; `lowercase=True` (the default) lowercases anyway, a no-op there, so that other text
(and the sentence evaluation sets, see `senteval.py`) meets the same lowercase vocabulary.

Sentences are stored as token ids of a vocabulary built from the training split (`vocab.json`
next to the prepared dataset; ids 0/1/2 are `<pad>`/`<unk>`/`<eos>`). A sentence longer than
`max_length` words is truncated; `drop_long=True` instead leaves out triples holding one, as
the release did (its bound counted `<eos>`: it kept sentences of fewer than `maxlen` words).
`<eos>` is appended in the pipeline, not stored.

The validation split is the corpus tail: the last `validation_size` triples (a count, or a
fraction of all triples). The split point acts as a boundary, so no sentence is shared between
the splits; the up to two triples that would straddle it are left out.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from lnorm.data.common import DataError, manual_root, where
from lnorm.data.pipeline import ArraySource, Pad, Pipeline, Source, split_cache
from lnorm.data.vocab import VOCAB_FILE, Vocab

EOS = "<eos>"
EOS_ID = 2  # a Vocab holds <pad>, <unk>, then its specials
FIELDS = ("prev", "cur", "next")

MANUAL_DOWNLOAD_INSTRUCTIONS = """\
BookCorpus (skip-thoughts): put the text files `books_large_p1.txt` and `books_large_p2.txt`
(one tokenised sentence a line, as released with skip-thoughts; the Toronto BookCorpus page
https://yknzhu.wixsite.com/mbweb is no longer public, so use a copy you are licensed to hold)
directly in the manual directory, or name your own `.txt` files in the builder config
(`BookCorpusConfig(files=...)`). Any corpus in this format works; a blank line marks a book
or paragraph boundary.
"""


def tokenize(line: str, *, lowercase: bool = True) -> list[str]:
    """Whitespace tokens, as the skip-thoughts code splits its pre-tokenised corpus."""
    return (line.lower() if lowercase else line).split()


@dataclasses.dataclass(eq=False)
class BookCorpusConfig(tfds.core.BuilderConfig):
    """Corpus files (in reading order), vocabulary size, sentence length and validation size.
    The config name identifies a prepared dataset: give changed parameters a new name."""

    files: tuple[str, ...] = ("books_large_p1.txt", "books_large_p2.txt")
    vocab_size: int = 20000  # specials included
    min_count: int = 1
    max_length: int = 30
    drop_long: bool = False
    lowercase: bool = True
    validation_size: float = 10000  # a count of triples (>= 1) or a fraction (< 1)


class BookCorpus(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Sentence triples `prev`, `cur`, `next` (int32 token ids) with splits train/validation."""

    VERSION = tfds.core.Version("1.0.0")
    MANUAL_DOWNLOAD_INSTRUCTIONS = MANUAL_DOWNLOAD_INSTRUCTIONS
    BUILDER_CONFIGS = [BookCorpusConfig(name="default")]  # noqa: RUF012 (TFDS API)

    def _info(self) -> tfds.core.DatasetInfo:
        ids = tfds.features.Tensor(shape=(None,), dtype=np.int32)
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({k: ids for k in FIELDS}),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        cfg = self.builder_config
        root = manual_root(dl_manager, cfg.files, MANUAL_DOWNLOAD_INSTRUCTIONS)
        paths = [root / f for f in cfg.files]
        runs = list(_run_lengths(paths))
        num_val = _validation_count(cfg.validation_size, sum(max(0, n - 2) for n in runs), paths)
        split = _split_index(runs, num_val)
        vocab = Vocab.build(
            (toks for _, _, g, toks in _sentences(paths, cfg.lowercase) if toks and g < split),
            max_size=cfg.vocab_size,
            min_count=cfg.min_count,
            specials=(EOS,),
        )
        vocab.save(Path(self.data_dir) / VOCAB_FILE)
        return {
            "train": self._generate_examples(paths, vocab, 0, split),
            "validation": self._generate_examples(paths, vocab, split, None),
        }

    def _generate_examples(self, paths: list[Path], vocab: Vocab, start: int, stop: int | None):
        cfg = self.builder_config
        for key, triple in _triples(paths, cfg.lowercase, start, stop):
            if cfg.drop_long and any(len(s) > cfg.max_length for s in triple):
                continue
            yield (
                key,
                {
                    k: np.asarray(vocab.encode(s[: cfg.max_length]), np.int32)
                    for k, s in zip(FIELDS, triple, strict=True)
                },
            )


def _sentences(
    paths: Iterable[Path], lowercase: bool
) -> Iterator[tuple[Path, int, int, list[str]]]:
    """`(path, line number, sentence index, tokens)` for every line, then `(path, 0, ...)` at
    each file's end; blank lines and file ends have no tokens and no index of their own."""
    index = 0
    for path in paths:
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, 1):
                try:
                    line = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{where(path, line_no)}: expected UTF-8 text: {e}") from None
                tokens = tokenize(line, lowercase=lowercase)
                yield path, line_no, index, tokens
                index += bool(tokens)
        yield path, 0, index, []


def _run_lengths(paths: Iterable[Path]) -> Iterator[int]:
    """Lengths of the runs of consecutive sentences between boundaries."""
    run = 0
    for _, _, _, tokens in _sentences(paths, lowercase=False):
        if tokens:
            run += 1
        elif run:
            yield run
            run = 0


def _validation_count(size: float, total: int, paths: Sequence[Path]) -> int:
    if 0 < size < 1:
        count = round(size * total)
    elif float(size).is_integer():
        count = int(size)
    else:
        count = -1
    if not 1 <= count < total:
        raise DataError(
            f"validation_size={size} gives {count} of the {total} sentence triples in "
            f"{', '.join(map(str, paths))}; expected a count in [1, {total - 1}] or a fraction"
            " in (0, 1) that leaves both splits non-empty"
        )
    return count


def _split_index(runs: Sequence[int], num_val: int) -> int:
    """The first validation sentence's index such that the corpus tail from it holds exactly
    `num_val` triples (walking the runs backwards)."""
    end = sum(runs)
    for n in reversed(runs):
        end -= n
        if n - 2 >= num_val:
            return end + n - (num_val + 2)
        num_val -= max(0, n - 2)
    raise AssertionError("unreachable: num_val is below the number of triples")


def _triples(
    paths: Iterable[Path], lowercase: bool, start: int, stop: int | None
) -> Iterator[tuple[str, tuple[list[str], ...]]]:
    """`(key, (prev, cur, next))` for the triples of sentences indexed in `[start, stop)`."""
    stop = math.inf if stop is None else stop
    window: collections.deque = collections.deque(maxlen=3)
    keys: collections.deque = collections.deque(maxlen=3)
    for path, line_no, index, tokens in _sentences(paths, lowercase):
        if not tokens or not start <= index < stop:
            window.clear()
            keys.clear()
            continue
        window.append(tokens)
        keys.append(f"{path.name}:{line_no}")
        if len(window) == 3:
            yield keys[1], tuple(window)


def make_pipeline(
    source: Source,
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = False,
    eos_id: int = EOS_ID,
    buckets: tuple[int, ...] | None = (8, 16, 24, 32),
    bucket_by_length: bool = False,
) -> Pipeline:
    """Batches of triples: for each of `prev`, `cur`, `next` the padded ids `[B, L]` ending in
    `<eos>`, a mask and the lengths (`<eos>` counted, as the release's masks did). With
    `bucket_by_length`, batches group triples of similar `cur` length.

    The split is read into memory once (from its `.npz` cache after the first time, see
    `split_cache`; about 4 bytes a token, so a BookCorpus-sized split needs its ~10 GB in RAM)
    and `<eos>` appended there, so that a batch is a few fancy-indexing calls: decoding 64
    records a batch took longer than an accelerator's training step."""
    data = dict(ArraySource.from_source(source, ragged=FIELDS, cache=split_cache(source)).arrays)
    lengths = data["cur"].lengths if bucket_by_length else None
    # `<eos>` appended a field at a time, each field's first copy released before the next
    ended = {k: data.pop(k).with_end(np.int32(eos_id)) for k in FIELDS}
    return Pipeline(
        ArraySource(ended),
        batch_size=batch_size,
        seed=seed,
        shuffle=shuffle,
        drop_remainder=drop_remainder,
        pad={k: Pad(buckets=buckets) for k in FIELDS},
        lengths=lengths,
    )


def write_synthetic(out_dir: str | os.PathLike, *, num_examples: int, seed: int) -> Path:
    """Writes `books_large_p1.txt` and `books_large_p2.txt` of templated story chains: each
    story follows one character through a fixed cycle of places, so the previous and next
    sentences are predictable from the current one. Stories are separated by blank lines;
    `num_examples` is about the number of sentences."""
    rng = np.random.default_rng(seed)
    names = ["anna", "ben", "cara", "dev", "ella", "finn", "gus", "hana"]
    places = ["kitchen", "garden", "station", "library", "harbour", "market", "tower"]
    verbs = ["walked", "ran", "drove", "sailed"]
    stories = []
    while sum(len(s) + 1 for s in stories) < num_examples:
        name, verb = rng.choice(names), rng.choice(verbs)
        first = int(rng.integers(len(places)))
        length = int(rng.integers(4, 9))
        stories.append(
            [
                f"then {name} {verb} from the {places[(first + i) % len(places)]} "
                f"to the {places[(first + i + 1) % len(places)]} ."
                for i in range(length)
            ]
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    half = len(stories) // 2
    for name, part in (
        ("books_large_p1.txt", stories[:half]),
        ("books_large_p2.txt", stories[half:]),
    ):
        (out / name).write_text("\n\n".join("\n".join(s) for s in part) + "\n", encoding="utf-8")
    return out
