"""Data parallelism with DistributedDataParallel; torchrun starts one process per replica.

Every process draws the same global batch from the common stream and trains on its own contiguous
slice of rows; DDP all-reduces (averages) the gradients during backward, so each replica applies
the update the single-device run would have applied to the whole batch.
"""
import os

import numpy as np
import torch
import torch.distributed as dist
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
