"""Evaluation helper shared by the experiments' evaluators.

An evaluator computes, per batch, sums (not means) of its metrics together with a `count`,
so that batches of different sizes (a short last batch, padding masks) average exactly.
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
