"""AdamW and one training step in PyTorch."""
import contextlib

import torch

from common.config import TrainConfig
from common.params import decays
from pytorch_impl.model import GPT, cross_entropy


def configure_optimizer(model: GPT, train: TrainConfig) -> torch.optim.AdamW:
    # Weight decay on matrices and embeddings only (common.params.decays): never biases or LayerNorm.
    named = list(model.named_parameters())
    groups = [
        {"params": [p for n, p in named if decays(n, p.shape)], "weight_decay": train.weight_decay},
        {"params": [p for n, p in named if not decays(n, p.shape)], "weight_decay": 0.0},
    ]
    # The fused kernel updates each tensor in one pass. On this model's CPU step, foreach's chain of
    # small ops costs five times as much.
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps,
                             fused=True)


def autocast(device_type: str, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_step(model, optimizer, batches, lr: float, grad_clip: float, amp) -> torch.Tensor:
    """One update from the (x, y) micro-batches; returns their mean loss before it, still on the
    device (reading it syncs).

    Each backward adds its loss / k's gradient into .grad, so after k of them .grad holds the
    gradient of the mean loss over all rows, clipped once as one batch's would be (nanoGPT's way).
    Under DDP only the last backward all-reduces: no_sync keeps the others local.
    """
    for group in optimizer.param_groups:  # the common schedule sets the rate every step
        group["lr"] = lr
    k, total = len(batches), 0.0
    for i, (x, y) in enumerate(batches):
        last = i == k - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with amp:
                logits, _ = model(x)
                loss = cross_entropy(logits, y)
            (loss / k).backward()
        total = total + loss.detach()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return total / k
