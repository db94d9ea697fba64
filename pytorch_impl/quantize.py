"""Weight-only quantization in PyTorch, with torchao, the PyTorch ecosystem's tool for it."""
import torch
from torch import nn
from torch.nn import functional as F

from common.errors import UserError
from common.quantize import INT4_GROUP
from pytorch_impl.model import GPT


def quantize(model: GPT, mode: str) -> None:
    """Every nn.Linear's weight quantized by torchao, in place; activations stay float. int8: one
    scale per output channel (Int8WeightOnlyConfig). int4: groups of INT4_GROUP inputs with a scale
    and zero point each (IntxWeightOnlyConfig), held one value a byte: torchao's packed
    Int4WeightOnlyConfig runs on CUDA (or with the mslk library) only. The head is quantized too, as
    a Linear of its own holding a copy of wte: it is a third of GPT-2's weights, and every decode
    step reads all of it, where the token lookup reads one row of wte, which stays float."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, IntxWeightOnlyConfig, MappingType, quantize_
        from torchao.quantization.granularity import PerGroup
    except ImportError:
        raise UserError(f"{mode} weights in PyTorch need torchao: pip install torchao==0.18.0 "
                        "(pip install -e \".[pytorch]\" installs it).") from None
    config = model.config
    head = nn.Linear(config.n_embd, config.vocab_size, bias=False, device=model.wte.weight.device)
    with torch.no_grad():
        head.weight.copy_(model.wte.weight)
    model.lm_head = head
    quantize_(model, Int8WeightOnlyConfig() if mode == "int8" else
              IntxWeightOnlyConfig(torch.int4, PerGroup(INT4_GROUP), mapping_type=MappingType.ASYMMETRIC))
    if mode == "int8":
        for name, linear in [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]:
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, Int8Linear(linear))


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

