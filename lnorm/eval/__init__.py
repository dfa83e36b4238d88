"""Evaluation protocols of the paper's experiments, run on the host on frozen embeddings.

- `lnorm.eval.retrieval`: image-caption retrieval as in order embeddings (docs/paper.md §4.1,
  §6.1): `recall_metrics` (R@1/5/10, median and mean rank in both directions; image -> text
  ranks the best of an image's captions), `kfold_retrieval` (the 5-fold 1k-image test
  protocol), `retrieval_ranks`, and the score functions `cosine_scores` and `order_scores`
  (negative order-violation energy). Scores are computed in memory-bounded blocks; ranks are
  exact under ties (1 + the number of strictly better candidates).
- `lnorm.eval.probes`: SentEval-style linear probes with scikit-learn (docs/paper.md §4.3,
  §6.3): `kfold_classification` (nested stratified CV: MR, CR, SUBJ, MPQA),
  `train_test_classification` (C by CV on the training set: TREC) and `sick_relatedness` (Tai
  et al.'s soft-target regression on `[|u - v|, u * v]`: SICK relatedness).
"""

from lnorm.eval.probes import (
    kfold_classification,
    relatedness_features,
    relatedness_metrics,
    relatedness_targets,
    sick_relatedness,
    train_test_classification,
)
from lnorm.eval.retrieval import (
    cosine_scores,
    kfold_retrieval,
    order_scores,
    recall_metrics,
    retrieval_ranks,
)

__all__ = [
    "cosine_scores",
    "kfold_classification",
    "kfold_retrieval",
    "order_scores",
    "recall_metrics",
    "relatedness_features",
    "relatedness_metrics",
    "relatedness_targets",
    "retrieval_ranks",
    "sick_relatedness",
    "train_test_classification",
]
