"""int8 weight-only quantization in PyTorch, with torchao, the PyTorch ecosystem's tool for it."""
import torch
from torch import nn

from common.errors import UserError
from pytorch_impl.model import GPT


def quantize(model: GPT, mode: str) -> None:
    """Every nn.Linear's weight in int8 with one scale per output channel (torchao's
    Int8WeightOnlyConfig), in place; activations stay float. The head is quantized too, as a Linear
    of its own holding a copy of wte: it is a third of GPT-2's weights, and every decode step reads
    all of it, where the token lookup reads one row of wte, which stays float."""
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError:
        raise UserError("int8 weights in PyTorch need torchao: pip install torchao==0.18.0 "
                        "(pip install -e \".[pytorch]\" installs it).") from None
    config = model.config
    head = nn.Linear(config.n_embd, config.vocab_size, bias=False, device=model.wte.weight.device)
    with torch.no_grad():
        head.weight.copy_(model.wte.weight)
    model.lm_head = head
    quantize_(model, Int8WeightOnlyConfig())

