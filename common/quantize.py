"""Weight-only quantization, the numpy reference: what each framework's int8 weights must hold.

Weights are stored in int8, one scale per output channel, and dequantized as the matmul reads them;
activations stay in float. A decode step at batch 1 reads every weight once, so its time follows the
bytes: a quarter of float32's. The tools that do it (torchao, Keras' quantize, jax_impl/quantize.py)
each round their own way; the error bound here holds for all of them.
"""
from __future__ import annotations

import numpy as np

from common.errors import UserError

QUANTIZE_MODES = ("int8",)  # weight-only, per output channel
INT8_MAX = 127  # symmetric: -127..127, so that zero is exact and w and -w quantize alike


def check_quantize(mode: str | None) -> str | None:
    if mode is not None and mode not in QUANTIZE_MODES:
        raise UserError(f"unknown quantization {mode!r}: use {' or '.join(QUANTIZE_MODES)}, or leave it out "
                        f"for float weights.")
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
