"""The one training loop. An experiment describes itself as a `Task` (model, loss, data,
evaluators); `train` owns everything else: the optimiser and its schedule, one jit-compiled pure
step function over the split model state (donated), several steps per compiled call, on-device
metrics fetched every `log_every` steps, evaluators on their own cadence, the best checkpoint
and early stopping, the NaN/inf stop, training wall-clock time, orbax checkpoints with exact
automatic resume, and data parallelism over the devices. See docs/training.md.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import itertools
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm.auto import tqdm

from lnorm.artifacts import ARTIFACT_DIR, Artifact
from lnorm.checkpoint import BEST_DIR, CHECKPOINT_DIR, Checkpointer
from lnorm.logger import RunLogger
from lnorm.optim import OptimConfig, learning_rate_schedule, make_optimizer, schedule_length
from lnorm.parallel import DataParallel
from lnorm.precision import cast_model, cast_params, compute_dtype
from lnorm.runlock import RunLock

SELECT_MODES = ("min", "max")
TIME_KEY = "time/elapsed_s"


@dataclass
class TrainConfig:
    """How long and how to train. Steps are counted from 1; step s is logged as `step: s`.

    `select_metric` (e.g. `validation/error`, with `select_mode` min or max) keeps the best
    checkpoint beside the last ones, and final evaluators run on it; `early_stop_patience`
    stops a run after that many evaluations without improvement.
    """

    epochs: int | None = None  # the run's length; `steps`, when set, takes precedence
    steps: int | None = None
    log_every: int = 100  # steps between metric fetches / log lines
    eval_every: int | None = None  # default evaluator cadence; None: each epoch end; always at end
    checkpoint_every: int = 1000  # also always at the end
    keep_checkpoints: int = 2
    steps_per_call: int = 1  # steps per compiled call (lax.scan over a chunk of batches)
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    select_metric: str | None = None
    select_mode: str = "min"
    early_stop_patience: int | None = None  # in evaluations of select_metric
    progress: bool = True  # tqdm progress bar
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (params, optimiser in float32)

    def __post_init__(self) -> None:
        positive = {"log_every": self.log_every, "checkpoint_every": self.checkpoint_every,
                    "steps_per_call": self.steps_per_call, "epochs": self.epochs,
                    "steps": self.steps, "eval_every": self.eval_every,
                    "keep_checkpoints": self.keep_checkpoints,
                    "early_stop_patience": self.early_stop_patience}
        for key, value in positive.items():
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"train.{key}={value!r}: expected a positive integer")
        if self.select_mode not in SELECT_MODES:
            raise ValueError(f"train.select_mode={self.select_mode!r}: expected one of "
                             f"{SELECT_MODES}")
        if self.early_stop_patience is not None and self.select_metric is None:
            raise ValueError("train.early_stop_patience needs train.select_metric (the metric "
                             "whose improvement it waits for)")
        compute_dtype(self.dtype)


@dataclass
class EvalContext:
    """What an evaluator gets besides the model: the step it evaluates, its own RNG key (fixed
    by the run's seed, the step and the evaluator's name), the folder for its artifacts, and
    the run's directory and config (the experiment's RunConfig; None outside the CLI)."""

    step: int
    rng: jax.Array
    out_dir: Path
    run_dir: Path
    config: Any = None


@dataclass
class Evaluator:
    """`fn(model, ctx) -> {name: float | Artifact}` run on an eval-mode copy of the model.

    `every`: steps between runs (None: `TrainConfig.eval_every`); periodic evaluators also run
    at the end. `final=True`: run once, after training, on the selected (best) checkpoint
    instead of periodically (heavy evaluations: 5-fold retrieval, probes, test sets).
    """

    fn: Callable[[nnx.Module, EvalContext], Mapping[str, Any]]
    every: int | None = None
    final: bool = False


@dataclass
class Task:
    """What an experiment's `build(cfg)` returns.

    - `loss_fn(model, batch, rng) -> (scalar loss, {name: scalar})`: pure, traced under jit,
      model in train mode; BatchNorm statistics it updates are carried to the next step.
    - `train_batches(epoch, start)`: the batches of `epoch` from batch index `start` on, the
      same every time it is asked (resume depends on it); `steps_per_epoch` of them.
    - `evaluators`: name -> `Evaluator` (or a bare `fn(model, ctx)`, periodic); a metric name
      without "/" is logged as "<evaluator name>/<metric>".
    - `init_fn(model, first_batch)`: run once before the first step of a fresh run (e.g.
      weight-norm data-dependent init), not on resume.
    - `data_source`: one line saying which data the run reads (real files and where, or a
      synthetic stand-in).
    """

    model: nnx.Module
    loss_fn: Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
    train_batches: Callable[[int, int], Iterator[Any]]
    steps_per_epoch: int
    evaluators: dict[str, Evaluator | Callable] = field(default_factory=dict)
    init_fn: Callable[[nnx.Module, Any], None] | None = None
    data_source: str = ""  # what data the run reads, for the run's header line

    def __post_init__(self) -> None:
        self.evaluators = {name: e if isinstance(e, Evaluator) else Evaluator(e)
                           for name, e in self.evaluators.items()}


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped without checkpointing the bad state."""

    def __init__(self, step: int, last_checkpoint: int | None, directory: Path) -> None:
        self.step, self.last_checkpoint = step, last_checkpoint
        where = (f"the last good checkpoint is step {last_checkpoint} in {directory}; re-running "
                 "resumes from it" if last_checkpoint is not None else "no checkpoint was saved")
        super().__init__(f"non-finite loss at step {step}: training stopped ({where})")


class NonFiniteStateError(NonFiniteLossError):
    """The parameters or optimiser state became NaN or inf (with a finite loss); the run
    stopped without checkpointing them."""

    def __init__(self, step: int, last_checkpoint: int | None, directory: Path) -> None:
        super().__init__(step, last_checkpoint, directory)
        self.args = (str(self.args[0]).replace("non-finite loss", "non-finite parameters or "
                                               "optimiser state", 1),)


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after its current compiled call; the state at `step`
    was checkpointed, so re-running the same command resumes from it."""

    def __init__(self, signum: int, step: int, directory: Path) -> None:
        self.signum, self.step, self.directory = signum, step, directory
        name = signal.Signals(signum).name
        super().__init__(f"interrupted ({name}) at step {step}; checkpoint saved in {directory}")


class _StopRequest:
    """Turns the first SIGINT/SIGTERM into a request that the loop honours after the current
    compiled call (a second one interrupts at once). Installed only in the main thread."""

    def __init__(self) -> None:
        self.signal: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._previous[signum] = signal.signal(signum, self._request)
        return self

    def _request(self, signum: int, frame: Any) -> None:
        self.signal = signum
        for number, handler in self._previous.items():  # a second signal: the usual behaviour
            signal.signal(number, handler)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in steps (validating the config on the way): `steps` when set, else
    `epochs * steps_per_epoch`."""
    if config.epochs is None and config.steps is None:
        raise ValueError("TrainConfig: set train.steps or train.epochs (both are null)")
    if not isinstance(steps_per_epoch, int) or steps_per_epoch < 1:
        raise ValueError(f"Task.steps_per_epoch={steps_per_epoch!r}: expected a positive "
                         "integer (is the training split smaller than one batch?)")
    return config.steps if config.steps is not None else config.epochs * steps_per_epoch


@functools.lru_cache(maxsize=16)
def _train_chunk_fn(graphdef: Any, treedef: Any, loss_fn: Callable, optim: tuple,
                    total: int, dtype: str) -> Callable:
    """The compiled function running a chunk of steps (`lax.scan`) over a carry of params,
    other model state, optimiser state, metric sums and the first bad step; the carry is
    donated. Cached on (model structure, loss, optimiser settings, run length, dtype), so
    repeated runs in one process (a sweep, resumes, tests) reuse the compiled step.

    The float32 params are cast to the compute `dtype` inside the differentiated function:
    the loss runs in `dtype`, the gradients come back through the cast in float32, and the
    optimiser state and update stay float32 (`lnorm.precision`).

    The carry crosses the jit boundary as a flat list of arrays (`treedef` rebuilds it
    inside): flattening nnx.State and re-creating its Variables on every call would cost
    more Python time per step than a small model's whole step."""
    tx = make_optimizer(OptimConfig(*optim), total)
    cdtype = compute_dtype(dtype)

    def one_step(carry: dict, xs: tuple, base_key: jax.Array) -> dict:
        batch, step = xs  # `step`: 0-based index of this step

        def objective(params):
            # copy=True: fresh Variables at this trace level, so the loss may update them
            # (BatchNorm statistics).
            model = nnx.merge(graphdef, cast_params(params, cdtype), carry["rest"], copy=True)
            loss, aux = loss_fn(model, batch, jax.random.fold_in(base_key, step))
            return loss, (aux, nnx.split(model, nnx.Param, ...)[2])

        (loss, (aux, rest)), grads = jax.value_and_grad(objective, has_aux=True)(carry["params"])
        updates, opt_state = tx.update(grads, carry["opt_state"], carry["params"])
        values = {"loss": loss, **aux}
        acc = {k: v + (1.0 if k == "count" else values[k]) for k, v in carry["acc"].items()}
        bad = jnp.where((carry["bad"] < 0) & ~jnp.isfinite(loss), step + 1, carry["bad"])
        params = optax.apply_updates(carry["params"], updates)
        return dict(params=params, rest=rest, opt_state=opt_state, acc=acc, bad=bad)

    def train_chunk(leaves: list, batches: Any, steps: jax.Array, base_key: jax.Array) -> list:
        carry = jax.tree.unflatten(treedef, leaves)
        carry = jax.lax.scan(lambda c, xs: (one_step(c, xs, base_key), None), carry,
                             (batches, steps))[0]
        return jax.tree.leaves(carry)

    return jax.jit(train_chunk, donate_argnums=0)


def _improved(value: float, best: float | None, mode: str) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


class _Run:
    """The state of one `train` call; the loop itself is `run()`.

    Beside the device state, the run carries host-side progress that checkpoints record in
    their `meta` item, so that kill -9 and resume reproduce it: the latest metrics, the
    training time so far, the best value of `select_metric` (and its step and the results
    logged with it), and the evaluations since it improved."""

    def __init__(self, task: Task, config: TrainConfig, logger: RunLogger, ckpt: Checkpointer,
                 best_ckpt: Checkpointer | None, parallel: DataParallel, run_dir: Path,
                 context: Any) -> None:
        self.task, self.config, self.logger, self.ckpt = task, config, logger, ckpt
        self.best_ckpt, self.parallel = best_ckpt, parallel
        self.run_dir, self.context = run_dir, context
        self.spe = task.steps_per_epoch
        self.total = total_steps(config, self.spe)
        self.schedule = learning_rate_schedule(config.optim, self.total)
        self.progress: dict[str, Any] = dict(
            metrics={}, elapsed=0.0, best=None, best_step=None, best_results={}, since_best=0,
            stopped_early=False)
        self.batches: Iterator[Any] | None = None
        self.stop = _StopRequest()
        self.bar_values: dict[str, str] = {}
        self.periodic = {n: e for n, e in task.evaluators.items() if not e.final}

    @property
    def latest(self) -> dict[str, float]:
        return self.progress["metrics"]

    def start(self, step: int) -> None:
        """Builds the compiled step and the carry, fresh (step 0) or from checkpoint `step`."""
        task, model = self.task, self.task.model
        model.train()
        self.batches = self._epoch_batches(step)
        first = next(self.batches)
        self.batches = itertools.chain([first], self.batches)
        if step == 0 and task.init_fn is not None:
            task.init_fn(model, first)
        self.graphdef, params, rest = nnx.split(model, nnx.Param, ...)
        tx = make_optimizer(self.config.optim, self.total)
        self.names = self._metric_names(params, rest, first)
        carry = self.parallel.replicate(dict(
            params=params, rest=rest, opt_state=tx.init(params), acc=self._zero_acc(),
            bad=jnp.int32(-1)))
        self.leaves, self.treedef = jax.tree.flatten(carry)
        self.step = step
        if step:
            self._restore(step)
        self.train_chunk = _train_chunk_fn(self.graphdef, self.treedef, task.loss_fn,
                                           dataclasses.astuple(self.config.optim),
                                           schedule_length(self.config.optim, self.total),
                                           self.config.dtype)
        self.base_key = jax.random.key(self.config.seed)

    def _metric_names(self, params: Any, rest: Any, batch: Any) -> tuple[str, ...]:
        cdtype = compute_dtype(self.config.dtype)

        def loss_of(p, r, b):
            model = nnx.merge(self.graphdef, cast_params(p, cdtype), r, copy=True)
            return self.task.loss_fn(model, b, jax.random.key(0))

        loss, aux = jax.eval_shape(loss_of, params, rest, batch)
        if getattr(loss, "shape", None) != () or not isinstance(aux, Mapping):
            raise TypeError("Task.loss_fn must return (scalar loss, dict of scalar metrics); "
                            f"got loss {loss!r} and metrics {aux!r}")
        if cdtype != jnp.float32 and loss.dtype != jnp.float32:
            raise TypeError(f"Task.loss_fn returned a {loss.dtype} loss under "
                            f"train.dtype={self.config.dtype}: compute the loss in float32 "
                            "(cast logits up before the log-softmax; lnorm.precision)")
        bad = [k for k, v in aux.items() if k in ("loss", "count") or v.shape != ()]
        if bad:
            raise TypeError(f"Task.loss_fn metrics {bad}: expected scalars, not named "
                            "'loss' or 'count'")
        return ("loss", *aux)

    @property
    def carry(self) -> dict[str, Any]:
        """The training state as a structured pytree (the loop keeps it flat)."""
        return jax.tree.unflatten(self.treedef, self.leaves)

    def _set_carry(self, carry: dict[str, Any]) -> None:
        leaves, treedef = jax.tree.flatten(carry)
        if treedef != self.treedef:
            raise ValueError(f"training state changed structure: {treedef} != {self.treedef}")
        self.leaves = leaves

    def _zero_acc(self) -> dict[str, jax.Array]:
        return self.parallel.replicate(
            {k: jnp.zeros((), jnp.float32) for k in (*self.names, "count")})

    def _restore(self, step: int) -> None:
        carry = self.carry
        out = self.ckpt.restore(
            step, model=dict(params=carry["params"], rest=carry["rest"]),
            train=dict(opt_state=carry["opt_state"], acc=carry["acc"]))
        self._set_carry(dict(carry, **out["model"], opt_state=out["train"]["opt_state"],
                             acc=out["train"]["acc"]))
        self.progress.update(out["meta"]["progress"])
        # Drop what the interrupted run logged after its checkpoint, and what it logged at the
        # checkpoint only because its run ended there (a partial train interval, whose sums
        # are in the restored accumulator, and a final evaluation): the curve then equals an
        # uninterrupted run's.
        regular = {True: step % self.config.log_every == 0, False: bool(self._due(step, False))}
        self.logger.truncate(lambda r: r["step"] < step or (
            r["step"] == step and "selected_step" not in r and regular["train/loss" in r]))

    def _epoch_batches(self, step: int) -> Iterator[Any]:
        epoch, start = divmod(step, self.spe)
        return iter(self.task.train_batches(epoch, start))

    def _take(self, n: int) -> Any:
        """The next `n` batches, stacked on a new leading axis and sharded on the batch axis."""
        batches = list(itertools.islice(self.batches, n))
        if len(batches) < n:
            epoch, pos = divmod(self.step + len(batches), self.spe)
            raise ValueError(f"Task.train_batches({epoch}, ...) ran out at batch {pos}: "
                             f"expected steps_per_epoch={self.spe} batches per epoch")
        try:
            chunk = jax.tree.map(lambda *xs: np.stack(xs), *batches)
        except ValueError as e:
            raise ValueError(f"steps_per_call={n}: consecutive batches must have the same "
                             f"structure and shapes to be stacked ({e})") from e
        return self.parallel.shard(chunk, axis=1)

    def _every(self, evaluator: Evaluator) -> int:
        return evaluator.every or self.config.eval_every or self.spe

    def _due(self, step: int, at_end: bool = True) -> list[str]:
        """The periodic evaluators that run at `step` (all of them at the end of the run)."""
        end = at_end and step == self.total
        return [n for n, e in self.periodic.items() if end or step % self._every(e) == 0]

    def _is_sync(self, step: int) -> bool:
        c = self.config
        return (step % c.log_every == 0 or step % c.checkpoint_every == 0
                or step == self.total or bool(self._due(step)))

    def _chunk_end(self) -> int:
        """The step the next compiled call runs to: never past a sync point or an epoch end."""
        c, s = self.config, self.step
        periods = (c.log_every, c.checkpoint_every, self.spe,
                   *(self._every(e) for e in self.periodic.values()))
        return min(self.total, s + c.steps_per_call, *(s + p - s % p for p in periods))

    def run(self) -> dict[str, float]:
        bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not self.config.progress)
        with bar:
            self._clock = time.perf_counter()
            while self.step < self.total:
                end = self._chunk_end()
                chunk = self._take(end - self.step)
                steps = np.arange(self.step, end, dtype=np.int32)
                self.leaves = self.train_chunk(self.leaves, chunk, steps, self.base_key)
                bar.update(end - self.step)
                self.step = end
                if end % self.spe == 0 and end < self.total:
                    self.batches = self._epoch_batches(end)
                if self._is_sync(end):
                    self._sync(end, bar)
                    if self.progress["stopped_early"]:
                        break
                if self.stop.signal is not None and self.step < self.total:
                    if self.ckpt.latest_step() != self.step:
                        self._save(self.step, self.carry)
                    raise Interrupted(self.stop.signal, self.step, self.ckpt.directory)
        return dict(self.latest)

    def _sync(self, step: int, bar: tqdm) -> None:
        c = self.config
        carry = self.carry
        bad = int(carry["bad"])  # waits for the device: the clock below is training time
        self.progress["elapsed"] += time.perf_counter() - self._clock
        if bad >= 0:
            raise NonFiniteLossError(bad, self.ckpt.latest_step(), self.ckpt.directory)
        stamp = {"epoch": step / self.spe, TIME_KEY: self.progress["elapsed"]}
        if step % c.log_every == 0 or step == self.total:
            acc = jax.device_get(carry["acc"])
            means = {f"train/{k}": float(acc[k]) / float(acc["count"]) for k in self.names}
            means["train/learning_rate"] = float(self.schedule(step - 1))
            self.logger.log(step, {**stamp, **means})
            self.latest.update(means)
            self._postfix(bar, epoch=f"{stamp['epoch']:.2f}", loss=f"{means['train/loss']:.4g}")
            if step % c.log_every == 0:
                carry["acc"] = self._zero_acc()
                self._set_carry(carry)
        due = self._due(step)
        if due:
            results = self.evaluate(due, step)
            self.logger.log(step, {**stamp, **results})
            self.latest.update(results)
            self._select(step, results)
            if c.progress:
                bar.write(f"step {step} (epoch {stamp['epoch']:.2f}): " + ", ".join(
                    f"{k}={v:.4g}" for k, v in results.items()))
                if c.select_metric in results:
                    self._postfix(bar, **{c.select_metric: f"{results[c.select_metric]:.4g}"})
        stop = self.progress["stopped_early"]
        if step % c.checkpoint_every == 0 or step == self.total or stop:
            self._save(step, carry)
        self._clock = time.perf_counter()

    def _save(self, step: int, carry: dict[str, Any]) -> None:
        """Checkpoints the state at `step`, refusing a non-finite one: a checkpoint is what a
        re-run resumes from, so it must stay good."""
        state = (carry["params"], carry["rest"], carry["opt_state"])
        if not bool(_all_finite(state)):
            raise NonFiniteStateError(step, self.ckpt.latest_step(), self.ckpt.directory)
        self.ckpt.save(step, model=dict(params=carry["params"], rest=carry["rest"]),
                       train=dict(opt_state=carry["opt_state"], acc=carry["acc"]),
                       meta={"step": step, "progress": self.progress})

    def _postfix(self, bar: tqdm, **values: str) -> None:
        """The bar's tail: epoch, the latest train loss and selected validation metric."""
        self.bar_values.update(values)
        bar.set_postfix(self.bar_values)

    def _select(self, step: int, results: dict[str, float]) -> None:
        """Keeps the best checkpoint by `select_metric` and counts evaluations for early
        stopping."""
        c, p = self.config, self.progress
        if c.select_metric is None or c.select_metric not in results:
            return
        value = results[c.select_metric]
        if _improved(value, p["best"], c.select_mode):
            p.update(best=value, best_step=step, best_results=dict(results), since_best=0)
            carry = self.carry
            self.best_ckpt.save(step, model=dict(params=carry["params"], rest=carry["rest"]),
                                meta={"step": step, c.select_metric: value})
        else:
            p["since_best"] += 1
            if c.early_stop_patience is not None and p["since_best"] >= c.early_stop_patience:
                p["stopped_early"] = True

    def model(self) -> nnx.Module:
        """A model holding the current state (train mode)."""
        return nnx.merge(self.graphdef, self.carry["params"], self.carry["rest"], copy=True)

    def evaluate(self, names: list[str], step: int) -> dict[str, float]:
        # A freshly merged model: whatever an evaluator changes in it (RNG counts, a mode
        # switch) cannot leak back into training.
        return run_evaluators(self.model(), {n: self.task.evaluators[n] for n in names}, step,
                              seed=self.config.seed, run_dir=self.run_dir, logger=self.logger,
                              config=self.context, dtype=self.config.dtype)


def evaluator_key(seed: int, name: str, step: int) -> jax.Array:
    """An evaluator's RNG key: fixed by the run's seed, its name and the step, independent of
    the training keys (`fold_in(key(seed), step)`)."""
    digest = int.from_bytes(name.encode()[:8].ljust(8, b"\0"), "little") % (2**31 - 1)
    return jax.random.fold_in(jax.random.fold_in(jax.random.key(seed ^ 0x5EED), digest), step)


def run_evaluators(model: nnx.Module, evaluators: Mapping[str, Evaluator], step: int, *,
                   seed: int, run_dir: Path, logger: RunLogger | None = None,
                   config: Any = None, dtype: str = "float32") -> dict[str, float]:
    """Runs `evaluators` on `model` (switched to eval mode) at `step`: returns their scalars
    (names prefixed with the evaluator's unless they hold a "/"); their artifacts are written
    under `run_dir/artifacts/<evaluator>/<name>/` and logged as media. `dtype` is the run's
    `train.dtype`: evaluators get a copy of the model in it, so that validation measures the
    model that training optimises (`model` itself is left as it is, float32)."""
    model = cast_model(model, compute_dtype(dtype))
    model.eval()
    results: dict[str, float] = {}
    for name, evaluator in evaluators.items():
        ctx = EvalContext(step=step, rng=evaluator_key(seed, name, step),
                          out_dir=run_dir / ARTIFACT_DIR / name, run_dir=run_dir, config=config)
        for key, value in evaluator.fn(model, ctx).items():
            key = key if "/" in key else f"{name}/{key}"
            if isinstance(value, Artifact):
                path = value.write(ctx.out_dir / key.split("/", 1)[-1], step)
                if logger is not None:
                    logger.log_artifact(step, key, path)
            else:
                results[key] = float(value)
    return results


def _selected_step(ckpt: Checkpointer, best_ckpt: Checkpointer | None) -> tuple[int, dict]:
    """(the selected step: best by `select_metric` or last, the last checkpoint's progress)."""
    progress = ckpt.restore(ckpt.latest_step())["meta"]["progress"]
    if best_ckpt is not None and progress["best_step"] is not None:
        return progress["best_step"], progress
    return ckpt.latest_step(), progress


def _load_selected(model: nnx.Module, ckpt: Checkpointer, best_ckpt: Checkpointer | None,
                   step: int) -> None:
    (ckpt if step == ckpt.latest_step() else best_ckpt).load_model(step, model)


def _finished(task: Task, ckpt: Checkpointer, best_ckpt: Checkpointer | None,
              logger: RunLogger) -> dict[str, float]:
    """A finished run with its summary: loads the selected state and returns the summary."""
    _load_selected(task.model, ckpt, best_ckpt, _selected_step(ckpt, best_ckpt)[0])
    return logger.read_summary()


def _finish(task: Task, config: TrainConfig, run_dir: Path, ckpt: Checkpointer,
            best_ckpt: Checkpointer | None, logger: RunLogger, context: Any,
            trained: bool) -> dict[str, float]:
    """After the last step: puts the selected checkpoint (the best by `select_metric`, else
    the last) into `task.model`, runs the final evaluators on it and returns the run's final
    metrics: the last logged values, `best/<metric>` (what was logged at the selected step)
    and the final evaluators' results."""
    step = ckpt.latest_step()
    selected, progress = _selected_step(ckpt, best_ckpt)
    if selected != step or not trained:  # else `task.model` holds it, on the run's devices
        _load_selected(task.model, ckpt, best_ckpt, selected)
    final = dict(progress["metrics"])
    if progress["best_step"] is not None:
        final.update({f"best/{k}": v for k, v in progress["best_results"].items()})
        final["best/step"] = selected
    finals = {n: e for n, e in task.evaluators.items() if e.final}
    if finals:
        results = run_evaluators(task.model, finals, selected, seed=config.seed,
                                 run_dir=run_dir, logger=logger, config=context,
                                 dtype=config.dtype)
        logger.log(step, {"selected_step": selected, **results})
        final.update(results)
    task.model.train()
    return final


def train(task: Task, config: TrainConfig, run_dir: str | Path, logger: RunLogger | None = None,
          *, parallel: DataParallel | None = None, context: Any = None) -> dict[str, float]:
    """Trains `task` as configured, checkpointing into `run_dir/checkpoints` (and the best one
    into `run_dir/best`) and resuming from the latest checkpoint there. Returns the final
    metrics as floats (also written to `run_dir/summary.json`); a finished run returns them
    without training. On return `task.model` holds the selected state (best or last; the
    latest state on error). `parallel` defaults to all devices; `context` (the experiment's
    config) reaches evaluators as `ctx.config`."""
    run_dir = Path(run_dir)
    total = total_steps(config, task.steps_per_epoch)
    own_logger = logger is None
    if own_logger:
        logger = RunLogger(run_dir, config=dataclasses.asdict(config))
    run = None
    try:
        with contextlib.ExitStack() as stack:
            if jax.process_index() == 0:
                stack.enter_context(RunLock(run_dir))
            ckpt = stack.enter_context(
                Checkpointer(run_dir / CHECKPOINT_DIR, keep=config.keep_checkpoints))
            best_ckpt = None
            if config.select_metric is not None:
                best_ckpt = stack.enter_context(Checkpointer(run_dir / BEST_DIR, keep=1))
            latest = ckpt.latest_step() or 0
            if latest > total:
                raise ValueError(f"{ckpt.directory} holds a checkpoint at step {latest}, beyond "
                                 f"this run's {total} steps: use a fresh run_dir")
            finished = latest == total or (
                latest > 0 and ckpt.restore(latest)["meta"]["progress"]["stopped_early"])
            if finished and logger.summary_exists():
                return _finished(task, ckpt, best_ckpt, logger)
            if not finished:
                if latest == 0:  # a fresh start: nothing an earlier attempt logged is kept
                    logger.truncate(lambda r: False)
                run = _Run(task, config, logger, ckpt, best_ckpt,
                           parallel if parallel is not None else DataParallel(), run_dir,
                           context)
                run.start(latest)
                with run.stop:
                    run.run()
                nnx.update(task.model, run.carry["params"], run.carry["rest"])
                run = None
            # A finished run whose summary is missing evaluates again: drop what an earlier
            # final evaluation logged.
            logger.truncate(lambda r: "selected_step" not in r)
            final = _finish(task, config, run_dir, ckpt, best_ckpt, logger, context,
                            trained=not finished)
        logger.summary(final)
        return final
    finally:
        if run is not None and hasattr(run, "leaves"):
            carry = run.carry
            nnx.update(task.model, carry["params"], carry["rest"])
        if own_logger:
            logger.close()
