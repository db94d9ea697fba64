"""Quantization in JAX: short int8, int4 and int8-dynamic linear layers.

qwix and AQT would quantize the weights as this does, then dequantize them into a float dot, which
XLA fuses on GPUs and TPUs. XLA:CPU fuses neither the dequantize into its dot nor, fast, a product
and sum written out over the int8 bytes (its reductions are scalar loops), so on a CPU the weight-only
int8 kernels save memory, not time: each step writes every weight out in float32 and reads it again.
int8-dynamic hands XLA an int8 × int8 dot instead, summed in int32.
"""
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.quantize import INT8_MAX, dequantize_int4, dequantize_int8, quantize_int4, quantize_int8
from jax_impl.model import GPT


class QuantizedWeight(nnx.Variable):
    """An int8 kernel or its scales: read by the model, never trained (not an nnx.Param)."""


def int8_matmul(x, q, scale):
    """(..., K) float x (K, N) int8 q, scaled per output column -> (..., N) float."""
    return (x @ q.astype(x.dtype)) * scale.astype(x.dtype)


class Int8Linear(nnx.Module):
    """nnx.Linear's y = x @ kernel + bias, with the kernel in int8 and one scale per output channel."""

    def __init__(self, kernel, bias=None):
        q, scale = quantize_int8(np.asarray(kernel))  # the canonical [in, out] layout, as nnx.Linear's
        self.kernel, self.scale = QuantizedWeight(jnp.asarray(q)), QuantizedWeight(jnp.asarray(scale))
        self.bias = bias

    def __call__(self, x):
        y = int8_matmul(x, self.kernel[...], self.scale[...])
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)

    def dequantized(self) -> np.ndarray:
        return dequantize_int8(np.asarray(self.kernel[...]), np.asarray(self.scale[...]))


def int8_dynamic_matmul(x, q, scale):
    """(..., K) float x rounded to int8 one scale a row, times (K, N) int8 q in int32, scaled back."""
    largest = jnp.max(jnp.abs(x), axis=-1, keepdims=True)
    x_scale = jnp.where(largest > 0, largest / INT8_MAX, 1.0)
    xq = jnp.clip(jnp.round(x / x_scale), -INT8_MAX, INT8_MAX).astype(jnp.int8)
    sums = jax.lax.dot_general(xq, q, (((x.ndim - 1,), (0,)), ((), ())), preferred_element_type=jnp.int32)
    return sums.astype(x.dtype) * x_scale * scale.astype(x.dtype)


class Int8DynamicLinear(Int8Linear):
    """Int8Linear's weights, and its input rounded to int8 at every call: an integer dot."""

    def __call__(self, x):
        y = int8_dynamic_matmul(x, self.kernel[...], self.scale[...])
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)


def int4_matmul(x, q, scale, zero):
    """(..., K) float x (K, N) q in -8..7, in K / G groups of G rows with a scale and zero point each
    -> (..., N) float."""
    groups = q.reshape(scale.shape[0], -1, q.shape[-1])  # (K / G, G, N)
    kernel = (groups - zero[:, None]).astype(x.dtype) * scale[:, None].astype(x.dtype)
    return x @ kernel.reshape(q.shape)


class Int4Linear(nnx.Module):
    """nnx.Linear's y = x @ kernel + bias, with the kernel in 16 steps in groups of INT4_GROUP inputs
    (common.quantize.quantize_int4), one value a byte, as torchao holds them: XLA:CPU dequantizes the
    kernel into its dot either way (see above), so packing two a byte would save memory, not time."""

    def __init__(self, kernel, bias=None):
        q, scale, zero = quantize_int4(np.asarray(kernel))
        self.kernel, self.scale, self.zero = (QuantizedWeight(jnp.asarray(a)) for a in (q, scale, zero))
        self.bias = bias

    def __call__(self, x):
        y = int4_matmul(x, self.kernel[...], self.scale[...], self.zero[...])
        return y if self.bias is None else y + self.bias[...].astype(y.dtype)

    def dequantized(self) -> np.ndarray:
        return dequantize_int4(np.asarray(self.kernel[...]), np.asarray(self.scale[...]), np.asarray(self.zero[...]))


LINEARS = {"int8": Int8Linear, "int4": Int4Linear, "int8-dynamic": Int8DynamicLinear}


def quantize(model: GPT, mode: str) -> None:
    """Every Linear of the blocks as a quantized Linear of the mode, in place, and the head too, of
    wte's transpose, since the head is a third of GPT-2's weights and every step reads all of it,
    where the token lookup reads one row of wte, which stays float."""
    linear_of = LINEARS[mode]
    for block in model.h:
        for layer, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                            (block.mlp, "c_proj")):
            linear = getattr(layer, name)
            setattr(layer, name, linear_of(linear.kernel[...], linear.bias))
    model.lm_head = nnx.data(linear_of(jnp.asarray(model.wte.embedding[...]).T))  # was None: static


def dequantized_kernels(model: GPT) -> dict[str, np.ndarray]:
    """The kernels a quantized model computes with, as float32 under canonical names (not the head: a
    copy of wte)."""
    return {".".join(map(str, path)) + ".weight": module.dequantized() for path, module in nnx.iter_graph(model)
            if isinstance(module, tuple(LINEARS.values())) and path[0] != "lm_head"}

