"""Timing helpers shared by the benchmark scripts (not tests).

JAX dispatches asynchronously, so every timing blocks on the result; the first call compiles,
so compilation is timed separately (`compile_fn`) and excluded from the repeats; timings are
medians over repeats because the machine is shared and the mean is dominated by outliers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jax


@dataclass(frozen=True)
class Timing:
    """Seconds per call: median and minimum over `repeats`, each the mean of `number` calls."""

    median_s: float
    min_s: float
    repeats: int
    number: int

    @property
    def median_ms(self) -> float:
        return self.median_s * 1e3


def train_step_fn(graphdef: Any, tx: Any, loss_fn: Callable[..., Any]) -> Callable[..., Any]:
    """An experiment's training step as the trainer runs it, for timing: the loss of the model
    merged from `(params, rest)` (copy=True, so batch norm may update its statistics), its
    gradient, and the optax update. `step(params, rest, opt_state, batch, key)`."""
    import jax
    import optax
    from flax import nnx

    def step(params, rest, opt_state, batch, key):
        def loss(p):
            model = nnx.merge(graphdef, p, rest, copy=True)
            value, _ = loss_fn(model, batch, key)
            return value, nnx.state(model, nnx.Not(nnx.Param))

        (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), rest, opt_state, value

    return step


def compile_fn(fn: Callable[..., Any], *args: Any) -> tuple[Callable[..., Any], float]:
    """Jits, lowers and compiles `fn` for `args`; returns (compiled callable, compile seconds)."""
    start = time.perf_counter()
    compiled = jax.jit(fn).lower(*args).compile()
    return compiled, time.perf_counter() - start


def _seconds_per_call(fn: Callable[..., Any], args: tuple, number: int) -> float:
    start = time.perf_counter()
    for _ in range(number):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / number


def _warm_up(
    fn: Callable[..., Any], args: tuple, warmup: int, number: int | None, min_repeat_s: float
) -> int:
    """Runs `warmup` calls; returns `number`, chosen if None so a repeat lasts `min_repeat_s`."""
    for _ in range(warmup):
        jax.block_until_ready(fn(*args))
    if number is None:
        number = max(1, int(min_repeat_s / max(_seconds_per_call(fn, args, 1), 1e-7)))
    return number


def measure(
    fn: Callable[..., Any],
    *args: Any,
    repeats: int = 30,
    warmup: int = 3,
    number: int | None = None,
    min_repeat_s: float = 2e-3,
) -> Timing:
    """Times `fn(*args)` (already compiled) after `warmup` calls.

    Each repeat runs `number` back-to-back calls and blocks once, so sub-millisecond calls are not
    dominated by timer resolution; `number=None` picks it so that a repeat lasts `min_repeat_s`.
    """
    number = _warm_up(fn, args, warmup, number, min_repeat_s)
    times = [_seconds_per_call(fn, args, number) for _ in range(repeats)]
    return Timing(statistics.median(times), min(times), repeats, number)


def measure_interleaved(
    calls: Mapping[str, tuple[Callable[..., Any], tuple]],
    *,
    rounds: int = 5,
    repeats: int = 10,
    warmup: int = 3,
    min_repeat_s: float = 2e-3,
) -> dict[str, Timing]:
    """Times several compiled `(fn, args)` in round-robin, `repeats` at a time, so that load
    drifting on a shared machine hits all of them alike; medians over all `rounds * repeats`."""
    numbers = {k: _warm_up(fn, args, warmup, None, min_repeat_s) for k, (fn, args) in calls.items()}
    times: dict[str, list[float]] = {k: [] for k in calls}
    for _ in range(rounds):
        for key, (fn, args) in calls.items():
            times[key] += [_seconds_per_call(fn, args, numbers[key]) for _ in range(repeats)]
    return {k: Timing(statistics.median(t), min(t), len(t), numbers[k]) for k, t in times.items()}


def time_training_steps(
    models: Mapping[str, Any], tx: Any, loss_fn: Callable[..., Any], batch: Any, **timing: Any
) -> dict[str, tuple[Timing, float]]:
    """Each model's training step (`train_step_fn`) compiled, then all timed round-robin
    (`measure_interleaved(**timing)`): `{name: (timing, compile seconds)}`. The models are
    switched to training mode; one batch and one key serve all of them."""
    from flax import nnx

    calls, compile_s = {}, {}
    for name, model in models.items():
        model.train()
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        args = (params, rest, tx.init(params), batch, jax.random.key(1))
        compiled, compile_s[name] = compile_fn(train_step_fn(graphdef, tx, loss_fn), *args)
        calls[name] = (compiled, args)
    timings = measure_interleaved(calls, **timing)
    return {name: (timings[name], compile_s[name]) for name in models}


def norm_benchmark_main(doc: str, bench: Callable[[str, int, list[str]], list[list[Any]]], *,
                        scales: Sequence[str], norms: Sequence[str], rounds: int,
                        headers: Sequence[str]) -> None:
    """The command line of the experiments' step benchmarks (`--scales`, `--norms`,
    `--rounds`): prints the rows of `bench(scale, rounds, norms)` for each scale as one table,
    `none` (the ratios' reference) always first among the norms."""
    import argparse

    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["small"], choices=sorted(scales))
    parser.add_argument("--norms", nargs="+", default=list(norms), choices=tuple(norms))
    parser.add_argument("--rounds", type=int, default=rounds)
    args = parser.parse_args()
    chosen = ["none", *(n for n in args.norms if n != "none")]
    rows = [row for scale in args.scales for row in bench(scale, args.rounds, chosen)]
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    print_table(headers, rows)


def gbps(num_bytes: int, seconds: float) -> float:
    """Effective bandwidth: bytes an ideal kernel must move, divided by the measured time."""
    return num_bytes / seconds / 1e9


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Prints a Markdown table (so results paste straight into docs/benchmarks.md)."""
    cells = [[str(h) for h in headers]] + [
        [f"{c:.3g}" if isinstance(c, float) else str(c) for c in row] for row in rows
    ]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells
    ]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    print("\n".join(lines))
