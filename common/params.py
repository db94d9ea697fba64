"""Canonical parameters: GPT-2 names, dense kernels stored [in, out], and the one initialisation.

Every framework starts from `init_params(config, seed)` and exports back to the same names and
layouts, so weights, gradients and checkpoints compare across frameworks array for array.
"""
from __future__ import annotations

import math

import numpy as np

from common.config import GPTConfig
from common.spec import INIT_STD, MLP_RATIO


def param_shapes(config: GPTConfig) -> dict[str, tuple[int, ...]]:
    """Every canonical parameter's name and shape, in model order."""
    C, V = config.n_embd, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"wte": (V, C), "wpe": (config.block_size, C)}

    def dense(prefix: str, n_in: int, n_out: int):
        shapes[f"{prefix}.weight"] = (n_in, n_out)
        if config.bias:
            shapes[f"{prefix}.bias"] = (n_out,)

    def layer_norm(prefix: str):
        shapes[f"{prefix}.weight"] = (C,)
        if config.bias:
            shapes[f"{prefix}.bias"] = (C,)

    for i in range(config.n_layer):
        layer_norm(f"h.{i}.ln_1")
        dense(f"h.{i}.attn.c_attn", C, 3 * C)
        dense(f"h.{i}.attn.c_proj", C, C)
        layer_norm(f"h.{i}.ln_2")
        dense(f"h.{i}.mlp.c_fc", C, MLP_RATIO * C)
        dense(f"h.{i}.mlp.c_proj", MLP_RATIO * C, C)
    layer_norm("ln_f")
    return shapes


def num_params(config: GPTConfig, include_position: bool = True) -> int:
    """Parameter count; the LM head adds none because it is tied to wte."""
    total = sum(math.prod(shape) for shape in param_shapes(config).values())
    return total if include_position else total - config.block_size * config.n_embd


def decays(name: str, shape: tuple[int, ...]) -> bool:
    """Weight decay applies to matrices and embeddings only, never to biases or LayerNorm gains."""
    return len(shape) >= 2


def init_params(config: GPTConfig, seed: int) -> dict[str, np.ndarray]:
    """float32 arrays: N(0, 0.02) weights and embeddings, zero biases, LayerNorm weight 1 and bias 0.

    Both residual projections (attn.c_proj, mlp.c_proj) are drawn with 0.02/sqrt(2*n_layer), as in
    GPT-2: each block adds two of them to the residual stream, so this keeps its variance flat in depth.
    """
    rng = np.random.default_rng(seed)
    residual_std = INIT_STD / math.sqrt(2 * config.n_layer)
    params = {}
    for name, shape in param_shapes(config).items():
        if name.endswith(".bias"):
            value = np.zeros(shape)
        elif ".ln_" in name or name.startswith("ln_f"):
            value = np.ones(shape)
        else:
            std = residual_std if name.endswith("c_proj.weight") else INIT_STD
            value = rng.normal(0.0, std, size=shape)
        params[name] = value.astype(np.float32)
    return params


def crop_block_size(params: dict[str, np.ndarray], block_size: int) -> dict[str, np.ndarray]:
    """The weights of a model with a shorter context: the first block_size rows of wpe (nanoGPT's
    crop_block_size). Nothing else depends on the context length, so nothing else changes."""
    if block_size > len(params["wpe"]):
        raise ValueError(f"block_size {block_size} is longer than the {len(params['wpe'])} positions the weights have")
    return {**params, "wpe": params["wpe"][:block_size]}


def check_params(params: dict[str, np.ndarray], config: GPTConfig) -> None:
    """Raise ValueError naming the first missing, unexpected or misshapen tensor."""
    expected = param_shapes(config)
    missing = [n for n in expected if n not in params]
    extra = [n for n in params if n not in expected]
    if missing or extra:
        raise ValueError(f"parameters do not match the config: missing {missing[:3]}, unexpected {extra[:3]}")
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(params[name].shape)}, the config needs {shape}")
