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


def train_step(model, optimizer, x, y, lr: float, grad_clip: float, amp) -> torch.Tensor:
    """One update; returns the loss before it, still on the device (reading it syncs)."""
    for group in optimizer.param_groups:  # the common schedule sets the rate every step
        group["lr"] = lr
    with amp:
        logits, _ = model(x)
        loss = cross_entropy(logits, y)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()
