"""Data parallelism with DistributedDataParallel, and fully sharded data parallelism with FSDP2;
torchrun starts one process per device.

Every process draws the same global batch from the common stream and trains on its own contiguous
slice of rows. DDP keeps a whole copy of the model on each replica and all-reduces (averages) the
gradients during backward, so each replica applies the update the single-device run would have
applied to the whole batch. FSDP2 (`--shard N`) keeps 1/N of every parameter, gradient and Adam
moment on each device: a block's weights are all-gathered just before it runs and freed after, and
its gradients reduce-scattered back to the shards, so the same update is made shard by shard.

Under FSDP every forward pass gathers weights from every process, so rank 0 cannot evaluate or
sample alone as it does under DDP: it leads, and each call that runs the model (`collective`) is
first sent to the other processes, which wait in `serve` and make the same call.
"""
import functools
import os

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, distribute_tensor
from torch.nn.parallel import DistributedDataParallel

from common.backend import check_replica_split


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_process_group(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world_size, this process's device); NCCL between GPUs, gloo between CPU processes."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


def wrap(model: torch.nn.Module, device: torch.device) -> DistributedDataParallel:
    # No buffers to broadcast; without it, a forward pass on one rank alone (evaluation) cannot hang.
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False)


def shard_fully(model: torch.nn.Module) -> torch.nn.Module:
    """FSDP2 in place: each Block a unit of its own, so that one block's weights are whole at a
    time; the root holds the rest (embeddings, with the tied head, and the final LayerNorm)."""
    for block in model.h:
        fully_shard(block)
    fully_shard(model)
    return model


def whole(t: torch.Tensor) -> torch.Tensor:
    """A sharded tensor gathered from every process (a collective); any other tensor as it is."""
    return t.full_tensor() if isinstance(t, DTensor) else t


def local(t: torch.Tensor) -> torch.Tensor:
    """This process's shard of a sharded tensor; any other tensor as it is."""
    return t.to_local() if isinstance(t, DTensor) else t


def sharded_like(value: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """A whole tensor cut as `param` is (its state: Adam's moments); as it is beside a plain one."""
    return distribute_tensor(value, param.device_mesh, param.placements) if isinstance(param, DTensor) else value


def collective(method):
    """A Backend method that runs the model: under FSDP, rank 0 sends the call to the other
    processes (waiting in `serve`) before making it, so that every process gathers together.
    Every call ends with the weights in shards: after a forward pass alone FSDP keeps the root's
    gathered, and they would be read in place of the shards (which the optimizer's state is keyed by)."""
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        if self.shard == 1:
            return method(self, *args, **kwargs)
        if self.rank == 0:
            dist.broadcast_object_list([(method.__name__, args, kwargs)], src=0)
        try:
            return method(self, *args, **kwargs)
        finally:
            self.model.reshard()
    return call


def serve(backend) -> None:
    """The other processes of a sharded model: make each call rank 0 makes, until it stops them."""
    while True:
        message = [None]
        dist.broadcast_object_list(message, src=0)
        if message[0] is None:
            return
        name, args, kwargs = message[0]
        getattr(backend, name)(*args, **kwargs)


def stop_serving() -> None:
    dist.broadcast_object_list([None], src=0)


def shard(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """This replica's rows of the global batch: (B, T) -> (B / world_size, T)."""
    check_replica_split(batch.shape[0], world_size)
    rows = batch.shape[0] // world_size
    return batch[rank * rows:(rank + 1) * rows]


def mean_over_replicas(value: torch.Tensor) -> torch.Tensor:
    value = value.detach().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / dist.get_world_size()


def shutdown() -> None:
    """Wait for every process, then take the group down: a process exiting with gloo's threads
    still running aborts ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
