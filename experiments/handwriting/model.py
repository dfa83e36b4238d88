"""Graves' (2013, §5.2) handwriting synthesis network, its LSTMs normalised by a `NormSpec`.

Three stacked LSTM layers with skip connections: every layer reads the pen point `x_t`, the
window `w` and (above the first) the layer below at the same step; the output layer reads all
layers. The soft window is a mixture of K Gaussians over the character positions u = 1..U of
the text, its parameters `(alpha, beta, kappa_hat)` an exponentiated linear map of the first
layer's output:

    phi(t, u) = sum_k alpha_k exp(-beta_k (kappa_k - u)^2),   kappa_t = kappa_{t-1} + exp(kappa_hat)
    w_t = sum_u phi(t, u) c_u                                  (c_u: one-hot characters)

Layer 1 reads `w_{t-1}`, the layers above and the next step read `w_t`. The output
`y_t = b + sum_n W_n h^n_t` parametrises the mixture density of `x_{t+1}` (`objective.py`).
The whole network is one `jax.lax.scan` over time; a padded step leaves every state (LSTM
states, kappa, w) as it was.

`norm=layer` is the paper's LN-LSTM (LN of `W_x x` and of `W_h h`, each over all 4H gate units,
and of `c` before the output tanh: `lnorm.cells.LSTMCell`'s "paper" variant), `norm=none` the
plain LSTM, `rms` and `weight` come through the cell. `norm=batch` keeps statistics per time
step and needs `t_max` (the number of input steps of a training window). The window and output
layers are plain linear maps for every normaliser, as the paper normalises the LSTMs only.

Choices where the paper and Graves are silent (ours): no peephole connections (the LN paper's
LSTM equations have none; Graves' cells had them, 3H weights per layer); the kappa_hat bias
starts at `log(kappa_step_init)` so the window first advances 1/25 character per point (about
IAM-OnDB's pace; at 1 per point it leaves the text before the gradient can slow it); weight
norm starts at g = 1 (the default init's column norms) without data-dependent init, which
cannot run inside the scan.

Under `train.dtype=bfloat16` the LSTMs and linear layers compute in bfloat16 (the parameters'
dtype) while the window stays float32: kappa is a position along the text that grows by small
steps, which bfloat16 would round away (its spacing is 1/4 character at u = 50).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.cells import LSTMCell
from lnorm.norms import NormSpec
from lnorm.precision import loop_invariant

Array = jax.Array
LSTMState = tuple[Array, Array]
Carry = tuple[tuple[LSTMState, ...], Array, Array]  # (LSTM states, kappa [B, K], w [B, V])

POINT_FEATURES = 3  # (dx, dy, pen_up)


def window_weights(alpha: Array, beta: Array, kappa: Array, num_positions: int) -> Array:
    """`phi[B, num_positions]` at positions u = 1..num_positions from `alpha, beta, kappa[B, K]`."""
    u = jnp.arange(1, num_positions + 1, dtype=kappa.dtype)
    d = kappa[:, :, None] - u
    return jnp.sum(alpha[:, :, None] * jnp.exp(-beta[:, :, None] * d * d), axis=1)


def output_size(mixtures: int) -> int:
    """`1 + 6M`: end-of-stroke logit, then M each of weight, mu1, mu2, sigma1, sigma2, rho."""
    return 1 + 6 * mixtures


class HandwritingSynthesis(nnx.Module):
    """Graves' synthesis network over `vocab_size` symbols (module docstring).

    `output_grad_clip` is Graves' clipping of the derivatives of each sequence's NLL w.r.t.
    the outputs `y_t` (100 in the paper; applied by `objective.loss_fn`; None: off).
    """

    def __init__(
        self,
        vocab_size: int,
        *,
        norm: NormSpec,
        hidden: int = 400,
        layers: int = 3,
        window_mixtures: int = 10,
        output_mixtures: int = 20,
        t_max: int | None = None,
        kappa_step_init: float = 1 / 25,
        output_grad_clip: float | None = None,
        unroll: int = 1,
        rngs: nnx.Rngs,
    ):
        if norm.placement != "paper":
            raise ValueError(
                f"HandwritingSynthesis: norm.placement={norm.placement!r} is not defined for "
                "this model; the paper normalises its LSTMs only (placement='paper')"
            )
        if layers < 1 or min(vocab_size, hidden, window_mixtures, output_mixtures) < 1:
            raise ValueError("HandwritingSynthesis: sizes must be positive")
        if not kappa_step_init > 0:
            raise ValueError(f"kappa_step_init={kappa_step_init!r}: expected a positive pace")
        base = POINT_FEATURES + vocab_size
        self.cells = nnx.List(
            [
                LSTMCell(base + (hidden if i else 0), hidden, norm=norm, t_max=t_max, rngs=rngs)
                for i in range(layers)
            ]
        )
        k = window_mixtures
        self.window = nnx.Linear(hidden, 3 * k, rngs=rngs)
        self.window.bias[...] = self.window.bias[...].at[2 * k :].set(math.log(kappa_step_init))
        self.output = nnx.Linear(layers * hidden, output_size(output_mixtures), rngs=rngs)
        self.vocab_size = vocab_size
        self.window_mixtures = window_mixtures
        self.output_mixtures = output_mixtures
        self.output_grad_clip = output_grad_clip
        self.unroll = unroll

    def encode_text(self, chars: Array, chars_mask: Array | None = None) -> Array:
        """One-hot characters `[B, U, V]` from ids `[B, U]`; padded positions are all zero."""
        onehot = jax.nn.one_hot(chars, self.vocab_size, dtype=jnp.float32)
        return onehot if chars_mask is None else onehot * chars_mask[..., None]

    def initial_carry(self, batch_size: int) -> Carry:
        """Zero LSTM states, kappa and window."""
        states = tuple(cell.initial_state(batch_size) for cell in self.cells)
        kappa = jnp.zeros((batch_size, self.window_mixtures), jnp.float32)
        return states, kappa, jnp.zeros((batch_size, self.vocab_size), jnp.float32)

    def step(
        self, carry: Carry, x_t: Array, text: Array, *, t: Array | int, mask: Array | None = None
    ) -> tuple[Carry, Array, Array]:
        """One point `x_t[B, 3]` -> `(carry, h[B, layers * H], phi[B, U + 1])`.

        `text` is `encode_text(...)` `[B, U, V]`; `phi` covers u = 1..U+1, the last column
        being the position past the padded text (the sampler's stopping test). Rows where
        `mask[B]` is False keep their carry.
        """
        states, kappa, w = carry
        dtype = states[0][1].dtype  # the cells' (their parameters') dtype
        cell = self.cells[0]
        gx = cell.project_inputs(jnp.concatenate([x_t, w], -1).astype(dtype), t=t, mask=mask)
        new_states = [cell.step(states[0], gx, t=t, mask=mask)[0]]
        h = new_states[0][1]
        window = self.window(h).astype(kappa.dtype)
        alpha, beta, kappa_hat = jnp.split(jnp.exp(window), 3, axis=-1)
        new_kappa = kappa + kappa_hat
        phi = window_weights(alpha, beta, new_kappa, text.shape[1] + 1)
        new_w = jnp.einsum("bu,buv->bv", phi[:, :-1], text)
        hs = [h]
        for cell, state in zip(self.cells[1:], states[1:], strict=True):
            inputs = jnp.concatenate([x_t, h, new_w], -1).astype(dtype)
            gx = cell.project_inputs(inputs, t=t, mask=mask)
            state, h = cell.step(state, gx, t=t, mask=mask)
            new_states.append(state)
            hs.append(h)
        new_carry = (tuple(new_states), new_kappa, new_w)
        if mask is not None:
            keep = mask[:, None]
            new_carry = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_carry, carry)
        return new_carry, jnp.concatenate(hs, -1), phi

    def scan(
        self,
        carry: Carry,
        points: Array,
        text: Array,
        *,
        mask: Array | None = None,
        t0: int = 0,
    ) -> tuple[Carry, Array, Array]:
        """`step` over `points[B, T, 3]` (steps t0, t0+1, ...) in one `jax.lax.scan`; returns
        the final carry, `h[B, T, layers * H]` and `phi[B, T, U + 1]`. Batch-norm statistics
        are threaded through the loop and written back; the parameters enter it in float32,
        where their gradient is summed over the steps (`lnorm.precision.loop_invariant`)."""
        if mask is not None:
            points = jnp.where(mask[..., None], points, 0)
        steps = t0 + jnp.arange(points.shape[1])
        graphdef, stats, params, rest = nnx.split(self, nnx.BatchStat, nnx.Param, ...)
        params, narrow = loop_invariant(params)

        def body(loop, inputs):
            carry, stats = loop
            x_t, m_t, t = inputs
            model = nnx.merge(graphdef, stats, narrow(params), rest)
            carry, h, phi = model.step(carry, x_t, text, t=t, mask=m_t)
            return (carry, nnx.state(model, nnx.BatchStat)), (h, phi)

        xs = (points.swapaxes(0, 1), None if mask is None else mask.T, steps)
        (carry, stats), (h, phi) = jax.lax.scan(body, (carry, stats), xs, unroll=self.unroll)
        nnx.update(self, stats)
        return carry, h.swapaxes(0, 1), phi.swapaxes(0, 1)

    def __call__(
        self,
        points: Array,
        chars: Array,
        *,
        mask: Array | None = None,
        chars_mask: Array | None = None,
    ) -> Array:
        """Outputs `y[B, T, 1 + 6M]` for inputs `points[B, T, 3]` and text ids `chars[B, U]`."""
        if points.ndim != 3 or points.shape[-1] != POINT_FEATURES:
            raise ValueError(f"expected points of shape [batch, time, 3]; got {points.shape}")
        text = self.encode_text(chars, chars_mask)
        _, h, _ = self.scan(self.initial_carry(points.shape[0]), points, text, mask=mask)
        return self.output(h)


def count_params(model: nnx.Module) -> int:
    """The number of trainable weights."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
