"""Layer-norm speed: lnorm vs Flax's `nnx.LayerNorm` vs a plain jnp version, same run.

    python -m scripts.bench_layers [--repeats 50]

Forward and forward+backward (`jax.vjp` with a fixed cotangent: y, dx, dscale, dbias) on
float32 inputs; GB/s counts the bytes an ideal kernel moves (fwd: read x, write y; fwd+bwd:
also read dy, write dx), next to a jitted `x * 1.0` copy of the same array as the
machine's reference. Then runs `scripts.bench_rnn` when it exists, so one command prints both.
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.norms import LayerNorm
from scripts.benchutil import compile_fn, gbps, measure, print_table

SHAPES = ((8192, 1024), (128, 1000), (8, 400))
EPSILON = 1e-5


class PlainLayerNorm(nnx.Module):
    """The textbook two-pass jnp layer norm, differentiated by autodiff."""

    def __init__(self, num_features: int, *, epsilon: float, rngs: nnx.Rngs):
        del rngs
        self.scale = nnx.Param(jnp.ones((num_features,)))
        self.bias = nnx.Param(jnp.zeros((num_features,)))
        self.epsilon = epsilon

    def __call__(self, x: jax.Array) -> jax.Array:
        mean = jnp.mean(x, -1, keepdims=True)
        var = jnp.mean(jnp.square(x - mean), -1, keepdims=True)
        return (x - mean) * jax.lax.rsqrt(var + self.epsilon) * self.scale[...] + self.bias[...]


IMPLEMENTATIONS = {"lnorm": LayerNorm, "flax": nnx.LayerNorm, "jnp": PlainLayerNorm}


def _functions(module: nnx.Module):
    """Pure forward and forward+backward functions of (params, x[, dy])."""
    graphdef, params = nnx.split(module)

    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def forward_backward(params, x, dy):
        y, vjp = jax.vjp(forward, params, x)
        return y, vjp(dy)

    return params, forward, forward_backward


def bench_layer_norm(repeats: int) -> None:
    print(f"## Layer normalisation ({jax.devices()[0].platform}, float32, median of {repeats})\n")
    headers = ["shape", "pass", "impl", "ms", "GB/s", "vs flax", "copy GB/s", "compile s"]
    rows = []
    for shape in SHAPES:
        kx, kdy = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, shape) * 2.0 + 0.5
        dy = jax.random.normal(kdy, shape)
        nbytes = x.size * x.dtype.itemsize
        copy, _ = compile_fn(lambda a: a * 1.0, x)
        copy_gbps = gbps(2 * nbytes, measure(copy, x, repeats=repeats).median_s)
        results = {}
        for name, cls in IMPLEMENTATIONS.items():
            params, fwd, fwd_bwd = _functions(cls(shape[-1], epsilon=EPSILON, rngs=nnx.Rngs(0)))
            for pass_name, fn, args, moved in (
                ("fwd", fwd, (params, x), 2 * nbytes),
                ("fwd+bwd", fwd_bwd, (params, x, dy), 4 * nbytes),
            ):
                compiled, compile_s = compile_fn(fn, *args)
                seconds = measure(compiled, *args, repeats=repeats).median_s
                results[pass_name, name] = (seconds, moved, compile_s)
        for (pass_name, name), (seconds, moved, compile_s) in results.items():
            ratio = seconds / results[pass_name, "flax"][0]
            rows.append([
                "x".join(map(str, shape)), pass_name, name, seconds * 1e3,
                gbps(moved, seconds), f"{ratio:.2f}x", copy_gbps, compile_s,
            ])
    print_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    args = parser.parse_args()
    bench_layer_norm(args.repeats)
    if importlib.util.find_spec("scripts.bench_rnn") is not None:
        print()
        importlib.import_module("scripts.bench_rnn").main()


if __name__ == "__main__":
    main()
