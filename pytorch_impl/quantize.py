"""Quantized weights in PyTorch: torchao, the PyTorch ecosystem's tool for them, and FBGEMM's int8
kernels for int8-dynamic on a CPU."""
import itertools
import warnings
import weakref

import torch
from torch import nn
from torch.nn import functional as F

from common.errors import UserError
from common.quantize import INT4_GROUP
from pytorch_impl.model import GPT


def quantize(model: GPT, mode: str) -> None:
    """Every nn.Linear's weight quantized in place. int8: by torchao, one scale per output channel
    (Int8WeightOnlyConfig), activations float. int4: groups of INT4_GROUP inputs with a scale and zero
    point each (IntxWeightOnlyConfig), held one value a byte: torchao's packed Int4WeightOnlyConfig
    runs on CUDA (or with the mslk library) only. int8-dynamic: int8 weights and each input rounded
    to int8 at every call (dynamic_int8). The head is quantized too, as a Linear of its own holding
    a copy of wte: it is a third of GPT-2's weights, and every decode step reads all of it, where the
    token lookup reads one row of wte, which stays float."""
    config = model.config
    head = nn.Linear(config.n_embd, config.vocab_size, bias=False, device=model.wte.weight.device)
    with torch.no_grad():
        head.weight.copy_(model.wte.weight)
    model.lm_head = head
    if mode == "int8-dynamic" and head.weight.device.type == "cpu":
        dynamic_int8(model)
    else:
        with_torchao(model, mode)


def with_torchao(model: GPT, mode: str) -> None:
    try:
        from torchao.quantization import (Int8DynamicActivationInt8WeightConfig, Int8WeightOnlyConfig,
                                          IntxWeightOnlyConfig, MappingType, quantize_)
        from torchao.quantization.granularity import PerGroup
    except ImportError:
        raise UserError(f"{mode} weights in PyTorch need torchao: pip install torchao==0.18.0 "
                        "(pip install -e \".[pytorch]\" installs it).") from None
    quantize_(model, {"int8": Int8WeightOnlyConfig, "int8-dynamic": Int8DynamicActivationInt8WeightConfig,
                      "int4": lambda: IntxWeightOnlyConfig(torch.int4, PerGroup(INT4_GROUP),
                                                           mapping_type=MappingType.ASYMMETRIC)}[mode]())
    if mode == "int8":
        for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Int8Linear(linear))


def dynamic_int8(model: GPT) -> None:
    """int8-dynamic on a CPU, with FBGEMM's kernels (x86; QNNPACK's on ARM) through torch.ao's dynamic
    Linear: int8 weights one scale per output channel, and each call's input rounded to 7-bit unsigned
    steps over its whole span, one scale per call, summed in int32. torchao's
    Int8DynamicActivationInt8WeightConfig computes the same with a plain int8 matmul, slower than
    float32 on a CPU (results/cpu-infer-int8-gpt2-epyc-avx2/NOTES.md); it is used on GPUs."""
    from torch.ao.nn.quantized.dynamic import Linear as DynamicLinear
    from torch.ao.quantization import per_channel_dynamic_qconfig
    with warnings.catch_warnings():  # torch.ao.quantization's notice that torchao will take its place
        warnings.simplefilter("ignore")
        for name, linear in [(n, m) for n, m in model.named_modules() if type(m) is nn.Linear]:
            linear.qconfig = per_channel_dynamic_qconfig
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, FbgemmLinear(DynamicLinear.from_float(linear)))


# FBGEMM's layers by number: their packed weights are a TorchScript object, which torch.compile cannot
# trace, so a compiled step calls fbgemm_linear, an op it treats as opaque, with the layer's number.
_FBGEMM_LAYERS = weakref.WeakValueDictionary()
_LAYER_NUMBERS = itertools.count()


@torch.library.custom_op("nanogpt_compare::fbgemm_linear", mutates_args=())
def fbgemm_linear(x: torch.Tensor, layer: int) -> torch.Tensor:
    return _FBGEMM_LAYERS[layer](x)


@fbgemm_linear.register_fake
def _(x, layer):
    return x.new_empty(*x.shape[:-1], _FBGEMM_LAYERS[layer].out_features)


class FbgemmLinear(nn.Module):
    """An nn.Linear computed by FBGEMM's int8-dynamic Linear, eager or compiled."""

    def __init__(self, dynamic: nn.Module):
        super().__init__()
        self.dynamic, self.number = dynamic, next(_LAYER_NUMBERS)
        _FBGEMM_LAYERS[self.number] = dynamic

    def forward(self, x):
        return fbgemm_linear(x, self.number)


def packed_linears(model: GPT) -> dict[str, torch.Tensor]:
    """The weights and biases FBGEMM's Linears hold packed, out of the parameters, under the names
    of the nn.Linear each replaced: weights dequantized."""
    out = {}
    for name, linear in model.named_modules():
        if isinstance(linear, FbgemmLinear):
            out[f"{name}.weight"] = linear.dynamic.weight().dequantize()
            if linear.dynamic.bias() is not None:
                out[f"{name}.bias"] = linear.dynamic.bias()
    return out


class Int8Linear(nn.Module):
    """An nn.Linear whose weight torchao holds in int8, one scale per output channel. Compiled, the
    product of one row (a decode step at batch 1) is a sum over the int8 bytes, which Inductor fuses
    into one pass over them; torchao's linear, used otherwise, writes the whole weight out in float32
    and multiplies that, slower than float32 itself (results/cpu-infer-int8-xeon-amx/NOTES.md)."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        # torchao's (N, K) int8 values and (N,) scales as plain tensors, which torch.compile reads directly.
        self.register_buffer("qdata", linear.weight.qdata, persistent=False)
        self.register_buffer("scale", linear.weight.scale.flatten(), persistent=False)

    def forward(self, x):
        if not (torch.compiler.is_compiling() and x.shape[:-1].numel() == 1):
            return F.linear(x, self.weight, self.bias)
        y = (x.unsqueeze(-2) * self.qdata).sum(-1) * self.scale.to(x.dtype)  # (..., 1, K) * (N, K) -> (..., N)
        return y if self.bias is None else y + self.bias

