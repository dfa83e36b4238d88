"""The one training loop. An experiment describes itself as a `Task` (model, loss, data,
evaluators); `train` owns everything else: the optimiser, one jit-compiled pure step function
over the split model state (donated), several steps per compiled call, on-device metrics
fetched every `log_every` steps, evaluation, the NaN/inf stop, orbax checkpoints with exact
automatic resume, and data parallelism over the devices. See docs/training.md.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
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

from lnorm.checkpoint import CHECKPOINT_DIR, Checkpointer
from lnorm.logger import RunLogger
from lnorm.parallel import DataParallel

OPTIMIZERS = ("adam", "adamw", "sgd")


@dataclass
class OptimConfig:
    """Optimiser: optional global-norm gradient clipping (the paper's "grad clip"), then
    `name`. `weight_decay` is decoupled for adamw and an L2 term for adam/sgd."""

    name: str = "adam"
    learning_rate: float = 1e-3
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    grad_clip_norm: float | None = None
    momentum: float = 0.0  # sgd only


@dataclass
class TrainConfig:
    """How long and how to train. Steps are counted from 1; step s is logged as `step: s`."""

    epochs: int | None = None  # exactly one of epochs / steps
    steps: int | None = None
    log_every: int = 100  # steps between metric fetches / log lines
    eval_every: int | None = None  # None: at each epoch end; always at the end
    checkpoint_every: int = 1000  # also always at the end
    keep_checkpoints: int = 2
    steps_per_call: int = 1  # steps per compiled call (lax.scan over a chunk of batches)
    seed: int = 0
    optim: OptimConfig = field(default_factory=OptimConfig)
    progress: bool = True  # tqdm progress bar


@dataclass
class Task:
    """What an experiment's `build(cfg)` returns.

    - `loss_fn(model, batch, rng) -> (scalar loss, {name: scalar})`: pure, traced under jit,
      model in train mode; BatchNorm statistics it updates are carried to the next step.
    - `train_batches(epoch, start)`: the batches of `epoch` from batch index `start` on, the
      same every time it is asked (resume depends on it); `steps_per_epoch` of them.
    - `evaluators`: name -> fn(model) -> {metric: float}, model in eval mode; a metric name
      without "/" is logged as "<evaluator name>/<metric>".
    - `init_fn(model, first_batch)`: run once before the first step of a fresh run (e.g.
      weight-norm data-dependent init), not on resume.
    """

    model: nnx.Module
    loss_fn: Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, Mapping[str, jax.Array]]]
    train_batches: Callable[[int, int], Iterator[Any]]
    steps_per_epoch: int
    evaluators: dict[str, Callable[[nnx.Module], Mapping[str, float]]] = field(
        default_factory=dict)
    init_fn: Callable[[nnx.Module, Any], None] | None = None


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stopped without checkpointing the bad state."""

    def __init__(self, step: int, last_checkpoint: int | None, directory: Path) -> None:
        self.step, self.last_checkpoint = step, last_checkpoint
        where = (f"the last good checkpoint is step {last_checkpoint} in {directory}; re-running "
                 "resumes from it" if last_checkpoint is not None else "no checkpoint was saved")
        super().__init__(f"non-finite loss at step {step}: training stopped ({where})")


def make_optimizer(cfg: OptimConfig) -> optax.GradientTransformation:
    """The optax chain for `cfg`: clip by global norm, then the optimiser."""
    if cfg.name == "adam":
        opt = optax.adam(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        opt = optax.adamw(cfg.learning_rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
                          weight_decay=cfg.weight_decay)
    elif cfg.name == "sgd":
        opt = optax.sgd(cfg.learning_rate, momentum=cfg.momentum or None)
    else:
        raise ValueError(f"optim.name={cfg.name!r}: expected one of {OPTIMIZERS}")
    parts = []
    if cfg.grad_clip_norm is not None:
        parts.append(optax.clip_by_global_norm(cfg.grad_clip_norm))
    if cfg.weight_decay and cfg.name != "adamw":
        parts.append(optax.add_decayed_weights(cfg.weight_decay))
    return optax.chain(*parts, opt)


def total_steps(config: TrainConfig, steps_per_epoch: int) -> int:
    """The run's length in steps (validating the config on the way)."""
    if (config.epochs is None) == (config.steps is None):
        raise ValueError(f"TrainConfig: set exactly one of epochs / steps "
                         f"(got epochs={config.epochs}, steps={config.steps})")
    positive = {"steps_per_epoch": steps_per_epoch, "log_every": config.log_every,
                "checkpoint_every": config.checkpoint_every,
                "steps_per_call": config.steps_per_call, "epochs": config.epochs,
                "steps": config.steps, "eval_every": config.eval_every}
    for key, value in positive.items():
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"TrainConfig.{key}={value!r}: expected a positive integer")
    return config.steps if config.steps is not None else config.epochs * steps_per_epoch


@functools.lru_cache(maxsize=16)
def _train_chunk_fn(graphdef: Any, treedef: Any, loss_fn: Callable, optim: tuple) -> Callable:
    """The compiled function running a chunk of steps (`lax.scan`) over a carry of params,
    other model state, optimiser state, metric sums and the first bad step; the carry is
    donated. Cached on (model structure, loss, optimiser settings), so repeated runs in one
    process (a sweep, resumes, tests) reuse the compiled step.

    The carry crosses the jit boundary as a flat list of arrays (`treedef` rebuilds it
    inside): flattening nnx.State and re-creating its Variables on every call would cost
    more Python time per step than a small model's whole step."""
    tx = make_optimizer(OptimConfig(*optim))

    def one_step(carry: dict, xs: tuple, base_key: jax.Array) -> dict:
        batch, step = xs  # `step`: 0-based index of this step

        def objective(params):
            # copy=True: fresh Variables at this trace level, so the loss may update them
            # (BatchNorm statistics).
            model = nnx.merge(graphdef, params, carry["rest"], copy=True)
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


class _Run:
    """The state of one `train` call; the loop itself is `run()`."""

    def __init__(self, task: Task, config: TrainConfig, logger: RunLogger, ckpt: Checkpointer,
                 parallel: DataParallel) -> None:
        self.task, self.config, self.logger, self.ckpt = task, config, logger, ckpt
        self.parallel = parallel
        self.spe = task.steps_per_epoch
        self.total = total_steps(config, self.spe)
        self.latest: dict[str, float] = {}  # last logged train means + eval results
        self.batches: Iterator[Any] | None = None

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
        tx = make_optimizer(self.config.optim)
        self.names = self._metric_names(params, rest, first)
        carry = self.parallel.replicate(dict(
            params=params, rest=rest, opt_state=tx.init(params), acc=self._zero_acc(),
            bad=jnp.int32(-1)))
        self.leaves, self.treedef = jax.tree.flatten(carry)
        self.step = step
        if step:
            self._restore(step)
        self.train_chunk = _train_chunk_fn(self.graphdef, self.treedef, task.loss_fn,
                                           dataclasses.astuple(self.config.optim))
        self.base_key = jax.random.key(self.config.seed)

    def _metric_names(self, params: Any, rest: Any, batch: Any) -> tuple[str, ...]:
        def loss_of(p, r, b):
            model = nnx.merge(self.graphdef, p, r, copy=True)
            return self.task.loss_fn(model, b, jax.random.key(0))

        loss, aux = jax.eval_shape(loss_of, params, rest, batch)
        if getattr(loss, "shape", None) != () or not isinstance(aux, Mapping):
            raise TypeError("Task.loss_fn must return (scalar loss, dict of scalar metrics); "
                            f"got loss {loss!r} and metrics {aux!r}")
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
            train=dict(opt_state=carry["opt_state"], acc=carry["acc"], step=jnp.int32(0)))
        self._set_carry(dict(carry, **out["model"], opt_state=out["train"]["opt_state"],
                             acc=out["train"]["acc"]))
        self.latest = dict(out["meta"]["metrics"])
        # Drop what the interrupted run logged after its checkpoint, and what it logged at the
        # checkpoint only because its run ended there (a partial train interval, whose sums
        # are in the restored accumulator, and a final evaluation): the curve then equals an
        # uninterrupted run's.
        regular = {True: step % self.config.log_every == 0, False: self._is_eval(step)}
        self.logger.truncate(lambda r: r["step"] < step or (
            r["step"] == step and regular["train/loss" in r]))

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

    def _is_eval(self, step: int) -> bool:
        every = self.config.eval_every or self.spe
        return step % every == 0 or step == self.total

    def _is_sync(self, step: int) -> bool:
        c = self.config
        return step % c.log_every == 0 or step % c.checkpoint_every == 0 or self._is_eval(step)

    def _chunk_end(self) -> int:
        """The step the next compiled call runs to: never past a sync point or an epoch end."""
        c, s = self.config, self.step
        periods = (c.log_every, c.checkpoint_every, c.eval_every or self.spe, self.spe)
        return min(self.total, s + c.steps_per_call, *(s + p - s % p for p in periods))

    def run(self) -> dict[str, float]:
        bar = tqdm(total=self.total, initial=self.step, unit="step", dynamic_ncols=True,
                   disable=not self.config.progress)
        with bar:
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
        return dict(self.latest)

    def _sync(self, step: int, bar: tqdm) -> None:
        c = self.config
        carry = self.carry
        bad = int(carry["bad"])
        if bad >= 0:
            raise NonFiniteLossError(bad, self.ckpt.latest_step(), self.ckpt.directory)
        epoch = {"epoch": step / self.spe}
        if step % c.log_every == 0 or step == self.total:
            acc = jax.device_get(carry["acc"])
            means = {f"train/{k}": float(acc[k]) / float(acc["count"]) for k in self.names}
            self.logger.log(step, {**epoch, **means})
            self.latest.update(means)
            bar.set_postfix(loss=f"{means['train/loss']:.4g}")
            if step % c.log_every == 0:
                carry["acc"] = self._zero_acc()
                self._set_carry(carry)
        if self._is_eval(step) and self.task.evaluators:
            results = self.evaluate()
            self.logger.log(step, {**epoch, **results})
            self.latest.update(results)
        if step % c.checkpoint_every == 0 or step == self.total:
            self.ckpt.save(step, model=dict(params=carry["params"], rest=carry["rest"]),
                           train=dict(opt_state=carry["opt_state"], acc=carry["acc"],
                                      step=jnp.int32(step)),
                           meta={"step": step, "metrics": self.latest})

    def model(self) -> nnx.Module:
        """A model holding the current state (train mode)."""
        return nnx.merge(self.graphdef, self.carry["params"], self.carry["rest"], copy=True)

    def evaluate(self) -> dict[str, float]:
        # A freshly merged model: whatever an evaluator changes in it (RNG counts, a mode
        # switch) cannot leak back into training.
        model = self.model()
        model.eval()
        results = {}
        for name, fn in self.task.evaluators.items():
            for k, v in fn(model).items():
                results[k if "/" in k else f"{name}/{k}"] = float(v)
        return results


def _finished(model: nnx.Module, ckpt: Checkpointer, step: int) -> dict[str, float]:
    """A finished run: loads its final state into `model` and returns its final metrics."""
    ckpt.load_model(step, model)
    return dict(ckpt.restore(step)["meta"]["metrics"])


def train(task: Task, config: TrainConfig, run_dir: str | Path, logger: RunLogger | None = None,
          *, parallel: DataParallel | None = None) -> dict[str, float]:
    """Trains `task` as configured, checkpointing into `run_dir/checkpoints` and resuming from
    the latest checkpoint there. Returns the final metrics (the last train interval means and
    the final evaluation) as floats; a finished run returns them without training. On return
    (or error) `task.model` holds the latest state. `parallel` defaults to all devices."""
    run_dir = Path(run_dir)
    total = total_steps(config, task.steps_per_epoch)
    own_logger = logger is None
    if own_logger:
        logger = RunLogger(run_dir, config=dataclasses.asdict(config))
    run = None
    try:
        with Checkpointer(run_dir / CHECKPOINT_DIR, keep=config.keep_checkpoints) as ckpt:
            latest = ckpt.latest_step() or 0
            if latest > total:
                raise ValueError(f"{ckpt.directory} holds a checkpoint at step {latest}, beyond "
                                 f"this run's {total} steps: use a fresh run_dir")
            if latest == total:
                return _finished(task.model, ckpt, latest)
            run = _Run(task, config, logger, ckpt,
                       parallel if parallel is not None else DataParallel())
            run.start(latest)
            final = run.run()
        logger.summary(final)
        return final
    finally:
        if run is not None and hasattr(run, "leaves"):
            carry = run.carry
            nnx.update(task.model, carry["params"], carry["rest"])
        if own_logger:
            logger.close()
