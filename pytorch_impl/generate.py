"""Sampling with a KV cache in PyTorch."""
import torch
from torch.nn import functional as F

from pytorch_impl.model import GPT, KVCache


def sample_next(logits, temperature: float, top_k: int | None, top_p: float | None, generator):
    """(B, V) logits -> (B, 1) token ids, by the rules of common.sampling.filter_logits."""
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    return torch.multinomial(F.softmax(logits, dim=-1), num_samples=1, generator=generator)


@torch.no_grad()
def generate(model: GPT, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None, top_p=None,
             generator=None, use_cache: bool = True):
    """(B, P) prompt -> (B, P + max_new_tokens).

    The cache holds at most block_size positions. Once the context is longer, each step runs the
    model on the last block_size tokens, exactly as the no-cache path does: with learned absolute
    position embeddings, every token's position changes when the window slides.
    """
    block_size = model.config.block_size
    cache = None
    for _ in range(max_new_tokens):
        if use_cache and idx.size(1) <= block_size:
            if cache is None:
                cache = KVCache(model.config, idx.size(0), idx.device, model.wte.weight.dtype)
                logits, _ = model(idx, cache=cache)
            else:
                logits, _ = model(idx[:, -1:], cache=cache)
        else:
            logits, _ = model(idx[:, -block_size:])
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, generator)
        idx = torch.cat((idx, next_id), dim=1)
    return idx
