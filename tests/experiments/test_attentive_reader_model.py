"""The attentive reader: masked attention, the query's state at its true end, the candidate
mask, batch norm's population statistics, NLL/error against numpy, the normalisers' placement,
and learning on the CNN stand-in through the builder and pipeline with a plain optax loop."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.attentive_reader import objective
from experiments.attentive_reader.model import AttentiveReader, masked_softmax
from lnorm.data import cnn_qa
from lnorm.data.common import prepare
from lnorm.data.vocab import load_vocab
from lnorm.metrics import evaluate
from lnorm.norms import BatchNorm, LayerNorm, NormSpec, WeightNormDense

V, OFFSET, E, H = 30, 3, 6, 16  # words, id of entity 0, entity markers, hidden size
T_MAX, Q_MAX = 16, 8


def _batch(seed: int, b: int = 4, t: int = 12, q: int = 5) -> dict:
    """Random ids on each row's valid prefix, 0 after it (as the pipeline pads), the answer
    among 2-3 candidate entities."""
    rng = np.random.default_rng(seed)
    c_len = np.concatenate([[t], rng.integers(3, t, b - 1)])
    q_len = np.concatenate([[2], rng.integers(2, q + 1, b - 1)])
    c_mask, q_mask = np.arange(t) < c_len[:, None], np.arange(q) < q_len[:, None]
    candidates = np.zeros((b, E), bool)
    for row in candidates:
        row[rng.choice(E, size=int(rng.integers(2, 4)), replace=False)] = True
    answer = np.array([rng.choice(np.flatnonzero(row)) for row in candidates], np.int32)
    return {
        "context": np.where(c_mask, rng.integers(1, V, (b, t)), 0).astype(np.int32),
        "context_mask": c_mask,
        "query": np.where(q_mask, rng.integers(1, V, (b, q)), 0).astype(np.int32),
        "query_mask": q_mask,
        "answer": answer,
        "candidate_mask": candidates,
    }


def _pad(batch: dict, extra_t: int, extra_q: int, seed: int = 9) -> dict:
    """The batch with more padding columns, filled with arbitrary token ids."""
    rng = np.random.default_rng(seed)
    out = dict(batch)
    for key, extra in (("context", extra_t), ("query", extra_q)):
        b = batch[key].shape[0]
        out[key] = np.concatenate([batch[key], rng.integers(1, V, (b, extra))], 1).astype(np.int32)
        out[f"{key}_mask"] = np.pad(batch[f"{key}_mask"], ((0, 0), (0, extra)))
    return out


def _model(norm: NormSpec, **kw) -> AttentiveReader:
    return AttentiveReader(V, entity_offset=OFFSET, num_entities=E, hidden=H, norm=norm,
                           context_t_max=T_MAX, query_t_max=Q_MAX, rngs=nnx.Rngs(0), **kw)


@nnx.jit
def _outputs(model, batch, key):
    return model(batch), objective.metric_sums(model, batch), objective.loss_fn(model, batch, key)


@nnx.jit
def _train_forward(model, batch):  # train mode: batch statistics, running averages updated
    return model(batch).logits


def _np_log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def test_masked_softmax_matches_numpy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 7)).astype(np.float32) * 5
    mask = np.arange(7) < np.array([[7], [4], [1]])
    expected = np.where(mask, np.exp(scores), 0.0)
    expected /= expected.sum(-1, keepdims=True)
    out = np.asarray(masked_softmax(jnp.asarray(scores), jnp.asarray(mask)))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-7)
    assert (out[~mask] == 0).all()
    grad = jax.grad(lambda s: masked_softmax(s, mask)[:, 0].sum())(jnp.asarray(scores))
    assert np.isfinite(grad).all() and (np.asarray(grad)[~mask] == 0).all()


def test_nll_and_error_match_numpy():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(6, 9)).astype(np.float32) * 3
    target = rng.integers(0, 9, 6).astype(np.int32)
    target[0] = logits[0].argmax()  # at least one right answer
    nll, error = objective.nll_and_error(jnp.asarray(logits), jnp.asarray(target))
    np.testing.assert_allclose(nll, -_np_log_softmax(logits)[np.arange(6), target], rtol=1e-5)
    np.testing.assert_array_equal(error, (logits.argmax(-1) != target).astype(np.float32))


BN_ALL = NormSpec("batch", placement="everywhere")  # both recurrent paths' masks, BN's too


def test_padding_never_changes_results_in_eval_mode():
    model = _model(BN_ALL)
    batch = _batch(0)
    _train_forward(model, batch)  # moves batch norm's running averages away from 0 and 1
    model.eval()
    (logits, attention), sums, (loss, metrics) = _outputs(model, batch, jax.random.key(1))
    padded = _pad(batch, extra_t=T_MAX + 3 - 12, extra_q=3)  # steps past t_max too
    (logits_p, attention_p), sums_p, (loss_p, _) = _outputs(model, padded, jax.random.key(2))
    np.testing.assert_allclose(logits_p, logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(attention_p[:, :12], attention, rtol=1e-5, atol=1e-6)
    assert (np.asarray(attention_p)[~padded["context_mask"]] == 0).all()
    np.testing.assert_allclose(np.asarray(attention).sum(1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(loss_p, loss, rtol=1e-5)  # and no dropout in eval mode
    for key in ("nll", "error", "count"):
        np.testing.assert_allclose(sums_p[key], sums[key], rtol=1e-5)
    # The metrics against numpy from the model's own logits.
    logp = _np_log_softmax(np.asarray(logits))[np.arange(4), OFFSET + batch["answer"]]
    np.testing.assert_allclose(sums["nll"], -logp.sum(), rtol=1e-5)
    np.testing.assert_allclose(metrics["nll"], -logp.mean(), rtol=1e-5)
    wrong = np.asarray(logits).argmax(-1) != OFFSET + batch["answer"]
    assert sums["error"] == wrong.sum() and sums["count"] == 4
    np.testing.assert_allclose(objective.attention_weights(model, batch), attention, atol=1e-7)


def test_batch_norm_statistics_ignore_padding_in_training():
    model = _model(BN_ALL)
    batch = _batch(3)
    twin = nnx.clone(model)
    logits = _train_forward(model, batch)  # no rng: no dropout
    logits_p = _train_forward(twin, _pad(batch, extra_t=T_MAX + 3 - 12, extra_q=3))
    np.testing.assert_allclose(logits_p, logits, rtol=1e-4, atol=1e-5)
    stats, stats_p = nnx.state(model, nnx.BatchStat), nnx.state(twin, nnx.BatchStat)
    for a, b in zip(jax.tree.leaves(stats), jax.tree.leaves(stats_p), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)


def test_batch_norm_evaluates_with_population_statistics():
    model = _model(BN_ALL)
    for seed in range(3):
        _train_forward(model, _batch(seed))
    a, b = _batch(10), _batch(11)
    b = {k: np.concatenate([a[k][:1], v[1:]]) for k, v in b.items()}  # same first example
    model.eval()
    (la, _), *_ = _outputs(model, a, jax.random.key(0))
    (lb, _), *_ = _outputs(model, b, jax.random.key(0))
    np.testing.assert_allclose(lb[0], la[0], rtol=1e-5, atol=1e-5)
    model.train()  # with batch statistics the rest of the batch does change it
    assert not np.allclose(_train_forward(model, a)[0], _train_forward(model, b)[0], atol=1e-4)


def test_query_state_is_taken_at_its_true_end():
    model = _model(NormSpec("layer"))
    batch = _batch(4, q=Q_MAX)
    _, q = nnx.jit(lambda m, x: m.read(x))(model, batch)
    final_h = nnx.jit(lambda m, x: m.query(m.embed(x))[1][1])
    for i, n in enumerate(batch["query_mask"].sum(1)):
        alone = final_h(model, batch["query"][i : i + 1, :n])  # unpadded, on its own
        np.testing.assert_allclose(q[i], alone[0], rtol=1e-5, atol=1e-6)


def test_candidate_mask_restricts_the_answer():
    free = _model(NormSpec("layer"))
    masked = _model(NormSpec("layer"), answer_mask="candidates")  # same init, same parameters
    batch = _batch(5, b=8)
    free.eval()
    masked.eval()
    (lf, _), *_ = _outputs(free, batch, jax.random.key(0))
    (lm, _), sums, _ = _outputs(masked, batch, jax.random.key(0))
    allowed = np.pad(batch["candidate_mask"], ((0, 0), (OFFSET, V - OFFSET - E)))
    np.testing.assert_allclose(np.asarray(lm)[allowed], np.asarray(lf)[allowed], rtol=1e-6)
    assert np.isneginf(np.asarray(lm)[~allowed]).all()
    assert allowed[np.arange(8), np.asarray(lm).argmax(-1)].all()
    assert not allowed[np.arange(8), np.asarray(lf).argmax(-1)].all()  # the mask mattered
    restricted = np.where(allowed, np.asarray(lf), -np.inf)
    nll = -_np_log_softmax(restricted)[np.arange(8), OFFSET + batch["answer"]]
    np.testing.assert_allclose(sums["nll"], nll.sum(), rtol=1e-5)


def test_output_vocabulary_and_normaliser_placement():
    words, entities = _model(NormSpec("none")), _model(NormSpec("none"), output_vocab="entities")
    assert nnx.eval_shape(lambda m: m(_batch(0)).logits, words).shape == (4, V)
    assert nnx.eval_shape(lambda m: m(_batch(0)).logits, entities).shape == (4, E)
    assert int(words.answer_class(2)) == OFFSET + 2 and int(entities.answer_class(2)) == 2

    def norms(model, kind):
        return {"/".join(map(str, p)) for p, m in nnx.iter_modules(model) if isinstance(m, kind)}

    projections = {f"{n}/norm" for n in
                   ("att_document", "att_query", "out_read", "out_query", "out_mean")}
    bn_lstm, bn_all = _model(NormSpec("batch")), _model(NormSpec("batch", placement="everywhere"))
    assert not norms(bn_lstm, BatchNorm) & projections
    assert norms(bn_all, BatchNorm) & {"att_document/norm"} and projections <= norms(
        bn_all, BatchNorm)
    assert all(n.startswith(("document/", "query/")) for n in norms(bn_all, BatchNorm)
               - projections)  # embedding, similarity and output layer stay plain
    np.testing.assert_allclose(bn_all.att_query.norm.scale[...], 0.1)  # Cooijmans' gamma
    ln = _model(NormSpec("layer", scale_init=0.1))
    assert norms(ln, LayerNorm) and not norms(ln, LayerNorm) & projections
    np.testing.assert_allclose(ln.document.cell.cell_norm.scale[...], 0.1)
    with pytest.raises(ValueError, match="answer_mask"):
        _model(NormSpec("none"), answer_mask="entities")
    with pytest.raises(ValueError, match="do not fit"):
        AttentiveReader(5, entity_offset=3, num_entities=6, hidden=4, norm=NormSpec("none"),
                        rngs=nnx.Rngs(0))


def test_weight_norm_initialises_from_data():
    spec = NormSpec("weight", placement="everywhere")
    model = _model(spec)
    batch = _batch(6)
    spec.data_init(model, model, batch)
    layers = [m for _, m in nnx.iter_modules(model) if isinstance(m, WeightNormDense)]
    assert len(layers) == 2 * 2 + 5  # each LSTM's W_x and W_h, the five projections
    assert not np.allclose(model.att_document.dense.scale[...], 1.0)
    model.eval()
    (logits, _), sums, _ = _outputs(model, batch, jax.random.key(0))
    assert np.isfinite(logits).all() and np.isfinite(sums["nll"])


def test_learns_the_synthetic_corpus(tmp_path):
    """A plain optax loop on the stand-in (entity ids re-shuffled per example, the paper's
    clipping) beats picking a random candidate entity by a wide margin in 400 steps."""
    raw = cnn_qa.write_synthetic(tmp_path / "raw", num_examples=1024, seed=0)
    builder = prepare(cnn_qa.CnnQa, tmp_path / "prepared", manual_dir=raw)
    vocab = load_vocab(builder)
    offset, count = cnn_qa.entity_block(vocab)
    shapes = {"context_buckets": (48,), "query_buckets": (8,)}
    train = cnn_qa.make_pipeline(builder.as_data_source("train"), vocab, batch_size=32,
                                 relabel_entities=True, drop_remainder=True, **shapes)
    valid = list(cnn_qa.make_pipeline(builder.as_data_source("validation"), vocab,
                                      batch_size=128, shuffle=False, **shapes).batches(0))
    model = AttentiveReader(len(vocab), entity_offset=offset, num_entities=count, hidden=48,
                            norm=NormSpec("layer"), rngs=nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(5e-3))
    opt_state = tx.init(params)

    @jax.jit
    def step(params, rest, opt_state, batch, key):
        def loss(p):
            m = nnx.merge(graphdef, p, rest, copy=True)  # may update BN statistics
            value, metrics = objective.loss_fn(m, batch, key)
            return value, (metrics, nnx.state(m, nnx.Not(nnx.Param)))

        grads, (metrics, rest) = jax.grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, metrics

    first = next(iter(train.batches(0)))
    drops = [step(params, rest, opt_state, first, jax.random.key(k))[3]["nll"] for k in (1, 2)]
    assert drops[0] != drops[1]  # dropout in training, from the loss's rng
    steps = 0
    while steps < 400:
        for batch in train.batches(steps // len(train)):
            params, rest, opt_state, metrics = step(params, rest, opt_state, batch,
                                                    jax.random.key(steps))
            steps += 1
            if steps == 400:
                break
    assert np.isfinite(metrics["nll"])
    model = nnx.merge(graphdef, params, rest)
    model.eval()
    result = evaluate(model, objective.metric_sums, valid)
    examples = sum(len(b["answer"]) for b in valid)
    random_candidate = 1 - sum((1 / b["candidate_mask"].sum(1)).sum() for b in valid) / examples
    assert result["error"] < random_candidate - 0.12, (result, random_candidate)
