"""The RNN layer: hoisting equals stepping, padding is inert, reversal, stacking, training."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from lnorm.cells import GRUCell, LSTMCell
from lnorm.norms import weight_norm_init
from lnorm.rnn import RNN, Bidirectional, StackedRNN

B, T, F, H = 3, 5, 4, 6
LENGTHS = np.array([5, 3, 1])


def data(seed=0, garbage=None):
    """`x[B, T, F]`; with `garbage`, every padded step (t >= LENGTHS[b]) is filled with it."""
    x = np.random.default_rng(seed).normal(size=(B, T, F)).astype(np.float32)
    if garbage is not None:
        pad = np.arange(T)[None, :] >= LENGTHS[:, None]
        x[pad] = garbage
    return jnp.asarray(x)


@nnx.jit
def run(rnn, x, **kw):
    """`rnn(x, **kw)`, compiled: eager op-by-op execution is what makes RNN tests slow."""
    return rnn(x, **kw)


@nnx.jit
def step_by_step(cell, x):
    """The definition, the cell called once per step: outputs and the state at every step."""
    state = cell.initial_state(x.shape[0])
    hs, states = [], []
    for t in range(x.shape[1]):
        state, h = cell(state, x[:, t], t=t)
        hs.append(h)
        states.append(state)
    return jnp.stack(hs, axis=1), jax.tree.map(lambda *s: jnp.stack(s, axis=1), *states)


def at_true_end(states):
    """Each sequence's state at its last valid step, from states stacked over time."""
    return jax.tree.map(lambda s: s[np.arange(B), LENGTHS - 1], states)


def assert_trees_close(a, b, **kw):
    jax.tree.map(lambda u, v: np.testing.assert_allclose(u, v, **kw), a, b)


CELLS = {
    "lstm-layer": lambda: LSTMCell(F, H, norm="layer", rngs=nnx.Rngs(0)),
    "lstm-batch": lambda: LSTMCell(F, H, norm="batch", t_max=T, rngs=nnx.Rngs(0)),
    "gru-layer": lambda: GRUCell(F, H, norm="layer", rngs=nnx.Rngs(0)),
    "gru-layer-reset_before": lambda: GRUCell(
        F, H, norm="layer", variant="reset_before", rngs=nnx.Rngs(0)
    ),
}


@pytest.mark.parametrize("name", ["lstm-batch", "gru-layer-reset_before"])
def test_hoisted_rnn_equals_the_step_by_step_definition(name):
    """Input projections computed for all steps at once give the per-step cell's outputs,
    final state and (for batch norm) running statistics. The padding and bidirectional tests
    check the same for the LN-LSTM and the LN-GRU."""
    rnn, reference = RNN(CELLS[name]()), CELLS[name]()
    x = data()
    out, final = run(rnn, x)
    want_out, want_states = step_by_step(reference, x)
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-6)
    assert_trees_close(final, jax.tree.map(lambda s: s[:, -1], want_states), rtol=1e-5, atol=1e-6)
    assert_trees_close(
        nnx.state(rnn.cell, nnx.BatchStat),
        nnx.state(reference, nnx.BatchStat),
        rtol=1e-5,
        atol=1e-6,
    )


def test_padding_leaves_valid_outputs_and_final_states_unchanged():
    """Valid outputs depend only on earlier (valid) steps, so the cell stepped through the
    garbage-padded batch is the reference for them; the final state is the one at each true end."""
    rnn = RNN(CELLS["lstm-layer"]())
    x = data(garbage=1e4)
    out, final = run(rnn, x, lengths=jnp.asarray(LENGTHS))
    out_mask, _ = run(rnn, x, mask=jnp.arange(T)[None, :] < LENGTHS[:, None])
    np.testing.assert_array_equal(out_mask, out)
    want, states = step_by_step(rnn.cell, x)
    valid = (np.arange(T)[None, :] < LENGTHS[:, None])[..., None]
    np.testing.assert_allclose(out * valid, want * valid, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(out * ~valid, 0.0)
    assert_trees_close(final, at_true_end(states), rtol=1e-5, atol=1e-6)


def test_padding_never_reaches_batch_statistics_or_gradients():
    @nnx.jit
    def loss_grads_stats(rnn, x):
        def loss(rnn):
            out, _ = rnn(x, lengths=jnp.asarray(LENGTHS))
            return jnp.sum(out**2)

        loss, grads = nnx.value_and_grad(loss)(rnn)
        return loss, grads, nnx.state(rnn, nnx.BatchStat)

    cell = CELLS["lstm-batch"]
    loss_a, grads_a, stats_a = loss_grads_stats(RNN(cell()), data(garbage=-3.0))
    loss_b, grads_b, stats_b = loss_grads_stats(RNN(cell()), data(garbage=1e6))
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-6)
    assert_trees_close(grads_a, grads_b, rtol=1e-5, atol=1e-7)
    assert_trees_close(stats_a, stats_b, rtol=1e-6)
    assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads_a))
    assert np.abs(stats_a["cell"]["cell_norm"]["bn"]["mean"][...]).max() > 0


def test_reverse_reads_each_sequence_backwards_from_its_true_end():
    cell = CELLS["lstm-layer"]()
    x = data(garbage=7.0)
    out, final = run(RNN(cell, reverse=True), x, lengths=jnp.asarray(LENGTHS))
    flipped = np.array(x)
    for b, length in enumerate(LENGTHS):
        flipped[b, :length] = flipped[b, :length][::-1]
    want, states = step_by_step(cell, jnp.asarray(flipped))
    for b, length in enumerate(LENGTHS):
        np.testing.assert_allclose(out[b, :length], want[b, :length][::-1], rtol=1e-5, atol=1e-6)
    assert_trees_close(final, at_true_end(states), rtol=1e-5, atol=1e-6)


def definition_loss(cell, initial, x, lengths, reverse, weights):
    """A loss on the outputs and final state of the step-by-step definition: the cell called at
    each step in plain Python, the state held (and the output zero) at padded steps, each
    sequence read backwards within its length when `reverse`. Differentiated by autodiff."""
    valid = np.arange(T)[None, :] < lengths[:, None]
    order = np.tile(np.arange(T), (B, 1))
    if reverse:
        order = np.where(valid, lengths[:, None] - 1 - order, order)
    rows = np.arange(B)[:, None]
    x = x[rows, order]  # `order` is its own inverse
    state = tuple(jnp.broadcast_to(s, (B, H)) for s in initial)
    outputs = []
    for t in range(T):
        keep = jnp.asarray(valid[:, t])[:, None]
        (c, h), out = cell(state, x[:, t], t=t)
        state = (jnp.where(keep, c, state[0]), jnp.where(keep, h, state[1]))
        outputs.append(jnp.where(keep, out, 0))
    return rnn_loss(jnp.stack(outputs, axis=1)[rows, order], state, weights)


def rnn_loss(outputs, final, weights):
    w_out, w_c, w_h = weights
    c, h = final
    return jnp.sum(jnp.sin(outputs) * w_out) + jnp.sum(c * w_c) + jnp.sum(h**2 * w_h)


@pytest.mark.parametrize(
    "norm, reverse, padded", [("none", True, True), ("layer", True, True), ("layer", False, False)]
)
def test_lstm_gradients_equal_autodiff_of_the_step_by_step_definition(norm, reverse, padded):
    """`LSTMCell.scan`'s hand-written VJP (what `RNN` runs for plain and LN LSTMs) against
    autodiff of the per-step definition: every parameter, the inputs and the learned initial
    state, with padding (garbage in it) and reversal."""
    rnn = RNN(
        LSTMCell(F, H, norm=norm, rngs=nnx.Rngs(0)), reverse=reverse, learn_initial_state=True
    )
    assert rnn.cell.has_fused_scan
    rnn.learned_state[0][...] = jnp.linspace(1.0, -0.5, H)
    rnn.learned_state[1][...] = jnp.linspace(-1.0, 1.0, H)
    lengths = LENGTHS if padded else np.full(B, T)
    x = data(garbage=3.0 if padded else None)
    rng = np.random.default_rng(1)
    weights = tuple(
        jnp.asarray(rng.normal(size=s), jnp.float32) for s in [(B, T, H), (B, H), (B, H)]
    )

    @nnx.jit
    def grads(rnn, x):
        def fused(rnn, x):
            outputs, final = rnn(x, lengths=jnp.asarray(lengths) if padded else None)
            return rnn_loss(outputs, final, weights)

        def definition(rnn, x):
            initial = [s[...] for s in rnn.learned_state]
            return definition_loss(rnn.cell, initial, x, lengths, reverse, weights)

        return [nnx.grad(f, argnums=(0, 1))(rnn, x) for f in (fused, definition)]

    (got, got_x), (want, want_x) = grads(rnn, x)
    got, want = nnx.state(got, nnx.Param), nnx.state(want, nnx.Param)
    assert_trees_close(got, want, rtol=2e-5, atol=2e-6)
    np.testing.assert_allclose(got_x, want_x, rtol=2e-5, atol=2e-6)
    assert np.abs(want["cell"]["recurrent_proj"]["dense"]["kernel"][...]).max() > 1e-3
    if padded:
        assert not np.asarray(got_x)[np.arange(T)[None, :] >= LENGTHS[:, None]].any()


def test_bidirectional_concatenates_forward_and_reversed_runs():
    fwd, bwd = CELLS["gru-layer"](), GRUCell(F, H, norm="layer", rngs=nnx.Rngs(1))
    bi = Bidirectional(fwd, bwd)
    x = data()
    out, (final_f, final_b) = run(bi, x)
    want_f, states_f = step_by_step(fwd, x)
    want_b, states_b = step_by_step(bwd, x[:, ::-1])
    np.testing.assert_allclose(out, jnp.concatenate([want_f, want_b[:, ::-1]], -1), rtol=1e-5)
    np.testing.assert_allclose(final_f, states_f[:, -1], rtol=1e-5)
    np.testing.assert_allclose(final_b, states_b[:, -1], rtol=1e-5)


def test_stacked_rnn_feeds_each_layer_the_previous_outputs():
    first, second = CELLS["lstm-layer"](), LSTMCell(H, H, norm="layer", rngs=nnx.Rngs(2))
    stack = StackedRNN([RNN(first), RNN(second)])
    x = data()
    out, finals = run(stack, x)
    mid, mid_states = step_by_step(first, x)
    want, want_states = step_by_step(second, mid)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    last = [jax.tree.map(lambda s: s[:, -1], s) for s in (mid_states, want_states)]
    assert_trees_close(finals, last, rtol=1e-5, atol=1e-6)


def test_learned_initial_state_is_used_and_trained():
    rnn = RNN(CELLS["lstm-layer"](), learn_initial_state=True)
    _, h0 = rnn.learned_state
    h0[...] = jnp.linspace(-1, 1, H)
    x = data()
    out, _ = run(rnn, x)
    state = rnn.initial_state(B)
    np.testing.assert_allclose(state[1], np.broadcast_to(np.linspace(-1, 1, H), (B, H)), 1e-6)
    given, _ = run(RNN(rnn.cell), x, initial_state=state)
    np.testing.assert_allclose(out, given, rtol=1e-6)
    grads = nnx.jit(nnx.grad(lambda rnn: jnp.sum(rnn(x)[0] ** 2)))(rnn)
    assert np.abs(grads.learned_state[0][...]).max() > 0
    assert np.abs(grads.learned_state[1][...]).max() > 0


def test_weight_norm_init_sets_the_input_projection_from_data():
    rnn = RNN(LSTMCell(F, H, norm="weight", rngs=nnx.Rngs(0)))
    x = data()
    out, _ = weight_norm_init(rnn, rnn, x)
    proj = rnn.cell.input_proj.dense
    pre = np.asarray(x).reshape(-1, F) @ np.asarray(proj.kernel[...])
    pre = pre / np.linalg.norm(proj.kernel[...], axis=0)
    np.testing.assert_allclose(proj.scale[...], 1 / pre.std(0), rtol=1e-3)
    np.testing.assert_array_equal(rnn.cell.recurrent_proj.dense.scale[...], 1.0)
    assert np.isfinite(np.asarray(out)).all()


def test_ln_lstm_learns_a_tiny_sequence_task():
    """Output at step t: the running mean of the first input feature so far (needs memory)."""
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(16, 6, 2)), jnp.float32)
    y = jnp.cumsum(x[..., :1], axis=1) / jnp.arange(1, 7)[:, None]

    class Model(nnx.Module):
        def __init__(self, rngs):
            self.rnn = RNN(LSTMCell(2, 8, norm="layer", rngs=rngs))
            self.out = nnx.Linear(8, 1, rngs=rngs)

        def __call__(self, x):
            return self.out(self.rnn(x)[0])

    graphdef, params = nnx.split(Model(nnx.Rngs(0)))
    optimizer = optax.adam(1e-2)

    @jax.jit
    def train_step(params, opt_state):
        loss, grads = jax.value_and_grad(lambda p: jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2))(
            params
        )
        updates, opt_state = optimizer.update(grads, opt_state)
        return optax.apply_updates(params, updates), opt_state, loss

    opt_state, losses = optimizer.init(params), []
    for _ in range(40):
        params, opt_state, loss = train_step(params, opt_state)
        losses.append(float(loss))
    assert losses[-1] < 0.3 * losses[0], losses[::10]


def test_bad_inputs_raise_clear_errors():
    rnn = RNN(CELLS["lstm-layer"]())
    with pytest.raises(ValueError, match=r"\[batch, time, features\]"):
        rnn(jnp.ones((T, F)))
    with pytest.raises(ValueError, match="not both"):
        rnn(data(), lengths=jnp.asarray(LENGTHS), mask=jnp.ones((B, T), bool))
    with pytest.raises(ValueError, match=r"`lengths` has shape \(2,\), expected \(3,\)"):
        rnn(data(), lengths=jnp.ones(2, int))
    with pytest.raises(ValueError, match=r"`mask` has shape \(3, 4\), expected \(3, 5\)"):
        rnn(data(), mask=jnp.ones((B, T - 1), bool))
