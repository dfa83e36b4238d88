"""Layer-norm speed: lnorm vs Flax's `nnx.LayerNorm` vs a plain jnp version, same run.

    python -m scripts.bench_layers [--rounds 10 --repeats 10]

Forward, and forward+backward in the two ways it is called: `vjp` (`jax.vjp` with a given
cotangent: y, dx, dscale, dbias) and as training calls it, the gradient of a loss (dx, dscale,
dbias), where XLA fuses the cotangent's computation into the backward pass: `grad y.w` (loss
`sum(y * w)`, w fixed) and `grad y^2` (loss `sum(y ** 2)`: a cotangent computed from y). float32
inputs; GB/s counts the bytes an ideal kernel moves (fwd: read x, write y; vjp: also read dy,
write dx; grad y.w: read x and w, write dx; grad y^2: read x, write dx), next to a jitted
`x * 1.0` copy of the same array as the machine's reference; "temp MB" is XLA's scratch memory
for the call (`compiled.memory_analysis()`): full-size intermediates it chose to materialise. All
variants of one shape are timed in alternation (robust to a shared machine's drifting load).
Then runs `scripts.bench_rnn` when it exists, so one command prints both.
"""

from __future__ import annotations

import argparse
import importlib.util

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.norms import LayerNorm
from scripts.benchutil import compile_fn, gbps, measure_interleaved, print_table

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
    """Params and the timed pure functions, as {pass: (fn of (params, x[, w]), uses w, bytes in
    units of x's size)}."""
    graphdef, params = nnx.split(module)

    def forward(params, x):
        return nnx.merge(graphdef, params)(x)

    def vjp(params, x, dy):
        y, pullback = jax.vjp(forward, params, x)
        return y, pullback(dy)

    def grad_dot(params, x, w):
        return jax.grad(lambda p, x: jnp.sum(forward(p, x) * w), (0, 1))(params, x)

    def grad_square(params, x):
        return jax.grad(lambda p, x: jnp.sum(jnp.square(forward(p, x))), (0, 1))(params, x)

    passes = {
        "fwd": (forward, False, 2),
        "vjp": (vjp, True, 4),
        "grad y.w": (grad_dot, True, 3),
        "grad y^2": (grad_square, False, 2),
    }
    return params, passes


def bench_layer_norm(rounds: int, repeats: int) -> None:
    print(
        f"## Layer normalisation ({jax.devices()[0].platform}, float32, "
        f"median of {rounds} interleaved rounds x {repeats})\n"
    )
    headers = ["shape", "pass", "impl", "ms", "GB/s", "vs flax", "temp MB", "copy GB/s",
               "compile s"]
    rows = []
    for shape in SHAPES:
        kx, kw = jax.random.split(jax.random.key(0))
        x = jax.random.normal(kx, shape) * 2.0 + 0.5
        w = jax.random.normal(kw, shape)
        nbytes = x.size * x.dtype.itemsize
        calls, moved, compile_s, temp_mb = {}, {}, {}, {}
        calls["copy"] = (compile_fn(lambda a: a * 1.0, x)[0], (x,))
        for name, cls in IMPLEMENTATIONS.items():
            params, passes = _functions(cls(shape[-1], epsilon=EPSILON, rngs=nnx.Rngs(0)))
            for pass_name, (fn, uses_w, n) in passes.items():
                args = (params, x, w) if uses_w else (params, x)
                compiled, compile_s[pass_name, name] = compile_fn(fn, *args)
                calls[pass_name, name] = (compiled, args)
                temp_mb[pass_name, name] = compiled.memory_analysis().temp_size_in_bytes / 1e6
                moved[pass_name, name] = n * nbytes
        timings = measure_interleaved(calls, rounds=rounds, repeats=repeats)
        copy_gbps = gbps(2 * nbytes, timings.pop("copy").median_s)
        for (pass_name, name), timing in timings.items():
            seconds = timing.median_s
            ratio = seconds / timings[pass_name, "flax"].median_s
            rows.append(
                [
                    "x".join(map(str, shape)),
                    pass_name,
                    name,
                    seconds * 1e3,
                    gbps(moved[pass_name, name], seconds),
                    f"{ratio:.2f}x",
                    temp_mb[pass_name, name],
                    copy_gbps,
                    compile_s[pass_name, name],
                ]
            )
    print_table(headers, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=10)
    args, rnn_argv = parser.parse_known_args()  # the rest goes to scripts.bench_rnn
    bench_layer_norm(args.rounds, args.repeats)
    if importlib.util.find_spec("scripts.bench_rnn") is not None:
        print()
        importlib.import_module("scripts.bench_rnn").main(rnn_argv)


if __name__ == "__main__":
    main()
