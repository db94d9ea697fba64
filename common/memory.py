"""The memory planner: what one training step holds on each device, before anything starts.

A run keeps four float32 copies of its weights (parameters, gradients, AdamW's two moments) and
the activations that the backward pass reads (and, on the host, its evaluation batches). With `--shard N` the four
copies are split over N devices (each holds 1/N of every sharded tensor) and each device trains
on 1/N of the batch's rows, while a block's whole weights are gathered for its forward and
backward passes: the two blocks in flight (one computed, the next prefetched) are held in full.

Activations, per layer and row of a micro-batch, are those Korthikanti et al. (2022) count for
a GPT layer: 17 (T, C) tensors, plus the attention weights (nh, T, T) where the framework's
attention keeps them (JAX and Keras write attention out; PyTorch's scaled_dot_product_attention
does not), and a dropout mask over them when dropout is on. The figure is a plan, not a
measurement: the runtime's own memory (CUDA context, XLA's buffers) comes on top, so a device is
planned to its USABLE_SHARE.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from common.config import GPTConfig, TrainConfig
from common.errors import UserError
from common.params import param_shapes

GiB = 2**30
USABLE_SHARE = 0.9  # of a device's memory; the rest is the runtime's and the allocator's slack
# Frameworks whose attention keeps its (nh, T, T) weights for the backward pass.
WRITES_ATTENTION_OUT = {"pytorch": False, "tensorflow": True, "jax": True, "keras-jax": True}


def shard_axis(shape: tuple[int, ...], devices: int) -> int | None:
    """The axis an FSDP engine splits a tensor along here: its longest that the devices divide
    evenly (XLA's layouts need it); None for one that stays whole on every device (a count)."""
    divisible = [i for i in range(len(shape)) if shape[i] % devices == 0]
    return max(divisible, key=lambda i: shape[i], default=None)


def parameter_counts(model: GPTConfig) -> tuple[int, int]:
    """(one block's parameters, the model's), from the shapes of a one-layer model: a config with
    absurdly many layers is refused by its size, not by listing them."""
    shapes = param_shapes(replace(model, n_layer=1))
    block = sum(math.prod(shape) for name, shape in shapes.items() if name.startswith("h.0."))
    return block, sum(math.prod(shape) for shape in shapes.values()) + (model.n_layer - 1) * block


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes one device holds at the peak of a training step."""
    params: int
    grads: int
    adam: int          # both moments
    activations: int   # of one micro-batch's forward pass, with its logits and their gradient
    gathered: int      # whole blocks gathered from the other shards (0 unsharded)
    eval_batches: int  # the evaluation batches every evaluation reuses, in the host's memory
    shard: int

    @property
    def state(self) -> int:
        """What sharding splits: parameters, gradients and Adam's moments."""
        return self.params + self.grads + self.adam

    @property
    def total(self) -> int:
        return self.state + self.activations + self.gathered

    def describe(self) -> str:
        return (f"{self.total / GiB:,.1f} GiB a device ({self.state / GiB:,.1f} of weights, gradients and Adam "
                f"moments, {(self.activations + self.gathered) / GiB:,.1f} of activations and gathered blocks)")


def plan_training(model: GPTConfig, train: TrainConfig, framework: str = "pytorch", shard: int = 1) -> MemoryPlan:
    """The plan of one device of `shard` (1: the whole model on one device)."""
    B, T, C, L, nh = train.batch_size // shard, model.block_size, model.n_embd, model.n_layer, model.n_head
    width = 2 if train.dtype == "bfloat16" else 4  # activations in the compute dtype; the state stays float32
    block, params = parameter_counts(model)
    per_layer = 17 * T * C
    if WRITES_ATTENTION_OUT[framework]:
        per_layer += nh * T * T * (2 if model.dropout > 0 else 1)
    logits = 2 * T * model.vocab_size * 4  # float32, with their gradient
    activations = B * (L * per_layer * width + logits)
    sharded = -(-params // shard)  # each shard's share, rounded up as the engines pad
    gathered = 2 * block * 4 if shard > 1 else 0
    eval_batches = 2 * train.eval_iters * train.batch_size * (T + 1) * 4  # train and val, int32
    return MemoryPlan(params=4 * sharded, grads=4 * sharded, adam=8 * sharded, activations=activations,
                      gathered=gathered, eval_batches=eval_batches, shard=shard)


def check_fits(model: GPTConfig, train: TrainConfig, framework: str, shard: int, device_bytes: int,
               host: bool) -> MemoryPlan:
    """Refuse, in one line, a run whose plan does not fit its devices; returns the plan.

    host: the shards are devices of one host and share its memory (CPU), so sharding cannot make a
    run fit and all of them are counted against device_bytes; else each device has device_bytes.
    """
    plan = plan_training(model, train, framework, shard)
    usable = int(device_bytes * USABLE_SHARE)
    if host:
        need = plan.total * shard + plan.eval_batches
        if need > usable:
            raise UserError(f"this run needs {need / GiB:,.1f} GiB to train and {usable / GiB:,.1f} GiB of this "
                            f"host's memory are usable: lower block_size, n_embd, n_layer, batch_size or eval_iters "
                            f"with --set.")
        return plan
    if plan.total <= usable:
        return plan
    raise UserError(f"this run needs {plan.describe()} and a device has {usable / GiB:,.1f} GiB usable "
                    f"({device_bytes / GiB:,.1f} GiB): {_shard_that_fits(model, train, framework, shard, usable)}.")


def _shard_that_fits(model: GPTConfig, train: TrainConfig, framework: str, shard: int, usable: int) -> str:
    """The fix: the fewest devices whose plan fits, with the rows of an update regrouped where the
    micro-batch does not split over them (1 row x 32 micro-batches is 2 x 16 on two devices)."""
    rows = train.batch_size * train.grad_accum
    for n in range(shard + 1, 1025):
        batch_size = math.lcm(train.batch_size, n)
        if rows % batch_size:
            continue
        regrouped = replace(train, batch_size=batch_size, grad_accum=rows // batch_size)
        plan = plan_training(model, regrouped, framework, n)
        if plan.total <= usable:
            regroup = (f" --set batch_size={batch_size} --set grad_accum={rows // batch_size}"
                       if batch_size != train.batch_size else "")
            return f"--shard {n}{regroup} fits, {plan.total / GiB:,.1f} GiB a device"
    return "no --shard fits: lower batch_size or block_size with --set"
