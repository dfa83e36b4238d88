"""The corpus a skip-thoughts run reads, prepared through the one BookCorpus builder
(`lnorm.data.bookcorpus`): BookCorpus-format files in `data.manual_dir` (the release's two files,
or any named in `data.files`, e.g. the Gutenberg books of `scripts/make_bookcorpus_gutenberg.py`)
or, with `data.synthetic=true`, the builder's templated stand-in."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from lnorm.data import bookcorpus as bc
from lnorm.data.common import data_root, prepare, synthetic_corpus
from lnorm.data.pipeline import Pipeline
from lnorm.data.vocab import Vocab, load_vocab

if TYPE_CHECKING:
    from experiments.skipthought import DataConfig


@dataclasses.dataclass
class Corpus:
    """A prepared corpus of sentence triples with its vocabulary."""

    builder: Any  # the prepared lnorm.data.bookcorpus.BookCorpus
    vocab: Vocab
    description: str  # one line: what the data is and where it comes from

    def pipeline(self, split: str, batch_size: int, *, seed: int, shuffle: bool,
                 buckets: tuple[int, ...]) -> Pipeline:
        """Batches of `split` grouped by the current sentence's length (the authors'
        iterator), padded to `buckets`; a training pipeline drops the last partial batch."""
        return bc.make_pipeline(self.builder.as_data_source(split), batch_size=batch_size,
                                seed=seed, shuffle=shuffle, drop_remainder=shuffle,
                                buckets=buckets, bucket_by_length=True)


def load_corpus(data: DataConfig) -> Corpus:
    """Prepares (once) and opens the corpus the config names: the synthetic stand-in with
    `data.synthetic`, else `data.files` from `data.manual_dir` (a DataError naming the missing
    files and how to get them otherwise)."""
    config = bc.BookCorpusConfig(
        name="default", vocab_size=data.vocab_size, max_length=data.max_length,
        drop_long=data.drop_long, validation_size=data.validation_size,
        files=tuple(data.files),
    )
    if data.synthetic:
        files, prepared = synthetic_corpus(data.data_dir, "bookcorpus", bc.write_synthetic,
                                           num_examples=data.synthetic_size)
        config = dataclasses.replace(config, files=("books_large_p1.txt", "books_large_p2.txt"))
        builder = prepare(bc.BookCorpus, prepared, manual_dir=files, config=config)
        description = f"synthetic stand-in (templated story chains, files in {files})"
    else:
        builder = prepare(bc.BookCorpus, data_root(data.data_dir), manual_dir=data.manual_dir,
                          config=config)
        where = data.manual_dir or "the default manual directory"
        description = f"BookCorpus-format files {', '.join(data.files)} from {where}"
    vocab = load_vocab(builder)
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation")}
    return Corpus(builder, vocab, f"{description}; {sizes['train']} training and "
                  f"{sizes['validation']} validation triples, vocabulary {len(vocab)}")


__all__ = ["Corpus", "load_corpus"]
