"""int8 weight-only quantization in JAX: a short int8 linear layer.

qwix and AQT would quantize the weights as this does, then dequantize them into a float dot, which
XLA fuses on GPUs and TPUs. XLA:CPU fuses neither the dequantize into its dot nor, fast, a product
and sum written out over the int8 bytes (its reductions are scalar loops), so on a CPU the int8
weights save memory, not time: each step writes every weight out in float32 and reads it again.
"""
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.quantize import dequantize_int8, quantize_int8
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


def quantize(model: GPT, mode: str) -> None:
    """Every Linear of the blocks as an Int8Linear, in place, and the head too: an Int8Linear of wte's
    transpose, since the head is a third of GPT-2's weights and every step reads all of it, where the
    token lookup reads one row of wte, which stays float."""
    for block in model.h:
        for layer, name in ((block.attn, "c_attn"), (block.attn, "c_proj"), (block.mlp, "c_fc"),
                            (block.mlp, "c_proj")):
            linear = getattr(layer, name)
            setattr(layer, name, Int8Linear(linear.kernel[...], linear.bias))
    model.lm_head = nnx.data(Int8Linear(jnp.asarray(model.wte.embedding[...]).T))  # was None: static


def dequantized_kernels(model: GPT) -> dict[str, np.ndarray]:
    """The kernels an int8 model computes with, as float32 under canonical names (not the head: a
    copy of wte)."""
    return {".".join(map(str, path)) + ".weight": module.dequantized()
            for path, module in nnx.iter_graph(model) if isinstance(module, Int8Linear) and path[0] != "lm_head"}

