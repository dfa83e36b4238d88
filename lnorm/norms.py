"""Feed-forward normalisers: layer norm (the paper), its baselines and its successors.

Every normaliser works on the last axis of its input, owns per-feature parameters named
`scale` (the paper's gain `g`) and `bias` (`b`), and is chosen by name (`NORMS`) so that models
and recurrent cells swap normalisers without branching. `NormedDense` is the paper's
`g / sigma * (W x - mu) + b` unit, the building block of the experiments.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

Array = jax.Array
Initializer = Callable[..., Array]

NORMS = ("none", "layer", "batch", "weight", "rms")

# Salimans & Kingma's data-dependent init divides by sigma(t); this only guards dead units.
_WN_INIT_EPS = 1e-10
_LECUN_NORMAL = nnx.initializers.lecun_normal()  # nnx.Linear's default kernel init


def _compute_dtype(dtype: Any) -> Any:
    """Statistics in at least float32: bf16/fp16 means and variances lose too much."""
    return jnp.promote_types(dtype, jnp.float32)


def _check_features(where: str, x: Array, param: Array | None, name: str) -> None:
    if param is not None and param.shape != x.shape[-1:]:
        raise ValueError(
            f"{where}: `{name}` has shape {param.shape}, expected ({x.shape[-1]},) to match "
            f"the last axis of the input of shape {x.shape}"
        )


# --- layer norm and RMS norm: one closed-form custom VJP ----------------------------------------
#
# Written for memory traffic, which is what a normaliser's time is. The residuals are the input
# itself (the caller keeps it alive anyway) plus two per-row scalars, so the forward pass writes
# nothing but its output and the backward pass re-derives x_hat on the fly instead of reading a
# saved full-size copy. The statistics and row sums are plain `jnp` reductions, which XLA:CPU
# hands to its vectorised reduction library. For large inputs, every backward kernel gets its own
# copy of what it shares with the others (`_unshared`): XLA CSEs identical broadcasts (of the
# statistics, of `scale`, of a fused cotangent) and the library kernels cannot all fuse one shared
# broadcast, so it is materialised, a 32 MB buffer at 8192x1024 paid for in page faults
# (measured: docs/benchmarks.md). Below _FUSED_MIN_SIZE elements such buffers stay in cache and
# the barriers would only constrain the surrounding fusions (e.g. the recurrent cells' scans).
# The forward statistics are two-pass everywhere (exact, and two fast library passes).
_FUSED_MIN_SIZE = 1 << 21  # 8 MiB of float32


def _unshared(large: bool, *arrays: Any) -> tuple[Any, ...]:
    """`arrays` unchanged; for large inputs as new values that XLA cannot merge with other uses
    of the same arrays, so that their consumers fuse broadcasts of their own. Callers pass
    distinct tuples: CSE merges two barriers over the same operands."""
    return jax.lax.optimization_barrier(arrays) if large else arrays


def _stats(x: Array, epsilon: float, center: bool) -> tuple[Array | None, Array]:
    """Per-row (mean, 1/sigma) over the last axis, kept as (..., 1); no mean without centring.
    Two passes (the variance of `x - mean`): exact when |mean| >> std."""
    if not center:
        return None, jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + epsilon)
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return mean, jax.lax.rsqrt(var + epsilon)


def affine(xf, mean, rstd, scale, bias, dtype, out_dtype):
    """`scale * (x - mean) * rstd + bias` from given per-row statistics. Public, with
    `normalize_fwd`/`normalize_bwd`, for recurrences that save the statistics themselves
    (`lnorm.cells`' fused LSTM scan)."""
    y = (xf - mean) * rstd if mean is not None else xf * rstd
    if scale is not None:
        y = y * scale
    if bias is not None:
        y = y + bias
    return y.astype(dtype or out_dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _normalize(x, scale, bias, epsilon, center, dtype):
    xf = x.astype(_compute_dtype(x.dtype))
    return affine(xf, *_stats(xf, epsilon, center), scale, bias, dtype, x.dtype)


def normalize_fwd(x, scale, bias, epsilon, center, dtype):
    """The normalisation and its residuals `(x, mean, rstd, scale, bias)` for `normalize_bwd`."""
    xf = x.astype(_compute_dtype(x.dtype))
    mean, rstd = _stats(xf, epsilon, center)
    return affine(xf, mean, rstd, scale, bias, dtype, x.dtype), (x, mean, rstd, scale, bias)


def normalize_bwd(epsilon, center, dtype, res, dy):
    """dx = rstd * (g - mean(g) - x_hat * mean(g * x_hat)) with g = scale * dy (no mean(g) term
    without centring); dscale = sum(dy * x_hat), dbias = sum(dy) over the batch axes."""
    del epsilon, dtype
    x, mean, rstd, scale, bias = res
    cdt = _compute_dtype(x.dtype)
    xf, dyf = x.astype(cdt), dy.astype(cdt)
    large = x.size >= _FUSED_MIN_SIZE
    n = x.shape[-1]
    # dx's kernel (its row sums fuse into it).
    m, r, s, d = _unshared(large, mean, rstd, scale, dyf)
    xhat = (xf - m) * r if center else xf * r
    g = d * s if s is not None else d
    dx = g - xhat * (jnp.sum(g * xhat, axis=-1, keepdims=True) / n)
    if center:
        dx = dx - jnp.mean(g, axis=-1, keepdims=True)
    dx = (r * dx).astype(x.dtype)
    # The parameters' column sums (without `scale` the two tuples coincide: no dscale kernel).
    m, r, d = _unshared(large, mean, rstd, dyf)
    batch_axes = tuple(range(x.ndim - 1))
    xhat = (xf - m) * r if center else xf * r
    dscale = None if scale is None else jnp.sum(d * xhat, batch_axes).astype(scale.dtype)
    dbias = None if bias is None else jnp.sum(d, batch_axes).astype(bias.dtype)
    return dx, dscale, dbias


_normalize.defvjp(normalize_fwd, normalize_bwd)


def layer_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    *,
    epsilon: float = 1e-5,
    dtype: Any = None,
) -> Array:
    """The paper's layer norm over the last axis: `scale * (x - mu) / sqrt(var + eps) + bias`.

    Statistics are per example (biased variance, eps inside the square root) and identical in
    training and evaluation. Computes in float32 for half-precision inputs; the output is in
    `dtype` (default: the input's dtype). The gradient is the closed-form LN gradient, finite
    even for constant rows.
    """
    _check_features("layer_norm", x, scale, "scale")
    _check_features("layer_norm", x, bias, "bias")
    return _normalize(x, scale, bias, float(epsilon), True, dtype)


def rms_norm(
    x: Array,
    scale: Array | None,
    bias: Array | None,
    *,
    epsilon: float = 1e-5,
    dtype: Any = None,
) -> Array:
    """RMSNorm (Zhang & Sennrich 2019): `scale * x / sqrt(mean(x^2) + eps) + bias`, no centring."""
    _check_features("rms_norm", x, scale, "scale")
    _check_features("rms_norm", x, bias, "bias")
    return _normalize(x, scale, bias, float(epsilon), False, dtype)


# --- modules -------------------------------------------------------------------------------------


class Identity(nnx.Module):
    """No normalisation (`norm="none"`, and the activation side of `norm="weight"`).

    Accepts and ignores every normaliser option so that it is a drop-in for the others.
    """

    def __init__(self, num_features: int, **options: Any):
        del options
        self.num_features = num_features

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        del mask
        return x


class _FeatureNorm(nnx.Module):
    """Shared constructor: per-feature `scale` (init 1) and `bias` (init 0) on the last axis."""

    def __init__(
        self,
        num_features: int,
        *,
        epsilon: float = 1e-5,
        use_bias: bool = True,
        use_scale: bool = True,
        scale_init: Initializer = nnx.initializers.ones,
        bias_init: Initializer = nnx.initializers.zeros,
        dtype: Any = None,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        shape = (num_features,)
        self.scale = nnx.data(None)
        self.bias = nnx.data(None)
        if use_scale:
            self.scale = nnx.Param(scale_init(rngs.params(), shape, param_dtype))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), shape, param_dtype))
        self.num_features = num_features
        self.epsilon = epsilon
        self.dtype = dtype

    def _params(self) -> tuple[Array | None, Array | None]:
        scale = None if self.scale is None else self.scale[...]
        bias = None if self.bias is None else self.bias[...]
        return scale, bias

    def _check_input(self, x: Array) -> None:
        if x.ndim == 0 or x.shape[-1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__}({self.num_features}): expected an input whose last axis "
                f"has {self.num_features} features, got shape {x.shape}"
            )


class LayerNorm(_FeatureNorm):
    """The paper's layer norm: per-example statistics over the features, no running state.

    `mask` is accepted for interface parity with `BatchNorm` and ignored: padded positions cannot
    affect per-example statistics.
    """

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        del mask
        self._check_input(x)
        return layer_norm(x, *self._params(), epsilon=self.epsilon, dtype=self.dtype)


class RMSNorm(_FeatureNorm):
    """RMSNorm: rescales by the root mean square of the features without centring them."""

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        del mask
        self._check_input(x)
        return rms_norm(x, *self._params(), epsilon=self.epsilon, dtype=self.dtype)


class BatchNorm(_FeatureNorm):
    """Batch norm over every axis but the last, with running averages for evaluation.

    Training (`use_running_average=False`, set by `model.train()`) normalises with the batch
    statistics and updates the running `mean`/`var` (`nnx.BatchStat`) as
    `momentum * old + (1 - momentum) * batch`; evaluation (`model.eval()`) uses the running
    averages. `unbiased=True` normalises with the n/(n-1)-corrected variance, as the paper's
    batch-size-4 runs do, and stores that variance. `mask` (bool, shape `x.shape[:-1]`) excludes
    padded positions from the statistics. Under `jax.jit` with a sharded batch the reductions
    are already global; `axis_name` is for `shard_map`/`pmap`/`vmap`, where each program sees a
    shard and the sums are `psum`-ed.
    """

    def __init__(
        self,
        num_features: int,
        *,
        use_running_average: bool = False,
        momentum: float = 0.99,
        unbiased: bool = False,
        axis_name: str | None = None,
        **kwargs: Any,
    ):
        super().__init__(num_features, **kwargs)
        self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))
        self.use_running_average = use_running_average
        self.momentum = momentum
        self.unbiased = unbiased
        self.axis_name = axis_name

    def set_view(self, use_running_average: bool | None = None) -> None:
        """Lets `nnx.view(model, use_running_average=...)` switch the mode."""
        if use_running_average is not None:
            self.use_running_average = use_running_average

    def _batch_stats(self, x: Array, mask: Array | None) -> tuple[Array, Array, Array]:
        """(mean, var, number of valid positions) over every axis but the last."""
        axes = tuple(range(x.ndim - 1))
        if mask is None:
            weight = jnp.ones((), x.dtype)
            count = jnp.asarray(x.size // x.shape[-1], x.dtype)
        else:
            if mask.shape != x.shape[:-1]:
                raise ValueError(
                    f"BatchNorm: `mask` has shape {mask.shape}, expected {x.shape[:-1]} "
                    f"(the input's shape {x.shape} without its feature axis)"
                )
            weight = mask.astype(x.dtype)[..., None]
            count = jnp.sum(weight)
        total = jnp.sum(x * weight, axes)
        if self.axis_name is not None:
            total, count = jax.lax.psum((total, count), self.axis_name)
        mean = total / jnp.maximum(count, 1.0)
        sq = jnp.sum(jnp.square((x - mean) * weight), axes)
        if self.axis_name is not None:
            sq = jax.lax.psum(sq, self.axis_name)
        var = sq / jnp.maximum(count - float(self.unbiased), 1.0)
        return mean, var, count

    def __call__(
        self,
        x: Array,
        *,
        mask: Array | None = None,
        use_running_average: bool | None = None,
    ) -> Array:
        self._check_input(x)
        if use_running_average is None:
            use_running_average = self.use_running_average
        xf = x.astype(_compute_dtype(x.dtype))
        if use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            mean, var, count = self._batch_stats(xf, mask)
            # A fully padded batch (e.g. a time step past every sequence's end) has no statistics.
            m = jnp.where(count > 0, self.momentum, 1.0)
            self.mean[...] = jax.lax.stop_gradient(m * self.mean[...] + (1 - m) * mean)
            self.var[...] = jax.lax.stop_gradient(m * self.var[...] + (1 - m) * var)
        scale, bias = self._params()
        mul = jax.lax.rsqrt(var + self.epsilon)
        if scale is not None:
            mul = mul * scale
        y = (xf - mean) * mul
        if bias is not None:
            y = y + bias
        return y.astype(self.dtype or x.dtype)


class WeightNormDense(nnx.Module):
    """Weight-normalised linear layer (Salimans & Kingma 2016): `y = x (g v / ||v||) + b`.

    The norm is per output unit (per column of `kernel` = v), so `scale` (g) alone sets each
    unit's weight length. Computed as `g * (x v) / ||v||`, which is also the `t` that the
    data-dependent initialisation (`weight_norm_init`) needs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        *,
        use_bias: bool = True,
        kernel_init: Initializer = _LECUN_NORMAL,
        param_dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        shape = (in_features, out_features)
        self.kernel = nnx.Param(kernel_init(rngs.params(), shape, param_dtype))
        self.scale = nnx.Param(jnp.ones((out_features,), param_dtype))
        self.bias = (
            nnx.Param(jnp.zeros((out_features,), param_dtype)) if use_bias else nnx.data(None)
        )
        self.in_features = in_features
        self.out_features = out_features
        self.data_init = False

    def __call__(self, x: Array) -> Array:
        if x.shape[-1] != self.in_features:
            raise ValueError(
                f"WeightNormDense({self.in_features}, {self.out_features}): expected an input "
                f"whose last axis has {self.in_features} features, got shape {x.shape}"
            )
        v = self.kernel[...]
        vf = v.astype(_compute_dtype(v.dtype))  # the column norms in >= float32 (bf16 training)
        t = (x @ v) * jax.lax.rsqrt(jnp.sum(vf * vf, axis=0)).astype(v.dtype)
        if self.data_init:
            self._init_from(t)
        y = t * self.scale[...]
        return y if self.bias is None else y + self.bias[...]

    def _init_from(self, t: Array) -> None:
        """g <- 1/sigma(t), b <- -mu(t)/sigma(t): unit-variance, zero-mean pre-activations."""
        axes = tuple(range(t.ndim - 1))
        inv_sigma = jax.lax.rsqrt(jnp.var(t, axes) + _WN_INIT_EPS)
        self.scale[...] = inv_sigma.astype(self.scale.dtype)
        if self.bias is not None:
            self.bias[...] = (-jnp.mean(t, axes) * inv_sigma).astype(self.bias.dtype)
        self.data_init = False  # once: a layer called again later sees its initialised self


def weight_norm_init(model: nnx.Module, fn: Callable[..., Any], *args: Any) -> Any:
    """Data-dependent initialisation of every `WeightNormDense` in `model` from one batch.

    Runs `fn(*args)` (e.g. `model(x_batch)`) once, eagerly; each layer initialises on its first
    call and then outputs its initialised pre-activations, so later layers see already-initialised
    earlier layers. Returns `fn`'s result. Raises if a layer was not reached by `fn`.
    """
    layers = {p: m for p, m in nnx.iter_modules(model) if isinstance(m, WeightNormDense)}
    if not layers:
        raise ValueError(f"weight_norm_init: {type(model).__name__} has no WeightNormDense layer")
    for layer in layers.values():
        layer.data_init = True
    try:
        out = fn(*args)
    finally:
        missed = ["/".join(map(str, p)) or "<root>" for p, m in layers.items() if m.data_init]
        for layer in layers.values():
            layer.data_init = False
    if missed:
        raise ValueError(f"weight_norm_init: fn(*args) never called WeightNormDense {missed}")
    return out


# --- choosing a normaliser by name ---------------------------------------------------------------

_NORM_MODULES: dict[str, type[nnx.Module]] = {
    "none": Identity,
    "layer": LayerNorm,
    "batch": BatchNorm,
    "weight": Identity,  # weight norm lives in the dense layer (`make_dense`)
    "rms": RMSNorm,
}


def _check_name(name: str) -> None:
    if name not in NORMS:
        raise ValueError(f"unknown normaliser {name!r}; expected one of {NORMS}")


def make_norm(name: str, num_features: int, *, rngs: nnx.Rngs, **kw: Any) -> nnx.Module:
    """The activation normaliser called `name` (`Identity` for "none" and "weight")."""
    _check_name(name)
    return _NORM_MODULES[name](num_features, rngs=rngs, **kw)


def make_dense(
    name: str, in_features: int, out_features: int, *, use_bias: bool, rngs: nnx.Rngs
) -> nnx.Module:
    """The linear map for normaliser `name`: `WeightNormDense` for "weight", else `nnx.Linear`."""
    _check_name(name)
    layer = WeightNormDense if name == "weight" else nnx.Linear
    return layer(in_features, out_features, use_bias=use_bias, rngs=rngs)


PLACEMENTS = ("paper", "everywhere")


@dataclass
class NormSpec:
    """The one interpretation of the `norm` config: which normaliser, its options, and what the
    name implies. Models take it whole (`norm: NormSpec`) instead of switching on the name.

    - `unbiased=None` resolves to the paper's rule for batch norm: the unbiased variance at
      batch size 4 and below (`resolved(batch_size)`), the biased one above.
    - `scale_init=None` keeps each normaliser's own gain init (1; 0.1 for batch norm inside the
      recurrent cells, as Cooijmans et al.).
    - `placement`: `paper` normalises where the paper's experiment does (e.g. layer norm on the
      hidden layers only); `everywhere` every linear map a model has ("BN-everywhere").
    - weight norm lives in the linear maps (`dense`) and needs a data-dependent init
      (`data_init`); the activation normaliser is then the identity.
    """

    name: str = "layer"  # none | layer | batch | weight | rms
    epsilon: float = 1e-5
    momentum: float = 0.99  # batch norm running averages
    unbiased: bool | None = None  # batch norm; None: unbiased when the batch size is <= 4
    scale_init: float | None = None  # None: the normaliser's default gain init
    placement: str = "paper"  # paper | everywhere

    def __post_init__(self) -> None:
        _check_name(self.name)
        if self.placement not in PLACEMENTS:
            raise ValueError(f"norm.placement={self.placement!r}: expected one of {PLACEMENTS}")
        if not self.epsilon > 0:
            raise ValueError(f"norm.epsilon={self.epsilon!r}: expected a positive number")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"norm.momentum={self.momentum!r}: expected a value in [0, 1)")

    def resolved(self, batch_size: int) -> NormSpec:
        """The spec with batch norm's `unbiased` fixed for training batches of `batch_size`."""
        if self.unbiased is not None or self.name != "batch":
            return self
        return dataclasses.replace(self, unbiased=batch_size <= 4)

    @property
    def options(self) -> dict[str, Any]:
        """Keyword options of the normaliser modules (`make_norm`, the cells' `norm_kwargs`)."""
        kw: dict[str, Any] = {}
        if self.name in ("layer", "rms", "batch"):
            kw["epsilon"] = self.epsilon
        if self.name == "batch":
            kw["momentum"] = self.momentum
            kw["unbiased"] = bool(self.unbiased)
        if self.scale_init is not None and self.name in ("layer", "rms", "batch"):
            kw["scale_init"] = nnx.initializers.constant(self.scale_init)
        return kw

    @property
    def normalizes_output(self) -> bool:
        """Whether an output layer is normalised too: batch and weight norm normalise "all
        layers" in the paper; layer and RMS norm the hidden ones only (unless `everywhere`)."""
        return self.name in ("batch", "weight") or self.placement == "everywhere"

    def norm(self, num_features: int, *, rngs: nnx.Rngs) -> nnx.Module:
        """The activation normaliser (`Identity` for none and weight)."""
        return make_norm(self.name, num_features, rngs=rngs, **self.options)

    def dense(self, in_features: int, out_features: int, *, use_bias: bool,
              rngs: nnx.Rngs) -> nnx.Module:
        """The linear map (`WeightNormDense` for weight norm)."""
        return make_dense(self.name, in_features, out_features, use_bias=use_bias, rngs=rngs)

    def normed_dense(self, in_features: int, out_features: int, *, rngs: nnx.Rngs) -> NormedDense:
        """`norm(W x)` with the bias rule of `NormedDense`."""
        return NormedDense(in_features, out_features, norm=self.name, rngs=rngs, **self.options)

    @property
    def needs_data_init(self) -> bool:
        """Whether `data_init` does anything (weight norm), so callers can skip reading data."""
        return self.name == "weight"

    def data_init(self, model: nnx.Module, fn: Callable[..., Any], *args: Any) -> None:
        """Weight norm's data-dependent init (`weight_norm_init`): runs `fn(*args)` once with
        every `WeightNormDense` of `model` initialising from the data; a no-op otherwise."""
        if self.needs_data_init:
            weight_norm_init(model, fn, *args)


NONE = NormSpec("none")


def as_spec(norm: str | NormSpec) -> NormSpec:
    """`norm` as a `NormSpec` (a bare name gets the default options)."""
    return norm if isinstance(norm, NormSpec) else NormSpec(norm)


class NormedDense(nnx.Module):
    """`norm(W x)`: the paper's `g / sigma * (W x - mu) + b` for `norm="layer"`.

    The linear's own bias is dropped whenever the normaliser has a bias (layer, batch, rms by
    default): centring would cancel it (layer, batch), and Zhang & Sennrich's RMSNorm adds its
    bias after the rescaling. `mask` reaches batch norm; the others ignore it.
    """

    def __init__(
        self, in_features: int, out_features: int, *, norm: str, rngs: nnx.Rngs, **norm_kw: Any
    ):
        self.norm = make_norm(norm, out_features, rngs=rngs, **norm_kw)
        has_bias = getattr(self.norm, "bias", None) is not None
        self.dense = make_dense(norm, in_features, out_features, use_bias=not has_bias, rngs=rngs)

    def __call__(self, x: Array, *, mask: Array | None = None) -> Array:
        return self.norm(self.dense(x), mask=mask)


__all__ = [
    "NONE",
    "NORMS",
    "PLACEMENTS",
    "BatchNorm",
    "Identity",
    "LayerNorm",
    "NormSpec",
    "NormedDense",
    "RMSNorm",
    "WeightNormDense",
    "as_spec",
    "layer_norm",
    "make_dense",
    "make_norm",
    "rms_norm",
    "weight_norm_init",
]
