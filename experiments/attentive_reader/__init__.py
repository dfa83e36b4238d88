"""The attentive reader on CNN cloze question answering (paper §6.2, Fig. 2; docs/paper.md):
validation error against training steps for LSTM, BN-LSTM, BN-everywhere and LN-LSTM readers.

The setup is the one the paper reuses, Cooijmans et al.'s recurrent-batch-norm fork of the
attentive-reader code run with the layer-norm paper's command: a unidirectional reader with
240 units, learned initial states, the document-query similarity term in the attention and the
mean document state fed into the output layer (`use_dq_sims 1`, `use_desc_skip_c_g 1`), a
softmax over the whole word vocabulary, dropout 0.5, Adam 8e-5, batch 64, gradient norm clipped
to 10. BN-LSTM: separate batch norm of `W_x x` and `W_h h` (gamma 0.1, beta 0) and of the cell,
statistics per time step; "BN-everywhere" adds batch norm to the attention and output
projections.

Choices of this reproduction, not the authors': entity markers are re-shuffled per example in
training (the data pipeline's `relabel_entities`); batch norm's statistics leave out padding, and
evaluation uses running averages (the authors estimate population statistics in a separate pass
over the training set); the learned initial state covers both the LSTM's `h` and `c` (theirs: `h`
only); the softmax restricted to the document's entities (Hermann et al.) and an entity-only
output layer are options. The top-k-sentence filtering of the data (`data.top_k_sentences`, 4 as
the authors' `datamode_top4`) ranks sentences by the query words they share: the authors' data
was made by a rule their code does not hold. Where the CNN corpus cannot be had, the real-data
check is a small cloze set made from public-domain books (`data.cloze=true`, `cloze.py`).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax.numpy as jnp
from flax import nnx

from experiments.attentive_reader.data import load_data
from experiments.attentive_reader.evaluate import (
    attention_artifacts,
    full_evaluation,
    split_evaluator,
)
from experiments.attentive_reader.model import ANSWER_MASKS, OUTPUT_VOCABS, AttentiveReader
from experiments.attentive_reader.objective import loss_fn
from experiments.schema import RunConfig
from lnorm.data.cnn_qa import CONTEXT_BUCKETS, QUERY_BUCKETS
from lnorm.trainer import EvalContext, Evaluator, Task


@dataclasses.dataclass
class DataConfig:
    batch_size: int = 64  # global: split over processes and devices
    eval_batch_size: int = 128
    data_dir: str | None = None  # prepared data; None: $LNORM_DATA_DIR or ~/lnorm_data
    manual_dir: str | None = None  # holding cnn/questions/{training,validation,test}/
    synthetic: bool = False  # the stand-in: templated questions in the .question format
    synthetic_size: int = 2000  # training questions of the stand-in (held-out: a quarter each)
    cloze: bool = False  # the real-text cloze set from public-domain books (cloze.py)
    vocab_size: int | None = None  # None: every training word (the authors' code)
    top_k_sentences: int | None = 4  # the k sentences most relevant to the query; None: all
    relabel_entities: bool = True  # re-shuffle entity ids per training example
    context_buckets: list[int] = dataclasses.field(default_factory=lambda: [*CONTEXT_BUCKETS])
    query_buckets: list[int] = dataclasses.field(default_factory=lambda: [*QUERY_BUCKETS])
    attention_example: int = 0  # the validation question whose attention is drawn

    def __post_init__(self) -> None:
        if self.synthetic and self.cloze:
            raise ValueError("data.synthetic=true and data.cloze=true: choose one data source")
        if self.top_k_sentences is not None and self.top_k_sentences < 1:
            raise ValueError(f"data.top_k_sentences={self.top_k_sentences}: expected a positive "
                             "number of sentences, or null for whole documents")


@dataclasses.dataclass
class ModelConfig:
    hidden: int = 240
    output_vocab: str = "words"  # words (the authors' code) | entities
    answer_mask: str = "none"  # none (the authors' code) | candidates (Hermann et al.)
    dropout_rate: float = 0.5

    def __post_init__(self) -> None:
        if self.output_vocab not in OUTPUT_VOCABS:
            raise ValueError(f"model.output_vocab={self.output_vocab!r}: expected one of "
                             f"{OUTPUT_VOCABS}")
        if self.answer_mask not in ANSWER_MASKS:
            raise ValueError(f"model.answer_mask={self.answer_mask!r}: expected one of "
                             f"{ANSWER_MASKS}")


def build(conf: RunConfig, run_dir: Path) -> Task:
    data: DataConfig = conf.data
    reader = load_data(data)
    train_pipe = reader.pipeline("train", batch_size=data.batch_size, seed=conf.seed, train=True)
    norm = conf.norm.resolved(data.batch_size)
    model = AttentiveReader(
        len(reader.vocab), entity_offset=reader.entity_offset,
        num_entities=reader.num_entities, hidden=conf.model.hidden, norm=norm,
        output_vocab=conf.model.output_vocab, answer_mask=conf.model.answer_mask,
        dropout_rate=conf.model.dropout_rate,
        context_t_max=int(train_pipe.lengths.max()), query_t_max=reader.query_t_max(),
        rngs=nnx.Rngs(conf.seed))
    evaluate_split = {
        split: split_evaluator(reader.pipeline(split, batch_size=data.eval_batch_size))
        for split in ("validation", "test")}

    def test(model: AttentiveReader, ctx: EvalContext) -> dict:
        """Test metrics on the selected checkpoint, and the attention over one document."""
        results = evaluate_split["test"](model, ctx)
        return {**results, **attention_artifacts(model, reader, "validation",
                                                  data.attention_example)}

    def init_fn(model: AttentiveReader, first_batch: dict) -> None:
        """Weight norm's data-dependent initialisation, on the first training batch."""
        if norm.needs_data_init:
            norm.data_init(model, model, {k: jnp.asarray(v) for k, v in first_batch.items()})

    return Task(
        model=model,
        loss_fn=loss_fn,
        train_batches=train_pipe.batches,
        steps_per_epoch=len(train_pipe),
        evaluators={"validation": Evaluator(evaluate_split["validation"]),
                    "test": Evaluator(test, final=True)},
        init_fn=init_fn,
        data_source=reader.description,
    )


STAGES = {"reader": full_evaluation}
