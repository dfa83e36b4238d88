"""Training-step speed of the order-embedding model per normaliser, measured in one run.

    python -m scripts.bench_order_embeddings [--scales small paper] [--norms none layer ...]

One step is the experiment's own: `objective.loss_fn` under `jax.value_and_grad`, then the
optimiser of its config (per-tensor gradient clip 2, Adam 1e-3) and the update, jitted as one
function. Batch: 128 images (4096-d features) with one caption each, padded to 16 tokens, from
a 10,000-word vocabulary (COCO-sized). Sizes: the small scale (joint space and GRU 256, words
128) and the paper's (1024, 300) with `--scales small paper`. Prints the median step time,
the compile time and the ratio of each to norm=none; the normalisers take turns, so load from other
processes hits them alike. Target (issue): LN's step at most 1.25x the plain GRU's.
"""

from __future__ import annotations

import argparse
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from experiments.order_embeddings.model import OrderEmbedding
from experiments.order_embeddings.objective import loss_fn
from lnorm.norms import NormSpec
from lnorm.optim import OptimConfig, make_optimizer
from scripts.benchutil import compile_fn, measure_interleaved, print_table, train_step_fn

SIZES = {"small": (256, 128), "paper": (1024, 300)}  # (dim, word_dim)
BATCH, LENGTH, VOCAB, FEATURES = 128, 16, 10_000, 4096


def batch(seed: int = 0) -> dict[str, jax.Array]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(8, LENGTH + 1, BATCH)
    tokens = rng.integers(3, VOCAB, (BATCH, LENGTH)) * (np.arange(LENGTH) < lengths[:, None])
    return {"caption": jnp.asarray(tokens, jnp.int32),
            "caption_length": jnp.asarray(lengths, jnp.int32),
            "image": jnp.asarray(rng.normal(size=(BATCH, FEATURES)), jnp.float32),
            "image_index": jnp.arange(BATCH, dtype=jnp.int32)}


def training_step(norm: str, dim: int, word_dim: int, data: dict) -> tuple[Any, tuple, float]:
    """(compiled step, its arguments, compile seconds) for one normaliser."""
    model = OrderEmbedding(VOCAB, norm=NormSpec(norm).resolved(BATCH), feature_dim=FEATURES,
                           dim=dim, word_dim=word_dim, t_max=LENGTH, rngs=nnx.Rngs(0))
    NormSpec(norm).data_init(model, model, data["image"], data["caption"],
                             data["caption_length"])
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx = make_optimizer(OptimConfig(grad_clip_tensor_norm=2.0), total_steps=1000)
    args = (params, rest, tx.init(params), data, jax.random.key(0))
    compiled, seconds = compile_fn(train_step_fn(graphdef, tx, loss_fn), *args)
    return compiled, args, seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", nargs="+", default=["none", "layer", "rms", "batch", "weight"])
    parser.add_argument("--scales", nargs="+", default=["small"], choices=sorted(SIZES))
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}; batch {BATCH} x {LENGTH} "
          f"tokens, vocabulary {VOCAB}, features {FEATURES}")
    data = batch()
    rows = []
    for scale in args.scales:
        dim, word_dim = SIZES[scale]
        steps = {n: training_step(n, dim, word_dim, data) for n in args.norms}
        repeats = 5 if scale == "small" else 2
        times = measure_interleaved({n: (fn, a) for n, (fn, a, _) in steps.items()},
                                    rounds=args.rounds, repeats=repeats, warmup=1)
        base = args.norms[0]
        for n, (_, _, compile_s) in steps.items():
            rows.append([f"{scale} ({dim}/{word_dim})", n, times[n].median_ms, compile_s,
                         f"{times[n].median_s / times[base].median_s:.2f}",
                         f"{compile_s / steps[base][2]:.2f}"])
        print(f"{scale}: done", flush=True)
    print_table(["scale (dim/words)", "norm", "step ms (median)", "compile s",
                 f"step vs {args.norms[0]}", f"compile vs {args.norms[0]}"], rows)


if __name__ == "__main__":
    main()
