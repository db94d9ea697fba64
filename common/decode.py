"""One decode plan, made once by Backend.generate_batch and passed down: what every framework's
generation needs to know beyond its model, and the window schedule its cache follows.

The compiled loop of JAX and of the Keras model (on TensorFlow and on JAX) is written here once,
over a few array primitives each framework hands in (LoopOps), and so is its sampling filter
(FilterOps): both were the same line for line. PyTorch runs the same schedule in Python around
compiled steps (pytorch_impl/generate.py). Nothing here imports a framework.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, NamedTuple

from common.sampling import top_k_bound


def cache_windows(block_size: int) -> list[int]:
    """The lengths a decode's KV cache takes as it fills: block_size / 8, / 4, / 2 and block_size.
    Attention reads every slot of the cache at every step, the empty ones masked: a block_size cache
    from the start made a one-token prompt's first steps read 8 times the slots they use. Each
    length compiles its own programs, so there are few."""
    return sorted({block_size // parts for parts in (8, 4, 2, 1)} - {0})


def prefill_length(prompt_len: int, block_size: int) -> int:
    """The window a prompt of up to block_size tokens is prefilled in, and the cache's first length:
    the first of cache_windows that holds it. Padding every prompt to block_size made prefill as
    slow for 32 tokens as for 256."""
    return next(window for window in cache_windows(block_size) if prompt_len <= window)


def token_buffer_length(prompt_len: int, max_new_tokens: int, block_size: int) -> int:
    """The length of a generation's token buffer, in few sizes, since each compiles its own decode
    loop: the prompt rounded up to whole blocks (a prompt within block_size counts as one), plus
    the new tokens, rounded up to block_size times a power of two. Any prompt within block_size
    with any token count up to a bucket's shares one program, and a generation streamed in
    chunks compiles a handful, not one per chunk."""
    blocks = max(1, -(-prompt_len // block_size)) + -(-max_new_tokens // block_size)
    return block_size * 2 ** (blocks - 1).bit_length()


def _clip(value, low, high):
    return min(max(value, low), high)


def window_schedule(prompt_len, max_new_tokens, block_size: int, prefill_window: int, *, clip=_clip, minimum=min):
    """How a cached decode spends its cache windows: ([(slots, first, end), ...], n_cached).

    New token 0 comes from the prefill; tokens first..end - 1 are decoded with a cache of `slots`
    positions, the windows of cache_windows from prefill_window up; tokens n_cached.. have no cache
    (their context is longer than block_size). Token i stores position prompt_len + i - 1, so the
    tokens before slots - prompt_len + 1 fit in `slots`, and attention reads no more than that.
    Pure: with numbers, numbers; a compiled loop whose prompt_len and max_new_tokens are traced hands
    in its own clip and minimum.
    """
    n_cached = minimum(block_size - prompt_len + 1, max_new_tokens)  # contexts that still fit in block_size
    spans, done = [], 1
    for slots in (w for w in cache_windows(block_size) if w >= prefill_window):
        end = clip(slots - prompt_len + 1, done, n_cached)
        spans.append((slots, done, end))
        done = end
    return spans, n_cached


# slots=True: no weak reference to the objects, so tf.function keys its traces on their values.
@dataclasses.dataclass(frozen=True, slots=True)
class SamplingForm:
    """How tokens are drawn, as far as a compiled decode is specialised on it; the values
    (temperature, top_k, top_p) reach the program as tensors, so new values compile nothing."""
    greedy: bool
    k_bound: int | None = None  # the static k of the top-k op (common.sampling.top_k_bound); None: no top-k
    top_p: bool = False         # whether the nucleus filter is on


@dataclasses.dataclass(frozen=True, slots=True)
class DecodeProgram:
    """What one compiled decode loop is specialised on, beside the shapes of its inputs."""
    block_size: int
    prefill_window: int | None  # the prompt's prefill window and the cache's first length; None: no cache
    sampling: SamplingForm

    @property
    def use_cache(self) -> bool:
        return self.prefill_window is not None


@dataclasses.dataclass(frozen=True, slots=True)
class DecodePlan:
    """One generate_batch call, decided once: the prompt, the buffer, the cache and the sampling."""
    prompt_len: int
    max_new_tokens: int
    buffer_len: int            # the token buffer's length (token_buffer_length)
    temperature: float | None  # None when greedy; the filters below are None when off
    top_k: int | None
    top_p: float | None
    program: DecodeProgram

    @property
    def greedy(self) -> bool:
        return self.program.sampling.greedy

    def schedule(self) -> tuple[list[tuple[int, int, int]], int]:
        """window_schedule for this plan's numbers (a cached plan only)."""
        return window_schedule(self.prompt_len, self.max_new_tokens, self.program.block_size,
                               self.program.prefill_window)


def decode_plan(prompt_len: int, max_new_tokens: int, block_size: int, vocab_size: int, temperature: float,
                top_k: int | None, top_p: float | None, use_cache: bool) -> DecodePlan:
    """The plan for checked options: filters that change nothing are off, a prompt longer than
    block_size decodes without a cache, greedy decoding carries no sampling values."""
    greedy = temperature == 0
    top_k = None if greedy or top_k is None or top_k >= vocab_size else int(top_k)
    top_p = None if greedy or top_p is None or top_p >= 1.0 else float(top_p)
    sampling = SamplingForm(greedy, None if top_k is None else top_k_bound(top_k, vocab_size), top_p is not None)
    window = prefill_length(prompt_len, block_size) if use_cache and prompt_len <= block_size else None
    return DecodePlan(prompt_len, max_new_tokens, token_buffer_length(prompt_len, max_new_tokens, block_size),
                      None if greedy else float(temperature), top_k, top_p, DecodeProgram(block_size, window, sampling))


@dataclasses.dataclass(frozen=True)
class DecodeConfig:
    """How inference runs, apart from how the model trains."""
    compile: bool = False  # PyTorch: torch.compile the decode steps (XLA frameworks always compile)


class LoopOps(NamedTuple):
    """The array primitives decode_loop needs, from one framework; positions may be traced."""
    fori_loop: Callable   # (lower, upper, body(i, carry) -> carry, carry) -> carry
    minimum: Callable
    maximum: Callable
    clip: Callable        # (x, low, high)
    columns: Callable     # (tokens, start, length) -> tokens[:, start:start + length]
    column: Callable      # (logits, index) -> logits[:, index]
    write: Callable       # (tokens, at, ids) -> tokens with tokens[:, at] = ids
    holding: Callable     # (cache, n) -> the cache, counting n positions as filled


def decode_loop(ops: LoopOps, program: DecodeProgram, forward, new_cache, tokens, prompt_len, max_new_tokens, sample):
    """Fill tokens[:, prompt_len:prompt_len + max_new_tokens] after the prompts, as one compiled loop.

    forward(ids, cache=None) -> (logits, cache) is the model; new_cache(slots) makes an empty cache
    of `slots` positions; sample(logits, i) -> (B,) ids draws new token i. tokens is a fixed (B, S)
    buffer with S >= max(prompt_len + max_new_tokens, block_size); only its shape is static, so every
    token count that fits in S shares one compiled loop, as do the prompt lengths of one prefill
    window. The cache holds at most block_size positions. Once the context is longer, each step runs
    the model on the last block_size tokens, exactly as without a cache: with learned absolute
    position embeddings, every token's position changes when the window slides.
    """
    block_size = program.block_size

    def windowed_step(i, tokens):
        # A full block_size window keeps the shape static; while the context is shorter, causality
        # makes the columns after it irrelevant to the logits at its last position.
        length = prompt_len + i
        start = ops.maximum(length - block_size, 0)
        logits, _ = forward(ops.columns(tokens, start, block_size))  # (B, block_size, V)
        return ops.write(tokens, length, sample(ops.column(logits, length - 1 - start), i))

    def cached_step(i, carry):
        tokens, cache = carry
        length = prompt_len + i
        logits, cache = forward(ops.columns(tokens, length - 1, 1), cache=cache)
        return ops.write(tokens, length, sample(ops.column(logits, 0), i)), cache

    n_cached = 0
    if program.use_cache:
        # Prefill on the prompt padded to a fixed window; the padding's keys land in cache slots at
        # positions >= prompt_len, which every later query masks until decoding overwrites them.
        window = program.prefill_window
        logits, cache = forward(tokens[:, :window], cache=new_cache(window))
        cache = ops.holding(cache, prompt_len)
        tokens = ops.write(tokens, prompt_len, sample(ops.column(logits, prompt_len - 1), 0))
        spans, n_cached = window_schedule(prompt_len, max_new_tokens, block_size, window, clip=ops.clip,
                                          minimum=ops.minimum)
        for slots, first, end in spans:
            tokens, cache = ops.fori_loop(first, end, cached_step, (tokens, cache.grown(slots)))
    return ops.fori_loop(n_cached, max_new_tokens, windowed_step, tokens)


class FilterOps(NamedTuple):
    """The array primitives filter_logits needs, under keras.ops' names and signatures: keras.ops
    serves as it is, and JAX's jax.numpy, jax.lax.top_k and jax.nn.softmax take the same arguments."""
    cast: Callable             # (x, dtype)
    top_k: Callable            # (x, k) -> (values, indices) of the k largest, descending, ties by index
    take: Callable             # (x, index, axis)
    minimum: Callable
    where: Callable
    softmax: Callable          # (x, axis)
    cumsum: Callable           # (x, axis)
    take_along_axis: Callable  # (x, indices, axis)
    argsort: Callable          # (x, axis)


def filter_logits(ops: FilterOps, logits, temperature, top_k=None, top_p=None, k_bound: int | None = None):
    """(B, V) logits -> (B, V) scaled logits, -inf outside top-k and then outside the top-p nucleus.

    The rules of common.sampling.filter_logits. None switches a filter off; the values may be traced,
    so new values compile nothing. A traced top_k needs its k_bound (common.sampling.top_k_bound), a
    number; a number top_k has it by default.
    """
    scaled = ops.cast(logits, "float32") / temperature
    if top_k is not None:
        k_bound = k_bound or top_k_bound(top_k, scaled.shape[-1])
        largest, _ = ops.top_k(scaled, k_bound)  # (B, k_bound), in descending order
        kth = ops.take(largest, ops.minimum(top_k, k_bound) - 1, axis=1)[:, None]  # (B, 1)
        scaled = ops.where(scaled < kth, float("-inf"), scaled)
    if top_p is not None:
        # top_k over the whole vocabulary is a stable descending sort: ties keep vocabulary order, as
        # numpy's stable argsort does.
        sorted_logits, order = ops.top_k(scaled, scaled.shape[-1])
        probs = ops.softmax(sorted_logits, axis=-1)
        mass_before = ops.cumsum(probs, axis=-1) - probs
        # At top_p 1 rounding may put mass_before at 1 for the last tokens: no filter, as the rules say.
        sorted_logits = ops.where((mass_before >= top_p) & (top_p < 1.0), float("-inf"), sorted_logits)
        scaled = ops.take_along_axis(sorted_logits, ops.argsort(order, axis=-1), axis=-1)  # back to vocab order
    return scaled
