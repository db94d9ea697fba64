"""The learning-rate schedule: the single definition all three frameworks train with."""
import math

from common.config import TrainConfig


def learning_rate(step: int, cfg: TrainConfig) -> float:
    """Linear warmup, cosine decay to min_lr at lr_decay_iters, then min_lr (nanoGPT's get_lr);
    lr throughout when decay_lr is off."""
    if not cfg.decay_lr:
        return cfg.lr
    if step < cfg.warmup_iters:
        return cfg.lr * (step + 1) / (cfg.warmup_iters + 1)
    if step > cfg.lr_decay_iters:
        return cfg.min_lr
    decay_ratio = (step - cfg.warmup_iters) / max(cfg.lr_decay_iters - cfg.warmup_iters, 1)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return cfg.min_lr + coeff * (cfg.lr - cfg.min_lr)
