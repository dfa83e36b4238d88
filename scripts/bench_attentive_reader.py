"""Training-step speed of the attentive reader per normaliser, measured in one run.

    python -m scripts.bench_attentive_reader [--scales small paper] [--norms none layer]

One step is the experiment's own loss (`experiments.attentive_reader.objective.loss_fn`, dropout
on) under `jax.jit(jax.value_and_grad)` plus the optax update the trainer uses (global-norm clip
10, then Adam), on a random batch of the scale's shape: batch B, context length T (the padded
bucket), query length Q, hidden size H, vocabulary V. Compile time (lower + compile) and the
median step time are printed per normaliser, with the ratio to `norm=none`; the normalisers are
timed round-robin so that load on a shared machine hits them alike. The target (issue 11): the
LN-LSTM reader's step at most 1.25x the plain one's.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import optax
from flax import nnx

from experiments.attentive_reader.model import AttentiveReader
from experiments.attentive_reader.objective import loss_fn
from lnorm.norms import NormSpec
from scripts.benchutil import norm_benchmark_main, time_training_steps

# (B, T, Q, H, V): small = configs/exp/attentive_reader/small.yaml on the real-text cloze set
# (contexts of up to 96 tokens, a 2,000-word vocabulary); paper = the paper's reader (H 240,
# batch 64) on top-4 CNN contexts (bucket 512, the 118k-word CNN vocabulary).
SCALES = {"small": (32, 96, 48, 64, 2_000), "paper": (64, 512, 64, 240, 118_497)}
NORMS = {
    "none": NormSpec("none"),
    "layer": NormSpec("layer"),
    "batch": NormSpec("batch"),
    "batch_everywhere": NormSpec("batch", placement="everywhere"),
}
ENTITIES = 45


def _batch(b: int, t: int, q: int, v: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random ids with a ragged valid prefix per row (the pipeline's padding and masks)."""
    rng = np.random.default_rng(seed)
    c_len, q_len = rng.integers(t // 2, t + 1, b), rng.integers(q // 2, q + 1, b)
    c_mask, q_mask = np.arange(t) < c_len[:, None], np.arange(q) < q_len[:, None]
    return {
        "context": np.where(c_mask, rng.integers(1, v, (b, t)), 0).astype(np.int32),
        "context_mask": c_mask,
        "query": np.where(q_mask, rng.integers(1, v, (b, q)), 0).astype(np.int32),
        "query_mask": q_mask,
        "answer": rng.integers(0, ENTITIES, b).astype(np.int32),
    }


def bench(scale: str, rounds: int, norms: list[str]) -> list[list[Any]]:
    b, t, q, h, v = SCALES[scale]
    batch = _batch(b, t, q, v)
    tx = optax.chain(optax.clip_by_global_norm(10.0), optax.adam(1e-3))
    models = {name: AttentiveReader(v, entity_offset=3, num_entities=ENTITIES, hidden=h,
                                    norm=NORMS[name], context_t_max=t, query_t_max=q,
                                    rngs=nnx.Rngs(0)) for name in norms}
    steps = time_training_steps(models, tx, loss_fn, batch, rounds=rounds, repeats=3, warmup=2)
    base = steps["none"][0].median_s
    return [[scale, f"B={b} T={t} Q={q} H={h} V={v}", name, timing.median_ms,
             timing.median_s / base, compile_s] for name, (timing, compile_s) in steps.items()]


def main() -> None:
    norm_benchmark_main(__doc__, bench, scales=SCALES, norms=NORMS, rounds=4,
                        headers=["scale", "shape", "norm", "step (ms)", "vs none", "compile (s)"])


if __name__ == "__main__":
    main()
