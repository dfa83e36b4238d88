"""The paper's Table 1, all eighteen cells, as properties of a small 2-layer net.

Net: `out = V tanh(norm(W x))` with `NormedDense` as the first layer (for weight norm, W is the
direction parameter v). Each column transforms W or the data; an "invariant" cell asserts the
net's outputs are unchanged, a "no" cell asserts they change. In the paper's notation a unit's
incoming weight vector is a row of W; here it is a column of the (in, out) kernel. RMSNorm is an
extra row, not in the paper.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from lnorm.norms import NormedDense

IN, HIDDEN, BATCH = 6, 4, 8  # kernel shapes shared with test_norms.py (compile once)
EPSILON = 1e-10  # small enough that the invariances hold to float32 precision


def scale_matrix(w, x):
    return 2.5 * w, x


def recenter_matrix(w, x):  # add the same vector to every unit's incoming weights
    return w + jnp.linspace(-1.0, 2.0, IN)[:, None], x


def scale_one_vector(w, x):
    return w.at[:, 2].multiply(3.0), x


def scale_dataset(w, x):
    return w, 2.5 * x


def recenter_dataset(w, x):  # add the same vector to every input
    return w, x + jnp.linspace(-2.0, 1.0, IN)


def scale_one_case(w, x):
    return w, x.at[3].multiply(3.0)


COLUMNS = (
    scale_matrix,
    recenter_matrix,
    scale_one_vector,
    scale_dataset,
    recenter_dataset,
    scale_one_case,
)
TABLE = {  # True = invariant
    "batch": (True, False, True, True, True, False),
    "weight": (True, False, True, False, False, False),
    "layer": (True, True, False, True, False, True),
    "rms": (True, False, False, True, False, True),  # not in the paper
}
CELLS = [
    (norm, col, inv) for norm, row in TABLE.items() for col, inv in zip(COLUMNS, row, strict=True)
]


class Net(nnx.Module):
    def __init__(self, norm: str, rngs: nnx.Rngs):
        self.hidden = NormedDense(IN, HIDDEN, norm=norm, epsilon=EPSILON, rngs=rngs)
        self.out = nnx.Linear(HIDDEN, 3, rngs=rngs)

    def __call__(self, x):
        return self.out(jnp.tanh(self.hidden(x)))


@functools.cache
def net(norm):
    """(state, jitted apply(state, kernel, x)) of a Net with non-trivial gains and biases."""
    model = Net(norm, nnx.Rngs(0))
    affine = model.hidden.dense if norm == "weight" else model.hidden.norm
    affine.scale[...] = jnp.linspace(0.5, 1.5, HIDDEN)
    affine.bias[...] = jnp.linspace(-0.3, 0.3, HIDDEN)
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, kernel, x):
        model = nnx.merge(graphdef, state)
        model.hidden.dense.kernel[...] = kernel
        return model(x)  # batch norm in training mode: batch statistics

    return state, apply


@pytest.mark.parametrize(
    "norm, column, invariant", CELLS, ids=[f"{n}-{c.__name__}" for n, c, _ in CELLS]
)
def test_table_1(norm, column, invariant):
    state, apply = net(norm)
    x = jnp.asarray(np.random.default_rng(0).normal(0.5, 1.5, (BATCH, IN)), jnp.float32)
    w = state["hidden"]["dense"]["kernel"][...]
    before = apply(state, w, x)
    after = apply(state, *column(w, x))
    if invariant:
        np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-4)
    else:
        assert float(jnp.max(jnp.abs(after - before))) > 1e-2
