"""Evaluation helpers shared by the experiments' evaluators.

`evaluate` averages metrics: an evaluator computes, per batch, sums (not means) of its metrics
together with a `count`, so that batches of different sizes (a short last batch, padding
masks) average exactly. `gather` collects per-example outputs (embeddings, scores) for the
evaluations that need them all at once (retrieval, linear probes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from lnorm.parallel import DataParallel

MetricFn = Callable[[nnx.Module, Any], Mapping[str, jax.Array]]


@partial(jax.jit, static_argnums=(0, 1))
def _accumulate(metric_fn: MetricFn, graphdef: Any, state: Any, batch: Any, totals: Any) -> Any:
    # Module-level and keyed on (metric_fn, graphdef): repeated evaluations reuse the compiled
    # function instead of retracing a fresh closure every time.
    sums = dict(metric_fn(nnx.merge(graphdef, state), batch))
    sums = {k: jnp.asarray(v, jnp.float32) for k, v in sums.items()}
    return sums if totals is None else {k: totals[k] + v for k, v in sums.items()}


def evaluate(
    model: nnx.Module,
    metric_fn: MetricFn,
    batches: Iterable[Any],
    *,
    parallel: DataParallel | None = None,
) -> dict[str, float]:
    """Averages `metric_fn(model, batch) -> {name: sum, ..., "count": n}` over `batches`:
    returns `{name: total_sum / total_count}`. `metric_fn` is jitted (one compilation per
    batch shape), the sums stay on device until the end. The model is used as given (put it
    in eval mode first; the trainer does). When the model lives on several devices (default:
    where its state is), batches whose size divides the device count are sharded over them."""
    graphdef, state = nnx.split(model)
    parallel = DataParallel.like(state) if parallel is None else parallel
    totals = None
    for batch in batches:
        leaves = jax.tree.leaves(batch)
        if parallel.mesh is not None and all(
            np.ndim(x) and np.shape(x)[0] % parallel.num_local_devices == 0 for x in leaves
        ):
            batch = parallel.shard(batch)
        totals = _accumulate(metric_fn, graphdef, state, batch, totals)
    if totals is None:
        raise ValueError("evaluate: `batches` yielded no batch")
    if "count" not in totals:
        raise ValueError(f"metric_fn {metric_fn!r} must return a 'count' entry next to its "
                         f"sums; it returned {sorted(totals)}")
    totals = jax.device_get(totals)
    count = float(totals.pop("count"))
    if count <= 0:
        raise ValueError(f"evaluate: total count is {count}; expected a positive count")
    return {k: float(v) / count for k, v in totals.items()}


@partial(jax.jit, static_argnums=(0, 1))
def _outputs(output_fn: Callable, graphdef: Any, state: Any, batch: Any) -> Any:
    return output_fn(nnx.merge(graphdef, state), batch)


def gather(
    model: nnx.Module,
    output_fn: Callable[[nnx.Module, Any], Any],
    batches: Iterable[Any],
    *,
    parallel: DataParallel | None = None,
) -> Any:
    """Runs the jitted `output_fn(model, batch) -> per-example outputs` (arrays, or a pytree of
    arrays, with the batch on axis 0) over `batches` and returns them concatenated on the host,
    in batch order: what evaluations that need every example at once use (sentence vectors
    for probes, image and caption embeddings for retrieval). Batches are sharded over the
    model's devices where they divide evenly; in a multi-process run every process gets the
    outputs of all processes (each read its own share of each batch, in process order)."""
    graphdef, state = nnx.split(model)
    parallel = DataParallel.like(state) if parallel is None else parallel
    chunks = []
    for batch in batches:
        if parallel.mesh is not None and all(
            np.ndim(x) and np.shape(x)[0] % parallel.num_local_devices == 0
            for x in jax.tree.leaves(batch)
        ):
            batch = parallel.shard(batch)
        out = _outputs(output_fn, graphdef, state, batch)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            out = multihost_utils.process_allgather(out, tiled=True)
        chunks.append(jax.device_get(out))
    if not chunks:
        raise ValueError("gather: `batches` yielded no batch")
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *chunks)
