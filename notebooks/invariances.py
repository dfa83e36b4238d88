# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # What layer norm is invariant to (paper §5.1, Table 1)
#
# A thin driver over `lnorm.norms`: one hidden layer `h = f(norm(W x))`, and the six
# transformations of the paper's Table 1 applied to its weights or its data. For each
# normaliser we print whether the layer's output changes. `tests/test_invariance.py` asserts the
# same eighteen cells; this notebook shows the numbers.
#
# The `.ipynb` is stored with its outputs. With the `dev` extra, re-run it with
# `jupyter nbconvert --to notebook --execute --inplace notebooks/invariances.ipynb`; after
# editing this `.py`, `jupytext --sync notebooks/invariances.py` updates the notebook's code.

# %%
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnorm.norms import NormedDense

rng = np.random.default_rng(0)
x = jnp.asarray(rng.normal(size=(16, 8)), jnp.float32)


def layer_output(norm: str, kernel: jax.Array, inputs: jax.Array) -> jax.Array:
    """The layer's output with the given kernel, batch statistics as in training."""
    layer = NormedDense(8, 6, norm=norm, rngs=nnx.Rngs(0))
    layer.dense.kernel[...] = kernel
    if norm == "batch":
        layer.norm.use_running_average = False
    return layer(inputs)


base_kernel = jnp.asarray(rng.normal(size=(8, 6)), jnp.float32)

# %% [markdown]
# Each transformation maps (kernel, inputs) to new ones. "Re-centring" the weight matrix adds
# the same vector to every unit's incoming weights; re-scaling one training case scales a
# single row of the batch. "Invariant" means every output of the batch is unchanged.

# %%
shift = jnp.asarray(rng.normal(size=(8, 1)), jnp.float32)
transforms = {
    "weight matrix re-scaling": lambda k, d: (3.0 * k, d),
    "weight matrix re-centring": lambda k, d: (k + shift, d),
    "weight vector re-scaling": lambda k, d: (k.at[:, 0].multiply(3.0), d),
    "dataset re-scaling": lambda k, d: (k, 3.0 * d),
    "dataset re-centring": lambda k, d: (k, d + 1.5),
    "single case re-scaling": lambda k, d: (k, d.at[0].multiply(3.0)),
}

# %%
rows = []
for name, transform in transforms.items():
    cells = []
    for norm in ("batch", "weight", "layer"):
        before = layer_output(norm, base_kernel, x)
        kernel, data = transform(base_kernel, x)
        after = layer_output(norm, kernel, data)
        cells.append("invariant" if np.allclose(before, after, atol=1e-4) else "changes")
    rows.append((name, *cells))

print(f"{'':28}{'batch':>12}{'weight':>12}{'layer':>12}")
for name, *cells in rows:
    print(f"{name:28}" + "".join(f"{c:>12}" for c in cells))
