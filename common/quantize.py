"""Quantized weights, the numpy reference: what each framework's quantized model must compute.

int8: one scale per output channel. int4: 16 steps, in groups of INT4_GROUP consecutive inputs of an
output channel, each group with its own scale and zero point (asymmetric, as Keras' int4 and gpt-fast's
are). Both are weight-only: weights are dequantized as the matmul reads them, activations stay float. A
decode step at batch 1 reads every weight once, so its time follows the bytes: a quarter of float32's
for int8, an eighth for packed int4, where the CPU's kernels convert the bytes as fast as they arrive.

int8-dynamic: int8 weights as int8's, and each layer's input rounded to int8 too, afresh at every call
(one scale a row), so that the product runs in int8 with int32 sums, the form CPUs' integer dot
instructions and their int8 kernels take (FBGEMM, oneDNN). It rounds twice where weight-only rounds
once; its quality cost is measured beside its speed. The tools that do each (torchao and FBGEMM, Keras'
quantize, jax_impl/quantize.py) round their own way; the error bounds here hold for all of them.
"""
from __future__ import annotations

import numpy as np

from common.errors import UserError

# Weight-only int8 per output channel and int4 in groups of inputs; int8 weights and activations.
QUANTIZE_MODES = ("int8", "int4", "int8-dynamic")
WEIGHT_BITS = {"int8": 8, "int4": 4, "int8-dynamic": 8}
INT8_MAX = 127  # symmetric: -127..127, so that zero is exact and w and -w quantize alike
INT4_MIN, INT4_MAX = -8, 7
INT4_GROUP = 32  # inputs sharing an int4 scale: gpt-fast's default; GPT-2's 768 and 3072 hold whole groups


def check_quantize(mode: str | None, n_embd: int | None = None) -> str | None:
    if mode is not None and mode not in QUANTIZE_MODES:
        raise UserError(f"unknown quantization {mode!r}: use {', '.join(QUANTIZE_MODES)}, or leave it out "
                        f"for float weights.")
    if mode == "int4" and n_embd is not None and n_embd % INT4_GROUP:
        raise UserError(f"int4 weights come in groups of {INT4_GROUP} inputs, and n_embd {n_embd} is not a "
                        f"multiple of {INT4_GROUP}: use --quantize int8.")
    return mode


def quantize_int8(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A canonical [in, out] kernel -> (int8 [in, out], float32 [out] scales), kernel ≈ q * scale.
    A column of zeros gets scale 1, so that dividing by it is safe."""
    kernel = np.asarray(kernel, dtype=np.float32)
    largest = np.abs(kernel).max(axis=0)
    scale = np.where(largest > 0, largest / INT8_MAX, 1.0).astype(np.float32)
    return np.clip(np.rint(kernel / scale), -INT8_MAX, INT8_MAX).astype(np.int8), scale


def dequantize_int8(q: np.ndarray, scale: np.ndarray) -> np.ndarray:
    return q.astype(np.float32) * scale


def int8_error_bound(kernel: np.ndarray) -> np.ndarray:
    """The largest error rounding to the nearest step allows in each output channel: half a step
    (largest |w| / 127 / 2), and a little more for float32 arithmetic, as a [out] array."""
    return np.abs(np.asarray(kernel, np.float32)).max(axis=0) / INT8_MAX * (0.5 + 1e-3) + 1e-8


def quantize_rows_int8(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Activations (..., K) -> (int8 (..., K), float32 (..., 1) scales), one scale a row, x ≈ q * scale:
    int8-dynamic's rounding of a layer's input, done at every call."""
    x = np.asarray(x, dtype=np.float32)
    largest = np.abs(x).max(axis=-1, keepdims=True)
    scale = np.where(largest > 0, largest / INT8_MAX, 1.0).astype(np.float32)
    return np.clip(np.rint(x / scale), -INT8_MAX, INT8_MAX).astype(np.int8), scale


def int8_dynamic_matmul(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """x @ kernel as int8-dynamic computes it: both rounded to int8, the products summed in int32."""
    q, scale = quantize_int8(kernel)
    xq, x_scale = quantize_rows_int8(x)
    return (xq.astype(np.int32) @ q.astype(np.int32)).astype(np.float32) * x_scale * scale


def int8_dynamic_error_bound(x: np.ndarray, kernel: np.ndarray, activation_step: np.ndarray | None = None) -> np.ndarray:
    """How far an int8-dynamic x @ kernel may lie from the float product, per output: each input off
    by up to half its step, each weight by half its channel's step (int8_error_bound), and the two
    roundings' product. activation_step: the step each row's inputs were rounded to, (..., 1); by
    default one row's largest |x| / 127, as here; a tool that rounds all rows to one scale (FBGEMM)
    passes its own."""
    x, kernel = np.asarray(x, np.float32), np.asarray(kernel, np.float32)
    half_x = (np.abs(x).max(axis=-1, keepdims=True) / INT8_MAX if activation_step is None else activation_step) / 2
    half_w = int8_error_bound(kernel)
    return (half_x * np.abs(kernel).sum(axis=0) + np.abs(x) @ np.broadcast_to(half_w, kernel.shape)
            + half_x * half_w * kernel.shape[0]) * (1 + 1e-3) + 1e-6


def quantize_int4(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A canonical [in, out] kernel -> (q [in, out] in -8..7, as int8; float32 scales and int8 zero
    points, [in / INT4_GROUP, out]), kernel ≈ (q - zero) * scale group by group. A group's 16 steps
    span its values and 0, so that zero is a step; a group of zeros gets scale 1."""
    kernel = np.asarray(kernel, dtype=np.float32)
    groups = kernel.reshape(-1, INT4_GROUP, kernel.shape[-1])  # (in / G, G, out)
    low, high = np.minimum(groups.min(axis=1), 0), np.maximum(groups.max(axis=1), 0)
    scale = np.where(high > low, (high - low) / (INT4_MAX - INT4_MIN), 1.0).astype(np.float32)
    zero = np.clip(np.rint(-low / scale) + INT4_MIN, INT4_MIN, INT4_MAX)
    q = np.clip(np.rint(groups / scale[:, None]) + zero[:, None], INT4_MIN, INT4_MAX)
    return q.reshape(kernel.shape).astype(np.int8), scale, zero.astype(np.int8)


def dequantize_int4(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    groups = q.reshape(scale.shape[0], -1, q.shape[-1]).astype(np.float32)
    return ((groups - zero[:, None]) * scale[:, None]).reshape(q.shape)


def int4_error_bound(kernel: np.ndarray) -> np.ndarray:
    """The largest error rounding to the nearest of a group's 16 steps allows: half a step, the span
    of the group's values and 0 over 15, and a little more for float32 arithmetic, as an [in, out]
    array. Keras spans the values alone, a step no larger."""
    groups = np.asarray(kernel, np.float32).reshape(-1, INT4_GROUP, kernel.shape[-1])
    span = np.maximum(groups.max(axis=1), 0) - np.minimum(groups.min(axis=1), 0)
    bound = span / (INT4_MAX - INT4_MIN) * (0.5 + 1e-3) + 1e-8
    return np.repeat(bound, INT4_GROUP, axis=0)
