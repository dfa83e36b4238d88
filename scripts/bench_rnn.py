"""Training-step speed of the plain vs the LN recurrent cells: LSTM (and Flax's
OptimizedLSTMCell) and GRU (the fused scan and the autodiff path it replaces).

Run: `python -m scripts.bench_rnn [--rounds 10] [--cells lstm gru]`. One step is forward +
backward + an SGD update of an `RNN` regressing random targets, jitted with the parameters
donated. Prints a Markdown table per cell: median step time (wall clock, and process CPU time,
which other processes' load on a shared machine moves less), jit compile time, and the ratios to
the plain cell per shape. Targets: LN-LSTM at most 1.2x the plain LSTM; LN-GRU at most 1.25x the
plain GRU; each compile under 2 s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from lnorm.cells import GRUCell, LSTMCell
from lnorm.rnn import RNN
from scripts.benchutil import measure, print_table

Shape = tuple[int, int, int, int]  # (batch, time, hidden, input)
LSTM_SHAPES: tuple[Shape, ...] = ((8, 100, 400, 3), (64, 50, 512, 256))
# Order embeddings' and skip-thoughts' GRU encoders at their "small" scale.
GRU_SHAPES: tuple[Shape, ...] = ((128, 16, 256, 128), (64, 30, 512, 128))
LEARNING_RATE = 1e-3


class FlaxLSTM(nnx.Module):
    """Flax's `OptimizedLSTMCell` under `nnx.RNN`, from a zero carry (the reference)."""

    def __init__(self, in_features: int, hidden_features: int, rngs: nnx.Rngs):
        self.rnn = nnx.RNN(nnx.OptimizedLSTMCell(in_features, hidden_features, rngs=rngs))
        self.hidden_features = hidden_features

    def __call__(self, x: jax.Array) -> jax.Array:
        zeros = jnp.zeros((x.shape[0], self.hidden_features), x.dtype)
        return self.rnn(x, initial_carry=(zeros, zeros))


class AutodiffGRUCell(GRUCell):
    """`GRUCell` without its fused scan: `RNN` runs it step by step under autodiff, as it ran
    every GRU before `GRUCell.scan` (the "before" of the comparison)."""

    has_fused_scan = False


Factory = Callable[[int, int, nnx.Rngs], nnx.Module]
SUITES: dict[str, tuple[tuple[Shape, ...], dict[str, Factory]]] = {
    "lstm": (
        LSTM_SHAPES,
        {
            "lstm": lambda f, h, rngs: RNN(LSTMCell(f, h, norm="none", rngs=rngs)),
            "ln-lstm": lambda f, h, rngs: RNN(LSTMCell(f, h, norm="layer", rngs=rngs)),
            "flax-optimized-lstm": FlaxLSTM,
        },
    ),
    "gru": (
        GRU_SHAPES,
        {
            "gru": lambda f, h, rngs: RNN(GRUCell(f, h, norm="none", rngs=rngs)),
            "ln-gru": lambda f, h, rngs: RNN(GRUCell(f, h, norm="layer", rngs=rngs)),
            "gru-autodiff": lambda f, h, rngs: RNN(AutodiffGRUCell(f, h, norm="none", rngs=rngs)),
            "ln-gru-autodiff": lambda f, h, rngs: RNN(
                AutodiffGRUCell(f, h, norm="layer", rngs=rngs)
            ),
        },
    ),
}
# (numerator, denominator) of each ratio printed per shape.
RATIOS = {
    "lstm": [("ln-lstm", "lstm")],
    "gru": [
        ("ln-gru", "gru"),
        ("ln-gru-autodiff", "gru-autodiff"),
        ("gru-autodiff", "gru"),
        ("ln-gru-autodiff", "ln-gru"),
    ],
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


def compile_step(make: Factory, shape: Shape) -> tuple[Callable, float]:
    """(a no-argument runner of one training step, compile seconds) for the model `make` builds."""
    batch, length, hidden, features = shape
    graphdef, params, rest = nnx.split(make(features, hidden, nnx.Rngs(0)), nnx.Param, ...)
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


class Times(NamedTuple):
    """One model's medians over rounds: wall-clock and process CPU milliseconds per step (CPU
    time, all threads, moves less than wall time with other processes' load on a shared
    machine), and the compile seconds."""

    wall_ms: float
    cpu_ms: float
    compile_s: float


def bench(models: dict[str, Factory], shape: Shape, rounds: int) -> dict[str, Times]:
    """Models take turns, round by round, so that load from other processes hits them alike."""
    runners = {name: compile_step(make, shape) for name, make in models.items()}
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, (run, _) in runners.items():
            start = time.process_time()
            wall[name].append(measure(run, repeats=3, warmup=1, number=1).median_ms)
            cpu[name].append((time.process_time() - start) / 4 * 1e3)  # warmup + 3 repeats
    return {
        n: Times(statistics.median(wall[n]), statistics.median(cpu[n]), runners[n][1])
        for n in models
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--cells", nargs="+", choices=tuple(SUITES), default=list(SUITES))
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    for cell in args.cells:
        shapes, models = SUITES[cell]
        base = next(iter(models))
        rows = []
        for shape in shapes:
            times = bench(models, shape, args.rounds)
            for name, t in times.items():
                ratio = (
                    f"{t.wall_ms / times[base].wall_ms:.2f} ({t.cpu_ms / times[base].cpu_ms:.2f})"
                )
                rows.append(
                    ["x".join(map(str, shape)), name, t.wall_ms, t.cpu_ms, t.compile_s, ratio]
                )
            ratios = ", ".join(
                f"{a} / {b} = {times[a].wall_ms / times[b].wall_ms:.2f}"
                f" (cpu {times[a].cpu_ms / times[b].cpu_ms:.2f})"
                for a, b in RATIOS[cell]
            )
            print(f"B x T x H x F = {shape}: {ratios}", flush=True)
        headers = ["B x T x H x F", "model", "step ms", "cpu ms", "compile s", f"vs {base} (cpu)"]
        print_table(headers, rows)


if __name__ == "__main__":
    main()
