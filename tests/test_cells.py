"""Every recurrent cell against an independent numpy implementation of its equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm.cells import GRUCell, LSTMCell, StepBatchNorm
from lnorm.norms import Identity, LayerNorm, RMSNorm, WeightNormDense

B, F, H, STEPS, EPS = 3, 5, 4, 4, 1e-5


# --- numpy reference ------------------------------------------------------------------------------


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def arr(v):
    return None if v is None else np.asarray(v[...], np.float64)


def np_dense(dense, a):
    """`a W (+ b)`; for weight norm `W = g v / ||v||` with the norm over each output column."""
    w = arr(dense.kernel)
    if isinstance(dense, WeightNormDense):
        w = w / np.linalg.norm(w, axis=0) * arr(dense.scale)
    bias = arr(getattr(dense, "bias", None))
    return a @ w + (0.0 if bias is None else bias)


def np_norm(norm, a):
    """The normaliser's training-mode formula, written out (docs/paper.md §1)."""
    if isinstance(norm, Identity):
        return a
    if isinstance(norm, LayerNorm):
        mu = a.mean(-1, keepdims=True)
        y = (a - mu) / np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + EPS)
        params = norm
    elif isinstance(norm, RMSNorm):
        y = a / np.sqrt((a**2).mean(-1, keepdims=True) + EPS)
        params = norm
    else:  # StepBatchNorm in training: statistics over the batch at this step, biased variance
        assert isinstance(norm, StepBatchNorm)
        y = (a - a.mean(0)) / np.sqrt(a.var(0) + EPS)
        params = norm.bn
    scale, bias = arr(params.scale), arr(params.bias)
    return y * (1.0 if scale is None else scale) + (0.0 if bias is None else bias)


def np_lstm(cell, xs, variant, carry_normalized):
    c = h = np.zeros((xs.shape[1], cell.hidden_features))
    hs, cs = [], []
    for x in xs:
        gx = np_norm(cell.input_proj.norms[0], np_dense(cell.input_proj.dense, x))
        gh = np_norm(cell.recurrent_proj.norms[0], np_dense(cell.recurrent_proj.dense, h))
        z = gx + gh
        if variant == "per_gate":
            z = np.concatenate(
                [np_norm(n, p) for n, p in zip(cell.gate_norms, np.split(z, 4, -1), strict=True)],
                -1,
            )
        f, i, o, g = np.split(z + arr(cell.bias), 4, -1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        c_hat = np_norm(cell.cell_norm, c)
        h = sigmoid(o) * np.tanh(c_hat)
        if carry_normalized:
            c = c_hat
        hs.append(h)
        cs.append(c)
    return np.stack(hs), np.stack(cs)


def np_gru(cell, xs, variant):
    h = np.zeros((xs.shape[1], cell.hidden_features))
    hs = []
    for x in xs:
        gx, cx = np.split(np_dense(cell.input_proj.dense, x), [2 * H], -1)
        gx, cx = np_norm(cell.input_proj.norms[0], gx), np_norm(cell.input_proj.norms[1], cx)
        rec = np_dense(cell.recurrent_proj.dense, h)
        gh = np_norm(cell.recurrent_proj.norms[0], rec[:, : 2 * H])
        z, r = np.split(sigmoid(gx + gh), 2, -1)
        if variant == "paper":  # Eq. 27: the reset gate scales the normalised U h
            uh = r * np_norm(cell.recurrent_proj.norms[1], rec[:, 2 * H :])
        else:  # U (r * h)
            uh = np_norm(cell.candidate_proj.norms[0], np_dense(cell.candidate_proj.dense, r * h))
        h = (1 - z) * h + z * np.tanh(cx + uh)
        hs.append(h)
    return np.stack(hs)


# --- helpers --------------------------------------------------------------------------------------


def randomize(model, seed=0):
    """Moves every parameter away from its init, so that gains and biases matter."""
    rng = np.random.default_rng(seed)
    state = nnx.state(model, nnx.Param)
    nnx.update(model, jax.tree.map(lambda x: x + 0.3 * rng.normal(size=x.shape), state))
    return model


def inputs(steps=STEPS, seed=1):
    return 2.0 * np.random.default_rng(seed).normal(size=(steps, B, F))


def run_cell(cell, xs):
    state, hs, states = cell.initial_state(B), [], []
    for t, x in enumerate(xs):
        state, h = cell(state, jnp.asarray(x, jnp.float32), t=t)
        hs.append(h)
        states.append(state)
    return np.stack(hs), states


# --- LSTM -----------------------------------------------------------------------------------------

LSTM_CASES = [
    *[dict(norm=n) for n in ("none", "layer", "batch", "weight", "rms")],
    dict(norm="layer", variant="draw"),
    dict(norm="batch", variant="draw"),
    dict(norm="layer", variant="per_gate"),
    dict(norm="layer", variant="per_gate", carry_normalized_cell=True),
    dict(norm="layer", carry_normalized_cell=True),
]


@pytest.mark.parametrize("kw", LSTM_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_lstm_matches_numpy(kw):
    cell = randomize(LSTMCell(F, H, t_max=STEPS, rngs=nnx.Rngs(0), **kw))
    xs = inputs()
    hs, states = run_cell(cell, xs)
    want_h, want_c = np_lstm(
        cell, xs, kw.get("variant", "paper"), kw.get("carry_normalized_cell", False)
    )
    np.testing.assert_allclose(hs, want_h, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(np.stack([c for c, _ in states]), want_c, rtol=2e-4, atol=2e-5)
    fused = (
        kw["norm"] in ("none", "layer", "rms")
        and kw.get("variant") in (None, "draw")
        and not kw.get("carry_normalized_cell")
    )
    assert cell.has_fused_scan == fused
    xs = jnp.asarray(xs, jnp.float32)
    if not fused:
        with pytest.raises(ValueError, match=r"LSTMCell\.scan handles"):
            cell.scan(cell.initial_state(B), xs)
        return
    hs, (c, h) = cell.scan(cell.initial_state(B), xs)
    np.testing.assert_allclose(hs, want_h, rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(c, want_c[-1], rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(h, want_h[-1], rtol=2e-4, atol=2e-5)


def test_lstm_carries_the_unnormalised_cell():
    cell = randomize(LSTMCell(F, H, norm="layer", rngs=nnx.Rngs(0)))
    xs = inputs(steps=1)
    (c, _), _ = cell(cell.initial_state(B), jnp.asarray(xs[0], jnp.float32))
    c_raw = np_lstm(cell, xs, "paper", carry_normalized=False)[1][0]
    c_normed = np_lstm(cell, xs, "paper", carry_normalized=True)[1][0]
    np.testing.assert_allclose(c, c_raw, rtol=2e-4, atol=2e-5)
    assert np.abs(c_raw - c_normed).max() > 0.1


def test_ln_lstm_is_invariant_to_weight_matrix_rescaling():
    """Table 1: layer norm is invariant to re-scaling and re-centring a whole weight matrix."""
    cell = randomize(LSTMCell(F, H, norm="layer", rngs=nnx.Rngs(0)))
    xs = inputs()
    before, _ = run_cell(cell, xs)
    for proj in (cell.input_proj, cell.recurrent_proj):
        proj.dense.kernel[...] = 5.0 * proj.dense.kernel[...] + 0.7
    after, _ = run_cell(cell, xs)
    np.testing.assert_allclose(after, before, rtol=1e-3, atol=1e-4)


# --- GRU ------------------------------------------------------------------------------------------

GRU_CASES = [
    *[dict(norm=n) for n in ("none", "layer", "batch", "weight", "rms")],
    dict(norm="layer", variant="reset_before"),
    dict(norm="none", variant="reset_before"),
]


@pytest.mark.parametrize("kw", GRU_CASES, ids=lambda kw: "-".join(map(str, kw.values())))
def test_gru_matches_numpy(kw):
    cell = randomize(GRUCell(F, H, t_max=STEPS, rngs=nnx.Rngs(0), **kw))
    xs = inputs()
    hs, _ = run_cell(cell, xs)
    np.testing.assert_allclose(
        hs, np_gru(cell, xs, kw.get("variant", "paper")), rtol=2e-4, atol=2e-5
    )


def test_paper_gru_has_no_extra_biases():
    """Eq. 26-28 have no bias besides the layer norms' own: the linear maps must not add one."""
    cell = GRUCell(F, H, norm="layer", rngs=nnx.Rngs(0))
    assert cell.input_proj.dense.bias is None and cell.recurrent_proj.dense.bias is None
    plain = GRUCell(F, H, norm="none", rngs=nnx.Rngs(0))
    assert plain.input_proj.dense.bias is not None


# --- recurrent batch norm -------------------------------------------------------------------------


def test_step_batch_norm_keeps_statistics_per_step():
    t_max, momentum = 3, 0.9
    cell = randomize(
        LSTMCell(
            F, H, norm="batch", t_max=t_max, norm_kwargs={"momentum": momentum}, rngs=nnx.Rngs(0)
        )
    )
    bn = cell.cell_norm
    assert bn.bn.scale.shape == (H,) and bn.bn.mean.shape == (t_max, H)
    xs = inputs(steps=t_max + 2)
    state = cell.initial_state(B)
    batch_means = []
    for t, x in enumerate(xs):
        state, _ = cell(state, jnp.asarray(x, jnp.float32), t=t)
        batch_means.append(np.asarray(state[0]).mean(0))  # c_t, the cell norm's input
    # step t < t_max updated its own copy once from zero; steps >= t_max left the last copy alone
    np.testing.assert_allclose(
        bn.bn.mean[...], (1 - momentum) * np.stack(batch_means[:t_max]), rtol=1e-4, atol=1e-6
    )


def test_step_batch_norm_eval_reuses_last_statistics_beyond_t_max():
    t_max = 3
    norm = StepBatchNorm(H, t_max=t_max, rngs=nnx.Rngs(0))
    mean = np.arange(t_max * H, dtype=np.float32).reshape(t_max, H)
    var = 1.0 + np.arange(t_max * H, dtype=np.float32).reshape(t_max, H) / 10
    norm.bn.mean[...], norm.bn.var[...] = jnp.asarray(mean), jnp.asarray(var)
    norm.eval()
    x = np.random.default_rng(0).normal(size=(B, H)).astype(np.float32)
    for t in (0, 2, 3, 7):
        s = min(t, t_max - 1)
        np.testing.assert_allclose(
            norm(jnp.asarray(x), t=t), (x - mean[s]) / np.sqrt(var[s] + EPS), rtol=1e-5, atol=1e-6
        )
    np.testing.assert_array_equal(norm.bn.mean[...], mean)  # evaluation never updates


def test_step_batch_norm_sequence_call_equals_per_step_calls():
    """The hoisted [T, B, F] call (with a mask) equals T separate calls, statistics included."""
    steps = t_max = 5
    x = jnp.asarray(np.random.default_rng(0).normal(size=(steps, B, H)), jnp.float32)
    mask = jnp.arange(steps)[:, None] < jnp.array([4, 2, 1])  # step 4 is all padding
    seq, per_step = (randomize(StepBatchNorm(H, t_max=t_max, rngs=nnx.Rngs(0))) for _ in range(2))
    y_seq = seq(x, t=jnp.arange(steps), mask=mask)
    y_step = jnp.stack([per_step(x[t], t=t, mask=mask[t]) for t in range(steps)])
    valid = np.asarray(mask)[..., None]
    np.testing.assert_allclose(y_seq * valid, y_step * valid, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seq.bn.mean[...], per_step.bn.mean[...], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(seq.bn.var[...], per_step.bn.var[...], rtol=1e-5, atol=1e-6)
    # statistics of step 0 come from all 3 rows, step 3 from row 0 only, step 4 from none
    momentum = seq.bn.momentum
    np.testing.assert_allclose(seq.bn.mean[0], (1 - momentum) * x[0].mean(0), rtol=1e-5)
    np.testing.assert_allclose(seq.bn.mean[3], (1 - momentum) * x[3, 0], rtol=1e-5)
    np.testing.assert_array_equal(seq.bn.mean[4], 0.0)
    np.testing.assert_array_equal(seq.bn.var[4], 1.0)


# --- gradients and errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: LSTMCell(F, H, norm="layer", rngs=nnx.Rngs(0)),
        lambda: LSTMCell(F, H, norm="batch", t_max=2, rngs=nnx.Rngs(0)),
        lambda: LSTMCell(F, H, norm="weight", rngs=nnx.Rngs(0)),
        lambda: GRUCell(F, H, norm="layer", rngs=nnx.Rngs(0)),
        lambda: GRUCell(F, H, norm="rms", variant="reset_before", rngs=nnx.Rngs(0)),
    ],
)
def test_gradients_are_finite_and_reach_every_parameter(make):
    cell = make()
    x = jnp.asarray(inputs(steps=2), jnp.float32)

    def loss(cell):
        state = cell.initial_state(B)
        total = 0.0
        for t in range(2):
            state, h = cell(state, x[t], t=t)
            total = total + jnp.sum(h**2)
        return total

    grads = jax.tree.leaves(nnx.grad(loss)(cell))
    assert all(np.isfinite(g).all() for g in grads)
    assert all(np.abs(g).max() > 0 for g in grads)


def test_bad_options_raise_clear_errors():
    with pytest.raises(ValueError, match="norm='banana'"):
        LSTMCell(F, H, norm="banana", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="variant='peephole'"):
        GRUCell(F, H, variant="peephole", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="t_max"):
        LSTMCell(F, H, norm="batch", rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="variant='draw'"):
        LSTMCell(F, H, norm="none", variant="draw", rngs=nnx.Rngs(0))
    cell = LSTMCell(F, H, norm="batch", t_max=2, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="time step"):
        cell(cell.initial_state(B), jnp.ones((B, F)))
