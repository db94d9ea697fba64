"""Data parallelism with jax.sharding: one process, a mesh of devices with one axis, "data".

The parameters and optimizer state are replicated on every device of the mesh and each global
batch is split along its rows, a contiguous equal slice per device. The same jitted train step
then compiles to the data-parallel program: XLA partitions it along the batch and inserts the
all-reduce that makes every device's gradient the mean over the whole batch, so each replica
applies the update the single-device run would have applied.

On CPU, JAX sees one host device unless XLA_FLAGS=--xla_force_host_platform_device_count=N is set
before jax is first imported (benchmarks.run does it for --replicas N). Across hosts the same code
runs in one process per host after jax.distributed.initialize(), with the mesh spanning
jax.devices() (every host's devices) and each host feeding its own rows; that is not built here.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from common.errors import UserError


def data_mesh(devices: list, replicas: int) -> Mesh:
    """A one-axis mesh over the first `replicas` of `devices`."""
    if len(devices) < replicas:
        platform = devices[0].platform if devices else "cpu"
        fix = (f"set XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before starting"
               if platform == "cpu" else f"use --replicas {len(devices)} or fewer")
        raise UserError(f"{replicas} replicas need {replicas} {platform} devices and JAX sees {len(devices)}: "
                        f"{fix}.")
    return Mesh(np.array(devices[:replicas]), ("data",))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: parameters and optimizer state."""
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split along "data": (B, T) -> (B / replicas, T) on each device; micro-batches
    (k, B, T) -> (k, B / replicas, T)."""
    return NamedSharding(mesh, P(*[None] * (ndim - 2), "data"))


def put_batch(a: np.ndarray, mesh: Mesh) -> jax.Array:
    """A batch split over the mesh where its rows divide evenly, else a copy on every device."""
    rows_divide = a.shape[-2] % mesh.devices.size == 0
    return jax.device_put(a, batch_sharded(mesh, a.ndim) if rows_divide else replicated(mesh))
