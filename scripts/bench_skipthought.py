"""Training-step speed of skip-thoughts per normaliser: the GRU (norm=none) against the LN-GRU.

    python -m scripts.bench_skipthought [--scales small] [--norms none layer] [--rounds 5]

One step is the experiment's own: `experiments.skipthought.objective.loss_fn` (encoder and both
decoders, the cost summed over the batch) under `jax.jit(jax.value_and_grad)`, then the run's
optax chain (`lnorm.optim.make_optimizer`: global-norm clip 5, Adam), parameters and optimiser
state donated. Sizes, batch and optimiser come from the composed config of each scale
(`+exp=skipthought scale=SCALE`); the batch holds random word ids with sentence lengths drawn
uniformly from 5..30 tokens (`<eos>` included), padded to 32, the longest bucket. Normalisers
take turns round by round, so that load from other processes hits them alike. Prints the median
step time, the compile time and the ratio to norm=none per scale (target: LN at most 1.25x).
`--scales paper` (vocabulary 20k, GRUs 2400) takes minutes per step on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax
from flax import nnx
from hydra import compose, initialize_config_dir

from experiments.run import resolve
from experiments.skipthought import make_model
from experiments.skipthought.objective import loss_fn
from lnorm.optim import make_optimizer
from scripts.benchutil import measure, print_table

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PADDED = 32
KEY = jax.random.key(0)


def config(scale: str, norm: str):
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        cfg = compose("config", overrides=["+exp=skipthought", f"scale={scale}", f"norm={norm}",
                                           "logger=none"])
    return resolve(cfg)[0]


def random_batch(batch_size: int, vocab_size: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    batch = {}
    for field in ("prev", "cur", "next"):
        lengths = rng.integers(5, 31, batch_size).astype(np.int32)
        ids = rng.integers(3, vocab_size, (batch_size, PADDED)).astype(np.int32)
        batch[field] = np.where(np.arange(PADDED) < lengths[:, None], ids, 0).astype(np.int32)
        batch[f"{field}_length"] = lengths
    return batch


def compile_step(conf, vocab_size: int) -> tuple[Callable[[], jax.Array], float]:
    """(a no-argument runner of one training step, compile seconds)."""
    graphdef, params, rest = nnx.split(make_model(conf, vocab_size), nnx.Param, ...)
    tx = make_optimizer(conf.optim, conf.train.steps)
    opt_state = tx.init(params)
    batch = jax.tree.map(jax.numpy.asarray, random_batch(conf.data.batch_size, vocab_size))

    def step(params, opt_state, rest, batch):
        def cost(params):
            return loss_fn(nnx.merge(graphdef, params, rest), batch, KEY)[0]

        loss, grads = jax.value_and_grad(cost)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    start = time.perf_counter()
    compiled = jax.jit(step, donate_argnums=(0, 1)).lower(params, opt_state, rest,
                                                          batch).compile()
    compile_s = time.perf_counter() - start
    held = [params, opt_state]

    def run() -> jax.Array:
        held[0], held[1], loss = compiled(held[0], held[1], rest, batch)
        return loss

    return run, compile_s


def bench(scale: str, norms: list[str], rounds: int) -> dict[str, tuple[float, float]]:
    """{norm: (median step ms, compile s)} at `scale`'s sizes."""
    runners = {}
    for norm in norms:
        conf = config(scale, norm)
        runners[norm] = compile_step(conf, conf.data.vocab_size)
    samples: dict[str, list[float]] = {n: [] for n in norms}
    for _ in range(rounds):
        for norm, (run, _) in runners.items():
            samples[norm].append(measure(run, repeats=3, warmup=1, number=1).median_ms)
    return {n: (statistics.median(samples[n]), runners[n][1]) for n in norms}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scales", nargs="+", default=["small"], choices=("tiny", "small",
                                                                         "paper"))
    parser.add_argument("--norms", nargs="+", default=["none", "layer"])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}")
    base = args.norms[0]
    rows = []
    for scale in args.scales:
        conf = config(scale, base)
        sizes = (f"V={conf.data.vocab_size} E={conf.model.word_dim} H={conf.model.hidden} "
                 f"B={conf.data.batch_size} T={PADDED}")
        times = bench(scale, args.norms, args.rounds)
        for norm, (ms, compile_s) in times.items():
            rows.append([scale, sizes, norm, ms, compile_s, f"{ms / times[base][0]:.2f}"])
        print(f"{scale} ({sizes}): " + ", ".join(
            f"{n} {ms:.0f} ms" for n, (ms, _) in times.items()), flush=True)
    print_table(["scale", "sizes", "norm", "step ms (median)", "compile s", f"vs {base}"], rows)


if __name__ == "__main__":
    main()
