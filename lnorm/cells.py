"""Recurrent cells whose normaliser is chosen by name (docs/paper.md §1.2-§1.5).

Every cell splits its step into the part that depends only on the input, `project_inputs(x)`
(`N(W_x x)`, one matmul for all time steps when `lnorm.rnn.RNN` calls it on a whole sequence),
and the recurrent part, `step(state, projected, ...)`. `cell(state, x_t, t=t)` is the two in
sequence: the step-by-step definition that the hoisted RNN must reproduce exactly.

Normalisers come from `lnorm.norms` by name (`none | layer | batch | weight | rms`). The default
`variant="paper"` is the paper's equations; the variants that users confuse with them are named
options, never the default.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnorm.norms import (
    NORMS,
    BatchNorm,
    Identity,
    LayerNorm,
    NormSpec,
    RMSNorm,
    affine,
    make_dense,
    make_norm,
    normalize_bwd,
    normalize_fwd,
)

Array = jax.Array
Initializer = Callable[..., Array]

LSTM_VARIANTS = ("paper", "draw", "per_gate")
GRU_VARIANTS = ("paper", "reset_before")

# Cooijmans et al. 2016: gamma = 0.1 keeps tanh/sigmoid out of saturation early in training.
_BN_SCALE_INIT = nnx.initializers.constant(0.1)
_KERNEL_INIT = nnx.initializers.lecun_normal()  # as nnx.Linear and Flax's LSTM cells
_RECURRENT_INIT = nnx.initializers.orthogonal()


class StepBatchNorm(nnx.Module):
    """Recurrent batch norm (Cooijmans et al. 2016): separate statistics for every time step.

    `lnorm.norms.BatchNorm` does the normalising, masking and running-average update; this
    module only keeps `t_max` copies of its statistics (`bn.mean`/`bn.var` have shape
    `(t_max, features)`) and hands step `t` the copy `min(t, t_max - 1)`. Training normalises
    with the batch statistics of step `t` and updates copy `t` for `t < t_max` only, so the
    last copy holds exactly step `t_max - 1`'s statistics, which evaluation reuses for all
    longer steps. A step whose sequences are all padded leaves its copy unchanged.
    """

    def __init__(self, num_features: int, *, t_max: int, rngs: nnx.Rngs, **bn_kw: Any):
        if t_max < 1:
            raise ValueError(f"StepBatchNorm: t_max must be >= 1, got {t_max}")
        self.bn = BatchNorm(num_features, rngs=rngs, **bn_kw)
        self.bn.mean = nnx.BatchStat(jnp.zeros((t_max, num_features), jnp.float32))
        self.bn.var = nnx.BatchStat(jnp.ones((t_max, num_features), jnp.float32))
        self.t_max = t_max

    def __call__(self, x: Array, *, t: Array | int, mask: Array | None = None) -> Array:
        """`x[B, F]` at step `t` (scalar) or `x[T, B, F]` at steps `t[T]`; mask: x.shape[:-1]."""
        t = jnp.asarray(t)
        if x.ndim != t.ndim + 2:
            raise ValueError(
                f"StepBatchNorm: input of shape {x.shape} needs a time index of rank "
                f"{x.ndim - 2} (scalar for [B, F], [T] for [T, B, F]), got shape {t.shape}"
            )
        graphdef, stats, rest = nnx.split(self.bn, nnx.BatchStat, ...)

        def normalize(x, mask, step_stats):
            bn = nnx.merge(graphdef, step_stats, rest, copy=True)  # keeps `old` intact
            return bn(x, mask=mask), nnx.state(bn, nnx.BatchStat)

        old = jax.tree.map(lambda s: s[jnp.minimum(t, self.t_max - 1)], stats)
        if t.ndim == 0:
            y, new = normalize(x, mask, old)
        else:
            y, new = jax.vmap(normalize, in_axes=(0, None if mask is None else 0, 0))(x, mask, old)
        if mask is not None:  # an all-padded step has no statistics to contribute
            valid = jnp.any(mask, axis=-1)[..., None]
            new = jax.tree.map(lambda n, o: jnp.where(valid, n, o), new, old)
        slot = jnp.where(t < self.t_max, t, self.t_max)  # out of range: the write is dropped
        stats = jax.tree.map(lambda s, n: s.at[slot].set(n, mode="drop"), stats, new)
        nnx.update(self.bn, stats)
        return y


def _make_norm(
    name: str, num_features: int, *, t_max: int | None, rngs: nnx.Rngs, **kw: Any
) -> nnx.Module:
    """`make_norm`, except that `batch` gets per-time-step statistics (`StepBatchNorm`)."""
    if name != "batch":
        return make_norm(name, num_features, rngs=rngs, **kw)
    if t_max is None:
        raise ValueError(
            "norm='batch' keeps statistics per time step: pass t_max (the longest training "
            "sequence; longer steps reuse step t_max - 1's statistics)"
        )
    return StepBatchNorm(num_features, t_max=t_max, rngs=rngs, **kw)


def _normalize(norm: nnx.Module, y: Array, t: Array | int | None, mask: Array | None) -> Array:
    if isinstance(norm, StepBatchNorm):
        if t is None:
            raise ValueError("a cell with norm='batch' needs the time step: call cell(..., t=t)")
        return norm(y, t=t, mask=mask)
    return norm(y, mask=mask)


class _Projection(nnx.Module):
    """`[N_1(W a)_1, N_2(W a)_2, ...]`: one matmul, then a normaliser of its own per slice.

    Several terms that multiply the same vector (e.g. the GRU's `W_x x` and `W x`) share one
    matmul yet keep separate statistics and gains, as the paper normalises them separately.
    """

    def __init__(
        self,
        norm: str,
        in_features: int,
        sizes: Sequence[int],
        *,
        dense_bias: bool,
        kernel_init: Initializer,
        t_max: int | None,
        norm_kw: Mapping[str, Any],
        rngs: nnx.Rngs,
    ):
        self.dense = make_dense(norm, in_features, sum(sizes), use_bias=dense_bias, rngs=rngs)
        kernel = self.dense.kernel
        kernel[...] = kernel_init(rngs.params(), kernel.shape, kernel.dtype)
        self.norms = nnx.List(
            [_make_norm(norm, n, t_max=t_max, rngs=rngs, **norm_kw) for n in sizes]
        )
        self.splits = tuple(int(s) for s in np.cumsum(sizes)[:-1])

    def __call__(
        self, a: Array, *, t: Array | int | None = None, mask: Array | None = None
    ) -> list[Array]:
        parts = jnp.split(self.dense(a), self.splits, axis=-1)
        return [_normalize(n, p, t, mask) for n, p in zip(self.norms, parts, strict=True)]


# --- the LSTM and GRU recurrences with a hand-written VJP -----------------------------------------
#
# Autodiff of `lax.scan` saves a dozen or more per-step intermediates (each a [T, B, .] stack
# written slice by slice) and adds `h_{t-1}^T dz_t` into the full [H, 4H] `W_h` gradient at
# every step of the backward loop; on CPU that memory traffic, not the arithmetic, is the step
# time. `_lstm_scan` saves only the states, the raw recurrent term `a_t = h_{t-1} W_h` and the
# per-row statistics of each normaliser, recomputes the elementwise part in the backward loop,
# and computes `dW_h = H_prev^T dA` as one matmul over all steps afterwards. The input term's
# normaliser also runs inside the loops, on rows that are in cache: over the whole [T, B, 4H]
# stack outside the loop, its forward and backward passes cost more than the loop's LN work.
# A normaliser here is `None` (identity) or `(epsilon, center)` for `lnorm.norms`' layer/RMS
# norm, whose closed-form pieces it reuses; its statistics are `(mean, 1/sigma)` per row.
# `_gru_scan` is the same design for the GRU (see there).

NormConfig = tuple[float, bool] | None


def _norm_fwd(x: Array, params: tuple, config: NormConfig) -> tuple[Array, Any]:
    """`(N(x), statistics)`; the identity and no statistics for `config=None`."""
    if config is None:
        return x, None
    y, (_, mean, rstd, _, _) = normalize_fwd(x, *params, *config, None)
    return y, (mean, rstd)


def _norm_apply(x: Array, params: tuple, stats: Any) -> Array:
    """`N(x)` from statistics saved by `_norm_fwd`."""
    return x if stats is None else affine(x, *stats, *params, None, x.dtype)


def _norm_bwd(config: NormConfig, x: Array, params: tuple, stats: Any, dy: Array) -> tuple:
    """`(dx, (dscale, dbias))` with the parameter gradients summed over the rows of `dy`."""
    if config is None:
        return dy, ()
    dx, *dparams = normalize_bwd(*config, None, (x, *stats, *params), dy)
    return dx, tuple(dparams)


def _grad_sums(params: Any) -> Any:
    """Zero accumulators for parameter gradients summed over the time steps, in at least
    float32: in bfloat16 (`train.dtype`) a sum over hundreds of steps rounds most of each
    step's contribution away."""
    return jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)),
                        params)


def _like(grads: Any, params: Any) -> Any:
    """`grads` in the dtypes of `params` (a custom VJP's cotangents must match its inputs)."""
    return jax.tree.map(lambda g, p: g.astype(p.dtype), grads, params)


def _gate_scale(z: Array) -> Array:
    """1 on the sigmoid gates' units of `z[..., 4H]`, 2 on the candidate's (`[f, i, o, g]`)."""
    n = z.shape[-1] // 4
    return jnp.repeat(jnp.array([1.0, 1.0, 1.0, 2.0], z.dtype), n)


def _gates(z: Array) -> Array:
    """`[s(f), s(i), s(o), tanh(g)]` as one `[B, 4H]` array, from the pre-activations `z`.

    One sigmoid over all 4H units (`tanh(g) = 2 s(2g) - 1`, in at least float32): a single
    uniform elementwise pass. With four sliced activations XLA:CPU fused the normalisers'
    arithmetic into each gate's kernel and split those over threads; the LN-LSTM scan's
    gradient at B=32, H=64 took 1.4x as long (docs/benchmarks.md).
    """
    zf = z.astype(jnp.promote_types(z.dtype, jnp.float32))
    two = _gate_scale(zf)
    return (jax.nn.sigmoid(zf * two) * two - (two - 1)).astype(z.dtype)


def _gates_grad(act: Array, dact: Array) -> Array:
    """The gradient at the pre-activations: `s (1 - s)` on the gates, `1 - tanh^2` on `g`."""
    return dact * (1 - act) * (act + (_gate_scale(act) - 1))


def _pack_stats(stats: Sequence[Any]) -> Array | None:
    """The normalisers' per-row statistics as one `[B, k]` array: one stacked output of the
    forward loop instead of one per statistic."""
    flat = [s for st in stats if st is not None for s in st if s is not None]
    return jnp.concatenate(flat, axis=-1) if flat else None


def _unpack_stats(packed: Array | None, configs: Sequence[NormConfig]) -> tuple:
    """`_pack_stats`' inverse: `(mean, 1/sigma)` per normaliser (mean None without centring)."""
    out, i = [], 0
    for config in configs:
        if config is None:
            out.append(None)
            continue
        mean = None
        if config[1]:
            mean, i = packed[:, i : i + 1], i + 1
        out.append((mean, packed[:, i : i + 1]))
        i += 1
    return tuple(out)


def _lstm_forward(w_h, configs, params, gx, mask, state, unroll):
    """Scans the recurrence; returns the final state and, stacked over time, the states
    `(c_t, h_t)`, `a_t` and the three normalisers' statistics (`_pack_stats`)."""
    in_params, rec_params, cell_params, _ = params
    in_config, rec_config, cell_config = configs

    def body(state, inputs):
        c_prev, h_prev = state
        gx_t, m = inputs
        a = h_prev @ w_h
        x_norm, x_stats = _norm_fwd(gx_t, in_params, in_config)
        a_norm, a_stats = _norm_fwd(a, rec_params, rec_config)
        sf, si, so, tg = jnp.split(_gates(x_norm + a_norm + params[3]), 4, axis=-1)
        c = sf * c_prev + si * tg
        c_norm, c_stats = _norm_fwd(c, cell_params, cell_config)
        h = so * jnp.tanh(c_norm)
        if m is not None:
            c = jnp.where(m[:, None], c, c_prev)
            h = jnp.where(m[:, None], h, h_prev)
        return (c, h), (c, h, a, _pack_stats((x_stats, a_stats, c_stats)))

    return jax.lax.scan(body, state, (gx, mask), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 5))
def _lstm_scan(w_h, configs, params, gx, mask, unroll, state):
    """`(hs[T, B, H], (c_T, h_T))`: the LSTM over the raw input term `gx[T, B, 4H] = x W_x`.

    `configs` and `params` are those of the normalisers of the input, recurrent and cell
    terms, `params = (in, rec, cell, bias)` with `(scale, bias)` per normaliser (`()` for the
    identity). `mask[T, B]` (or None) marks the valid steps, where the state advances; elsewhere
    it is held. `hs` is the state's `h` at every step.
    """
    final, (_, hs, *_) = _lstm_forward(w_h, configs, params, gx, mask, state, unroll)
    return hs, final


def _lstm_scan_fwd(w_h, configs, params, gx, mask, unroll, state):
    final, saved = _lstm_forward(w_h, configs, params, gx, mask, state, unroll)
    return (saved[1], final), (w_h, params, gx, mask, state, saved)


def _lstm_scan_bwd(configs, unroll, res, cotangents):
    w_h, params, gx, mask, (c0, h0), (cs, hs, a, stats) = res
    in_params, rec_params, cell_params, _ = params
    in_config, rec_config, cell_config = configs
    dhs, (dc_final, dh_final) = cotangents
    c_prev = jnp.concatenate([c0[None], cs[:-1]])
    h_prev = jnp.concatenate([h0[None], hs[:-1]])

    def body(carry, inputs):
        dc, dh, dparams, w_ht = carry
        gx_t, a_t, c, c_prev_t, packed, dh_out, m = inputs
        x_stats, a_stats, c_stats = _unpack_stats(packed, configs)
        x_norm = _norm_apply(gx_t, in_params, x_stats)
        a_norm = _norm_apply(a_t, rec_params, a_stats)
        act = _gates(x_norm + a_norm + params[3])
        sf, si, so, tg = jnp.split(act, 4, axis=-1)
        # `c` is the saved state, not recomputed: where a step is held (mask) it is c_{t-1},
        # which only meets zero cotangents there.
        tc = jnp.tanh(_norm_apply(c, cell_params, c_stats))
        dh_new, dc_new = dh + dh_out, dc
        if m is not None:  # a held state passes its gradient straight through
            keep = m[:, None]
            dh_new, dc_new = jnp.where(keep, dh_new, 0), jnp.where(keep, dc_new, 0)
        dc_norm, dcell = _norm_bwd(
            cell_config, c, cell_params, c_stats, dh_new * so * (1 - tc * tc)
        )
        dc_new = dc_new + dc_norm
        dact = jnp.concatenate([dc_new * c_prev_t, dc_new * tg, dh_new * tc, dc_new * si], -1)
        dz = _gates_grad(act, dact)
        dgx, din = _norm_bwd(in_config, gx_t, in_params, x_stats, dz)
        da, drec = _norm_bwd(rec_config, a_t, rec_params, a_stats, dz)
        dh_prev, dc_prev = da @ w_ht, dc_new * sf
        if m is not None:
            dh_prev = dh_prev + jnp.where(keep, 0, dh + dh_out)  # held: h_prev was output
            dc_prev = dc_prev + jnp.where(keep, 0, dc)
        # Parameter gradients are summed here, where the rows are in cache: as reductions over
        # [T, B, .] stacks after the loop they cost more than the whole loop (XLA:CPU).
        step_grads = (din, drec, dcell, jnp.sum(dz, axis=0))
        dparams = jax.tree.map(jnp.add, dparams, step_grads)
        same = in_config is None and rec_config is None  # then dgx and da are both dz
        return (dc_prev, dh_prev, dparams, w_ht), (dgx, None if same else da)

    # `W_h^T` rides in the carry, transposed once: closed over, XLA folds the transpose into
    # the loop's matmul, which then reads `W_h` across its rows at every step (at H=400 that
    # took twice the forward matmul's time and 4-5 ms of a 28 ms training step).
    zero_grads = _grad_sums(params)
    (dc0, dh0, dparams, _), (dgx, da) = jax.lax.scan(
        body,
        (dc_final, dh_final, zero_grads, w_h.T),
        (gx, a, cs, c_prev, stats, dhs, mask),
        reverse=True,
        unroll=unroll,
    )
    da = dgx if da is None else da
    dw_h = jnp.einsum("tbh,tbg->hg", h_prev, da)
    return dw_h, _like(dparams, params), dgx, None, (dc0, dh0)


_lstm_scan.defvjp(_lstm_scan_fwd, _lstm_scan_bwd)


# The GRU's recurrent term is one matmul `a_t = h_{t-1} [W_h | U] (+ b)`, [B, 3H]; its input term
# `x_t [W_x | W] (+ b)` is hoisted out of the loop. Each is split into a gate part (2H) and a
# candidate part (H) with a normaliser of its own: four normalisers, ordered as `GRUCell` holds
# them, `(N_x, N_w, N_h, N_u)`. The loops save `h_t`, `a_t` and the four normalisers' per-row
# statistics; `dW_h = H_prev^T dA` is one matmul after the backward loop. The recurrent linear
# map's bias (the plain GRU's `b_h`, `b_u`; `b_u` is inside the reset gate's product) is summed
# in the backward loop like the normalisers' parameters.


def _gru_terms(gx: Array, a: Array) -> tuple[Array, Array, Array, Array]:
    """The raw terms `(W_x x, W x, W_h h, U h)` in the order of the normalisers."""
    hid = a.shape[-1] // 3
    return gx[..., : 2 * hid], gx[..., 2 * hid :], a[..., : 2 * hid], a[..., 2 * hid :]


def _gru_update(normed: Sequence[Array], h_prev: Array) -> tuple[Array, tuple[Array, ...]]:
    """`h_t` from the four normalised terms, and the activations `(z, r, candidate)`."""
    x_gate, x_cand, h_gate, h_cand = normed
    z, r = jnp.split(jax.nn.sigmoid(x_gate + h_gate), 2, axis=-1)
    candidate = jnp.tanh(x_cand + r * h_cand)
    return h_prev + z * (candidate - h_prev), (z, r, candidate)


def _gru_forward(w_h, configs, params, gx, mask, h0, unroll):
    """Scans the recurrence; returns the final `h` and, stacked over time, `h_t`, `a_t` and
    the four normalisers' statistics."""
    *norm_params, rec_bias = params

    def body(h_prev, inputs):
        gx_t, m = inputs
        a = h_prev @ w_h if rec_bias is None else h_prev @ w_h + rec_bias
        normed, stats = zip(
            *(
                _norm_fwd(v, p, c)
                for v, p, c in zip(_gru_terms(gx_t, a), norm_params, configs, strict=True)
            ),
            strict=True,
        )
        h, _ = _gru_update(normed, h_prev)
        if m is not None:
            h = jnp.where(m[:, None], h, h_prev)
        return h, (h, a, stats)

    return jax.lax.scan(body, h0, (gx, mask), unroll=unroll)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 5))
def _gru_scan(w_h, configs, params, gx, mask, unroll, h0):
    """`(hs[T, B, H], h_T)`: the paper's GRU over the raw input term `gx[T, B, 3H]`.

    `w_h = [W_h | U]` is `[H, 3H]`; `configs` and `params[:4]` are those of the normalisers
    `(N_x, N_w, N_h, N_u)` (`(scale, bias)` each, `()` for the identity), `params[4]` the
    recurrent linear map's bias or None. `mask[T, B]` (or None) marks the valid steps, where
    the state advances; elsewhere it is held. `hs` is the state at every step.
    """
    final, (hs, _, _) = _gru_forward(w_h, configs, params, gx, mask, h0, unroll)
    return hs, final


def _gru_scan_fwd(w_h, configs, params, gx, mask, unroll, h0):
    final, saved = _gru_forward(w_h, configs, params, gx, mask, h0, unroll)
    return (saved[0], final), (w_h, params, gx, mask, h0, saved)


def _gru_scan_bwd(configs, unroll, res, cotangents):
    w_h, params, gx, mask, h0, (hs, a, stats) = res
    *norm_params, rec_bias = params
    dhs, dh_final = cotangents
    h_prev = jnp.concatenate([h0[None], hs[:-1]])

    def body(carry, inputs):
        dh, dparams = carry
        gx_t, a_t, h_prev_t, stats_t, dh_out, m = inputs
        terms = _gru_terms(gx_t, a_t)
        normed = [_norm_apply(v, p, s) for v, p, s in zip(terms, norm_params, stats_t, strict=True)]
        _, (z, r, candidate) = _gru_update(normed, h_prev_t)
        dh_total = dh + dh_out  # `hs[t]` is the state itself
        dh_new = dh_total if m is None else jnp.where(m[:, None], dh_total, 0)
        dcand = dh_new * z * (1 - candidate * candidate)
        dgate = jnp.concatenate(
            [dh_new * (candidate - h_prev_t) * z * (1 - z), dcand * normed[3] * r * (1 - r)],
            axis=-1,
        )
        (dx_gate, g_xg), (dx_cand, g_xc), (dh_gate, g_hg), (dh_cand, g_hc) = (
            _norm_bwd(c, v, p, s, d)
            for c, v, p, s, d in zip(
                configs, terms, norm_params, stats_t, (dgate, dcand, dgate, dcand * r), strict=True
            )
        )
        da = jnp.concatenate([dh_gate, dh_cand], axis=-1)
        dh_prev = dh_new * (1 - z) + da @ w_h.T
        if m is not None:  # a held state passes its gradient straight through
            dh_prev = dh_prev + jnp.where(m[:, None], 0, dh_total)
        step_grads = (g_xg, g_xc, g_hg, g_hc, None if rec_bias is None else jnp.sum(da, axis=0))
        dparams = jax.tree.map(jnp.add, dparams, step_grads)
        return (dh_prev, dparams), (jnp.concatenate([dx_gate, dx_cand], axis=-1), da)

    zero_grads = _grad_sums(params)
    (dh0, dparams), (dgx, da) = jax.lax.scan(
        body,
        (dh_final, zero_grads),
        (gx, a, h_prev, stats, dhs, mask),
        reverse=True,
        unroll=unroll,
    )
    dw_h = jnp.einsum("tbh,tbg->hg", h_prev, da)
    return dw_h, _like(dparams, params), dgx, None, dh0


_gru_scan.defvjp(_gru_scan_fwd, _gru_scan_bwd)


def _fused_norm(norm: nnx.Module) -> tuple[tuple, NormConfig] | None:
    """(params, config) of a normaliser the fused scans handle (identity, layer, RMS), else None."""
    if isinstance(norm, Identity):
        return (), None
    if isinstance(norm, LayerNorm | RMSNorm) and norm.dtype is None:
        return norm._params(), (float(norm.epsilon), isinstance(norm, LayerNorm))
    return None


def _split_spec(
    norm: str | NormSpec, norm_kwargs: Mapping[str, Any] | None
) -> tuple[str, dict[str, Any]]:
    """A cell's `(norm name, normaliser options)`; a `NormSpec` brings its own options, which
    explicit `norm_kwargs` override."""
    if isinstance(norm, NormSpec):
        return norm.name, {**norm.options, **(norm_kwargs or {})}
    return norm, dict(norm_kwargs or {})


def _check_option(cell: str, key: str, value: str, allowed: Sequence[str]) -> None:
    if value not in allowed:
        raise ValueError(f"{cell}: unknown {key}={value!r}; expected one of {tuple(allowed)}")


class LSTMCell(nnx.Module):
    """LSTM with a normaliser chosen by name; gates ordered `[f, i, o, g]` as in the paper.

    `variant="paper"` (Eq. 20-22; Cooijmans et al. for `norm="batch"`):
        `[f, i, o, g] = N_h(W_h h) + N_x(W_x x) + b`, each `N` jointly over all 4H gate units
        with its own gain and bias (no bias for batch norm: `BN(.; gamma, 0)`, gamma init 0.1);
        `c_t = s(f) c + s(i) tanh(g)`; `h_t = s(o) tanh(N_c(c_t))`; `c_t` itself is carried.
        `norm="weight"` weight-normalises `W_h` and `W_x` instead; `"none"` is the plain LSTM.
    `variant="draw"`: a plain LSTM whose only normaliser is `N_c` (the paper's DRAW model).
    `variant="per_gate"` (not the paper; the old TensorFlow `LayerNormBasicLSTMCell`): one
        normaliser per gate on `W_x x + W_h h`. Pass `carry_normalized_cell=True` too for that
        cell exactly: it carries `N_c(c_t)` instead of `c_t` (also not the paper).

    The state is `(c, h)`. `norm="batch"` needs `t_max` and the time step `t` at every call.
    `norm_kwargs` go to every normaliser (e.g. `epsilon`, `momentum`, `unbiased`).
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        norm: str | NormSpec = "none",
        variant: str = "paper",
        carry_normalized_cell: bool = False,
        t_max: int | None = None,
        norm_kwargs: Mapping[str, Any] | None = None,
        kernel_init: Initializer = _KERNEL_INIT,
        recurrent_kernel_init: Initializer = _RECURRENT_INIT,
        rngs: nnx.Rngs,
    ):
        norm, norm_kwargs = _split_spec(norm, norm_kwargs)
        _check_option("LSTMCell", "norm", norm, NORMS)
        _check_option("LSTMCell", "variant", variant, LSTM_VARIANTS)
        activation_norms = ("layer", "rms") if variant == "per_gate" else ("layer", "batch", "rms")
        if variant != "paper" and norm not in activation_norms:
            raise ValueError(
                f"LSTMCell: variant={variant!r} normalises activations; norm must be one of "
                f"{activation_norms}, got {norm!r}"
            )
        h4 = 4 * hidden_features
        kw = dict(norm_kwargs or {})
        cell_kw = {"scale_init": _BN_SCALE_INIT, **kw} if norm == "batch" else kw
        term_kw = {**cell_kw, "use_bias": False} if norm == "batch" else kw  # BN(.; gamma, 0)
        gate_norm = norm if variant == "paper" else "none"
        proj = dict(dense_bias=False, t_max=t_max, norm_kw=term_kw, rngs=rngs)
        self.input_proj = _Projection(gate_norm, in_features, [h4], kernel_init=kernel_init, **proj)
        self.recurrent_proj = _Projection(
            gate_norm, hidden_features, [h4], kernel_init=recurrent_kernel_init, **proj
        )
        per_gate = variant == "per_gate"
        self.gate_norms = nnx.List(
            [make_norm(norm, hidden_features, rngs=rngs, **kw) for _ in range(4 * per_gate)]
        )
        self.cell_norm = _make_norm(norm, hidden_features, t_max=t_max, rngs=rngs, **cell_kw)
        self.bias = nnx.Param(jnp.zeros((h4,), jnp.float32))
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.carry_normalized_cell = carry_normalized_cell

    def initial_state(self, batch_size: int) -> tuple[Array, Array]:
        """Zero `(c, h)`, each `[batch_size, hidden_features]`, in the parameters' dtype (the
        cell computes in it: `lnorm.precision`)."""
        zeros = jnp.zeros((batch_size, self.hidden_features), self.bias[...].dtype)
        return zeros, zeros

    def project_inputs(
        self, x: Array, *, t: Array | int | None = None, mask: Array | None = None
    ) -> Array:
        """`N_x(W_x x)`: `x[B, F]` at step `t`, or a whole sequence `x[T, B, F]` at steps `t[T]`."""
        (gx,) = self.input_proj(x, t=t, mask=mask)
        return gx

    def step(
        self,
        state: tuple[Array, Array],
        gx: Array,
        *,
        t: Array | int | None = None,
        mask: Array | None = None,
    ) -> tuple[tuple[Array, Array], Array]:
        """The recurrent part, given `gx = project_inputs(x_t)`."""
        c, h = state
        (gh,) = self.recurrent_proj(h, t=t, mask=mask)
        z = gh + gx
        if self.gate_norms:
            z = jnp.concatenate(
                [n(p) for n, p in zip(self.gate_norms, jnp.split(z, 4, axis=-1), strict=True)],
                axis=-1,
            )
        f, i, o, g = jnp.split(z + self.bias[...], 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(g)
        c_hat = _normalize(self.cell_norm, c, t, mask)
        h = jax.nn.sigmoid(o) * jnp.tanh(c_hat)
        return ((c_hat if self.carry_normalized_cell else c), h), h

    @property
    def has_fused_scan(self) -> bool:
        """Whether `scan` applies: plain, LN and RMS cells (`paper`, `draw`), the cell carried."""
        return (
            type(self.recurrent_proj.dense) is nnx.Linear
            and not self.gate_norms
            and not self.carry_normalized_cell
            and all(_fused_norm(n) is not None for n in self._fused_norms())
        )

    def _fused_norms(self) -> tuple[nnx.Module, nnx.Module, nnx.Module]:
        return self.input_proj.norms[0], self.recurrent_proj.norms[0], self.cell_norm

    def scan(
        self,
        state: tuple[Array, Array],
        x: Array,
        *,
        mask: Array | None = None,
        unroll: int = 1,
    ) -> tuple[Array, tuple[Array, Array]]:
        """The cell over a whole sequence `x[T, B, F]`, with a hand-written gradient.

        Equals calling the cell at every step (`W_x x` is one matmul for all steps; its
        normaliser runs inside the loop, where its rows are in cache). Returns the state's `h`
        at every step `[T, B, H]` and the final state; where `mask[T, B]` is False the state is
        held. Needs `has_fused_scan`.
        """
        if not self.has_fused_scan:
            raise ValueError(
                "LSTMCell.scan handles norm='none'|'layer'|'rms' with variant='paper'|'draw' "
                "and carry_normalized_cell=False; run other cells step by step"
            )
        params, configs = zip(*(_fused_norm(n) for n in self._fused_norms()), strict=True)
        gx = self.input_proj.dense(x)
        w_h = self.recurrent_proj.dense.kernel[...]
        return _lstm_scan(w_h, configs, (*params, self.bias[...]), gx, mask, unroll, state)

    def __call__(
        self,
        state: tuple[Array, Array],
        x_t: Array,
        *,
        t: Array | int | None = None,
        mask: Array | None = None,
    ) -> tuple[tuple[Array, Array], Array]:
        """One step `x_t[B, F]` -> `((c_t, h_t), h_t)`; `mask[B]` keeps rows out of BN stats."""
        return self.step(state, self.project_inputs(x_t, t=t, mask=mask), t=t, mask=mask)


class GRUCell(nnx.Module):
    """GRU with a normaliser chosen by name (Eq. 26-28 of the paper for `norm="layer"`).

    `variant="paper"`:
        `[z, r] = N_h(W_h h) + N_x(W_x x)`, each `N` jointly over the 2H gate units;
        `h~ = tanh(N_w(W x) + s(r) * N_u(U h))`; `h_t = (1 - s(z)) h + s(z) h~`.
    `variant="reset_before"` (not the paper): `h~ = tanh(N_w(W x) + N_u(U (s(r) * h)))`.

    Each term has one bias: the normaliser's where it has one (layer, batch, rms), else the
    linear map's (none, weight), so `norm="none"` is the cuDNN/PyTorch GRU. Batch norm's gamma
    starts at 0.1 as in Cooijmans et al.; `norm="batch"` needs `t_max` and the step `t`.
    """

    def __init__(
        self,
        in_features: int,
        hidden_features: int,
        *,
        norm: str | NormSpec = "none",
        variant: str = "paper",
        t_max: int | None = None,
        norm_kwargs: Mapping[str, Any] | None = None,
        kernel_init: Initializer = _KERNEL_INIT,
        recurrent_kernel_init: Initializer = _RECURRENT_INIT,
        rngs: nnx.Rngs,
    ):
        norm, norm_kwargs = _split_spec(norm, norm_kwargs)
        _check_option("GRUCell", "norm", norm, NORMS)
        _check_option("GRUCell", "variant", variant, GRU_VARIANTS)
        hid = hidden_features
        batch_kw = {"scale_init": _BN_SCALE_INIT} if norm == "batch" else {}
        proj = dict(
            dense_bias=norm in ("none", "weight"),
            t_max=t_max,
            norm_kw={**batch_kw, **(norm_kwargs or {})},
            rngs=rngs,
        )
        self.input_proj = _Projection(
            norm, in_features, [2 * hid, hid], kernel_init=kernel_init, **proj
        )
        recurrent_sizes = [2 * hid, hid] if variant == "paper" else [2 * hid]
        self.recurrent_proj = _Projection(
            norm, hid, recurrent_sizes, kernel_init=recurrent_kernel_init, **proj
        )
        if variant == "reset_before":
            self.candidate_proj = _Projection(
                norm, hid, [hid], kernel_init=recurrent_kernel_init, **proj
            )
        self.in_features = in_features
        self.hidden_features = hidden_features
        self.variant = variant

    def initial_state(self, batch_size: int) -> Array:
        """Zero `h`, `[batch_size, hidden_features]`."""
        dtype = self.recurrent_proj.dense.kernel[...].dtype  # the cell's (lnorm.precision)
        return jnp.zeros((batch_size, self.hidden_features), dtype)

    def project_inputs(
        self, x: Array, *, t: Array | int | None = None, mask: Array | None = None
    ) -> tuple[Array, Array]:
        """`(N_x(W_x x), N_w(W x))` from one matmul; `x[B, F]` at `t`, or `x[T, B, F]` at `t[T]`."""
        gx, cx = self.input_proj(x, t=t, mask=mask)
        return gx, cx

    def step(
        self,
        h: Array,
        projected: tuple[Array, Array],
        *,
        t: Array | int | None = None,
        mask: Array | None = None,
    ) -> tuple[Array, Array]:
        """The recurrent part, given `projected = project_inputs(x_t)`."""
        gx, cx = projected
        if self.variant == "paper":
            gh, ch = self.recurrent_proj(h, t=t, mask=mask)
        else:
            (gh,) = self.recurrent_proj(h, t=t, mask=mask)
        z, r = jnp.split(jax.nn.sigmoid(gh + gx), 2, axis=-1)
        if self.variant == "paper":
            candidate = jnp.tanh(cx + r * ch)
        else:
            (uh,) = self.candidate_proj(r * h, t=t, mask=mask)
            candidate = jnp.tanh(cx + uh)
        h = (1.0 - z) * h + z * candidate
        return h, h

    @property
    def has_fused_scan(self) -> bool:
        """Whether `scan` applies: plain, LN and RMS cells of `variant="paper"`."""
        return (
            self.variant == "paper"
            and type(self.recurrent_proj.dense) is nnx.Linear
            and all(_fused_norm(n) is not None for n in self._fused_norms())
        )

    def _fused_norms(self) -> tuple[nnx.Module, ...]:
        return (*self.input_proj.norms, *self.recurrent_proj.norms)

    def scan(
        self, h: Array, x: Array, *, mask: Array | None = None, unroll: int = 1
    ) -> tuple[Array, Array]:
        """The cell over a whole sequence `x[T, B, F]`, with a hand-written gradient.

        Equals calling the cell at every step (`[W_x | W] x` is one matmul for all steps; its
        normalisers run inside the loop). Returns the state at every step `[T, B, H]` and the
        final state; where `mask[T, B]` is False the state is held. Needs `has_fused_scan`.
        """
        if not self.has_fused_scan:
            raise ValueError(
                "GRUCell.scan handles norm='none'|'layer'|'rms' with variant='paper'; "
                "run other cells step by step"
            )
        params, configs = zip(*(_fused_norm(n) for n in self._fused_norms()), strict=True)
        dense = self.recurrent_proj.dense
        rec_bias = None if dense.bias is None else dense.bias[...]
        gx = self.input_proj.dense(x)
        w_h = dense.kernel[...]
        return _gru_scan(w_h, configs, (*params, rec_bias), gx, mask, unroll, h)

    def __call__(
        self,
        h: Array,
        x_t: Array,
        *,
        t: Array | int | None = None,
        mask: Array | None = None,
    ) -> tuple[Array, Array]:
        """One step `x_t[B, F]` -> `(h_t, h_t)`; `mask[B]` keeps rows out of BN statistics."""
        return self.step(h, self.project_inputs(x_t, t=t, mask=mask), t=t, mask=mask)


__all__ = ["GRU_VARIANTS", "LSTM_VARIANTS", "GRUCell", "LSTMCell", "StepBatchNorm"]
