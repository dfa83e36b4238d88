"""The attentive reader's data: the CNN questions (or a stand-in in their file format) through the
`lnorm.data.cnn_qa` builder, and the pipelines the training loop and the evaluations read."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from experiments.attentive_reader import cloze
from lnorm.data import cnn_qa
from lnorm.data.common import data_root, prepare, synthetic_corpus
from lnorm.data.pipeline import Pipeline
from lnorm.data.vocab import Vocab, load_vocab


@dataclasses.dataclass
class ReaderData:
    """A prepared dataset and what the model and pipelines need to know about it."""

    builder: tfds.core.DatasetBuilder
    vocab: Vocab
    description: str  # one line: which data, from where
    config: Any  # the experiment's DataConfig

    @property
    def entity_offset(self) -> int:
        return cnn_qa.entity_block(self.vocab)[0]

    @property
    def num_entities(self) -> int:
        return cnn_qa.entity_block(self.vocab)[1]

    def source(self, split: str) -> Any:
        return self.builder.as_data_source(split)

    def pipeline(self, split: str, *, batch_size: int, seed: int = 0, train: bool = False,
                 bucket_by_length: bool = True) -> Pipeline:
        """Batches of `split`: shuffled, entity ids re-shuffled (if configured) and the last
        partial batch dropped for training; every question once, in a fixed order, otherwise."""
        d = self.config
        return cnn_qa.make_pipeline(
            self.source(split), self.vocab, batch_size=batch_size, seed=seed, shuffle=train,
            drop_remainder=train, relabel_entities=train and d.relabel_entities,
            context_buckets=tuple(d.context_buckets), query_buckets=tuple(d.query_buckets),
            bucket_by_length=bucket_by_length, top_k_sentences=d.top_k_sentences)

    def query_t_max(self) -> int:
        """The longest training query (batch norm's per-step statistics reach that far)."""
        return int(cnn_qa.split_arrays(self.source("train"))["query"].lengths.max())

    def answer_kept(self, split: str) -> float:
        """The fraction of `split`'s questions whose answer is still in the (shortened)
        context: 1 without top-k filtering, else the accuracy ceiling it imposes."""
        d = self.config
        if d.top_k_sentences is None:
            return 1.0
        top_k = cnn_qa.TopKSentences(self.vocab, d.top_k_sentences)
        return top_k.answer_kept(self.source(split), self.entity_offset)


def load_data(data: Any) -> ReaderData:
    """Prepares (once) and opens the dataset `data` (the experiment's DataConfig) names."""
    config = (cnn_qa.CnnQaConfig(name=f"vocab{data.vocab_size}", vocab_size=data.vocab_size)
              if data.vocab_size is not None else None)
    if data.synthetic:
        files, prepared = synthetic_corpus(data.data_dir, "cnn_qa", cnn_qa.write_synthetic,
                                           num_examples=data.synthetic_size)
        what = f"synthetic stand-in (templated questions in the .question format, {files})"
    elif data.cloze:
        files, prepared = cloze.cloze_corpus(data.data_dir)
        what = f"real-text cloze set from public-domain books ({cloze.DESCRIPTION}; {files})"
    else:
        files, prepared = data.manual_dir, data_root(data.data_dir)
        what = f"CNN questions (prepared under {prepared})"
    builder = prepare(cnn_qa.CnnQa, Path(prepared), manual_dir=files, config=config)
    out = ReaderData(builder, load_vocab(builder), what, data)
    if data.top_k_sentences is not None:
        out.description += (f"; top-{data.top_k_sentences} sentences keep the answer in "
                            f"{100 * out.answer_kept('validation'):.1f}% of validation questions")
    return out


def example_batch(reader: ReaderData, split: str, index: int) -> dict[str, np.ndarray]:
    """Question `index` of `split` alone, as the evaluation pipeline presents it."""
    size = len(reader.source(split))
    if not 0 <= index < size:
        raise ValueError(f"data.attention_example={index}: the {split} split has {size} "
                         "questions")
    pipe = reader.pipeline(split, batch_size=1, bucket_by_length=False)
    return pipe.load(np.array([index]))
