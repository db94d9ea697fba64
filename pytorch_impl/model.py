"""GPT in PyTorch, after nanoGPT's model.py. The architecture is specified in common/spec.py."""

import math

import torch
import torch.nn as nn
from torch.nn import functional as F

from common.config import GPTConfig
from common.spec import LOSS_IGNORE_INDEX, MLP_RATIO


class KVCache:
    """Keys and values of every layer, preallocated for block_size positions, as in gpt-fast.

    Fixed shapes, written in place at positions held in a tensor: one compiled decode step (and, on
    CUDA, one CUDA graph) serves every position, where a cache cut to its filled length would change
    shape, and recompile, at every token. Attention reads the whole cache at every step, so a decode
    runs in a few `window`s of it as it fills (common.backend.cache_windows), each with its own program.
    """

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], length: torch.Tensor):
        self.keys, self.values = keys, values  # n_layer x (B, nh, slots, hs)
        self.length = length  # positions filled, in every layer: a 0-d long tensor
        self.slots = torch.arange(keys[0].size(2), device=length.device)
        self.windows: dict[int, KVCache] = {}

    @classmethod
    def empty(cls, config: GPTConfig, batch_size: int, device, dtype=torch.float32) -> "KVCache":
        shape = (batch_size, config.n_head, config.block_size, config.head_size)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
                   torch.zeros((), dtype=torch.long, device=device))

    def window(self, slots: int) -> "KVCache":
        """The cache's first `slots` positions: views of the same tensors, with the same length. One
        per size, so that compiled steps keep meeting the same tensors."""
        if slots not in self.windows:
            self.windows[slots] = KVCache([k[:, :, :slots] for k in self.keys], [v[:, :, :slots] for v in self.values],
                                          self.length)
        return self.windows[slots]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store this step's (B, nh, T, hs) keys and values at positions length .. length + T - 1.

        Returns the layer's keys and values at every slot, (B, nh, slots, hs), and the (T, slots)
        mask of the slots each new query attends to: its own position and those before.
        The slots after it hold nothing yet, or a longer prompt's padding (see generate.prefill).
        """
        input_pos = self.slots[:k.size(2)] + self.length  # (T,)
        self.keys[layer].index_copy_(2, input_pos, k.to(self.keys[layer].dtype))
        self.values[layer].index_copy_(2, input_pos, v.to(self.values[layer].dtype))
        return self.keys[layer], self.values[layer], self.slots[None, :] <= input_pos[:, None]


class CausalSelfAttention(nn.Module):

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_embd, self.dropout = config.n_head, config.n_embd, config.dropout
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd, bias=config.bias)  # q, k, v at once
        self.c_proj = nn.Linear(config.n_embd, config.n_embd, bias=config.bias)
        self.resid_dropout = nn.Dropout(config.dropout)
        self.record = False  # keep the attention weights for inspection (see `inspect`)

    def forward(self, x, cache: KVCache | None = None):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        # (B, T, C) -> (B, nh, T, hs)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        mask = None  # causal
        # With a cache the queries attend to the whole cache window, masked by position: one shape a window.
        if cache is not None:
            k, v, mask = cache.update(self.layer, k, v)  # k, v: (B, nh, slots, hs); mask (T, slots)
            k, v = k.to(q.dtype), v.to(q.dtype)
        dropout = self.dropout if self.training else 0.0
        if self.record:  # written out, as the fused kernel cannot return its weights; before dropout
            self.att = attention_weights(q, k, mask)
            y = F.dropout(self.att, dropout) @ v
        elif T == 1 and cache is not None and torch.compiler.is_compiling():
            # One query against the cache, compiled: written out, Inductor fuses the mask, the softmax and
            # both products into the step's other kernels, where SDPA stays a library call of its own.
            # Eager is faster with SDPA (timings: results/cpu-infer-cpu-baby-xeon-amx/NOTES.md).
            y = attention_weights(q, k, mask) @ v
        else:
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, is_causal=mask is None)
        y = y.transpose(1, 2).contiguous().view(B, T, C)  # (B, nh, T, hs) -> (B, T, C)
        return self.resid_dropout(self.c_proj(y))


def attention_weights(q, k, visible=None):
    """softmax(q k^T / sqrt(hs)) over the keys each query may see, (B, nh, T, S): what
    scaled_dot_product_attention computes inside; causal when no (T, S) mask is given."""
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.size(-1))
    if visible is None:
        visible = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
    return scores.masked_fill(~visible, float("-inf")).softmax(dim=-1)


class MLP(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, MLP_RATIO * config.n_embd, bias=config.bias)
        self.gelu = nn.GELU(approximate="tanh" if config.gelu_approximate else "none")
        self.c_proj = nn.Linear(MLP_RATIO * config.n_embd, config.n_embd, bias=config.bias)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))


class Block(nn.Module):

    def __init__(self, config: GPTConfig, layer: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        self.mlp = MLP(config)
        self.record = False  # keep the norms below for inspection (see `inspect`)

    def forward(self, x, cache: KVCache | None = None):
        attn_out = self.attn(self.ln_1(x), cache)
        h = x + attn_out
        mlp_out = self.mlp(self.ln_2(h))
        if self.record:  # the residual stream's size and what each update adds to it: (3, B, T)
            self.norms = torch.stack([token_norms(t) for t in (x, attn_out, mlp_out)])
        return h + mlp_out


def token_norms(x):
    """(B, T, C) -> (B, T): the L2 norm of every position's vector, in float32."""
    return torch.linalg.vector_norm(x.float(), dim=-1)


class GPT(nn.Module):

    def __init__(self, config: GPTConfig):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.h = nn.ModuleList([Block(config, i) for i in range(config.n_layer)])
        self.ln_f = nn.LayerNorm(config.n_embd, eps=config.layer_norm_eps, bias=config.bias)
        # No lm_head module: the output projection is wte itself (weight tying), see forward; a
        # quantized model has its own (pytorch_impl/quantize.py).
        self.lm_head: nn.Linear | None = None
        # Weights come from common.params.init_params through load_canonical, not from here.

    def forward(self, idx, cache: KVCache | None = None):
        """(B, T) ids -> (logits, cache): one call for training, prefill and decoding, as in every
        framework here. The cache is filled in place and handed back; None when none was passed."""
        B, T = idx.size()
        assert T <= self.config.block_size, f"{T} positions > block_size"
        # With a cache the positions start at its length, a tensor: reading it would wait for the device.
        pos = torch.arange(T, dtype=torch.long, device=idx.device)
        if cache is not None:
            pos = pos + cache.length
        # A plain lookup, unlike the JAX model's one-hot matmul (jax_impl.model.embed_tokens): torch's
        # embedding backward sorts the ids and sums each token's rows, so on a GPU the positions that
        # share a character do not queue on atomic adds (results/gpu-shakespeare-char-bf16/NOTES.md).
        # nn.Linear already multiplies (B, T, C) as one (B*T, C) matrix, so the Keras and JAX models'
        # reshapes would change nothing here.
        x = self.drop(self.wte(idx) + self.wpe(pos))  # (B, T, C)
        for block in self.h:
            x = block(x, cache)
        if cache is not None:
            cache.length += T  # in place: a compiled step sees the same tensor, now one position further
        x = self.ln_f(x)
        logits = F.linear(x, self.wte.weight) if self.lm_head is None else self.lm_head(x)  # (B, T, vocab_size)
        return logits, cache


@torch.no_grad()
def inspect(model: GPT, idx):
    """One forward pass in which every layer records what it computed, for benchmarks/explain.py
    (dropout as the model's mode has it: call it in eval mode): the logits (B, T, vocab_size), the
    attention weights (n_layer, B, nh, T, T) and the norms (n_layer, 3, B, T) of the residual stream
    entering each block and of the block's attention and MLP updates."""
    for block in model.h:
        block.record = block.attn.record = True
    try:
        logits, _ = model(idx)
    finally:
        for block in model.h:
            block.record = block.attn.record = False
    return logits, torch.stack([block.attn.att for block in model.h]), torch.stack([block.norms for block in model.h])


def cross_entropy(logits, targets):
    """Mean over the targets that are not LOSS_IGNORE_INDEX, in float32 (or float64) whatever the
    compute dtype. (B, T, V) -> (B*T, V) rows, the layout F.cross_entropy takes."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=LOSS_IGNORE_INDEX)


# Canonical names (common/params.py) are this model's parameter names without the ".weight" of
# the embeddings; nn.Linear stores its kernel [out, in], the canonical layout is [in, out].
def _canonical_name(torch_name: str) -> str:
    return torch_name.removesuffix(".weight") if torch_name in ("wte.weight", "wpe.weight") else torch_name


def _is_linear_kernel(torch_name: str) -> bool:
    return torch_name.endswith(".weight") and (".c_attn." in torch_name or ".c_proj." in torch_name
                                               or ".c_fc." in torch_name)


@torch.no_grad()
def load_canonical(model: GPT, params: dict) -> None:
    for name, p in model.named_parameters():
        value = torch.as_tensor(params[_canonical_name(name)])
        p.copy_(value.T if _is_linear_kernel(name) else value)


def to_canonical(model: GPT, tensors: dict[str, torch.Tensor] | None = None) -> dict:
    """Parameters (or per-parameter tensors such as gradients) under canonical names and layouts."""
    tensors = tensors if tensors is not None else dict(model.named_parameters())
    out = {}
    for name, t in tensors.items():
        if name.startswith("lm_head."):  # a quantized model's copy of wte, not a parameter of its own
            continue
        t = (t.dequantize() if hasattr(t, "qdata") else t).detach().float().cpu()  # torchao's int8 weights
        # A copy, never a view: the live tensors keep changing as training goes on.
        out[_canonical_name(name)] = (t.T if _is_linear_kernel(name) else t).numpy().copy()
    return out


def from_canonical_like(model: GPT, arrays: dict) -> dict[str, torch.Tensor]:
    """The inverse of to_canonical for per-parameter arrays (e.g. optimizer moments)."""
    out = {}
    for name, p in model.named_parameters():
        value = torch.tensor(arrays[_canonical_name(name)], device=p.device)
        out[name] = value.T.contiguous() if _is_linear_kernel(name) else value
    return out
