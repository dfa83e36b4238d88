"""Training-step speed of the plain LSTM vs the LN-LSTM (and Flax's OptimizedLSTMCell).

Run: `python -m scripts.bench_rnn [--rounds 10]`. One step is forward + backward + an SGD update
of an `RNN` regressing random targets, jitted with the parameters donated. Prints a Markdown
table: median step time, jit compile time, and the LN/plain ratio per shape. Targets: LN-LSTM at
most 1.2x the plain LSTM; each compile under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.cells import LSTMCell
from lnorm.rnn import RNN
from scripts.benchutil import measure, print_table

SHAPES = ((8, 100, 400, 3), (64, 50, 512, 256))  # (batch, time, hidden, input)
LEARNING_RATE = 1e-3


class FlaxLSTM(nnx.Module):
    """Flax's `OptimizedLSTMCell` under `nnx.RNN`, from a zero carry (the reference)."""

    def __init__(self, in_features: int, hidden_features: int, rngs: nnx.Rngs):
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(in_features, hidden_features, rngs=rngs))
        self.hidden_features = hidden_features

    def __call__(self, x: jax.Array) -> jax.Array:
        zeros = jnp.zeros((x.shape[0], self.hidden_features), x.dtype)
        return self.rnn(x, initial_carry=(zeros, zeros))


MODELS: dict[str, Callable[[int, int, nnx.Rngs], nnx.Module]] = {
    "lstm": lambda f, h, rngs: RNN(LSTMCell(f, h, norm="none", rngs=rngs)),
    "ln-lstm": lambda f, h, rngs: RNN(LSTMCell(f, h, norm="layer", rngs=rngs)),
    "flax-optimized-lstm": FlaxLSTM,
}


def _train_step(graphdef: nnx.GraphDef) -> Callable:
    def loss_fn(params, rest, x, y):
        outputs = nnx.merge(graphdef, params, rest)(x)
        outputs = outputs[0] if isinstance(outputs, tuple) else outputs  # lnorm RNN: (out, final)
        return jnp.mean(jnp.square(outputs - y))

    def step(params, rest, x, y):
        loss, grads = jax.value_and_grad(loss_fn)(params, rest, x, y)
        params = jax.tree.map(lambda p, g: p - LEARNING_RATE * g, params, grads)
        return params, loss

    return step


def compile_step(name: str, shape: tuple[int, int, int, int]) -> tuple[Callable, float]:
    """(a no-argument runner of one training step, compile seconds) for model `name`."""
    batch, length, hidden, features = shape
    graphdef, params, rest = nnx.split(MODELS[name](features, hidden, nnx.Rngs(0)), nnx.Param, ...)
    kx, ky = jax.random.split(jax.random.key(1))
    x = jax.random.normal(kx, (batch, length, features))
    y = jax.random.normal(ky, (batch, length, hidden))
    start = time.perf_counter()
    compiled = jax.jit(_train_step(graphdef), donate_argnums=0).lower(params, rest, x, y).compile()
    compile_s = time.perf_counter() - start
    held = [params]

    def run():
        held[0], loss = compiled(held[0], rest, x, y)
        return loss

    return run, compile_s


def bench(shape: tuple[int, int, int, int], rounds: int) -> dict[str, tuple[float, float]]:
    """{model: (median step ms, compile s)}. Models take turns, round by round, so that load
    from other processes on a shared machine hits them alike."""
    runners = {name: compile_step(name, shape) for name in MODELS}
    samples: dict[str, list[float]] = {name: [] for name in MODELS}
    for _ in range(rounds):
        for name, (run, _) in runners.items():
            samples[name].append(measure(run, repeats=3, warmup=1, number=1).median_ms)
    return {n: (statistics.median(samples[n]), runners[n][1]) for n in MODELS}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    rows = []
    for shape in SHAPES:
        times = bench(shape, args.rounds)
        ratio = times["ln-lstm"][0] / times["lstm"][0]
        for name, (ms, compile_s) in times.items():
            rows.append(
                [
                    "x".join(map(str, shape)),
                    name,
                    ms,
                    compile_s,
                    f"{ms / times['lstm'][0]:.2f}",
                ]
            )
        print(f"B x T x H x F = {shape}: LN-LSTM / LSTM = {ratio:.2f}", flush=True)
    print_table(["B x T x H x F", "model", "step ms (median)", "compile s", "vs lstm"], rows)


if __name__ == "__main__":
    main()
