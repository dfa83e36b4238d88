"""Skip-thoughts: the cost against a numpy reference, padding, encoding, vocabulary expansion,
learning on the synthetic BookCorpus stand-in, and the authors' released encoder imported."""

import collections

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from experiments.skipthought import encode as enc
from experiments.skipthought.model import SkipThoughts
from experiments.skipthought.objective import loss_fn, metric_sums
from experiments.skipthought.release import import_uniskip
from lnorm.data import bookcorpus as bc
from lnorm.data.common import DataError, prepare
from lnorm.data.vocab import Vocab, load_vocab
from lnorm.metrics import evaluate
from lnorm.norms import NormSpec

V, E, H = 13, 5, 7
KEY = jax.random.key(0)


def _model(norm="layer", condition="init", vocab_size=V, seed=0, **kw):
    return SkipThoughts(vocab_size, word_dim=E, hidden=H, norm=NormSpec(norm),
                        condition=condition, rngs=nnx.Rngs(seed), **kw)


def _batch(lengths, width, seed=0, garbage=False):
    """Triples of random word ids (3..V-1), `lengths[field]` valid; the padding is 0 or, with
    `garbage`, random ids that the masks must hide."""
    rng = np.random.default_rng(seed)
    batch = {}
    for field, n in lengths.items():
        ids = rng.integers(3, V, (len(n), width)).astype(np.int32)
        pad = np.arange(width) >= np.asarray(n)[:, None]
        batch[field] = np.where(pad, rng.integers(0, V, ids.shape) if garbage else 0, ids)
        batch[field] = batch[field].astype(np.int32)
        batch[f"{field}_length"] = np.asarray(n, np.int32)
    return batch


LENGTHS = {"prev": [6, 2, 4], "cur": [3, 6, 1], "next": [5, 5, 2]}


# --- an independent numpy forward pass -------------------------------------------------------

def _np(x):
    return np.asarray(x[...], np.float64)


def _np_projection(proj, a):
    """`[N(W a) per slice]` from the parameters of a `lnorm.cells._Projection` (none/layer)."""
    y = a @ _np(proj.dense.kernel)
    if proj.dense.bias is not None:
        y = y + _np(proj.dense.bias)
    out = []
    for norm, part in zip(proj.norms, np.split(y, proj.splits, axis=-1), strict=True):
        if getattr(norm, "scale", None) is not None:  # layer norm, biased variance
            part = (part - part.mean()) / np.sqrt(part.var() + norm.epsilon)
            part = part * _np(norm.scale) + _np(norm.bias)
        out.append(part)
    return out


def _np_gru(rnn, xs, h):
    """The paper's GRU equations step by step over `xs [T, F]` from `h`; the states `[T, H]`."""
    states = []
    for x in xs:
        gx, cx = _np_projection(rnn.cell.input_proj, x)
        gh, ch = _np_projection(rnn.cell.recurrent_proj, h)
        z, r = np.split(1 / (1 + np.exp(-(gx + gh))), 2)
        h = (1 - z) * h + z * np.tanh(cx + r * ch)
        states.append(h)
    return np.stack(states)


def _np_cost(model, batch, shift=0):
    """Summed NLL of both decoders over the batch, one unpadded example at a time, and the
    sentence vectors (the encoder's last state). With `shift`, triple b's decoders get the
    sentence vector of triple b - shift."""
    emb = _np(model.embed.embedding)
    w_out, b_out = _np(model.output.kernel), _np(model.output.bias)
    n = len(batch["cur"])
    contexts = [_np_gru(model.encoder, emb[batch["cur"][b, : batch["cur_length"][b]]],
                        np.zeros(H))[-1] for b in range(n)]
    total = 0.0
    for b in range(n):
        context = contexts[(b - shift) % n]
        for field, decoder in (("prev", model.decoder_prev), ("next", model.decoder_next)):
            target = batch[field][b, : batch[f"{field}_length"][b]]
            inputs = np.concatenate([np.zeros((1, E)), emb[target[:-1]]])  # teacher forcing
            if model.condition == "init":
                states = _np_gru(decoder, inputs, context)
            else:
                steps = np.repeat(context[None], len(target), 0)
                states = _np_gru(decoder, np.concatenate([inputs, steps], 1), np.zeros(H))
            logits = states @ w_out + b_out
            log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
            total -= log_p[np.arange(len(target)), target].sum()
    return total, np.stack(contexts)


@pytest.mark.parametrize(("norm", "condition"),
                         [("none", "init"), ("layer", "init"), ("layer", "every_step")])
def test_cost_matches_numpy_reference(norm, condition):
    model = _model(norm, condition)
    batch = _batch(LENGTHS, 6)
    (loss, metrics), sums, vectors = nnx.jit(_all_outputs)(model, batch)
    reference, contexts = _np_cost(model, batch)
    words = sum(sum(LENGTHS[f]) for f in ("prev", "next"))
    np.testing.assert_allclose(loss, reference, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_per_word"], reference / words, rtol=1e-5)
    np.testing.assert_allclose(metrics["nll_per_triple"], reference / 3, rtol=1e-5)
    assert float(sums["count"]) == words
    np.testing.assert_allclose(sums["nll_per_word"], reference, rtol=1e-5)
    # the decoders given other triples' sentence vectors (rolled by one in the batch)
    np.testing.assert_allclose(sums["nll_per_word_shuffled"], _np_cost(model, batch, 1)[0],
                               rtol=1e-5)
    # the sentence vector is the state at each sentence's true length
    np.testing.assert_allclose(vectors, contexts, rtol=1e-5, atol=1e-6)


def _all_outputs(model, batch):
    vectors = model.encode(batch["cur"], batch["cur_length"])
    return loss_fn(model, batch, KEY), metric_sums(model, batch), vectors


def test_initialisation_as_the_original():
    model = SkipThoughts(V, word_dim=E, hidden=8, norm=NormSpec("none"), rngs=nnx.Rngs(0))
    u = _np(model.encoder.cell.recurrent_proj.dense.kernel)  # [H, 3H]: [U_z, U_r, U_h]
    for block in np.split(u, 3, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(8), atol=1e-5)
    kernels = (model.embed.embedding, model.output.kernel,
               model.encoder.cell.input_proj.dense.kernel)
    for w in kernels:
        assert np.abs(_np(w)).max() <= 0.1 and np.abs(_np(w)).max() > 0.05
    assert not np.any(_np(model.output.bias))


@nnx.jit
def _loss_and_vectors(model, batch):
    return *loss_fn(model, batch, KEY), model.encode(batch["cur"], batch["cur_length"])


@pytest.mark.parametrize("norm", ["none", "layer", "batch", "weight", "rms"])
def test_padding_changes_nothing_and_gradients_are_finite(norm):
    model = _model(norm, t_max=8)
    tight = _batch(LENGTHS, 6, seed=1)
    wide = _batch(LENGTHS, 9, seed=1, garbage=True)
    for f in bc.FIELDS:  # the same valid words, more (garbage) padding
        valid = np.arange(6) < tight[f"{f}_length"][:, None]
        wide[f][:, :6] = np.where(valid, tight[f], wide[f][:, :6])
    NormSpec(norm).data_init(model, lambda: loss_fn(model, tight, KEY))
    l1, m1, v1 = _loss_and_vectors(model, tight)
    l2, m2, v2 = _loss_and_vectors(model, wide)
    np.testing.assert_allclose(l1, l2, rtol=1e-5)
    np.testing.assert_allclose(m1["accuracy"], m2["accuracy"])
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-6)
    if norm != "layer":  # the learning test trains norm=layer
        grads = nnx.jit(nnx.grad(lambda m, b: loss_fn(m, b, KEY)[0]))(model, wide)
        assert all(bool(jnp.all(jnp.isfinite(g))) for g in jax.tree.leaves(grads))


def test_batch_norm_without_t_max_is_a_clear_error():
    with pytest.raises(ValueError, match="t_max"):
        _model("batch")
    with pytest.raises(ValueError, match="condition"):
        _model(condition="sometimes")


# --- encoding ---------------------------------------------------------------------------------

WORDS = [f"w{i}" for i in range(30)]
SENTENCES = ["w1 w2 w3", "W4 w5", "", "w6 zzz w7 w8 w9 w10 w11 w12 w13 w14", "w2", "w3 w3 w3 w3"]


@pytest.fixture(scope="module")
def encoder():
    vocab = Vocab.build([WORDS], specials=(bc.EOS,))
    return _model("layer", vocab_size=len(vocab), seed=1), vocab


def test_encode_is_order_and_batch_independent_and_unit_norm(encoder):
    model, vocab = encoder
    vectors = enc.encode(model, vocab, SENTENCES, batch_size=2, buckets=(16,))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    perm = [3, 0, 5, 2, 1, 4]
    shuffled = enc.encode(model, vocab, [SENTENCES[i] for i in perm], batch_size=16)  # 8, 16
    np.testing.assert_allclose(shuffled, vectors[perm], rtol=1e-5, atol=1e-6)
    # tokenised as in training: lowercased, unknown words are <unk>, <eos> appended
    ids = vocab.encode(["w6", "<unk>", *WORDS[7:15], bc.EOS])
    direct = np.asarray(model.encode(np.array([ids]), np.array([len(ids)])))[0]
    raw = enc.encode(model, vocab, SENTENCES, batch_size=2, buckets=(16,), normalize=False)
    np.testing.assert_allclose(raw[3], direct, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors[3], direct / np.linalg.norm(direct), rtol=1e-5, atol=1e-6)
    lower = enc.encode(model, vocab, ["w4 w5"], batch_size=2, buckets=(16,), normalize=False)
    np.testing.assert_allclose(raw[1], lower[0], rtol=1e-5, atol=1e-6)


def _write_vectors(path, words, vectors, header=True):
    lines = [f"{len(words)} {vectors.shape[1]}"] if header else []
    for word, vector in zip(words, vectors, strict=True):
        lines.append(word + " " + " ".join(f"{x:.8f}" for x in vector) + " ")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.mark.parametrize("header", [True, False])  # word2vec text format / GloVe
def test_vocabulary_expansion_recovers_a_linear_map(encoder, tmp_path, header):
    model, vocab = encoder
    model = nnx.clone(model)  # its embeddings are replaced below
    rng = np.random.default_rng(0)
    weight, bias = rng.normal(size=(4, E)), rng.normal(size=E)
    words = [*WORDS, "new0", "new1", "new word"]
    vectors = rng.normal(size=(len(words), 4))
    table = np.asarray(model.embed.embedding[...]).copy()
    table[vocab.encode(WORDS)] = vectors[: len(WORDS)] @ weight + bias  # exactly linear
    path = tmp_path / "vectors.txt"
    _write_vectors(path, words, vectors, header)
    expanded = enc.expand_vocabulary(table, vocab, path)
    np.testing.assert_allclose(expanded.weight, weight, atol=1e-4)
    np.testing.assert_allclose(expanded.bias, bias, atol=1e-4)
    np.testing.assert_allclose(expanded.embed(["new1", "w3", "nope"]),
                               [vectors[31] @ weight + bias, table[vocab.index["w3"]],
                                table[vocab.unk_id]], atol=1e-4)
    assert set(expanded.words) == {"new0", "new1", "new word"}  # a word may hold a space
    # encode looks the new words up instead of <unk>
    model.embed.embedding[...] = jnp.asarray(table)
    got = enc.encode(model, expanded, ["new0 w1"], normalize=False)[0]
    rows = np.stack([vectors[30] @ weight + bias, table[vocab.index["w1"]],
                     table[vocab.index[bc.EOS]]]).astype(np.float32)
    want = model.encode_embedded(rows[None], np.array([3]))[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    unk = enc.encode(model, vocab, ["new0 w1"], normalize=False)[0]
    assert not np.allclose(got, unk)


@pytest.mark.parametrize(("text", "message"), [
    ("2 3\na 1 2 3\nb 1 2\n", r"vectors\.txt:3: expected a word and 3 numbers"),
    ("a 1 2 3\nb 1 x 3\n", r"vectors\.txt:2: expected a word and 3 numbers"),
    ("3 3\na 1 2 3\nb 1 2 3\n", r"vectors\.txt:1: the header announces 3 vectors"),
    ("", r"vectors\.txt: no word vectors"),
])
def test_malformed_vector_files_name_the_line(encoder, tmp_path, text, message):
    path = tmp_path / "vectors.txt"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        enc.read_word_vectors(path)


def test_binary_vectors_and_too_few_shared_words_are_clear_errors(encoder, tmp_path):
    model, vocab = encoder
    path = tmp_path / "vectors.bin"
    path.write_bytes(b"2 3\nw1 \xff\xfe\x00\x01\n")
    with pytest.raises(DataError, match=r"vectors\.bin:2: expected UTF-8 text"):
        enc.read_word_vectors(path)
    path = tmp_path / "few.txt"
    _write_vectors(path, ["w1", "w2", "x"], np.ones((3, 4)))
    with pytest.raises(DataError, match="only 2 of its words"):
        enc.expand_vocabulary(np.asarray(model.embed.embedding[...]), vocab, path)


# --- learning on the synthetic stand-in -------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    raw = bc.write_synthetic(tmp_path_factory.mktemp("st_raw"), num_examples=600, seed=0)
    cfg = bc.BookCorpusConfig(name="st", validation_size=0.1)
    return prepare(bc.BookCorpus, tmp_path_factory.mktemp("st_data"), manual_dir=raw, config=cfg)


def _unigram_entropy(source):
    """Entropy (nats) of the target words (with <eos>) under their training frequencies."""
    counts = collections.Counter()
    for i in range(len(source)):
        for f in ("prev", "next"):
            counts.update([*source[i][f].tolist(), bc.EOS_ID])
    p = np.array(list(counts.values())) / sum(counts.values())
    return float(-(p * np.log(p)).sum())


def test_learns_to_predict_neighbouring_sentences(synthetic):
    vocab = load_vocab(synthetic)
    source = synthetic.as_data_source()
    model = SkipThoughts(len(vocab), word_dim=16, hidden=32, norm=NormSpec("layer"),
                         rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.chain(optax.clip_by_global_norm(5.0), optax.adam(1e-2)),
                        wrt=nnx.Param)

    @nnx.jit
    def step(model, opt, batch):
        grads = nnx.grad(lambda m: loss_fn(m, batch, KEY)[0])(model)
        opt.update(model, grads)

    pipe = bc.make_pipeline(source["train"], batch_size=32, drop_remainder=True)
    steps, epoch = 0, 0
    while steps < 200:
        for batch in pipe.batches(epoch):
            step(model, opt, batch)
            steps += 1
        epoch += 1
    val = bc.make_pipeline(source["validation"], batch_size=64, shuffle=False)
    nll = evaluate(model, metric_sums, val.batches(0))["nll_per_word"]
    baseline = _unigram_entropy(source["train"])
    assert nll < 0.3 * baseline, (nll, baseline)


# --- the authors' released uni-skip parameters -------------------------------------------------

def _release_files(tmp_path, e=5, h=7):
    """A uni-skip release in the authors' layout, with random parameters."""
    rng = np.random.default_rng(3)
    arrays = {"Wemb": rng.normal(size=(4, e)), "encoder_W": rng.normal(size=(e, 2 * h)),
              "encoder_b": rng.normal(size=2 * h), "encoder_U": 0.5 * rng.normal(size=(h, 2 * h)),
              "encoder_Wx": rng.normal(size=(e, h)), "encoder_Ux": 0.5 * rng.normal(size=(h, h)),
              "encoder_bx": rng.normal(size=h)}
    np.savez(tmp_path / "uni_skip.npz", **{k: v.astype(np.float32) for k, v in arrays.items()})
    words = ["UNK", "<eos>", "The", "cat", "sat", "."]
    table = rng.normal(size=(len(words), e)).astype(np.float32)
    np.save(tmp_path / "utable.npy", table)
    (tmp_path / "dictionary.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return arrays, dict(zip(words, table, strict=True))


def _release_gru(arrays, xs):
    """The authors' `gru_layer` (skipthoughts.py) in numpy: the final state over `xs [T, E]`."""
    h = np.zeros(arrays["encoder_Ux"].shape[0])
    dim = len(h)
    for x in xs:
        preact = h @ arrays["encoder_U"] + x @ arrays["encoder_W"] + arrays["encoder_b"]
        r, u = 1 / (1 + np.exp(-preact[:dim])), 1 / (1 + np.exp(-preact[dim:]))
        candidate = np.tanh((h @ arrays["encoder_Ux"]) * r + x @ arrays["encoder_Wx"]
                            + arrays["encoder_bx"])
        h = u * h + (1 - u) * candidate
    return h


def test_imported_release_encodes_as_the_authors_gru(tmp_path):
    arrays, table = _release_files(tmp_path)
    model, vocab = import_uniskip(tmp_path / "uni_skip.npz", tmp_path / "utable.npy",
                                  tmp_path / "dictionary.txt")
    sentences = ["The cat sat .", "the dog sat"]  # case kept; "the", "dog" are UNK
    got = enc.encode(model, vocab, sentences, lowercase=False, eos=False, normalize=False)
    rows = [[table[w] for w in ("The", "cat", "sat", ".")],
            [table[w] for w in ("UNK", "UNK", "sat")]]
    want = np.stack([_release_gru(arrays, np.stack(r)) for r in rows])
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    with_eos = enc.encode(model, vocab, sentences[:1], lowercase=False, normalize=False)[0]
    np.testing.assert_allclose(with_eos, _release_gru(arrays, np.stack([*rows[0], table["<eos>"]])),
                               rtol=1e-4, atol=1e-5)


def test_a_release_in_another_layout_is_a_clear_error(tmp_path):
    _release_files(tmp_path)
    np.savez(tmp_path / "other.npz", encoder_W=np.zeros((5, 14)))
    with pytest.raises(DataError, match=r"other\.npz: missing encoder_b, encoder_U"):
        import_uniskip(tmp_path / "other.npz", tmp_path / "utable.npy",
                       tmp_path / "dictionary.txt")
    (tmp_path / "short.txt").write_text("UNK\n<eos>\n")
    with pytest.raises(DataError, match=r"short\.txt: 2 words for the 6 rows"):
        import_uniskip(tmp_path / "uni_skip.npz", tmp_path / "utable.npy", tmp_path / "short.txt")
