"""Running a recurrent cell over padded sequences: `RNN`, `Bidirectional`, `StackedRNN`.

`RNN` computes the cell's input matmul (`W_x x_t`) for every time step at once outside the loop
and scans only the recurrent part with `jax.lax.scan`: through the cell's own `scan`
(`LSTMCell.scan`, `GRUCell.scan`), with its hand-written gradient, where the cell has one
(`has_fused_scan`), else through `cell.step` under autodiff. Outputs and gradients are those
of calling the cell step by step. Padded steps are zeroed on the way in, excluded from batch
statistics, leave the state untouched (so the final state is each sequence's state at its true
end) and output zeros. `reverse=True` reverses each sequence within its own length, so time
step `t` (which per-step batch norm indexes) counts from each sequence's first processed element.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.norms import WeightNormDense
from lnorm.precision import loop_invariant, module_dtype

Array = jax.Array
State = Any  # a cell's state pytree: `(c, h)` for the LSTM, `h` for the GRU


def padding_mask(
    batch: int, length: int, *, lengths: Array | None = None, mask: Array | None = None
) -> Array | None:
    """The `[batch, length]` bool mask of valid steps from `lengths[batch]` or `mask`, or None."""
    if lengths is not None and mask is not None:
        raise ValueError("RNN: pass either `lengths` or `mask`, not both")
    if lengths is not None:
        if jnp.shape(lengths) != (batch,):
            raise ValueError(f"RNN: `lengths` has shape {jnp.shape(lengths)}, expected ({batch},)")
        return jnp.arange(length) < jnp.asarray(lengths)[:, None]
    if mask is not None:
        if jnp.shape(mask) != (batch, length):
            raise ValueError(
                f"RNN: `mask` has shape {jnp.shape(mask)}, expected ({batch}, {length}) "
                "(True on each sequence's valid prefix)"
            )
        return jnp.asarray(mask, bool)
    return None


def reverse_sequences(x: Array, mask: Array | None) -> Array:
    """Reverses each `x[b, :len_b]` in place (padding stays at the end); an involution."""
    if mask is None:
        return jnp.flip(x, axis=1)
    lengths = jnp.sum(mask, axis=1, keepdims=True)
    t = jnp.arange(x.shape[1])
    index = jnp.where(t < lengths, lengths - 1 - t, t)
    index = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, index, axis=1)


def _skip_recurrent_data_init(cell: nnx.Module) -> None:
    """Under `weight_norm_init`, recurrent weight-normalised layers keep `g = 1, b = 0`.

    Data-dependent init needs a layer's inputs, and a recurrent layer's first input is the
    initial (zero) state, whose statistics are degenerate; the input projection, already run on
    the whole sequence, has been initialised by now.
    """
    for _, module in nnx.iter_modules(cell):
        if isinstance(module, WeightNormDense):
            module.data_init = False


class RNN(nnx.Module):
    """Runs `cell` over `x[B, T, F]`; returns `(outputs[B, T, H], final_state)`.

    `learn_initial_state=True` makes the initial state a parameter (one vector per state part,
    shared by the batch). `unroll` is passed to `jax.lax.scan`.
    """

    def __init__(
        self,
        cell: nnx.Module,
        *,
        reverse: bool = False,
        learn_initial_state: bool = False,
        unroll: int = 1,
    ):
        self.cell = cell
        self.reverse = reverse
        self.unroll = unroll
        self.learned_state = nnx.data(None)
        if learn_initial_state:
            self.learned_state = jax.tree.map(
                lambda s: nnx.Param(jnp.zeros_like(s[0])), cell.initial_state(1)
            )

    def initial_state(self, batch_size: int) -> State:
        """The cell's zero state, or the learned one broadcast to `batch_size`."""
        if self.learned_state is None:
            return self.cell.initial_state(batch_size)
        return jax.tree.map(
            lambda p: jnp.broadcast_to(p[...], (batch_size, *p.shape)),
            self.learned_state,
            is_leaf=lambda v: isinstance(v, nnx.Variable),
        )

    def __call__(
        self,
        x: Array,
        *,
        lengths: Array | None = None,
        mask: Array | None = None,
        initial_state: State | None = None,
    ) -> tuple[Array, State]:
        """`lengths[B]` or `mask[B, T]` (True on the valid prefix) mark the padding."""
        if x.ndim != 3:
            raise ValueError(
                f"RNN: expected inputs of shape [batch, time, features], got {x.shape}"
            )
        batch, length, _ = x.shape
        # The cell computes in its parameters' dtype (lnorm.precision): a float32 input or
        # state would promote a bfloat16 recurrence back to float32 (and break the carry).
        dtype = module_dtype(self.cell)
        x = x.astype(dtype)
        mask = padding_mask(batch, length, lengths=lengths, mask=mask)
        if mask is not None:
            x = jnp.where(mask[..., None], x, 0)  # garbage in padding cannot reach any gradient
        if self.reverse:
            x = reverse_sequences(x, mask)
        state = self.initial_state(batch) if initial_state is None else initial_state
        state = jax.tree.map(lambda s: s.astype(dtype), state)

        step_mask = None if mask is None else mask.T
        if getattr(self.cell, "has_fused_scan", False):
            outputs, state = self.cell.scan(
                state, x.swapaxes(0, 1), mask=step_mask, unroll=self.unroll
            )
            if mask is not None:
                outputs = jnp.where(step_mask[..., None], outputs, 0)
        else:
            outputs, state = self._scan_steps(state, x.swapaxes(0, 1), step_mask)
        outputs = outputs.swapaxes(0, 1)
        if self.reverse:
            outputs = reverse_sequences(outputs, mask)
        return outputs, state

    def _scan_steps(self, state: State, x: Array, step_mask: Array | None) -> tuple[Array, State]:
        """`cell.step` over `x[T, B, F]` under `jax.lax.scan`, differentiated by autodiff (any
        cell); the input term is computed for all steps before the loop."""
        steps = jnp.arange(x.shape[0])
        projected = self.cell.project_inputs(x, t=steps, mask=step_mask)
        _skip_recurrent_data_init(self.cell)
        graphdef, stats, params, rest = nnx.split(self.cell, nnx.BatchStat, nnx.Param, ...)
        params, narrow = loop_invariant(params)  # float32 gradient sums over the steps

        def body(carry, inputs):
            state, stats = carry
            proj_t, mask_t, t = inputs
            cell = nnx.merge(graphdef, stats, narrow(params), rest)  # threads per-step stats
            new_state, h = cell.step(state, proj_t, t=t, mask=mask_t)
            if mask_t is not None:
                keep = mask_t[:, None]
                new_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new_state, state)
                h = jnp.where(keep, h, 0)
            return (new_state, nnx.state(cell, nnx.BatchStat)), h

        (state, stats), outputs = jax.lax.scan(
            body, (state, stats), (projected, step_mask, steps), unroll=self.unroll
        )
        nnx.update(self.cell, stats)
        return outputs, state


class Bidirectional(nnx.Module):
    """A forward and a reversed `RNN`; outputs concatenated `[B, T, H_fwd + H_bwd]`.

    The final state is `(forward_final, backward_final)`; the backward one is the state after
    reading each sequence from its last valid step back to its first.
    """

    def __init__(
        self,
        forward_cell: nnx.Module,
        backward_cell: nnx.Module,
        *,
        learn_initial_state: bool = False,
    ):
        self.forward = RNN(forward_cell, learn_initial_state=learn_initial_state)
        self.backward = RNN(backward_cell, reverse=True, learn_initial_state=learn_initial_state)

    def __call__(
        self, x: Array, *, lengths: Array | None = None, mask: Array | None = None
    ) -> tuple[Array, tuple[State, State]]:
        out_f, final_f = self.forward(x, lengths=lengths, mask=mask)
        out_b, final_b = self.backward(x, lengths=lengths, mask=mask)
        return jnp.concatenate([out_f, out_b], axis=-1), (final_f, final_b)


class StackedRNN(nnx.Module):
    """Layers (`RNN` or `Bidirectional`) applied in sequence, each reading the previous outputs.

    Returns the last layer's outputs and the list of every layer's final state.
    """

    def __init__(self, layers: Sequence[nnx.Module]):
        if not layers:
            raise ValueError("StackedRNN: needs at least one layer")
        self.layers = nnx.List(layers)

    def __call__(
        self, x: Array, *, lengths: Array | None = None, mask: Array | None = None
    ) -> tuple[Array, list[State]]:
        finals = []
        for layer in self.layers:
            x, final = layer(x, lengths=lengths, mask=mask)
            finals.append(final)
        return x, finals


__all__ = ["RNN", "Bidirectional", "StackedRNN", "padding_mask", "reverse_sequences"]
