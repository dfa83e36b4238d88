"""Every recurrent cell against an independent numpy implementation of its equations, with the
normaliser placement written from the paper (docs/paper.md §1.3-§1.6), not read from the cell."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm.cells import GRUCell, LSTMCell, StepBatchNorm, _gates, _gates_grad

B, F, H, STEPS, EPS = 3, 5, 4, 4, 1e-5


# --- numpy reference ------------------------------------------------------------------------------


def sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def arr(v):
    return None if v is None else np.asarray(v[...], np.float64)


# The references decide which normaliser sits where from the paper's equations and the test
# case's `norm`/`variant`, never from the cell under test: they read only parameter values from
# the cell, so a normaliser the cell adds, drops or moves changes its output and fails the test.


def np_dense(kind, dense, a, bias):
    """`a W (+ b)`; for weight norm `W = g v / ||v||` with the norm over each output column."""
    w = arr(dense.kernel)
    if kind == "weight":
        w = w / np.linalg.norm(w, axis=0) * arr(dense.scale)
    return a @ w + (arr(dense.bias) if bias else 0.0)


def np_norm(kind, a, module, bias=True):
    """Normaliser `kind`'s training-mode formula (docs/paper.md §1.1, §2), with the gain (and
    the bias, where the equations have one) read from `module`; weight norm acts on the
    weights, so on activations it is the identity, as "none"."""
    if kind in ("none", "weight"):
        return a
    if kind == "layer":
        mu = a.mean(-1, keepdims=True)
        y = (a - mu) / np.sqrt(((a - mu) ** 2).mean(-1, keepdims=True) + EPS)
    elif kind == "rms":
        y = a / np.sqrt((a**2).mean(-1, keepdims=True) + EPS)
    else:  # recurrent batch norm in training: statistics over the batch at this step
        assert kind == "batch"
        y = (a - a.mean(0)) / np.sqrt(a.var(0) + EPS)
        module = module.bn
    return y * arr(module.scale) + (arr(module.bias) if bias else 0.0)


def np_lstm(cell, xs, norm, variant="paper", carry_normalized=False):
    """docs/paper.md §1.3 (paper: `N(W_h h) + N(W_x x) + b`, `h = s(o) tanh(N(c))`, raw `c`
    carried; Cooijmans et al.'s batch norm has no bias on the two terms), §1.5 (draw: the
    cell's normaliser only) and §1.6 (per_gate: one normaliser per gate of the sum)."""
    term_norm = norm if variant == "paper" else "none"
    term_bias = norm != "batch"
    c = h = np.zeros((xs.shape[1], cell.hidden_features))
    hs, cs = [], []
    for x in xs:
        gx = np_dense(norm, cell.input_proj.dense, x, bias=False)
        gh = np_dense(norm, cell.recurrent_proj.dense, h, bias=False)
        z = (np_norm(term_norm, gx, cell.input_proj.norms[0], term_bias)
             + np_norm(term_norm, gh, cell.recurrent_proj.norms[0], term_bias))
        if variant == "per_gate":
            z = np.concatenate(
                [np_norm(norm, p, n) for n, p in zip(cell.gate_norms, np.split(z, 4, -1),
                                                     strict=True)], -1)
        f, i, o, g = np.split(z + arr(cell.bias), 4, -1)
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
        c_hat = np_norm(norm, c, cell.cell_norm)
        h = sigmoid(o) * np.tanh(c_hat)
        if carry_normalized:
            c = c_hat
        hs.append(h)
        cs.append(c)
    return np.stack(hs), np.stack(cs)


def np_gru(cell, xs, norm, variant="paper"):
    """docs/paper.md §1.4: `[z, r] = N(W_h h) + N(W_x x)`, `h~ = tanh(N(W x) + s(r) N(U h))`,
    each term with one bias (the normaliser's, the linear map's for none/weight);
    `reset_before` (§1.6): `h~ = tanh(N(W x) + N(U (s(r) h)))`."""
    dense_bias = norm in ("none", "weight")
    h = np.zeros((xs.shape[1], cell.hidden_features))
    hs = []
    for x in xs:
        gx, cx = np.split(np_dense(norm, cell.input_proj.dense, x, dense_bias), [2 * H], -1)
        gx = np_norm(norm, gx, cell.input_proj.norms[0])
        cx = np_norm(norm, cx, cell.input_proj.norms[1])
        rec = np_dense(norm, cell.recurrent_proj.dense, h, dense_bias)
        gh = np_norm(norm, rec[:, : 2 * H], cell.recurrent_proj.norms[0])
        z, r = np.split(sigmoid(gx + gh), 2, -1)
        if variant == "paper":  # the reset gate scales the normalised U h
            uh = r * np_norm(norm, rec[:, 2 * H :], cell.recurrent_proj.norms[1])
        else:
            uh = np_norm(norm, np_dense(norm, cell.candidate_proj.dense, r * h, dense_bias),
                         cell.candidate_proj.norms[0])
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
        cell, xs, kw["norm"], kw.get("variant", "paper"), kw.get("carry_normalized_cell", False)
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
    c_raw = np_lstm(cell, xs, "layer", carry_normalized=False)[1][0]
    c_normed = np_lstm(cell, xs, "layer", carry_normalized=True)[1][0]
    np.testing.assert_allclose(c, c_raw, rtol=2e-4, atol=2e-5)
    assert np.abs(c_raw - c_normed).max() > 0.1


def _param_paths(module):
    leaves = jax.tree_util.tree_flatten_with_path(nnx.state(module, nnx.Param))[0]
    return sorted(
        ".".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path[:-1])
        for path, _ in leaves
    )


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_draw_variant_normalises_the_cell_only(norm):
    """§1.5: a plain LSTM whose one normaliser is on the cell; the gates are not normalised."""
    cell = LSTMCell(F, H, norm=norm, variant="draw", t_max=STEPS, rngs=nnx.Rngs(0))
    cell_params = ["cell_norm.bn.bias", "cell_norm.bn.scale"] if norm == "batch" else [
        "cell_norm.bias", "cell_norm.scale"]
    assert _param_paths(cell) == sorted(
        ["bias", *cell_params, "input_proj.dense.kernel", "recurrent_proj.dense.kernel"])
    paper = LSTMCell(F, H, norm="layer", rngs=nnx.Rngs(0))  # §1.3: three LNs, own gain and bias
    assert _param_paths(paper) == sorted(
        ["bias", "cell_norm.bias", "cell_norm.scale", "input_proj.dense.kernel",
         "input_proj.norms.0.bias", "input_proj.norms.0.scale", "recurrent_proj.dense.kernel",
         "recurrent_proj.norms.0.bias", "recurrent_proj.norms.0.scale"])


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
        hs, np_gru(cell, xs, kw["norm"], kw.get("variant", "paper")), rtol=2e-4, atol=2e-5
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


def test_gates_are_the_sigmoids_and_tanh_with_their_derivatives():
    """The fused scan's one-pass activations `[s(f), s(i), s(o), tanh(g)]` (tanh through
    `2 s(2g) - 1`) and their gradient, against the four functions and autodiff of them, out
    to saturation."""
    z = jnp.asarray(np.linspace(-30.0, 30.0, 2 * 4 * 9).reshape(2, 4 * 9), jnp.float32)

    def four(z):
        f, i, o, g = jnp.split(z, 4, axis=-1)
        return jnp.concatenate([jax.nn.sigmoid(f), jax.nn.sigmoid(i), jax.nn.sigmoid(o),
                                jnp.tanh(g)], axis=-1)

    act = _gates(z)
    np.testing.assert_allclose(act, four(z), rtol=1e-6, atol=1e-7)
    dact = jnp.asarray(np.random.default_rng(0).normal(size=z.shape), jnp.float32)
    (want,) = jax.vjp(four, z)[1](dact)
    np.testing.assert_allclose(_gates_grad(act, dact), want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize(
    "kw", [dict(norm="rms"), dict(norm="layer", variant="draw"), dict(norm="none")],
    ids=lambda kw: "-".join(map(str, kw.values())),
)
def test_lstm_scan_gradients_equal_autodiff_of_the_steps(kw):
    """`LSTMCell.scan`'s hand-written VJP for the statistics layouts that tests/test_rnn.py's
    LN case does not reach (RMS: no means; draw: the cell's normaliser only), with held steps
    and a non-zero initial state: parameters, inputs and initial state against autodiff of
    the cell called step by step."""
    cell = randomize(LSTMCell(F, H, rngs=nnx.Rngs(0), **kw))
    xs = jnp.asarray(inputs(), jnp.float32)
    mask = jnp.asarray(np.arange(STEPS)[:, None] < np.array([STEPS, 2, 3])[None])  # [T, B]
    rng = np.random.default_rng(2)
    w_hs, w_c = (jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(STEPS, B, H), (B, H)])
    state0 = tuple(jnp.asarray(rng.normal(size=(B, H)), jnp.float32) for _ in range(2))

    def fused(cell, xs, state0):
        hs, (c, h) = cell.scan(state0, xs, mask=mask)
        return jnp.sum(jnp.sin(hs) * w_hs) + jnp.sum(c * w_c) + jnp.sum(h**2)

    def steps(cell, xs, state0):
        state, hs = state0, []
        for x, keep in zip(xs, mask[..., None], strict=True):
            new, _ = cell(state, x)
            state = jax.tree.map(lambda n, o, keep=keep: jnp.where(keep, n, o), new, state)
            hs.append(state[1])
        c, h = state
        return jnp.sum(jnp.sin(jnp.stack(hs)) * w_hs) + jnp.sum(c * w_c) + jnp.sum(h**2)

    got, want = (nnx.grad(f, argnums=(0, 1, 2))(cell, xs, state0) for f in (fused, steps))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_allclose(g, w, rtol=2e-5, atol=2e-6)
    assert np.abs(want[1]).max() > 1e-3 and np.abs(want[2][0]).max() > 1e-3


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
