"""Model and training configuration, the presets every framework shares, and command-line overrides."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields, replace

from common.errors import UserError
from common.spec import GELU_APPROXIMATE, LAYER_NORM_EPS


@dataclass(frozen=True)
class GPTConfig:
    vocab_size: int = 65
    block_size: int = 64
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = False
    # The two choices where GPT-2 checkpoints may differ from the spec's defaults (common/spec.py):
    gelu_approximate: bool = GELU_APPROXIMATE  # True: the tanh form, GPT-2's gelu_new; False: exact erf GELU
    layer_norm_eps: float = LAYER_NORM_EPS     # GPT-2's layer_norm_epsilon

    def __post_init__(self):
        _check_finite(self)
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        if self.n_embd % self.n_head:
            raise UserError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head}): "
                            f"pick n_embd as a multiple of n_head.")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), got {self.dropout}.")
        if self.layer_norm_eps <= 0:
            raise UserError(f"layer_norm_eps must be positive, got {self.layer_norm_eps}.")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 12
    max_iters: int = 2000
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: int = 2000
    beta1: float = 0.9
    beta2: float = 0.99
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0          # global-norm clipping; 0 turns it off
    # Micro-batches of batch_size rows whose gradients sum into one update: a batch grad_accum
    # times as large, in the memory of one micro-batch (nanoGPT's gradient_accumulation_steps).
    grad_accum: int = 1
    decay_lr: bool = True           # False: the rate is lr at every step, no warmup (nanoGPT's decay_lr)
    eval_interval: int = 250
    eval_iters: int = 20
    seed: int = 1337
    dtype: str = "float32"          # float32 | bfloat16 (bf16 compute on accelerators)
    compile: bool = False

    def __post_init__(self):
        _check_finite(self)
        for name in ("batch_size", "grad_accum", "eval_interval", "eval_iters"):
            if getattr(self, name) <= 0:
                raise UserError(f"{name} must be a positive integer, got {getattr(self, name)}.")
        for name in ("max_iters", "warmup_iters", "lr_decay_iters"):
            if getattr(self, name) < 0:
                raise UserError(f"{name} must not be negative, got {getattr(self, name)}.")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise UserError(f"need 0 <= min_lr <= lr and lr > 0, got lr={self.lr}, min_lr={self.min_lr}.")
        if self.lr_decay_iters < self.warmup_iters:
            raise UserError(f"lr_decay_iters ({self.lr_decay_iters}) must be >= warmup_iters ({self.warmup_iters}).")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1):
            raise UserError(f"beta1 and beta2 must be in [0, 1), got {self.beta1}, {self.beta2}.")
        if self.eps <= 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise UserError("eps must be positive and weight_decay, grad_clip non-negative.")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"dtype must be float32 or bfloat16, got {self.dtype!r}.")
        if not 0 <= self.seed < STEP_LIMIT or self.max_iters > STEP_LIMIT:
            # The batch of a step is drawn from the RNG words [seed, step]; a larger one would take two.
            raise UserError(f"seed must be in [0, {STEP_LIMIT}) and max_iters at most {STEP_LIMIT}, "
                            f"got seed={self.seed}, max_iters={self.max_iters}.")


STEP_LIMIT = 2**32


def _check_finite(config) -> None:
    """nan slips through every range check (each comparison is False), and inf through half of them."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise UserError(f"{f.name} must be a finite number, got {value}: pass one like the default, "
                            f"{f.name}={getattr(type(config)(), f.name)}.")


def _cpu_baby() -> tuple[GPTConfig, TrainConfig]:
    # nanoGPT README's CPU settings (its train.py defaults bias to False).
    return (GPTConfig(block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0, bias=False),
            TrainConfig(batch_size=12, max_iters=2000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                        lr_decay_iters=2000, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=250, eval_iters=20))


def _shakespeare_char() -> tuple[GPTConfig, TrainConfig]:
    # nanoGPT's config/train_shakespeare_char.py.
    return (GPTConfig(block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2, bias=False),
            TrainConfig(batch_size=64, max_iters=5000, lr=1e-3, min_lr=1e-4, warmup_iters=100,
                        lr_decay_iters=5000, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=250, eval_iters=200))


def _tiny() -> tuple[GPTConfig, TrainConfig]:
    # Small enough for tests on 2 CPU cores, big enough to learn something in 200 steps.
    return (GPTConfig(block_size=32, n_layer=2, n_head=2, n_embd=32, dropout=0.0, bias=True),
            TrainConfig(batch_size=16, max_iters=200, lr=3e-3, min_lr=3e-4, warmup_iters=20,
                        lr_decay_iters=200, beta2=0.99, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=50, eval_iters=8))


def _gpt2_124m(block_size: int) -> GPTConfig:
    # GPT-2 small's shape, for a run without --init-from (random weights; the vocabulary is the
    # corpus tokenizer's). With --init-from the folder's weights fix the shape and dropout.
    return GPTConfig(block_size=block_size, n_layer=12, n_head=12, n_embd=768, dropout=0.0, bias=True,
                     gelu_approximate=True)


def _finetune_shakespeare() -> tuple[GPTConfig, TrainConfig]:
    # nanoGPT's config/finetune_shakespeare.py, meant with --init-from gpt2 (nanoGPT starts from
    # gpt2-xl): 32 micro-batches of one 1024-token row per update, 3e-5 constant, 20 updates. The
    # rest is nanoGPT train.py's defaults: beta2 0.95, weight decay 0.1, clip 1.0, dropout 0.
    return (_gpt2_124m(1024),
            TrainConfig(batch_size=1, grad_accum=32, max_iters=20, lr=3e-5, min_lr=3e-6, decay_lr=False,
                        warmup_iters=0, lr_decay_iters=20, beta2=0.95, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=5, eval_iters=40))


def _finetune_shakespeare_cpu() -> tuple[GPTConfig, TrainConfig]:
    # finetune-shakespeare sized for 2 CPU cores with gpt2 (124M): 256-token rows, 4 micro-batches,
    # 4 evaluation batches. A PyTorch micro-batch took ~5 s and the AdamW update ~2 s there, so the
    # 20 updates take ~7 minutes. With --init-from the model is cropped to these 256 positions.
    return (_gpt2_124m(256),
            TrainConfig(batch_size=1, grad_accum=4, max_iters=20, lr=3e-5, min_lr=3e-6, decay_lr=False,
                        warmup_iters=0, lr_decay_iters=20, beta2=0.95, weight_decay=0.1, grad_clip=1.0,
                        eval_interval=5, eval_iters=4))


PRESETS = {"tiny": _tiny, "cpu-baby": _cpu_baby, "shakespeare-char": _shakespeare_char,
           "finetune-shakespeare": _finetune_shakespeare, "finetune-shakespeare-cpu": _finetune_shakespeare_cpu}
PRESET_NAMES = (*PRESETS, "auto")


def get_preset(name: str, accelerator: bool = False) -> tuple[GPTConfig, TrainConfig]:
    """`auto` is shakespeare-char on an accelerator and cpu-baby on a CPU."""
    if name == "auto":
        name = "shakespeare-char" if accelerator else "cpu-baby"
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose one of {', '.join(PRESET_NAMES)}.")
    return PRESETS[name]()


def _parse_value(field: dataclasses.Field, text: str):
    if field.type in ("bool", bool):
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{field.name} takes true or false, got {text!r}.")
    kind = {"int": int, "float": float, "str": str}.get(field.type, str)
    try:
        return kind(float(text)) if kind is int and "e" in text.lower() else kind(text)
    except (ValueError, OverflowError):  # int(float("1e400")) overflows
        raise UserError(f"{field.name} takes a {kind.__name__}, got {text!r}.") from None


def apply_overrides(model: GPTConfig, train: TrainConfig,
                    overrides: dict[str, str]) -> tuple[GPTConfig, TrainConfig]:
    """Override any field of either config by name, from strings as typed on a command line."""
    model_fields = {f.name: f for f in fields(GPTConfig)}
    train_fields = {f.name: f for f in fields(TrainConfig)}
    model_changes, train_changes = {}, {}
    for key, text in overrides.items():
        name = key.replace("-", "_")
        if name in model_fields:
            model_changes[name] = _parse_value(model_fields[name], str(text))
        elif name in train_fields:
            train_changes[name] = _parse_value(train_fields[name], str(text))
        else:
            raise UserError(f"unknown config field {key!r}: fields are "
                            f"{', '.join([*model_fields, *train_fields])}.")
    if "max_iters" in train_changes and "lr_decay_iters" not in train_changes:
        # Like nanoGPT's configs, the cosine ends where training ends unless told otherwise.
        train_changes["lr_decay_iters"] = train_changes["max_iters"]
        train_changes["warmup_iters"] = min(train.warmup_iters, train_changes["max_iters"])
    return replace(model, **model_changes), replace(train, **train_changes)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)
