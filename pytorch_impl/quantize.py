"""Weight-only quantization in PyTorch, with torchao, the PyTorch ecosystem's tool for it."""
import torch
from torch import nn

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

