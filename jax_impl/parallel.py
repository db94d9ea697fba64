"""Data parallelism with jax.sharding: one process, a mesh of devices with one axis, "data"; and
fully sharded data parallelism (`--shard N`) on a mesh whose one axis is "fsdp".

The parameters and optimizer state are replicated on every device of the mesh and each global
batch is split along its rows, a contiguous equal slice per device. The same jitted train step
then compiles to the data-parallel program: XLA partitions it along the batch and inserts the
all-reduce that makes every device's gradient the mean over the whole batch, so each replica
applies the update the single-device run would have applied.

Sharded, each parameter and each of its Adam moments is split along one axis over the "fsdp"
devices (fsdp_sharding), and the batch's rows too. The train step is the same jitted function:
from the placement of its inputs XLA compiles the FSDP program, all-gathering each weight where
a matmul needs it whole and reduce-scattering its gradient back to the shards, and the updated
state comes out placed as it went in.

On CPU, JAX sees one host device unless XLA_FLAGS=--xla_force_host_platform_device_count=N is set
before jax is first imported (benchmarks.run does it for --replicas N). Across hosts the same code
runs in one process per host after jax.distributed.initialize(), with the mesh spanning
jax.devices() (every host's devices) and each host feeding its own rows; that is not built here.
"""
import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from common.errors import UserError
from common.memory import shard_axis


def data_mesh(devices: list, replicas: int, axis: str = "data") -> Mesh:
    """A one-axis mesh over the first `replicas` of `devices`."""
    if len(devices) < replicas:
        platform = devices[0].platform if devices else "cpu"
        fix = (f"set XLA_FLAGS=--xla_force_host_platform_device_count={replicas} before starting"
               if platform == "cpu" else f"use --replicas {len(devices)} or fewer")
        raise UserError(f"{replicas} replicas need {replicas} {platform} devices and JAX sees {len(devices)}: "
                        f"{fix}.")
    return Mesh(np.array(devices[:replicas]), (axis,))


def replicated(mesh: Mesh) -> NamedSharding:
    """A full copy on every device: parameters and optimizer state."""
    return NamedSharding(mesh, P())


def fsdp_sharding(mesh: Mesh, shape: tuple[int, ...]) -> NamedSharding:
    """An array split along one axis (common.memory.shard_axis), as FSDP splits each tensor; one
    that no axis of divides (a scalar, a count) stays whole on every device."""
    axis = shard_axis(shape, mesh.devices.size)
    return NamedSharding(mesh, P(*[mesh.axis_names[0] if i == axis else None for i in range(len(shape))]))


def batch_sharded(mesh: Mesh, ndim: int = 2) -> NamedSharding:
    """Rows split along the mesh's axis: (B, T) -> (B / replicas, T) on each device; micro-batches
    (k, B, T) -> (k, B / replicas, T)."""
    return NamedSharding(mesh, P(*[None] * (ndim - 2), mesh.axis_names[0]))


def put_batch(a: np.ndarray, mesh: Mesh) -> jax.Array:
    """A batch split over the mesh where its rows divide evenly, else a copy on every device."""
    rows_divide = a.shape[-2] % mesh.devices.size == 0
    return jax.device_put(a, batch_sharded(mesh, a.ndim) if rows_divide else replicated(mesh))


def bytes_on(device, arrays) -> int:
    """What `device` holds of these arrays: its shards of the split ones, the whole of the others."""
    return sum(s.data.nbytes for a in jax.tree.leaves(arrays) for s in a.addressable_shards if s.device == device)
