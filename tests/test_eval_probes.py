"""lnorm.eval.probes against scikit-learn brute-force loops, numpy and scipy references."""

import numpy as np
import pytest
from scipy import optimize
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.model_selection import StratifiedKFold, cross_val_score

from lnorm.eval.probes import (
    MAX_ITER,
    expected_class,
    fit_soft_targets,
    kfold_classification,
    relatedness_features,
    relatedness_metrics,
    relatedness_targets,
    sick_relatedness,
    train_test_classification,
)

CS = (2.0**-6, 2.0**-3, 8.0)


def blobs(n, d, gap, seed, classes=2):
    """`classes` Gaussian blobs whose means are `gap` apart along the first axes."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % classes
    X = rng.normal(size=(n, d))
    X[np.arange(n), y % d] += gap
    return X, y


def test_separable_data_is_learned():
    X, y = blobs(200, 5, 7.0, seed=0)
    got = kfold_classification(X, y, k=3, inner_k=2, Cs=(0.25, 1.0))
    assert got["accuracy"] >= 99.0 and got["dev_accuracy"] >= 99.0
    assert len(got["fold_accuracies"]) == len(got["fold_Cs"]) == 3
    Xt, yt = blobs(120, 5, 7.0, seed=1, classes=3)
    got = train_test_classification(Xt[:80], yt[:80], Xt[80:], yt[80:], k=2, Cs=(0.25, 1.0))
    assert got["accuracy"] >= 99.0


def test_random_labels_are_at_chance():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(300, 8)), rng.integers(0, 2, 300)
    got = kfold_classification(X, y, k=3, inner_k=2, Cs=(0.25, 1.0))
    assert abs(got["accuracy"] - 50.0) < 10.0


def brute_choice(X, y, Cs, k, seed):
    scores = [
        cross_val_score(
            LogisticRegression(C=C, random_state=seed, max_iter=MAX_ITER),
            X,
            y,
            cv=StratifiedKFold(n_splits=k, shuffle=True, random_state=seed),
        ).mean()
        for C in Cs
    ]
    return Cs[int(np.argmax(scores))], 100.0 * max(scores)


def test_nested_cv_chooses_the_brute_force_C():
    X, y = blobs(160, 30, 1.0, seed=3)  # noisy and high-dimensional: C matters
    seed = 7
    got = kfold_classification(X, y, k=3, inner_k=3, Cs=CS, seed=seed)
    outer = StratifiedKFold(n_splits=3, shuffle=True, random_state=seed)
    for f, (tr, te) in enumerate(outer.split(X, y)):
        C, _ = brute_choice(X[tr], y[tr], CS, 3, seed)
        assert got["fold_Cs"][f] == C
        model = LogisticRegression(C=C, random_state=seed, max_iter=MAX_ITER).fit(X[tr], y[tr])
        assert got["fold_accuracies"][f] == pytest.approx(100.0 * model.score(X[te], y[te]))
    assert got["accuracy"] == pytest.approx(np.mean(got["fold_accuracies"]))
    assert len(set(got["fold_Cs"])) > 1  # the choice is not trivial on these data


def test_train_test_chooses_the_brute_force_C():
    X, y = blobs(150, 30, 1.0, seed=4, classes=3)
    got = train_test_classification(X[:100], y[:100], X[100:], y[100:], k=4, Cs=CS, seed=5)
    C, dev = brute_choice(X[:100], y[:100], CS, 4, 5)
    model = LogisticRegression(C=C, random_state=5, max_iter=MAX_ITER).fit(X[:100], y[:100])
    assert got["C"] == C and got["dev_accuracy"] == pytest.approx(dev)
    assert got["accuracy"] == pytest.approx(100.0 * model.score(X[100:], y[100:]))


def test_fixed_seed_is_deterministic():
    X, y = blobs(120, 10, 1.5, seed=6)
    runs = [kfold_classification(X, y, k=3, inner_k=2, Cs=(0.5, 2.0)) for _ in range(2)]
    assert runs[0] == runs[1]
    runs = [sick_relatedness(*sick_splits(), Cs=(0.1, 10.0)) for _ in range(2)]
    assert runs[0] == runs[1]


def test_tai_target_encoding():
    p = relatedness_targets(np.array([1.0, 3.6, 4.0, 5.0, 2.25]))
    want = np.zeros((5, 5))
    want[0, 0] = 1.0
    want[1, 2:4] = [0.4, 0.6]
    want[2, 3] = 1.0
    want[3, 4] = 1.0
    want[4, 1:3] = [0.75, 0.25]
    np.testing.assert_allclose(p, want, atol=1e-12)
    s = np.random.default_rng(7).uniform(1, 5, 50)
    P = relatedness_targets(s)
    np.testing.assert_allclose(P.sum(1), 1.0)
    np.testing.assert_allclose(P @ np.arange(1, 6), s)  # the expected class is the score
    with pytest.raises(ValueError, match="in \\[1, 5\\]"):
        relatedness_targets(np.array([0.5, 3.0]))


def test_relatedness_features():
    u, v = np.array([[1.0, -2.0]]), np.array([[3.0, 0.5]])
    np.testing.assert_allclose(relatedness_features(u, v), [[2.0, 2.5, 3.0, -1.0]])


def soft_objective(theta, X, P, C):
    """C * sum_i sum_c P[i, c] * -log softmax(X W^T + b)[i, c] + ||W||^2 / 2, and its gradient."""
    K, D = P.shape[1], X.shape[1]
    W, b = theta[: K * D].reshape(K, D), theta[K * D :]
    logits = X @ W.T + b
    top = logits.max(1, keepdims=True)
    logq = logits - top - np.log(np.exp(logits - top).sum(1, keepdims=True))
    loss = -C * np.sum(P * logq) + 0.5 * np.sum(W**2)
    residual = C * (np.exp(logq) - P)
    return loss, np.concatenate([(residual.T @ X + W).ravel(), residual.sum(0)])


def test_soft_targets_fit_the_soft_cross_entropy():
    """The expanded, weighted fit is the soft cross-entropy: scikit-learn's weighted log-loss of
    the expansion equals the numpy soft loss, the numpy objective's gradient vanishes at the
    fitted parameters, and an independent minimiser of that objective finds the same model."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(40, 3))
    P = relatedness_targets(np.clip(3 + 1.5 * X[:, 0] + rng.normal(size=40), 1, 5))
    C = 0.7
    model = fit_soft_targets(X, P, C)
    assert model.classes_.tolist() == [1, 2, 3, 4, 5]
    q = model.predict_proba(X)
    rows, cls = np.nonzero(P)
    expanded = log_loss(
        cls + 1, q[rows], sample_weight=P[rows, cls], normalize=False, labels=[1, 2, 3, 4, 5]
    )
    assert expanded == pytest.approx(-np.sum(P * np.log(q)), rel=1e-10)

    theta = np.concatenate([model.coef_.ravel(), model.intercept_])
    loss, grad = soft_objective(theta, X, P, C)
    assert np.abs(grad).max() < 1e-3 * loss
    ref = optimize.minimize(
        soft_objective,
        np.zeros_like(theta),
        args=(X, P, C),
        jac=True,
        method="L-BFGS-B",
        options={"gtol": 1e-10, "ftol": 1e-15, "maxiter": 10_000},
    )
    assert loss == pytest.approx(ref.fun, rel=1e-6)
    np.testing.assert_allclose(model.coef_.ravel(), ref.x[:15], atol=3e-3)
    logits = X @ ref.x[:15].reshape(5, 3).T + ref.x[15:]
    q_ref = np.exp(logits - logits.max(1, keepdims=True))
    q_ref /= q_ref.sum(1, keepdims=True)
    np.testing.assert_allclose(q, q_ref, atol=1e-3)
    np.testing.assert_allclose(expected_class(model, X), q_ref @ np.arange(1, 6), atol=3e-3)


def test_relatedness_metrics_hand_case():
    pred = np.array([1.0, 2.0, 4.0, 3.0, 5.0])
    gold = np.array([1.5, 2.0, 3.0, 4.5, 4.0])
    got = relatedness_metrics(pred, gold)
    assert got["pearson"] == pytest.approx(np.corrcoef(pred, gold)[0, 1])
    # ranks 1 2 4 3 5 vs 1 2 3 5 4: d^2 = 0 0 1 4 1, rho = 1 - 6 * 6 / (5 * 24) = 0.7
    assert got["spearman"] == pytest.approx(0.7)
    assert got["mse"] == pytest.approx((0.25 + 0 + 1 + 2.25 + 1) / 5)
    assert relatedness_metrics(np.full(5, 3.0), gold)["pearson"] == 0.0  # SentEval's nan -> 0


def sick_splits():
    """Pairs whose score is a noisy linear function of |u - v|: learnable, not exactly."""
    rng = np.random.default_rng(9)

    def split(n):
        u, v = rng.normal(size=(n, 6)), rng.normal(size=(n, 6))
        s = 1 + 4 / (1 + np.exp(np.abs(u - v)[:, :3].sum(1) - 3 + 0.3 * rng.normal(size=n)))
        return u, v, s

    return split(200), split(80), split(100)


def test_sick_relatedness_learns_and_selects_C_on_dev():
    train, dev, test = sick_splits()
    Cs = (1e-3, 0.1, 10.0)
    got = sick_relatedness(train, dev, test, Cs=Cs)
    assert got["pearson"] > 0.8 and got["spearman"] > 0.75 and got["dev_pearson"] > 0.8
    X_tr, X_dev = relatedness_features(*train[:2]), relatedness_features(*dev[:2])
    dev_r = [
        np.corrcoef(
            expected_class(fit_soft_targets(X_tr, relatedness_targets(train[2]), C), X_dev), dev[2]
        )[0, 1]
        for C in Cs
    ]
    assert got["C"] == Cs[int(np.argmax(dev_r))] and got["dev_pearson"] == pytest.approx(max(dev_r))
    pred_mean = np.full(100, train[2].mean())
    assert got["mse"] < np.mean((pred_mean - test[2]) ** 2)
