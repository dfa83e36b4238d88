"""`GRUCell.scan`'s hand-written VJP against autodiff of the step-by-step definition.

The fused scan (what `RNN` runs for plain, LN and RMS GRUs of the paper's variant) must give the
outputs, final state and gradients (every parameter, the inputs, the initial state) of calling
the cell once per step, with the state held at masked steps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm.cells import GRUCell, LSTMCell
from lnorm.rnn import RNN

B, T, F, H = 3, 3, 4, 6  # T odd: unroll=2 leaves a remainder step
LENGTHS = np.array([3, 2, 1])
TOL = dict(rtol=2e-5, atol=2e-6)


class AutodiffGRUCell(GRUCell):
    """The same cell without the fused scan: `RNN` runs it through `cell.step` under autodiff."""

    has_fused_scan = False


def randomized(cell, seed=1):
    """`cell` with every parameter perturbed, so that gains, biases and zero-initialised
    parameters all take part in the computation."""
    rng = np.random.default_rng(seed)
    for _, p in nnx.iter_graph(cell):
        if isinstance(p, nnx.Param):
            p[...] = p[...] + jnp.asarray(0.3 * rng.normal(size=p.shape), jnp.float32)
    return cell


def inputs(seed=0):
    """`(x[T, B, F], h0[B, H], mask[T, B])` with ragged lengths."""
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.normal(size=(T, B, F)), jnp.float32)
    h0 = jnp.asarray(rng.normal(size=(B, H)), jnp.float32)
    mask = jnp.asarray(np.arange(T)[:, None] < LENGTHS[None, :])
    return x, h0, mask


def definition(cell, h, x, mask):
    """The cell called at each step in plain Python; the state held (and output) where masked."""
    hs = []
    for t in range(x.shape[0]):
        new, _ = cell(h, x[t], t=t)
        h = new if mask is None else jnp.where(mask[t][:, None], new, h)
        hs.append(h)
    return jnp.stack(hs), h


def loss(outputs, final, weights):
    """Touches every output (masked steps included: there the output is the held state)."""
    w_out, w_final = weights
    return jnp.sum(jnp.sin(outputs) * w_out) + jnp.sum(final**2 * w_final)


WEIGHTS = tuple(
    jnp.asarray(np.random.default_rng(2).normal(size=s), jnp.float32) for s in [(T, B, H), (B, H)]
)


@pytest.mark.parametrize(
    "norm, unroll, masked",
    [("none", 2, True), ("layer", 2, True), ("rms", 1, True), ("layer", 1, False)],
)
def test_fused_scan_equals_autodiff_of_the_step_by_step_definition(norm, unroll, masked):
    cell = randomized(GRUCell(F, H, norm=norm, rngs=nnx.Rngs(0)))
    assert cell.has_fused_scan
    x, h0, mask = inputs()
    mask = mask if masked else None

    @nnx.jit
    def values_and_grads(cell, h0, x):
        def fused(cell, h0, x):
            outputs, final = cell.scan(h0, x, mask=mask, unroll=unroll)
            return loss(outputs, final, WEIGHTS), (outputs, final)

        def reference(cell, h0, x):
            outputs, final = definition(cell, h0, x, mask)
            return loss(outputs, final, WEIGHTS), (outputs, final)

        return [
            nnx.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(cell, h0, x)
            for f in (fused, reference)
        ]

    ((_, (out, final)), grads), ((_, (want_out, want_final)), want_grads) = values_and_grads(
        cell, h0, x
    )
    np.testing.assert_allclose(out, want_out, **TOL)
    np.testing.assert_allclose(final, want_final, **TOL)
    (g_cell, g_h0, g_x), (w_cell, w_h0, w_x) = grads, want_grads
    g_params, w_params = nnx.state(g_cell, nnx.Param), nnx.state(w_cell, nnx.Param)
    assert jax.tree.structure(g_params) == jax.tree.structure(w_params)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **TOL), g_params, w_params)
    np.testing.assert_allclose(g_h0, w_h0, **TOL)
    np.testing.assert_allclose(g_x, w_x, **TOL)
    # every parameter is reached (a gradient the fused scan forgot would be all zeros)
    assert all(np.abs(w).max() > 1e-4 for w in jax.tree.leaves(w_params))
    if masked:  # inputs at masked steps cannot matter
        assert not np.asarray(g_x)[~np.asarray(mask)].any()


def test_rnn_runs_the_gru_through_the_fused_scan():
    """`RNN` (lengths, reversal, learned initial state) gives the same outputs, final state and
    gradients with the fused scan as through `cell.step` under autodiff (`RNN._scan_steps`)."""
    fused = randomized(GRUCell(F, H, norm="layer", rngs=nnx.Rngs(0)))
    stepwise = randomized(AutodiffGRUCell(F, H, norm="layer", rngs=nnx.Rngs(0)))
    x = jnp.asarray(np.random.default_rng(3).normal(size=(B, T, F)), jnp.float32)
    lengths = jnp.asarray(LENGTHS)
    w_out = WEIGHTS[0].swapaxes(0, 1)

    @nnx.jit
    def value_and_grads(rnn, x):
        def f(rnn, x):
            outputs, final = rnn(x, lengths=lengths)
            return loss(outputs, final, (w_out, WEIGHTS[1])), (outputs, final)

        return nnx.value_and_grad(f, argnums=(0, 1), has_aux=True)(rnn, x)

    results = []
    for cell in (fused, stepwise):
        rnn = RNN(cell, reverse=True, learn_initial_state=True)
        rnn.learned_state[...] = jnp.linspace(-1.0, 1.0, H)
        results.append(value_and_grads(rnn, x))
    ((_, (out, final)), (g_rnn, g_x)), ((_, (want_out, want_final)), (w_rnn, w_x)) = results
    np.testing.assert_allclose(out, want_out, **TOL)
    np.testing.assert_allclose(final, want_final, **TOL)
    g_params, w_params = nnx.state(g_rnn, nnx.Param), nnx.state(w_rnn, nnx.Param)
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **TOL), g_params, w_params)
    np.testing.assert_allclose(g_x, w_x, **TOL)
    assert np.abs(w_params["learned_state"][...]).max() > 1e-4


@pytest.mark.parametrize(
    "kw, fused",
    [
        (dict(norm="none"), True),
        (dict(norm="layer"), True),
        (dict(norm="rms"), True),
        (dict(norm="batch", t_max=T), False),
        (dict(norm="weight"), False),
        (dict(norm="layer", variant="reset_before"), False),
    ],
)
def test_fused_scan_covers_plain_ln_and_rms_cells_of_the_paper(kw, fused):
    cell = GRUCell(F, H, rngs=nnx.Rngs(0), **kw)
    assert cell.has_fused_scan == fused
    if not fused:
        x, h0, _ = inputs()
        with pytest.raises(ValueError, match=r"GRUCell\.scan handles"):
            cell.scan(h0, x)


@pytest.mark.parametrize("norm", ["none", "layer"])
def test_lstm_fused_scan_passes_the_gradient_of_held_outputs(norm):
    """The LSTM's fused scan too: a loss that reads the outputs at masked steps (the held
    `h`) must send their gradient to the state they hold (a VJP once dropped it)."""
    cell = randomized(LSTMCell(F, H, norm=norm, rngs=nnx.Rngs(0)))
    x, h0, mask = inputs()
    state0 = (0.5 * h0, h0)

    def fused(state0, x):
        outputs, final = cell.scan(state0, x, mask=mask)
        return loss(outputs, final[1], WEIGHTS)

    def reference(state0, x):
        state, hs = state0, []
        for t in range(T):
            new, _ = cell(state, x[t])
            keep = mask[t][:, None]
            state = tuple(jnp.where(keep, n, o) for n, o in zip(new, state, strict=True))
            hs.append(state[1])
        return loss(jnp.stack(hs), state[1], WEIGHTS)

    got, want = (jax.grad(f, argnums=(0, 1))(state0, x) for f in (fused, reference))
    jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, **TOL), got, want)
