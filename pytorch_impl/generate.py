"""Sampling with a KV cache in PyTorch."""
import torch
from torch.nn import functional as F

from common.sampling import stream_uniforms
from pytorch_impl.model import GPT, KVCache


def sample_next(logits, temperature: float, top_k: int | None, top_p: float | None, uniforms):
    """(B, V) logits -> (B, 1) token ids, by the rules of common.sampling.filter_logits.

    uniforms is (B,), one number in [0, 1) per row: each row draws by inverting its own cumulative
    distribution, so its token depends on its own stream alone, not on the rows beside it.
    """
    if temperature == 0:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V)
    # The first token whose cumulative mass passes u; tokens filtered out add no mass, so never win.
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp(max=logits.size(-1) - 1)


@torch.no_grad()
def generate(model: GPT, idx, max_new_tokens: int, temperature: float = 1.0, top_k=None, top_p=None,
             seeds=(0,), use_cache: bool = True):
    """(B, P) prompts -> (B, P + max_new_tokens); row b samples from the stream of seeds[b].

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
        # The draw for the token at position idx.size(1), keyed by (seed, position).
        uniforms = torch.from_numpy(stream_uniforms(seeds, idx.size(1))) if temperature > 0 else None
        next_id = sample_next(logits[:, -1, :], temperature, top_k, top_p, uniforms)
        idx = torch.cat((idx, next_id), dim=1)
    return idx
