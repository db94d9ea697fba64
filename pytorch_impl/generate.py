"""Sampling with a KV cache in PyTorch, after gpt-fast: fixed-shape steps (`prefill`, `decode_one_token`,
`window_logits`) that torch.compile compiles once per batch size (prefill and decode_one_token once per
cache window, decode_one_token once per sampling form as well), driven by a Python loop."""
from typing import Callable, NamedTuple

import numpy as np
import torch
from torch.nn import functional as F

from common.decode import DecodePlan
from common.sampling import stream_uniforms, top_k_bound
from pytorch_impl.model import GPT, KVCache


def sample_next(logits, temperature, top_k, top_p, uniforms, k_bound: int | None = None):
    """(B, V) logits -> (B, 1) token ids, by the rules of common.sampling.filter_logits; greedy when
    there are no uniforms to draw with (temperature 0).

    The options are numbers or 0-d tensors, None switching a filter off: a compiled step takes tensors,
    which it reads at every call, so new values compile nothing. A tensor top_k needs its k_bound
    (top_k_bound), a number; a number top_k has it by default. uniforms is (B,), one number in [0, 1)
    per row: each row draws by inverting its own cumulative distribution, so its token depends on its
    own stream alone, not on the rows beside it.
    """
    if uniforms is None:
        return logits.argmax(dim=-1, keepdim=True)
    logits = logits.float() / temperature
    if top_k is not None:
        k_bound = k_bound or top_k_bound(top_k, logits.size(-1))
        largest = torch.topk(logits, k_bound).values  # (B, k_bound), in descending order
        last = torch.as_tensor(top_k, device=logits.device).clamp(max=k_bound) - 1
        kth = largest.gather(-1, last.expand(logits.size(0), 1))
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = F.softmax(sorted_logits, dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        # At top_p 1 rounding may put mass_before at 1 for the last tokens: no filter, as the rules say.
        nucleus = torch.empty_like(logits).scatter_(-1, order, sorted_logits)
        logits = torch.where(torch.as_tensor(top_p, device=logits.device) < 1.0, nucleus, logits)
    cdf = F.softmax(logits, dim=-1).cumsum(dim=-1)  # (B, V)
    # The first token whose cumulative mass passes u; tokens filtered out add no mass, so never win.
    target = uniforms.to(cdf)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, target, right=True).clamp(max=logits.size(-1) - 1)


def prefill(model: GPT, window, cache: KVCache):
    """(B, W) ids, the prompt padded after its end to a window of common.decode.prefill_length ->
    (B, W, V) logits, the cache's window of W slots filled. One shape for the prompt lengths of a
    window: the padding's keys land in slots after the prompt, which every later query masks until
    decoding overwrites them."""
    cache.length.zero_()
    return model(window, cache=cache)[0]


def decode_one_token(model: GPT, token, cache: KVCache, uniforms=None, temperature=None, top_k=None, top_p=None,
                     k_bound=None):
    """(B, 1) ids, the newest token -> (B, 1) ids of the next one, drawn as sample_next draws; the cache
    one position longer. Sampling inside the step, as gpt-fast does, leaves the loop nothing to run
    between two compiled calls but the step itself."""
    return sample_next(model(token, cache=cache)[0][:, -1], temperature, top_k, top_p, uniforms, k_bound)


def window_logits(model: GPT, window):
    """(B, block_size) ids -> (B, block_size, V) logits, no cache: the step once the window slides."""
    return model(window)[0]


class Steps(NamedTuple):
    """The three fixed-shape functions a generation runs, eager or compiled."""
    prefill: Callable
    decode_one_token: Callable
    window_logits: Callable


EAGER = Steps(prefill, decode_one_token, window_logits)


def compile_options(device_type: str) -> dict:
    """torch.compile's arguments for the decode steps of one model at one batch size on this device type."""
    if device_type == "cuda":
        # Each step recorded as a CUDA graph and replayed, which takes the per-kernel launch cost out of
        # every token.
        return {"mode": "reduce-overhead", "fullgraph": True, "dynamic": False}
    # Each option was kept because it made a token faster (timings: results/cpu-infer-cpu-baby-xeon-amx/NOTES.md):
    # - dynamic=False: one program per batch size, rather than a recompile into a shape-generic one.
    # - cpp_wrapper: the code around the kernels in C++, not Python.
    # - decompose_mm_pass: at batch 1 each (1, C) @ (C, N) product becomes a reduction that Inductor
    #   fuses with its neighbours, where a BLAS call has a fixed cost; with the attention written out
    #   (model.py) the whole step is one kernel.
    # - No guards, each set of steps with programs of its own (isolate_recompiles): a set serves one
    #   model at one batch size and sampling form (Backend._decode_steps), so nothing a guard would
    #   check changes between its calls, and checking Dynamo's ~900 guards costs every token.
    # - Sampling inside decode_one_token.
    # - memory_planning: the step's ~70 intermediate buffers carved from one allocation.
    return {"fullgraph": True, "dynamic": False, "isolate_recompiles": True,
            "options": {"cpp_wrapper": True, "post_grad_fusion_options": {"decompose_mm_pass": {}},
                        "memory_planning": True, "guard_filter_fn": torch.compiler.skip_all_guards_unsafe}}


def compiled_steps(device_type: str, sharing: Steps | None = None) -> Steps:
    """The steps under torch.compile (compile_options), for one model at one batch size and one
    sampling form (common.decode.SamplingForm); each compiles on its first call. `sharing`: compiled steps of the same model and
    batch size in another sampling form, whose prefill and window_logits these reuse."""
    if device_type != "cuda":
        def compiled(step):
            return torch.compile(step, **compile_options(device_type))
    else:
        def compiled(step):
            graph = torch.compile(step, **compile_options(device_type))

            def replay(*args):
                # The loop keeps a call's output past the next replay, which overwrites the graph's
                # memory (the new token is the next step's input): so it is copied out, and every
                # replay starts afresh.
                torch.compiler.cudagraph_mark_step_begin()
                return graph(*args).clone()
            return replay
    if sharing is not None:
        return sharing._replace(decode_one_token=per_cache_window(decode_one_token, compiled))
    return Steps(per_cache_window(prefill, compiled), per_cache_window(decode_one_token, compiled),
                 compiled(window_logits))


def per_cache_window(step, compiled):
    """step(model, ids, cache, ...) compiled once for each cache window it meets (KVCache.window): a
    compiled step checks no guards, so one program must never see two shapes."""
    programs = {}

    def run(model, ids, cache: KVCache, *args):
        slots = cache.slots.numel()
        if slots not in programs:
            programs[slots] = compiled(step)
        return programs[slots](model, ids, cache, *args)
    return run


def generate(model: GPT, tokens, plan: DecodePlan, seeds=(0,), cache: KVCache | None = None, steps: Steps = EAGER):
    """Fill tokens[:, prompt_len:prompt_len + max_new_tokens] after the prompts as the plan says; row b
    samples from the stream of seeds[b]. The loop of common.decode.decode_loop, in Python around
    compiled steps; the caller turns gradients off.

    tokens is a (B, plan.buffer_len) buffer. `cache` (used when the plan has one) holds at most
    block_size positions. Once the context is longer, each step runs the model on the last block_size
    tokens, exactly as the no-cache path does: with learned absolute position embeddings, every
    token's position changes when the window slides.
    """
    block_size, prompt_len, max_new_tokens = plan.program.block_size, plan.prompt_len, plan.max_new_tokens
    k_bound = plan.program.sampling.k_bound
    # Tensors, which compiled steps read at every call; the steps are specialised on the sampling form.
    options = [None if value is None else torch.tensor(value, device=tokens.device)
               for value in (plan.temperature, plan.top_k, plan.top_p)]
    if not plan.greedy:  # (max_new_tokens, B): row i draws token prompt_len + i, keyed by (seed, position)
        positions = prompt_len + np.arange(max_new_tokens)
        uniforms = torch.from_numpy(stream_uniforms(seeds, positions[:, None])).to(tokens.device)

    def uniforms_at(i: int):  # (B,) the numbers that draw token prompt_len + i; None when greedy
        return None if plan.greedy else uniforms[i]

    def draw(logits, i):  # (B, V) -> (B, 1) the token at position prompt_len + i
        return sample_next(logits, *options, uniforms_at(i), k_bound)

    def ids(start: int, end: int):  # (B, end - start) tokens
        # A copy: a view's strides hold the buffer's length, and compiled steps would specialise on it.
        return tokens[:, start:end].clone(memory_format=torch.contiguous_format)

    n_cached = 0
    if plan.program.use_cache:
        window = plan.program.prefill_window
        logits = steps.prefill(model, ids(0, window), cache.window(window))
        cache.length.fill_(prompt_len)
        new = [draw(logits[:, prompt_len - 1], 0)]
        spans, n_cached = plan.schedule()
        for slots, first, end in spans:
            for i in range(first, end):
                new.append(steps.decode_one_token(model, new[-1], cache.window(slots), uniforms_at(i), *options,
                                                  k_bound))
        tokens[:, prompt_len:prompt_len + n_cached] = torch.cat(new, dim=1)
    for i in range(n_cached, max_new_tokens):
        # A full block_size window keeps the shape fixed; while the context is shorter, causality
        # makes the columns after it irrelevant to the logits at its last position.
        length = prompt_len + i
        start = max(length - block_size, 0)
        logits = steps.window_logits(model, ids(start, start + block_size))
        tokens[:, length] = draw(logits[:, length - 1 - start], i)[:, 0]
    return tokens
