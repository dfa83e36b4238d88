"""Data parallelism with `jax.sharding`: a 1-D mesh named "data" over the devices, the batch
sharded along its batch axis, parameters and optimiser state replicated.

The training step is an ordinary `jax.jit` function; XLA's SPMD partitioner inserts the
gradient all-reduce, and batch statistics (BatchNorm) are reduced over the global batch, so
the numbers do not depend on the device count beyond float reassociation. On one device
nothing is placed or converted at all.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "data"


def initialize_distributed(**kwargs: Any) -> tuple[int, int]:
    """Multi-host start-up: `jax.distributed.initialize(**kwargs)` (coordinator_address,
    num_processes, process_id, ...; auto-detected on TPU pods, SLURM and similar). Call it once
    per host before any other JAX call. Returns `(process_index, process_count)`."""
    jax.distributed.initialize(**kwargs)
    return jax.process_index(), jax.process_count()


def initialize_from_environment(env: Mapping[str, str] | None = None) -> bool:
    """Starts `jax.distributed` when the environment describes one of several processes:
    `LNORM_COORDINATOR` (host:port) with `LNORM_NUM_PROCESSES` and `LNORM_PROCESS_ID`, or a
    SLURM job step of several tasks, or a multi-host TPU slice (JAX reads those itself).
    Returns whether it did; a single process changes nothing."""
    env = os.environ if env is None else env
    if "LNORM_COORDINATOR" in env:
        initialize_distributed(coordinator_address=env["LNORM_COORDINATOR"],
                               num_processes=int(env["LNORM_NUM_PROCESSES"]),
                               process_id=int(env["LNORM_PROCESS_ID"]))
        return True
    if int(env.get("SLURM_NTASKS", "1")) > 1 or "," in env.get("TPU_WORKER_HOSTNAMES", ""):
        initialize_distributed()
        return True
    return False


def check_batch_size(batch_size: int, key: str = "batch_size") -> None:
    """A global batch size the processes and their devices can split evenly (each process
    reads `batch_size / process_count` examples and splits them over its local devices);
    checked before any data is read."""
    devices = jax.device_count()
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{key}={batch_size!r}: expected a positive integer")
    if batch_size % devices:
        raise ValueError(f"{key}={batch_size}: the global batch must split evenly over the "
                         f"{devices} devices ({jax.process_count()} processes); use a multiple "
                         f"of {devices}")


def _global_replica(sharding: NamedSharding, x: Any) -> jax.Array:
    """A global array replicated over every process's devices from this process's equal copy
    (`device_put` of a process-local jax.Array onto another process's devices is not defined)."""
    if jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key):
        data = _global_replica(sharding, jax.random.key_data(x))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))


class DataParallel:
    """Places a training state (replicated) and batches (sharded) on a 1-D "data" mesh.

    With several hosts each process feeds only its own part of the batch (its
    `train_batches` yields the process-local shard); `shard` assembles the global array with
    `jax.make_array_from_process_local_data`.
    """

    def __init__(self, devices: Sequence[jax.Device] | None = None) -> None:
        devices = list(jax.devices() if devices is None else devices)
        if not devices:
            raise ValueError("DataParallel needs at least one device")
        self.devices = devices
        self.num_devices = len(devices)
        self.num_local_devices = sum(d.process_index == jax.process_index() for d in devices)
        self.mesh = Mesh(np.asarray(devices), (AXIS,)) if self.num_devices > 1 else None

    @classmethod
    def like(cls, tree: Any) -> DataParallel:
        """The placement `tree`'s arrays already have (e.g. a trained model's state), so that
        batches fed to it land on the same devices; all devices if it holds no jax.Array."""
        arrays = [x for x in jax.tree.leaves(tree) if isinstance(x, jax.Array)]
        if not arrays:
            return cls()
        sharding = arrays[0].sharding
        if isinstance(sharding, NamedSharding):
            return cls(list(sharding.mesh.devices.flat))
        return cls(sorted(sharding.device_set, key=lambda d: d.id))

    def replicate(self, tree: Any) -> Any:
        """Copies every array of `tree` to all devices. On one device it only commits the
        arrays to it (no copy): a jit cache entry depends on whether its inputs are committed,
        and the training state must hit the same entry fresh, after a step and restored."""
        if self.mesh is None:
            return jax.device_put(tree, self.devices[0])
        sharding = NamedSharding(self.mesh, PartitionSpec())
        if jax.process_count() > 1:  # every process holds the same values: build global arrays
            return jax.tree.map(lambda x: _global_replica(sharding, x), tree)
        return jax.device_put(tree, sharding)

    def shard(self, batch: Any, *, axis: int = 0) -> Any:
        """Splits every array of `batch` along `axis` (the batch axis) over the devices; on one
        device the arrays are returned untouched. The process-local size along `axis` must be
        divisible by the number of local devices."""
        if self.mesh is None:
            return batch
        sharding = NamedSharding(self.mesh, PartitionSpec(*(None,) * axis, AXIS))

        def put(path: tuple, x: Any) -> jax.Array:
            x = np.asarray(x)
            if x.ndim <= axis or x.shape[axis] % self.num_local_devices:
                raise ValueError(
                    f"batch entry {jax.tree_util.keystr(path) or '<root>'} has shape {x.shape}: "
                    f"its batch size (axis {axis}) must be divisible by the "
                    f"{self.num_local_devices} local devices of the data-parallel mesh"
                )
            return jax.make_array_from_process_local_data(sharding, x)

        return jax.tree_util.tree_map_with_path(put, batch)
