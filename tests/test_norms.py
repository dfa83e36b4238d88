"""The feed-forward normalisers against numpy references written here, Flax's built-ins, and the
properties the paper relies on (per-example vs per-batch statistics, masks, running averages)."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.test_util import check_grads

from lnorm import norms
from lnorm.norms import (
    NORMS,
    BatchNorm,
    Identity,
    LayerNorm,
    NormedDense,
    RMSNorm,
    WeightNormDense,
    layer_norm,
    make_dense,
    make_norm,
    rms_norm,
    weight_norm_init,
)

EPS = 1e-5


def np_layer_norm(x, g, b, eps=EPS):
    x = np.asarray(x, np.float64)
    mu = x.mean(-1, keepdims=True)
    sigma = np.sqrt(((x - mu) ** 2).mean(-1, keepdims=True) + eps)
    return g * (x - mu) / sigma + b


def np_layer_norm_grads(x, g, dy, eps=EPS):
    """The LN gradient derived by hand (independent of lnorm's code path)."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    n = x.shape[-1]
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    sigma = np.sqrt(var + eps)
    xhat = (x - mu) / sigma
    dxhat = dy * g
    # y = g * (x - mu) / sigma: d/dx through mu and sigma, written out element by element.
    dvar = np.sum(dxhat * (x - mu) * -0.5 * sigma**-3, -1, keepdims=True)
    dmu = np.sum(-dxhat / sigma, -1, keepdims=True)
    dmu = dmu + dvar * np.mean(-2 * (x - mu), -1, keepdims=True)
    dx = dxhat / sigma + dvar * 2 * (x - mu) / n + dmu / n
    axes = tuple(range(x.ndim - 1))
    return dx, np.sum(dy * xhat, axes), np.sum(dy, axes)


def np_rms_norm(x, g, b, eps=EPS):
    x = np.asarray(x, np.float64)
    return g * x / np.sqrt((x**2).mean(-1, keepdims=True) + eps) + b


def np_batch_norm(x, g, b, mask=None, unbiased=False, eps=EPS):
    x = np.asarray(x, np.float64).reshape(-1, x.shape[-1])
    rows = x if mask is None else x[np.asarray(mask).reshape(-1)]
    mu = rows.mean(0)
    var = rows.var(0, ddof=1 if unbiased else 0)
    return g * (x - mu) / np.sqrt(var + eps) + b, mu, var


def rand(*shape, seed=0, loc=0.0, scale=1.0):
    return jnp.asarray(np.random.default_rng(seed).normal(loc, scale, shape), jnp.float32)


def params(features, seed=1):
    return rand(features, seed=seed, loc=1.0, scale=0.3), rand(features, seed=seed + 1, scale=0.3)


# --- layer norm / RMS norm --------------------------------------------------------------------


@pytest.fixture(params=["small", "fused"])
def vjp_path(request, monkeypatch):
    """Runs a test on both training code paths: the fused one is normally for inputs of at least
    `_FUSED_MIN_SIZE` elements, too large for a unit test."""
    if request.param == "fused":
        monkeypatch.setattr(norms, "_FUSED_MIN_SIZE", 0)
    return request.param


@pytest.mark.parametrize("fn, ref", [(layer_norm, np_layer_norm), (rms_norm, np_rms_norm)])
def test_forward_matches_numpy_inference_and_training_paths(fn, ref, vjp_path):
    x = rand(3, 4, 16, loc=2.0, scale=3.0)
    g, b = params(16)
    expected = ref(x, np.asarray(g), np.asarray(b))
    np.testing.assert_allclose(jax.jit(fn)(x, g, b), expected, rtol=1e-5, atol=1e-5)
    y_train, _ = jax.vjp(fn, x, g, b)  # the custom-VJP forward rule computes stats differently
    np.testing.assert_allclose(y_train, expected, rtol=1e-5, atol=1e-5)


def test_training_statistics_survive_a_large_mean(vjp_path):
    x = rand(4, 64, loc=1e4, scale=1.0)  # |mean| / std = 1e4: E[x^2] - E[x]^2 alone cancels
    y_train, _ = jax.vjp(lambda x: layer_norm(x, None, None), x)
    np.testing.assert_allclose(y_train, np_layer_norm(x, 1.0, 0.0), atol=2e-3)


def test_layer_norm_gradient_matches_hand_derived_numpy(vjp_path):
    x, dy = rand(2, 3, 12, loc=1.0, scale=2.0), rand(2, 3, 12, seed=5)
    g, b = params(12)
    _, vjp = jax.vjp(layer_norm, x, g, b)
    dx, dg, db = vjp(dy)
    ex, eg, eb = np_layer_norm_grads(x, np.asarray(g), dy)
    np.testing.assert_allclose(dx, ex, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dg, eg, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(db, eb, rtol=1e-5, atol=1e-5)


def np_rms_norm_grads(x, g, dy, eps=EPS):
    """RMSNorm's gradient derived by hand: y = g x r with r = (mean(x^2) + eps)^-1/2, so
    dr/dx_k = -r^3 x_k / n."""
    x, dy = np.asarray(x, np.float64), np.asarray(dy, np.float64)
    r = 1.0 / np.sqrt((x**2).mean(-1, keepdims=True) + eps)
    dx = r * g * dy - r**3 * x / x.shape[-1] * np.sum(g * dy * x, -1, keepdims=True)
    axes = tuple(range(x.ndim - 1))
    return dx, np.sum(dy * x * r, axes), np.sum(dy, axes)


@pytest.mark.parametrize("rows", [2047, 2048])  # x.size just below / at _FUSED_MIN_SIZE
@pytest.mark.parametrize("fn, ref, ref_grads", [(layer_norm, np_layer_norm, np_layer_norm_grads),
                                                (rms_norm, np_rms_norm, np_rms_norm_grads)])
@pytest.mark.parametrize("affine", [True, False])
def test_gradient_of_a_loss_at_full_size_matches_numpy(rows, fn, ref, ref_grads, affine):
    """The way training calls it, at real sizes on both sides of the threshold: the loss
    sum(y * w + y^2 / 2) makes XLA compute the cotangent dy = w + y inside the backward pass,
    which the large path hands to two kernels (`_unshared`)."""
    assert (rows * 1024 >= norms._FUSED_MIN_SIZE) == (rows == 2048)
    x, w = rand(rows, 1024, loc=1.0, scale=2.0), rand(rows, 1024, seed=5)
    g, b = params(1024) if affine else (None, None)
    loss = lambda x, g, b: jnp.sum(fn(x, g, b) * w + 0.5 * jnp.square(fn(x, g, b)))
    dx, dg, db = jax.jit(jax.grad(loss, (0, 1, 2)))(x, g, b)
    g64, b64 = (np.asarray(g, np.float64), np.asarray(b, np.float64)) if affine else (1.0, 0.0)
    ex, eg, eb = ref_grads(x, g64, np.asarray(w, np.float64) + ref(x, g64, b64))
    np.testing.assert_allclose(dx, ex, rtol=1e-4, atol=1e-5)
    if affine:  # sums over 2048 rows: float32 accumulation error relative to the largest term
        np.testing.assert_allclose(dg, eg, rtol=1e-4, atol=1e-4 * np.abs(eg).max())
        np.testing.assert_allclose(db, eb, rtol=1e-4, atol=1e-4 * np.abs(eb).max())
    else:
        assert dg is None and db is None


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="a property of XLA:CPU's fusions")
@pytest.mark.parametrize("form", ["vjp", "grad"])
def test_large_backward_materialises_no_full_size_temporary(form):
    """What the large path exists for (docs/benchmarks.md): XLA:CPU shares a broadcast of the
    statistics between kernels unless each gets its own, and materialises it (32 MB at
    8192x1024). Compiled only, never run."""
    x = jax.ShapeDtypeStruct((8192, 256), jnp.float32)
    vec = jax.ShapeDtypeStruct((256,), jnp.float32)
    if form == "vjp":
        f = lambda x, w, g, b: jax.vjp(layer_norm, x, g, b)[1](w)
    else:
        f = lambda x, w, g, b: jax.grad(lambda *a: jnp.sum(layer_norm(*a) * w), (0, 1, 2))(x, g, b)
    temp = jax.jit(f).lower(x, x, vec, vec).compile().memory_analysis().temp_size_in_bytes
    assert temp < 8192 * 256 * 4 / 8, f"{temp / 1e6:.1f} MB of temporaries"


@pytest.mark.parametrize("fn", [layer_norm, rms_norm])
def test_closed_form_gradients_match_finite_differences_in_float64(fn, vjp_path):
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        x, g, b = (jnp.asarray(rng.normal(size=s), jnp.float64) for s in [(3, 7), (7,), (7,)])
        check_grads(fn, (x, g, b), order=1, modes=["rev"], eps=1e-6, atol=1e-6, rtol=1e-6)
        check_grads(lambda x: fn(x, None, None), (x,), order=1, modes=["rev"], eps=1e-6)


def test_gradients_are_finite_for_a_constant_row(vjp_path):
    x = jnp.full((2, 8), 3.0)
    for fn in (layer_norm, rms_norm):
        grads = jax.grad(lambda x, g, b, fn=fn: jnp.sum(fn(x, g, b) ** 2), (0, 1, 2))(x, *params(8))
        assert all(bool(jnp.all(jnp.isfinite(t))) for t in grads)


def assert_rounded_once_to_bf16(y, exact):
    """`y` (bfloat16) is the exact result rounded once: within half a bfloat16 ulp, at most
    2^-8 of the value. Statistics computed in bfloat16 are dozens of ulps off, which an
    absolute tolerance such as 3e-2 lets through."""
    assert y.dtype == jnp.bfloat16
    err = np.abs(np.asarray(y, np.float64) - exact)
    bound = 2.0**-8 * np.abs(exact) + 1e-6
    assert np.all(err <= bound), f"{(err / bound).max():.1f} half-ulps off: not float32 inside"


def test_half_precision_computes_in_float32_and_keeps_dtypes(vjp_path):
    x = rand(4, 32, loc=3.0, scale=2.0).astype(jnp.bfloat16)
    g, b = params(32)
    y = layer_norm(x, g, b)
    assert layer_norm(x, g, b, dtype=jnp.float32).dtype == jnp.float32
    exact = np_layer_norm(np.asarray(x, np.float32), np.asarray(g), np.asarray(b))
    assert_rounded_once_to_bf16(y, exact)
    assert_rounded_once_to_bf16(jax.vjp(layer_norm, x, g, b)[0], exact)  # the training path
    loss = lambda *a: jnp.sum(layer_norm(*a).astype(jnp.float32))
    dx, dg, db = jax.grad(loss, (0, 1, 2))(x, g, b)
    assert (dx.dtype, dg.dtype, db.dtype) == (jnp.bfloat16, jnp.float32, jnp.float32)


def test_wrong_parameter_shape_names_the_argument():
    with pytest.raises(ValueError, match=r"layer_norm: `scale` has shape \(5,\), expected \(4,\)"):
        layer_norm(jnp.ones((2, 4)), jnp.ones(5), None)
    with pytest.raises(ValueError, match=r"LayerNorm\(4\): .* got shape \(2, 3\)"):
        LayerNorm(4, rngs=nnx.Rngs(0))(jnp.ones((2, 3)))


@pytest.mark.parametrize("ours, theirs", [(LayerNorm, nnx.LayerNorm), (RMSNorm, nnx.RMSNorm)])
def test_parity_with_flax_builtins(ours, theirs):
    x = rand(5, 3, 10, loc=1.0, scale=2.0)
    kw = {"use_bias": False} if ours is RMSNorm else {}  # nnx.RMSNorm has no bias
    a = ours(10, epsilon=EPS, rngs=nnx.Rngs(0), **kw)
    b = theirs(10, epsilon=EPS, rngs=nnx.Rngs(0))
    a.scale[...] = b.scale[...] = rand(10, seed=3)
    grads = nnx.jit(nnx.grad(lambda m, x: jnp.sum(jnp.sin(m(x))), argnums=(0, 1)))
    (ga, gxa), (gb, gxb) = grads(a, x), grads(b, x)
    np.testing.assert_allclose(a(x), b(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ga["scale"][...], gb["scale"][...], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(gxa, gxb, rtol=1e-4, atol=1e-5)


def test_layer_norm_output_of_one_example_ignores_the_rest_of_the_batch():
    ln = LayerNorm(6, rngs=nnx.Rngs(0))
    x = rand(4, 6)
    np.testing.assert_allclose(ln(x)[:1], ln(x[:1]), rtol=1e-6, atol=1e-6)


# --- batch norm ------------------------------------------------------------------------------


def test_batch_norm_training_and_running_averages_match_numpy():
    bn = BatchNorm(5, momentum=0.9, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = params(5)
    g, b = np.asarray(bn.scale[...]), np.asarray(bn.bias[...])
    mean, var = np.zeros(5), np.ones(5)
    for seed in range(2):
        x = rand(3, 4, 5, seed=seed, loc=2.0, scale=3.0)
        expected, mu, v = np_batch_norm(x, g, b)
        np.testing.assert_allclose(bn(x).reshape(-1, 5), expected, rtol=1e-5, atol=1e-5)
        mean, var = 0.9 * mean + 0.1 * mu, 0.9 * var + 0.1 * v
    np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-5)
    np.testing.assert_allclose(bn.var[...], var, rtol=1e-5)
    bn.eval()  # evaluation: the running averages, and no further updates
    x = rand(7, 5, seed=9)
    np.testing.assert_allclose(bn(x), g * (x - mean) / np.sqrt(var + EPS) + b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-6)
    bn.train()
    assert not bn.use_running_average
    assert nnx.view(bn, use_running_average=True).use_running_average


def test_batch_norm_call_argument_overrides_the_attribute():
    bn = BatchNorm(3, rngs=nnx.Rngs(0))
    x = rand(6, 3, loc=5.0)
    np.testing.assert_allclose(bn(x, use_running_average=True), x / np.sqrt(1 + EPS), rtol=1e-6)
    np.testing.assert_allclose(bn.mean[...], 0.0)


def test_batch_norm_unbiased_variance():
    x = rand(4, 3, loc=1.0)  # the paper's batch size 4
    bn = BatchNorm(3, unbiased=True, rngs=nnx.Rngs(0))
    expected, _, var = np_batch_norm(x, 1.0, 0.0, unbiased=True)
    np.testing.assert_allclose(bn(x), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(bn.var[...], 0.99 + 0.01 * var, rtol=1e-6)


def test_batch_norm_mask_excludes_padding_from_the_statistics():
    x = rand(3, 5, 4, loc=1.0)
    mask = np.ones((3, 5), bool)
    mask[0, 3:] = mask[2, 1:] = False
    y = BatchNorm(4, rngs=nnx.Rngs(0))(x, mask=jnp.asarray(mask))
    padded = x.at[~mask].set(1e3)  # whatever sits in the padding must not matter
    y_padded = BatchNorm(4, rngs=nnx.Rngs(0))(padded, mask=jnp.asarray(mask))
    expected, _, _ = np_batch_norm(x, 1.0, 0.0, mask=mask)
    np.testing.assert_allclose(y[mask], expected.reshape(3, 5, 4)[mask], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(y_padded[mask], y[mask], rtol=1e-5, atol=1e-5)
    bn = BatchNorm(4, rngs=nnx.Rngs(0))
    bn(x, mask=jnp.zeros((3, 5), bool))  # nothing valid: the running averages stay as they were
    np.testing.assert_array_equal(bn.mean[...], 0.0)
    np.testing.assert_array_equal(bn.var[...], 1.0)
    with pytest.raises(ValueError, match=r"`mask` has shape \(3,\), expected \(3, 5\)"):
        BatchNorm(4, rngs=nnx.Rngs(0))(x, mask=jnp.ones(3, bool))


def test_batch_norm_output_of_one_example_depends_on_the_batch():
    x = rand(4, 6)
    bn = BatchNorm(6, rngs=nnx.Rngs(0))
    assert not np.allclose(bn(x)[:2], bn(x[:2]), atol=1e-3)


def test_batch_norm_parity_with_flax():
    x = rand(8, 5, loc=2.0, scale=3.0)
    ours = BatchNorm(5, momentum=0.9, rngs=nnx.Rngs(0))
    theirs = nnx.BatchNorm(5, momentum=0.9, epsilon=EPS, use_fast_variance=False, rngs=nnx.Rngs(0))
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-6)
    ours.eval(), theirs.eval()
    np.testing.assert_allclose(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_batch_norm_axis_name_gives_global_statistics():
    x = rand(4, 3, 5, loc=1.0)  # 4 "devices" x 3 examples each
    expected, _, _ = np_batch_norm(x, 1.0, 0.0)
    graphdef, state = nnx.split(BatchNorm(5, axis_name="devices", rngs=nnx.Rngs(0)))
    apply = lambda state, xs: nnx.merge(graphdef, state)(xs)
    y = jax.vmap(apply, in_axes=(None, 0), axis_name="devices")(state, x)
    np.testing.assert_allclose(y.reshape(-1, 5), expected, rtol=1e-5, atol=1e-5)


def test_batch_norm_bfloat16():
    x = rand(16, 4, loc=3.0).astype(jnp.bfloat16)
    y = BatchNorm(4, rngs=nnx.Rngs(0))(x)
    expected, _, _ = np_batch_norm(np.asarray(x, np.float32), 1.0, 0.0)
    assert_rounded_once_to_bf16(y, expected)


SHARDED_SCRIPT = textwrap.dedent(
    """
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from lnorm.norms import BatchNorm
    assert jax.device_count() == 8, jax.devices()
    x = jnp.asarray(np.random.default_rng(0).normal(2.0, 3.0, (16, 5)), jnp.float32)
    mask = jnp.arange(16) % 3 != 0
    graphdef, state = nnx.split(BatchNorm(5, rngs=nnx.Rngs(0)))
    @jax.jit
    def step(state, x, mask):
        bn = nnx.merge(graphdef, state)
        return bn(x, mask=mask), nnx.state(bn)
    y1, s1 = step(state, x, mask)
    sharding = NamedSharding(jax.make_mesh((8,), ("data",)), P("data"))
    xs, ms = jax.device_put(x, sharding), jax.device_put(mask, sharding)
    y8, s8 = step(state, xs, ms)
    assert len(y8.sharding.device_set) == 8
    np.testing.assert_allclose(y8, y1, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(s8["var"][...], s1["var"][...], rtol=1e-6)
    print("OK")
    """
)


def test_batch_norm_statistics_are_global_under_a_sharded_jit():
    flags = "--xla_force_host_platform_device_count=8"
    env = dict(os.environ, XLA_FLAGS=flags, JAX_PLATFORMS="cpu")
    out = subprocess.run(
        [sys.executable, "-c", SHARDED_SCRIPT], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0 and "OK" in out.stdout, out.stderr[-3000:]


# --- weight norm -----------------------------------------------------------------------------


def test_weight_norm_dense_matches_numpy_and_flax():
    layer = WeightNormDense(6, 4, rngs=nnx.Rngs(0))
    layer.scale[...], layer.bias[...] = params(4)
    x = rand(5, 6)
    v, g, b = (np.asarray(p[...], np.float64) for p in (layer.kernel, layer.scale, layer.bias))
    np.testing.assert_allclose(
        layer(x), x @ (g * v / np.linalg.norm(v, axis=0)) + b, rtol=1e-5, atol=1e-5
    )
    linear = nnx.Linear(6, 4, rngs=nnx.Rngs(0))
    linear.kernel[...], linear.bias[...] = layer.kernel[...], layer.bias[...]
    theirs = nnx.WeightNorm(linear, epsilon=0.0, rngs=nnx.Rngs(0))
    theirs.scales[("kernel",)] = layer.scale[...]
    np.testing.assert_allclose(layer(x), theirs(x), rtol=1e-5, atol=1e-5)


class TwoLayerWN(nnx.Module):
    def __init__(self, rngs):
        self.l1 = WeightNormDense(6, 4, rngs=rngs)  # few kernel shapes: each new one compiles
        self.l2 = WeightNormDense(4, 3, rngs=rngs)  # its random initialiser (~1 s)

    def __call__(self, x):
        self.h = self.l1(x)
        return self.l2(jnp.tanh(self.h))


def test_data_dependent_weight_norm_init_whitens_pre_activations_in_forward_order():
    model = TwoLayerWN(nnx.Rngs(0))
    x = rand(64, 6, loc=3.0, scale=4.0)
    out = weight_norm_init(model, model, x)
    for pre in (model.h, out):
        np.testing.assert_allclose(pre.mean(0), 0.0, atol=1e-4)
        np.testing.assert_allclose(pre.std(0), 1.0, rtol=1e-3)
    np.testing.assert_allclose(model(x), out, rtol=1e-5, atol=1e-5)  # params, not a mode, changed
    assert not model.l1.data_init and not model.l2.data_init


def test_weight_norm_init_reports_layers_fn_never_called():
    model = TwoLayerWN(nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"never called WeightNormDense \['l2'\]"):
        weight_norm_init(model, model.l1, rand(4, 6))
    with pytest.raises(ValueError, match="has no WeightNormDense"):
        weight_norm_init(LayerNorm(3, rngs=nnx.Rngs(0)), lambda: None)


# --- choosing by name ------------------------------------------------------------------------


def test_make_norm_and_make_dense_types():
    expected = {
        "none": Identity,
        "layer": LayerNorm,
        "batch": BatchNorm,
        "weight": Identity,
        "rms": RMSNorm,
    }
    assert set(expected) == set(NORMS)
    for name, cls in expected.items():
        assert type(make_norm(name, 4, rngs=nnx.Rngs(0))) is cls
        dense = make_dense(name, 6, 4, use_bias=True, rngs=nnx.Rngs(0))
        assert isinstance(dense, WeightNormDense if name == "weight" else nnx.Linear)
    with pytest.raises(ValueError, match=r"unknown normaliser 'group'; expected one of \("):
        make_norm("group", 4, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="unknown normaliser"):
        make_dense("layr", 6, 4, use_bias=True, rngs=nnx.Rngs(0))


@pytest.mark.parametrize(
    "norm, linear_bias",
    [("none", True), ("weight", True), ("layer", False), ("batch", False), ("rms", False)],
)
def test_normed_dense_drops_the_linear_bias_where_the_normaliser_has_one(norm, linear_bias):
    layer = NormedDense(6, 4, norm=norm, rngs=nnx.Rngs(0))
    assert (getattr(layer.dense, "bias", None) is not None) == linear_bias
    mask = jnp.ones(5, bool)
    assert layer(rand(5, 6), mask=mask).shape == (5, 4)


def test_normed_dense_layer_is_the_papers_unit():
    layer = NormedDense(6, 4, norm="layer", rngs=nnx.Rngs(0))
    layer.norm.scale[...], layer.norm.bias[...] = params(4)
    x = rand(5, 6)
    a = np.asarray(x, np.float64) @ np.asarray(layer.dense.kernel[...], np.float64)
    g, b = np.asarray(layer.norm.scale[...]), np.asarray(layer.norm.bias[...])
    np.testing.assert_allclose(layer(x), np_layer_norm(a, g, b), rtol=1e-5, atol=1e-5)


def test_docs_layers_examples_run():
    """Every example in docs/layers.md runs and its asserts hold."""
    doc = pathlib.Path(__file__).parents[1] / "docs" / "layers.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)
    assert len(blocks) >= 5
    for i, block in enumerate(blocks):
        exec(compile(block, f"{doc}:example{i}", "exec"), {})
