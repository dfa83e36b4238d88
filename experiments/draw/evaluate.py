"""DRAW's evaluations: the variational bound of a split, the importance-weighted bound, and the
pictures (prior samples, the canvas sequence of test digits) as `lnorm.artifacts.Artifact`s.

All of them are deterministic for a given checkpoint: the bound's noise comes from each image's
own key (`objective.example_keys`), the samples' from the evaluator's key (`EvalContext.rng`,
fixed by the run's seed, the evaluator's name and the step).
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import numpy as np

from experiments.draw import sampling
from experiments.draw.data import load_splits
from experiments.draw.model import DRAW
from experiments.draw.objective import importance_weighted_sums, metric_sums
from lnorm.artifacts import Artifact
from lnorm.data.binarized_mnist import make_pipeline
from lnorm.data.pipeline import ArraySource
from lnorm.metrics import evaluate
from lnorm.trainer import EvalContext

STRIP_COLUMNS = 8  # canvases per row of the strip (every T/8-th glimpse), then the target


def bound(model: DRAW, source: ArraySource, batch_size: int) -> dict[str, float]:
    """`{"bound", "reconstruction", "kl"}`: means over the split's images, in nats."""
    batches = make_pipeline(source, batch_size=batch_size, shuffle=False).batches(0)
    return evaluate(model, metric_sums, batches)


@functools.cache
def _iwae_fn(k: int):
    # One function object per k: `evaluate` compiles per metric function, so a fresh partial
    # per call would recompile.
    return functools.partial(importance_weighted_sums, k=k)


def iwae_bound(model: DRAW, source: ArraySource, *, k: int, batch_size: int) -> float:
    """The importance-weighted bound (k posterior samples per image), mean over the split, in
    nats; `batch_size` bounds the k x images run at once."""
    images = max(1, batch_size // k)
    batches = make_pipeline(source, batch_size=images, shuffle=False).batches(0)
    return evaluate(model, _iwae_fn(k), batches)["iwae_bound"]


def _tiles(n: int) -> tuple[int, int]:
    """(rows, cols) of a near-square grid of n tiles."""
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


def pictures(model: DRAW, rng: jax.Array, digits: np.ndarray, *, samples: int) -> dict[str, Any]:
    """`samples`: a grid of prior samples (the final canvases' probabilities); `canvases`: an
    animated GIF of the model drawing `digits[n, 28, 28]`, one frame per glimpse; `canvas_strip`:
    one row per digit, its canvas at every T/8-th glimpse and the last, then the digit."""
    drawn = sampling.sample(model, rng, samples)[-1]
    canvases = sampling.reconstruction_canvases(model, digits)
    every = max(1, model.glimpses // STRIP_COLUMNS)
    return {
        "samples": Artifact.image(sampling.grid(drawn, *_tiles(samples))),
        "canvases": Artifact.gif(sampling.canvas_frames(canvases)),
        "canvas_strip": Artifact.image(sampling.canvas_strip(canvases, every=every,
                                                             targets=digits)),
    }


def _run_config(ctx: EvalContext, stage: str) -> Any:
    if ctx.config is None:
        raise ValueError(f"the {stage} stage reads its settings from the run's config: run it "
                         "through experiments.run or experiments.evaluate")
    return ctx.config


def iwae_stage(model: DRAW, ctx: EvalContext) -> dict[str, float]:
    """`test/iwae_bound`: the importance-weighted test bound with `model.iwae_samples` samples
    per image (`experiments.evaluate RUN_DIR --stage iwae`)."""
    conf = _run_config(ctx, "iwae")
    test = load_splits(conf.data).test
    k = conf.model.iwae_samples
    return {"test/iwae_bound": iwae_bound(model, test, k=k, batch_size=conf.data.eval_batch_size)}


def sample_stage(model: DRAW, ctx: EvalContext) -> dict[str, Artifact]:
    """`model.samples` samples from the prior (`experiments.evaluate RUN_DIR --stage sample`):
    `samples` (one grid, PNG) and `samples_array` (`[N, 28, 28]` probabilities, .npy), under
    `artifacts/sample/` of the run, drawn `data.eval_batch_size` at a time."""
    conf = _run_config(ctx, "sample")
    n, chunk = conf.model.samples, conf.data.eval_batch_size
    drawn = np.concatenate([
        sampling.sample(model, jax.random.fold_in(ctx.rng, i), min(chunk, n - lo))[-1]
        for i, lo in enumerate(range(0, n, chunk))
    ])
    return {"samples": Artifact.image(sampling.grid(drawn, *_tiles(n))),
            "samples_array": Artifact.array(drawn)}
