"""Linear probes on frozen sentence vectors, as SentEval's scikit-learn path runs them.

The protocol (docs/paper.md §4.3, §6.3; SentEval's `tools/validation.py` and `sick.py`):
- MR, CR, SUBJ, MPQA (`kfold_classification`): stratified outer k-fold; in each outer training
  fold, C is chosen by stratified inner k-fold accuracy, the model refitted on the whole outer
  training fold with that C and scored on the outer test fold; the mean outer accuracy is the
  result. SentEval's grid for it is 2^-2 .. 2^3.
- TREC (`train_test_classification`): C by stratified k-fold accuracy on the training set,
  refit on all of it, accuracy on the test set. SentEval's grid for it is 2^-1 .. 2^5.
- SICK relatedness (`sick_relatedness`): features `[|u - v|, u * v]`, the score encoded as a
  5-class distribution (Tai et al. 2015), logistic regression on those soft targets, C chosen
  by dev Pearson r, the prediction `p_hat . [1..5]`; Pearson r, Spearman rho and MSE on test.

As in SentEval, the features are used as given: no standardisation (the encoder decides their
scale; skip-thought vectors are unit-normalised). SentEval fixes the fold seed and the
classifier seed to 1111 by default; here one `seed` sets both. The classifier is scikit-learn's
`LogisticRegression` (L2, lbfgs, multinomial for 3+ classes; SentEval's scikit-learn of the
time defaulted to liblinear), with more iterations than the default so that unscaled features
converge. Among Cs with equal validation scores the first of the grid (the smallest) wins.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold

SENTEVAL_SEED = 1111
KFOLD_CS = tuple(2.0**t for t in range(-2, 4))  # SentEval InnerKFoldClassifier
TRAIN_TEST_CS = tuple(2.0**t for t in range(-1, 6))  # SentEval KFoldClassifier (TREC)
SICK_CS = tuple(2.0**t for t in range(-2, 8))  # ours: SentEval/Kiros fit SICK without a C
MAX_ITER = 1000
SICK_CLASSES = 5

RelatednessSplit = tuple[np.ndarray, np.ndarray, np.ndarray]
"""`(u [N, D], v [N, D], scores [N] in [1, 5])`: the two sentences' vectors and the gold score."""


def _logreg(C: float, seed: int, max_iter: int) -> LogisticRegression:
    return LogisticRegression(C=C, random_state=seed, max_iter=max_iter)


def _select_and_fit(
    X: np.ndarray, y: np.ndarray, Cs: Sequence[float], k: int, seed: int, max_iter: int
) -> GridSearchCV:
    """C by stratified k-fold accuracy (mean over folds, first C on ties), refit on all X."""
    search = GridSearchCV(
        _logreg(1.0, seed, max_iter),
        {"C": list(Cs)},
        scoring="accuracy",
        cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed),
        refit=True,
        error_score="raise",
    )
    return search.fit(X, y)


def _check_xy(X: np.ndarray, y: np.ndarray, name: str) -> tuple[np.ndarray, np.ndarray]:
    X, y = np.asarray(X), np.asarray(y)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{name}: want X [N, D] and y [N], got {X.shape} and {y.shape}")
    return X, y


def kfold_classification(
    X: np.ndarray,
    y: np.ndarray,
    *,
    k: int = 10,
    inner_k: int = 10,
    Cs: Sequence[float] = KFOLD_CS,
    seed: int = SENTEVAL_SEED,
    max_iter: int = MAX_ITER,
) -> dict:
    """Nested stratified cross-validation (MR, CR, SUBJ, MPQA). Returns `accuracy` (mean outer
    test accuracy, percent), `dev_accuracy` (mean of the best inner CV accuracies, percent),
    `fold_accuracies` and `fold_Cs` (one per outer fold)."""
    X, y = _check_xy(X, y, "kfold_classification")
    outer = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    accuracies, dev, chosen = [], [], []
    for train, test in outer.split(X, y):
        search = _select_and_fit(X[train], y[train], Cs, inner_k, seed, max_iter)
        accuracies.append(100.0 * float(search.score(X[test], y[test])))
        dev.append(100.0 * float(search.best_score_))
        chosen.append(float(search.best_params_["C"]))
    return {
        "accuracy": float(np.mean(accuracies)),
        "dev_accuracy": float(np.mean(dev)),
        "fold_accuracies": accuracies,
        "fold_Cs": chosen,
    }


def train_test_classification(
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    *,
    k: int = 10,
    Cs: Sequence[float] = TRAIN_TEST_CS,
    seed: int = SENTEVAL_SEED,
    max_iter: int = MAX_ITER,
) -> dict:
    """C by stratified k-fold CV on the training set, refit on all of it (TREC). Returns
    `accuracy` (test, percent), `dev_accuracy` (best CV accuracy, percent) and `C`."""
    X_train, y_train = _check_xy(X_train, y_train, "train_test_classification (train)")
    X_test, y_test = _check_xy(X_test, y_test, "train_test_classification (test)")
    search = _select_and_fit(X_train, y_train, Cs, k, seed, max_iter)
    return {
        "accuracy": 100.0 * float(search.score(X_test, y_test)),
        "dev_accuracy": 100.0 * float(search.best_score_),
        "C": float(search.best_params_["C"]),
    }


def relatedness_features(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """`[|u - v|, u * v]` per pair (Tai et al.; SentEval's order)."""
    u, v = np.asarray(u), np.asarray(v)
    if u.ndim != 2 or u.shape != v.shape:
        raise ValueError(f"relatedness_features: want two [N, D] arrays, got {u.shape}, {v.shape}")
    return np.concatenate([np.abs(u - v), u * v], axis=1)


def _check_scores(scores: np.ndarray, n_classes: int = SICK_CLASSES) -> np.ndarray:
    s = np.asarray(scores, np.float64)
    if s.ndim != 1 or np.any(~((s >= 1) & (s <= n_classes))):
        raise ValueError(f"relatedness scores must be a vector in [1, {n_classes}]")
    return s


def relatedness_targets(scores: np.ndarray, n_classes: int = SICK_CLASSES) -> np.ndarray:
    """Tai et al.'s encoding of a score s in [1, n] as a distribution over the classes 1..n:
    p(floor(s)) = floor(s) - s + 1, p(floor(s) + 1) = s - floor(s), 0 elsewhere, so that the
    expected class is s. Column `i` is class `i + 1`."""
    s = _check_scores(scores, n_classes)
    low = np.floor(s).astype(np.int64)  # class floor(s), 1-based
    rows = np.arange(len(s))
    p = np.zeros((len(s), n_classes))
    p[rows, low - 1] = low - s + 1
    up = low < n_classes
    p[rows[up], low[up]] = (s - low)[up]
    return p


def fit_soft_targets(
    X: np.ndarray, P: np.ndarray, C: float, *, seed: int = SENTEVAL_SEED, max_iter: int = MAX_ITER
) -> LogisticRegression:
    """Logistic regression on soft targets `P [N, K]` (column i = class i + 1).

    scikit-learn takes hard labels only; each example is repeated once per class it gives
    mass to, with that mass as its sample weight. The weighted log-loss is then
    sum_i sum_c P[i, c] * -log q(c | x_i), the soft cross-entropy, with the same C. With 3+
    classes present the model is scikit-learn's multinomial one (2 would give its binary form).
    """
    X, P = np.asarray(X), np.asarray(P)
    rows, cls = np.nonzero(P)
    return _logreg(C, seed, max_iter).fit(X[rows], cls + 1, sample_weight=P[rows, cls])


def expected_class(model: LogisticRegression, X: np.ndarray) -> np.ndarray:
    """`p_hat . classes`: the predicted score `p_hat . [1..K]`."""
    return model.predict_proba(X) @ model.classes_.astype(np.float64)


def relatedness_metrics(pred: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    """Pearson r, Spearman rho and MSE of predicted against gold scores. A correlation that
    is undefined (constant input) is reported as 0, as SentEval does."""
    pred, gold = np.asarray(pred, np.float64), np.asarray(gold, np.float64)
    if pred.shape != gold.shape or pred.ndim != 1:
        raise ValueError(
            f"relatedness_metrics: want two [N] vectors, got {pred.shape}, {gold.shape}"
        )
    constant = np.ptp(pred) == 0 or np.ptp(gold) == 0
    return {
        "pearson": 0.0 if constant else float(stats.pearsonr(pred, gold).statistic),
        "spearman": 0.0 if constant else float(stats.spearmanr(pred, gold).statistic),
        "mse": float(np.mean((pred - gold) ** 2)),
    }


def _relatedness_split(
    u: np.ndarray, v: np.ndarray, scores: np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    X, s = relatedness_features(u, v), _check_scores(scores)
    if len(X) != len(s):
        raise ValueError(f"sick_relatedness {name}: {len(X)} pairs but {len(s)} scores")
    return X, s


def sick_relatedness(
    train: RelatednessSplit,
    dev: RelatednessSplit,
    test: RelatednessSplit,
    *,
    Cs: Sequence[float] = SICK_CS,
    seed: int = SENTEVAL_SEED,
    max_iter: int = MAX_ITER,
) -> dict[str, float]:
    """SICK relatedness: soft-target logistic regression on `[|u - v|, u * v]`, C by dev
    Pearson r. Returns test `pearson`, `spearman`, `mse`, and `dev_pearson`, `C`."""
    (X_tr, s_tr), (X_dev, s_dev), (X_te, s_te) = (
        _relatedness_split(*split, name)
        for split, name in ((train, "train"), (dev, "dev"), (test, "test"))
    )
    P_tr = relatedness_targets(s_tr)
    best = None
    for C in Cs:
        model = fit_soft_targets(X_tr, P_tr, C, seed=seed, max_iter=max_iter)
        r = relatedness_metrics(expected_class(model, X_dev), s_dev)["pearson"]
        if best is None or r > best[0]:
            best = (r, C, model)
    if best is None:
        raise ValueError("sick_relatedness: Cs is empty")
    dev_r, C, model = best
    return {
        **relatedness_metrics(expected_class(model, X_te), s_te),
        "dev_pearson": float(dev_r),
        "C": float(C),
    }
