"""Handwriting synthesis: the mixture density against scipy/numpy, the whole network against a
numpy reference (skip connections, window, output), padding, NaN propagation, normalisers,
sampling that stops at the end of the text with its pictures, and learning on the synthetic
IAM-OnDB stand-in."""

import xml.etree.ElementTree as ET

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from PIL import Image
from scipy.stats import multivariate_normal

from experiments.handwriting import objective
from experiments.handwriting.model import HandwritingSynthesis, count_params, output_size
from experiments.handwriting.sampling import (
    phi_heatmap_png,
    sample,
    strokes_to_png,
    strokes_to_svg,
)
from lnorm.data import iam_ondb as iam
from lnorm.data.common import prepare
from lnorm.data.vocab import load_vocab
from lnorm.norms import NormSpec

VOCAB, HIDDEN, K, M = 9, 12, 3, 4
loss_fn = nnx.jit(objective.loss_fn)  # one program per shape: eager ops compile one by one


def _model(norm="layer", **kw):
    kw = {"hidden": HIDDEN, "window_mixtures": K, "output_mixtures": M, **kw}
    return HandwritingSynthesis(VOCAB, norm=NormSpec(norm), rngs=nnx.Rngs(0), **kw)


def _batch(lengths=(9, 6), char_lengths=(4, 2), seed=0, t=None, u=None):
    rng = np.random.default_rng(seed)
    t, u = t or max(lengths), u or max(char_lengths)
    mask = np.arange(t) < np.array(lengths)[:, None]
    strokes = rng.normal(size=(len(lengths), t, 3)).astype(np.float32)
    strokes[..., 2] = rng.random(mask.shape) < 0.3
    chars_mask = np.arange(u) < np.array(char_lengths)[:, None]
    chars = rng.integers(2, VOCAB, size=chars_mask.shape)
    return {"strokes": strokes * mask[..., None], "strokes_mask": mask,
            "chars": chars * chars_mask, "chars_mask": chars_mask}


def _random_outputs(rng, shape, m):
    """Outputs whose log sigma and rho_hat stay inside the clamps."""
    y = rng.normal(size=(*shape, output_size(m))).astype(np.float32)
    y[..., 1 + 3 * m : 1 + 5 * m] = rng.uniform(-1.5, 1.0, size=(*shape, 2 * m))
    return y


def test_bivariate_log_prob_matches_scipy():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x, mu = rng.normal(size=2), rng.normal(size=2)
        s, rho = np.exp(rng.uniform(-2, 1, size=2)), rng.uniform(-0.95, 0.95)
        cov = [[s[0] ** 2, rho * s[0] * s[1]], [rho * s[0] * s[1], s[1] ** 2]]
        got = objective.bivariate_normal_log_prob(*x, *mu, *np.log(s), rho)
        np.testing.assert_allclose(got, multivariate_normal(mu, cov).logpdf(x), rtol=1e-5)


def _numpy_mixture(y, bias):
    """(pi, mu1, mu2, sigma1, sigma2, rho, p_eos) of outputs `y`, in float64."""
    e_hat, pi_hat, mu1, mu2, s1, s2, rho_hat = np.split(
        y.astype(np.float64), [1, *range(1 + M, 6 * M + 1, M)], axis=-1)
    pi = np.exp(pi_hat * (1 + bias))
    pi /= pi.sum(-1, keepdims=True)
    p_eos = 1 / (1 + np.exp(-e_hat[..., 0]))
    return pi, mu1, mu2, np.exp(s1 - bias), np.exp(s2 - bias), np.tanh(rho_hat), p_eos


def test_point_nll_against_a_direct_mixture_sum():
    rng = np.random.default_rng(1)
    y = _random_outputs(rng, (5, 7), M)
    target = rng.normal(size=(5, 7, 3)).astype(np.float32)
    target[..., 2] = rng.random((5, 7)) < 0.5
    pi, mu1, mu2, s1, s2, rho, p_eos = _numpy_mixture(y, 0.0)
    z1, z2 = (target[..., :1] - mu1) / s1, (target[..., 1:2] - mu2) / s2
    dens = np.exp(-(z1**2 + z2**2 - 2 * rho * z1 * z2) / (2 * (1 - rho**2)))
    dens /= 2 * np.pi * s1 * s2 * np.sqrt(1 - rho**2)
    eos = np.where(target[..., 2] == 1, p_eos, 1 - p_eos)
    expected = -np.log((pi * dens).sum(-1) * eos)
    np.testing.assert_allclose(objective.point_nll(y, target), expected, rtol=1e-5, atol=1e-5)


def test_sampling_bias_sharpens_as_graves():
    y = _random_outputs(np.random.default_rng(2), (3,), M)
    for bias in (0.0, 1.5):
        pi, mu1, _, s1, s2, rho, _ = _numpy_mixture(y, bias)
        d = objective.mixture(jnp.asarray(y), bias=bias)
        np.testing.assert_allclose(np.exp(d.log_pi), pi, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(np.exp(d.log_sigma1), s1, rtol=1e-5)
        np.testing.assert_allclose(np.exp(d.log_sigma2), s2, rtol=1e-5)
        np.testing.assert_allclose(d.mu1, mu1, rtol=1e-6)
        np.testing.assert_allclose(d.rho, rho, rtol=1e-5, atol=1e-7)


def _lstm(x, h, c, cell):
    z = x @ np.asarray(cell.input_proj.dense.kernel) + h @ np.asarray(
        cell.recurrent_proj.dense.kernel) + np.asarray(cell.bias)
    f, i, o, g = np.split(z, 4, axis=-1)
    sig = lambda a: 1 / (1 + np.exp(-a))
    c = sig(f) * c + sig(i) * np.tanh(g)
    return sig(o) * np.tanh(c), c


def _numpy_network(model, strokes, chars):
    """Graves' equations in numpy, step by step (norm='none', no padding)."""
    b, t_len, _ = strokes.shape
    layers, u_len = len(model.cells), chars.shape[1]
    onehot = np.eye(VOCAB)[chars]
    hs, cs = np.zeros((layers, b, HIDDEN)), np.zeros((layers, b, HIDDEN))
    kappa, w = np.zeros((b, K)), np.zeros((b, VOCAB))
    ys, phis, kappas = [], [], []
    u = np.arange(1, u_len + 2)
    for t in range(t_len):
        x = strokes[:, t]
        hs[0], cs[0] = _lstm(np.concatenate([x, w], -1), hs[0], cs[0], model.cells[0])
        p = np.exp(hs[0] @ np.asarray(model.window.kernel) + np.asarray(model.window.bias))
        alpha, beta, kappa_hat = np.split(p, 3, axis=-1)
        kappa = kappa + kappa_hat
        phi = (alpha[..., None] * np.exp(-beta[..., None] * (kappa[..., None] - u) ** 2)).sum(1)
        w = np.einsum("bu,buv->bv", phi[:, :u_len], onehot)
        for n in range(1, layers):
            inputs = np.concatenate([x, hs[n - 1], w], -1)
            hs[n], cs[n] = _lstm(inputs, hs[n], cs[n], model.cells[n])
        out = np.concatenate(list(hs), -1)
        ys.append(out @ np.asarray(model.output.kernel) + np.asarray(model.output.bias))
        phis.append(phi)
        kappas.append(kappa)
    return np.stack(ys, 1), np.stack(phis, 1), np.stack(kappas, 1)


def test_network_matches_numpy_reference_and_window_moves_forward():
    model = _model("none")
    batch = _batch(lengths=(5, 5), char_lengths=(4, 4))
    y_ref, phi_ref, kappa_ref = _numpy_network(model, batch["strokes"], batch["chars"])

    @nnx.jit
    def run(model, points, chars):
        text = model.encode_text(chars)
        carry, h, phi = model.scan(model.initial_carry(2), points, text)
        return model.output(h), phi, carry[1]

    y, phi, kappa = run(model, batch["strokes"], batch["chars"])
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(phi, phi_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(kappa, kappa_ref[:, -1], rtol=1e-5)
    assert np.all(np.diff(kappa_ref, axis=1) > 0)  # kappa only moves forward


def test_paper_scale_parameter_count():
    hid, v, k, m = 400, 57, 10, 20
    lstm = lambda d_in: 4 * hid * (d_in + hid) + 4 * hid
    expected = (lstm(3 + v) + 2 * lstm(3 + v + hid) + hid * 3 * k + 3 * k
                + 3 * hid * (1 + 6 * m) + (1 + 6 * m))
    build = lambda: HandwritingSynthesis(v, norm=NormSpec("none"), rngs=nnx.Rngs(0))
    assert count_params(nnx.eval_shape(build)) == expected
    assert expected == 3_650_151  # Graves: "~3.7M"; LN adds 21,600 gains and biases


def test_padding_changes_nothing():
    # with batch norm, where padded points could reach shared statistics
    model = _model("batch", t_max=12)
    batch = _batch()
    loss, metrics = loss_fn(model, batch, None)
    # longer padding and a padded third row, all filled with garbage
    rng = np.random.default_rng(5)
    garbage = {"strokes": 100 * rng.normal(size=(3, 14, 3)).astype(np.float32),
               "chars": rng.integers(0, VOCAB, size=(3, 6))}
    padded = {}
    for key, junk in garbage.items():
        n = batch[key].shape[1]
        mask = np.zeros(junk.shape[:2], bool)
        mask[:2, :n] = batch[f"{key}_mask"]
        real = np.zeros_like(junk)
        real[:2, :n] = batch[key]
        padded[key] = np.where(mask[..., None] if junk.ndim == 3 else mask, real, junk)
        padded[f"{key}_mask"] = mask
    loss2, metrics2 = loss_fn(_model("batch", t_max=12), padded, None)
    np.testing.assert_allclose(loss2, loss, rtol=1e-6)
    np.testing.assert_allclose(metrics2["nll_per_point"], metrics["nll_per_point"], rtol=1e-6)
    sums = nnx.jit(objective.metric_sums)(model, batch)
    assert float(sums["count"]) == 2 and float(sums["points"]) == 8 + 5
    np.testing.assert_allclose(sums["nll"] / 2, loss, rtol=1e-6)
    np.testing.assert_allclose(objective.with_per_point(
        {k: float(v) / 2 for k, v in sums.items() if k != "count"})["nll_per_point"],
        metrics["nll_per_point"], rtol=1e-6)


def test_nan_parameter_makes_the_loss_nan():
    model = _model()
    model.cells[2].bias[...] = model.cells[2].bias[...].at[5].set(jnp.nan)
    loss, metrics = loss_fn(model, _batch(), None)
    assert np.isnan(loss) and np.isnan(metrics["nll_per_point"])


@pytest.mark.parametrize("norm", ["none", "rms", "weight"])
def test_other_normalisers_run(norm):
    loss, _ = loss_fn(_model(norm, layers=2), _batch(lengths=(4, 3)), None)
    assert np.isfinite(loss)


def test_clear_errors():
    with pytest.raises(ValueError, match="t_max"):
        _model("batch")
    with pytest.raises(ValueError, match="placement"):
        HandwritingSynthesis(VOCAB, norm=NormSpec("layer", placement="everywhere"),
                             rngs=nnx.Rngs(0))


def test_output_grad_clip_bounds_each_sequence_derivative():
    w = jnp.array([-3.0, 0.5, 4.0])
    grad = jax.grad(lambda x: jnp.sum(objective.clip_gradient(x, 1.0) * w))(jnp.zeros(3))
    np.testing.assert_allclose(grad, [-1.0, 0.5, 1.0])
    bound = 1e-3 * 13 / 2  # 13 predicted points, each derivative within 1e-3 per sequence
    for clip, inside in ((1e-3, True), (None, False)):
        model = _model(output_grad_clip=clip, layers=1)
        grads = nnx.jit(nnx.grad(lambda m: objective.loss_fn(m, _batch(), None)[0]))(model)
        assert np.all(np.abs(grads.output.bias[...]) <= bound) == inside


def _forced_window_model(pace=0.5):
    """A model whose window moves `pace` characters per point, whatever it reads."""
    model = _model()
    model.window.kernel[...] = jnp.zeros_like(model.window.kernel[...])
    model.window.bias[...] = jnp.zeros(3 * K).at[2 * K :].set(np.log(pace))
    return model


def test_sampling_stops_at_the_end_of_the_text_and_draws(tmp_path):
    text = [3, 4, 5]
    kappa = 0.5 * np.arange(1, 100)
    u = np.arange(1, len(text) + 2)
    phi = np.exp(-((kappa[:, None] - u) ** 2))
    expected = int(np.argmax(phi[:, -1] > phi[:, :-1].max(1)))  # points before the stop
    out = sample(_forced_window_model(), text, jax.random.key(0), max_steps=40, bias=1.0)
    assert out.finished and len(out.points) == expected < 40
    assert out.phi.shape == (expected, len(text)) and out.points.shape == (expected, 3)
    assert set(np.unique(out.points[:, 2])) <= {0.0, 1.0}
    primed = sample(_forced_window_model(), text, jax.random.key(1), max_steps=40,
                    prime=(np.zeros((3, 3), np.float32), np.array([2, 2])))
    assert primed.finished and primed.phi.shape[1] == 5 and len(primed.points) < 40
    capped = sample(_forced_window_model(pace=0.01), text, jax.random.key(0), max_steps=40)
    assert not capped.finished and len(capped.points) == 40

    points = np.array([[0, 0, 0], [1, 1, 0], [1, 0, 1], [2, 0, 1], [0, 1, 0], [1, 1, 1]], float)
    root = ET.fromstring(strokes_to_svg(points, title="a & b"))
    assert root.tag.endswith("svg") and len(root.findall(".//{*}path")) == 2
    assert len(root.findall(".//{*}circle")) == 1  # the one-point stroke is a dot
    ET.fromstring(strokes_to_svg(out.points))
    strokes_to_png(out.points, tmp_path / "hw.png")
    phi_heatmap_png(out.phi, "abc", tmp_path / "phi.png")
    for name in ("hw.png", "phi.png"):
        with Image.open(tmp_path / name) as img:
            assert img.format == "PNG" and min(img.size) > 10


@pytest.fixture(scope="module")
def synthetic_batches(tmp_path_factory):
    raw = iam.write_synthetic(tmp_path_factory.mktemp("raw"), num_examples=48, seed=0)
    cfg = iam.IamOnDBConfig(name="synthetic", validation_fraction=0.25)
    builder = prepare(iam.IamOnDB, tmp_path_factory.mktemp("data"), manual_dir=raw, config=cfg)
    pipe = iam.make_pipeline(builder.as_data_source()["train"], batch_size=8, seed=0,
                             drop_remainder=True, max_points=64, buckets=(64,))
    return len(load_vocab(builder)), list(pipe.batches(epoch=0))


def _single_gaussian_nll_per_point(batches):
    """Per-point NLL of the best single bivariate Gaussian and Bernoulli, fitted to the targets."""
    targets = np.concatenate([b["strokes"][:, 1:][b["strokes_mask"][:, 1:]] for b in batches])
    gauss = multivariate_normal(targets[:, :2].mean(0), np.cov(targets[:, :2].T, bias=True))
    p = targets[:, 2].mean()
    bern = np.where(targets[:, 2] == 1, np.log(p), np.log(1 - p))
    return -np.mean(gauss.logpdf(targets[:, :2]) + bern)


def test_learns_the_synthetic_handwriting(synthetic_batches):
    vocab_size, batches = synthetic_batches
    model = HandwritingSynthesis(vocab_size, norm=NormSpec("layer"), hidden=32, layers=2,
                                 window_mixtures=3, output_mixtures=5, kappa_step_init=0.25,
                                 rngs=nnx.Rngs(0))
    opt = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, opt, batch):  # metrics of the parameters before the update
        grads, metrics = nnx.grad(objective.loss_fn, has_aux=True)(model, batch, None)
        opt.update(model, grads)
        return metrics

    history = [float(train_step(model, opt, batches[i % len(batches)])["nll_per_point"])
               for i in range(200)]
    initial, final = history[0], np.mean(history[-len(batches):])
    baseline = _single_gaussian_nll_per_point(batches)
    assert np.all(np.isfinite(history))
    assert final < baseline - 1.0 and final < initial - 2.0, (initial, baseline, final)
