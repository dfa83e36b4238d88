"""Training-step speed of the handwriting synthesis network per normaliser, measured in one run.

    python -m scripts.bench_handwriting [--scales small paper] [--norms none layer] [--rounds 3]

One step is the experiment's own loss (`experiments.handwriting.objective.loss_fn`: the mixture
NLL per sequence, Graves' output-derivative clip at 100) under `jax.jit(jax.value_and_grad)` plus
the optax update the trainer uses (element-wise gradient clip at 10, then Adam), on a random
batch of the scale's shape: batch B, points T (T - 1 steps read), text of U characters over V
symbols, L LSTM layers of H units, K window and M output mixtures. Compile time (lower +
compile) and the median step time are printed per normaliser with the ratio to `norm=none`; the
normalisers are timed round-robin so that load on a shared machine hits them alike (the minimum
over repeats, printed beside the median, is the least disturbed by it). `layer` is
the paper's LN-LSTM. The target (issue 13): LN's step at most 1.25x the plain LSTM's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optax
from flax import nnx

from experiments.handwriting.model import HandwritingSynthesis
from experiments.handwriting.objective import loss_fn
from lnorm.norms import NormSpec
from scripts.benchutil import norm_benchmark_main, time_training_steps

# (B, T, U, V, L, H, K, M): configs/exp/handwriting/small.yaml and the paper's network (57
# symbols, IAM-OnDB's ~40-character lines).
SCALES = {"small": (8, 300, 40, 57, 3, 128, 10, 10), "paper": (8, 500, 40, 57, 3, 400, 10, 20)}
NORMS = ("none", "layer", "rms", "weight", "batch")


def _batch(b: int, t: int, u: int, v: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    strokes = rng.normal(size=(b, t, 3)).astype(np.float32)
    strokes[..., 2] = rng.random((b, t)) < 0.05
    return {"strokes": strokes, "strokes_mask": np.ones((b, t), bool),
            "chars": rng.integers(2, v, size=(b, u)).astype(np.int32),
            "chars_mask": np.ones((b, u), bool)}


def bench(scale: str, rounds: int, norms: list[str]) -> list[list[Any]]:
    b, t, u, v, layers, h, k, m = SCALES[scale]
    batch = _batch(b, t, u, v)
    tx = optax.chain(optax.clip(10.0), optax.adam(1e-3))
    models = {name: HandwritingSynthesis(v, norm=NormSpec(name), hidden=h, layers=layers,
                                         window_mixtures=k, output_mixtures=m, t_max=t - 1,
                                         output_grad_clip=100.0, rngs=nnx.Rngs(0))
              for name in norms}
    steps = time_training_steps(models, tx, loss_fn, batch, rounds=rounds, repeats=2, warmup=1)
    base, base_min = steps["none"][0].median_s, steps["none"][0].min_s
    shape = f"B={b} T={t} U={u} L={layers} H={h} K={k} M={m}"
    return [[scale, shape, name, timing.median_ms, timing.median_s / base, timing.min_s * 1e3,
             timing.min_s / base_min, compile_s] for name, (timing, compile_s) in steps.items()]


def main() -> None:
    norm_benchmark_main(__doc__, bench, scales=SCALES, norms=NORMS, rounds=3,
                        headers=["scale", "shape", "norm", "median step (ms)", "vs none",
                                 "min step (ms)", "vs none (min)", "compile (s)"])


if __name__ == "__main__":
    main()
