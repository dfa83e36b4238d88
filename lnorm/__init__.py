"""lnorm: the paper's normalisers, recurrent cells, trainer and data pipelines.

The layers are re-exported here (`from lnorm import LayerNorm, LSTMCell, RNN`); the trainer,
data and logging live in their submodules (`lnorm.trainer`, `lnorm.data`, `lnorm.logger`).
"""

from lnorm.cells import GRU_VARIANTS, LSTM_VARIANTS, GRUCell, LSTMCell, StepBatchNorm
from lnorm.norms import (
    NORMS,
    BatchNorm,
    Identity,
    LayerNorm,
    NormedDense,
    NormSpec,
    RMSNorm,
    WeightNormDense,
    layer_norm,
    make_dense,
    make_norm,
    rms_norm,
    weight_norm_init,
)
from lnorm.rnn import RNN, Bidirectional, StackedRNN, padding_mask, reverse_sequences

__all__ = [
    "GRU_VARIANTS",
    "LSTM_VARIANTS",
    "NORMS",
    "RNN",
    "BatchNorm",
    "Bidirectional",
    "GRUCell",
    "Identity",
    "LSTMCell",
    "LayerNorm",
    "NormSpec",
    "NormedDense",
    "RMSNorm",
    "StackedRNN",
    "StepBatchNorm",
    "WeightNormDense",
    "layer_norm",
    "make_dense",
    "make_norm",
    "padding_mask",
    "reverse_sequences",
    "rms_norm",
    "weight_norm_init",
]
