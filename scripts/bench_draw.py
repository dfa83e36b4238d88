"""Training-step speed of DRAW per normaliser, measured in one run.

    python -m scripts.bench_draw [--scales small paper] [--rounds 3]

One step is the experiment's own loss (`experiments.draw.objective.loss_fn`: every glimpse's
fresh noise, the bound summed over pixels and glimpses) under `jax.jit(jax.value_and_grad)` plus
the optax update the trainer uses (global-norm clip 10, then Adam), on a random binary batch of
the scale's shape: batch B, glimpses T, LSTM units H (encoder and decoder), latent Z, the read
window, write 5x5. Compile time (lower + compile) and the median step time are printed per
normaliser, with the ratio to `norm=none`; the normalisers are timed round-robin so that load on
a shared machine hits them alike. `layer` is the paper's DRAW variant (only `tanh(LN(c))`),
`layer_full` the full LN-LSTM (`cell_variant="paper"`). The target (issue 12): LN's step at
most 1.25x the plain LSTM's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optax
from flax import nnx

from experiments.draw.model import DRAW
from experiments.draw.objective import loss_fn
from lnorm.norms import NormSpec
from scripts.benchutil import norm_benchmark_main, time_training_steps

# (B, T, H, Z, read N): configs/exp/draw/small.yaml and the paper's model (configs/exp/draw.yaml).
SCALES = {"small": (64, 16, 128, 32, 5), "paper": (128, 64, 256, 100, 2)}
NORMS = {  # name -> (NormSpec, cell_variant)
    "none": (NormSpec("none"), "draw"),
    "layer": (NormSpec("layer"), "draw"),
    "layer_full": (NormSpec("layer"), "paper"),
    "rms": (NormSpec("rms"), "draw"),
    "batch": (NormSpec("batch"), "draw"),
    "weight": (NormSpec("weight"), "draw"),
}


def bench(scale: str, rounds: int, norms: list[str]) -> list[list[Any]]:
    b, t, h, z, n = SCALES[scale]
    image = (np.random.default_rng(0).random((b, 28, 28)) < 0.13).astype(np.float32)
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    models = {name: DRAW(norm=NORMS[name][0], glimpses=t, encoder_features=h,
                         decoder_features=h, latent=z, read_size=n, cell_variant=NORMS[name][1],
                         rngs=nnx.Rngs(0)) for name in norms}
    steps = time_training_steps(models, tx, loss_fn, {"image": image}, rounds=rounds, repeats=3,
                                warmup=2)
    base = steps["none"][0].median_s
    return [[scale, f"B={b} T={t} H={h} Z={z} read {n}x{n}", name, timing.median_ms,
             timing.median_s / base, compile_s] for name, (timing, compile_s) in steps.items()]


def main() -> None:
    norm_benchmark_main(__doc__, bench, scales=SCALES, norms=NORMS, rounds=3,
                        headers=["scale", "shape", "norm", "step (ms)", "vs none", "compile (s)"])


if __name__ == "__main__":
    main()
