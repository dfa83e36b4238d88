"""Order embeddings: energy and hinge loss against numpy double loops, the embeddings' geometry
(non-negative unit vectors), padding, the original's initialisation, every normaliser, per-tensor
clipping, jit, and learning to retrieve on the synthetic COCO stand-in."""

import numpy as np
import optax
import pytest
from flax import nnx

from experiments.order_embeddings import objective
from experiments.order_embeddings.model import OrderEmbedding
from lnorm.data import coco
from lnorm.data.common import prepare
from lnorm.data.vocab import load_vocab
from lnorm.eval.retrieval import cosine_scores, order_scores
from lnorm.initializers import block_orthogonal
from lnorm.norms import NORMS, NormSpec
from lnorm.optim import clip_by_tensor_norm

VOCAB, FEATURES, DIM, WORDS = 20, 12, 8, 6
SCORES = {"order": order_scores, "cosine": cosine_scores}  # [images, captions], the evaluation's

# Compiled once each (eager calls of a scanned model cost more CPU than compiling it).
_forward = nnx.jit(lambda model, b: model(b["image"], b["caption"], b["caption_length"]))
_loss = nnx.jit(objective.loss_fn)
_sums = nnx.jit(objective.metric_sums)
_embed_captions = nnx.jit(objective.embed_captions)
_embed_images = nnx.jit(objective.embed_images)


def _model(method="order", norm="layer", **kw):
    return OrderEmbedding(
        VOCAB,
        norm=NormSpec(norm),
        feature_dim=FEATURES,
        dim=DIM,
        word_dim=WORDS,
        method=method,
        rngs=nnx.Rngs(0),
        **kw,
    )


def _batch(size=5, length=7, seed=0):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, length + 1, size)
    tokens = rng.integers(3, VOCAB, (size, length)) * (np.arange(length) < lengths[:, None])
    return {
        "image": rng.normal(size=(size, FEATURES)).astype(np.float32),
        "caption": tokens.astype(np.int32),
        "caption_length": lengths.astype(np.int32),
        "image_index": np.arange(size, dtype=np.int32),
    }


def _reference(s, im, image_index, method, margin):
    """Errors and both hinge sums by explicit loops over (caption i, image j)."""
    n = len(s)
    errs = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            if method == "order":
                errs[i, j] = np.sum(np.maximum(0.0, s[i] - im[j]) ** 2)
            else:
                errs[i, j] = -np.dot(s[i], im[j])
    hinge_caption = hinge_image = 0.0
    for i in range(n):
        for j in range(n):
            if image_index[i] != image_index[j]:
                hinge_caption += max(0.0, margin + errs[j, j] - errs[i, j])
                hinge_image += max(0.0, margin + errs[i, i] - errs[i, j])
    return errs, hinge_caption, hinge_image


def test_order_energy_direction():
    # Zero when the image dominates the caption in every coordinate, positive otherwise.
    s, im = np.array([[0.2, 0.1, 0.0]]), np.array([[0.5, 0.1, 0.3]])
    assert float(objective.order_energy(s, im)[0, 0]) == 0.0
    np.testing.assert_allclose(objective.order_energy(im, s), [[0.09 + 0.09]], rtol=1e-6)


@pytest.mark.parametrize("method", ["order", "cosine"])
def test_loss_matches_double_loop(method):
    model, batch = _model(method), _batch(6)
    batch["image_index"] = np.array([0, 1, 2, 1, 3, 4], np.int32)  # pairs 1 and 3: one image
    batch["image"][3] = batch["image"][1]
    s, im = (np.asarray(x, np.float64) for x in _forward(model, batch))
    errs, hinge_caption, hinge_image = _reference(s, im, batch["image_index"], method, model.margin)
    np.testing.assert_allclose(objective.errors(s, im, method), errs, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(SCORES[method](im, s), -errs.T, rtol=1e-5, atol=1e-7)
    loss, metrics = _loss(model, batch, None)
    assert hinge_caption > 0 and hinge_image > 0
    np.testing.assert_allclose(metrics["hinge_caption"], hinge_caption, rtol=1e-4)
    np.testing.assert_allclose(metrics["hinge_image"], hinge_image, rtol=1e-4)
    np.testing.assert_allclose(loss, hinge_caption + hinge_image, rtol=1e-4)
    np.testing.assert_allclose(metrics["positive_error"], np.mean(np.diag(errs)), rtol=1e-4)
    sums = _sums(model, batch)
    assert float(sums["count"]) == 6
    np.testing.assert_allclose(sums["hinge_image"], hinge_image, rtol=1e-4)
    # Without image_index every off-diagonal pair is a negative (the original's batches).
    del batch["image_index"]
    _, plain_caption, _ = _reference(s, im, np.arange(6), method, model.margin)
    np.testing.assert_allclose(
        _loss(model, batch, None)[1]["hinge_caption"], plain_caption, rtol=1e-4
    )
    assert model.margin == {"order": 0.05, "cosine": 0.2}[method]


@pytest.mark.parametrize("method", ["order", "cosine"])
def test_embeddings_are_unit_vectors_nonnegative_for_order(method):
    model, batch = _model(method), _batch(16)
    s, im = _forward(model, batch)
    for x in (s, im):
        assert x.shape == (16, DIM)
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, rtol=1e-5)
        assert (np.min(x) >= 0) == (method == "order")
    # The image side sees the unit-normalised feature: its scale does not matter.
    np.testing.assert_allclose(model.embed_images(7.0 * batch["image"]), im, rtol=1e-5, atol=1e-6)


def test_caption_embedding_is_the_state_at_the_true_length():
    model, batch = _model(), _batch(5, length=6)
    got = _embed_captions(model, batch["caption"], batch["caption_length"])
    # Longer padding filled with garbage ids changes nothing ...
    garbage = np.full((5, 4), VOCAB - 1, np.int32)
    padded = np.concatenate([batch["caption"], garbage], axis=1)
    np.testing.assert_allclose(
        _embed_captions(model, padded, batch["caption_length"]), got, rtol=1e-5, atol=1e-6
    )
    # ... and a caption alone, unpadded, gives its row (the shortest and the longest).
    for k in (np.argmin(batch["caption_length"]), np.argmax(batch["caption_length"])):
        n = batch["caption_length"][k]
        alone = _embed_captions(model, batch["caption"][k : k + 1, :n], np.array([n]))
        np.testing.assert_allclose(alone[0], got[k], rtol=1e-5, atol=1e-6)


def test_initialisation_follows_the_original():
    model = _model(norm="none")
    cell = model.encoder.cell
    for w in (model.words.embedding, cell.input_proj.dense.kernel):
        assert np.abs(w[...]).max() <= 0.1 and np.abs(w[...]).max() > 0.09
    recurrent = np.asarray(cell.recurrent_proj.dense.kernel[...])
    assert recurrent.shape == (DIM, 3 * DIM)
    for block in np.split(recurrent, 3, axis=1):
        np.testing.assert_allclose(block.T @ block, np.eye(DIM), atol=1e-5)
    bound = np.sqrt(6.0 / (FEATURES + DIM))  # Xavier uniform
    kernel = np.abs(model.image_proj.kernel[...])
    assert kernel.max() <= bound and kernel.max() > 0.8 * bound
    assert not np.any(model.image_proj.bias[...])
    with pytest.raises(ValueError, match="not"):
        block_orthogonal(None, (4, 6))


@pytest.mark.parametrize("norm", NORMS)
def test_every_normaliser_builds_and_embeds(norm):
    model, batch = _model(norm=norm, t_max=8), _batch(6)
    spec = NormSpec(norm)
    spec.data_init(model, model, batch["image"], batch["caption"], batch["caption_length"])
    loss, _ = _loss(model, batch, None)
    assert np.isfinite(float(loss))
    with pytest.raises(ValueError, match="method"):
        _model(method="euclid")


def test_jit_matches_eager():
    model, batch = _model(), _batch(6)
    eager, _ = objective.loss_fn(model, batch, None)
    jitted, metrics = _loss(model, batch, None)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5)
    assert set(metrics) == {"hinge_caption", "hinge_image", "positive_error"}


def test_clip_by_tensor_norm_matches_numpy():
    rng = np.random.default_rng(0)
    grads = {"big": rng.normal(size=(5, 4)) * 3, "small": rng.normal(size=3) * 0.1}
    clipped, _ = clip_by_tensor_norm(2.0).update(grads, optax.EmptyState())
    big = grads["big"] * 2.0 / np.sqrt(np.sum(grads["big"] ** 2))
    np.testing.assert_allclose(clipped["big"], big, rtol=1e-5)
    np.testing.assert_allclose(clipped["small"], grads["small"], rtol=1e-6)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    raw = coco.write_synthetic(
        tmp_path_factory.mktemp("oe_raw"), num_examples=200, seed=0, feature_dim=64
    )
    return prepare(
        coco.Coco,
        tmp_path_factory.mktemp("oe_out"),
        manual_dir=raw,
        config=coco.CocoConfig(name="dim64", feature_dim=64),
    )


@pytest.mark.parametrize(("norm", "method"), [("layer", "order"), ("none", "cosine")])
def test_learns_to_retrieve_synthetic_pairs(synthetic, norm, method):
    vocab = load_vocab(synthetic)
    model = OrderEmbedding(
        len(vocab),
        norm=NormSpec(norm),
        feature_dim=64,
        dim=64,
        word_dim=32,
        method=method,
        rngs=nnx.Rngs(0),
    )
    opt = nnx.Optimizer(
        model, optax.chain(clip_by_tensor_norm(2.0), optax.adam(1e-3)), wrt=nnx.Param
    )

    @nnx.jit
    def step(model, opt, batch):
        grads = nnx.grad(lambda m: objective.loss_fn(m, batch, None)[0])(model)
        opt.update(model, grads)

    pipe = coco.make_pipeline(
        synthetic.as_data_source("train"),
        vocab,
        batch_size=32,
        drop_remainder=True,
        buckets=(8, 16),
    )
    steps = 0
    for epoch in range(100):
        for batch in pipe.batches(epoch):
            step(model, opt, batch)
            steps += 1
        if steps >= 300:
            break

    test = coco.split_arrays(synthetic.as_data_source("test"), vocab)  # 50 images, 250 captions
    s = _embed_captions(model, test["caption"], test["caption_length"])
    im = _embed_images(model, test["image"])
    scores = SCORES[method](np.asarray(im), np.asarray(s))  # [50 images, 250 captions]
    image_r1 = np.mean(scores.argmax(0) == test["image_index"])  # caption -> its image
    caption_r1 = np.mean(test["image_index"][scores.argmax(1)] == np.arange(50))  # image -> caption
    assert image_r1 > 0.3 and caption_r1 > 0.3, (image_r1, caption_r1)  # chance: 0.02
