"""Sampling with a KV cache in JAX: the whole generation is one compiled loop."""
import functools

import jax
import jax.numpy as jnp

from common.backend import XLA_DECODE_OPTIONS, cache_windows
from common.sampling import top_k_bound
from jax_impl.model import KVCache
from jax_impl.train import StaticGraph


def filter_logits(logits, temperature, top_k=None, top_p=None, k_bound: int | None = None):
    """(B, V) logits -> scaled logits outside top-k, then outside the top-p nucleus, at -inf.

    The rules of common.sampling.filter_logits. None switches a filter off; the values may be traced,
    so changing them does not recompile. A traced top_k needs its k_bound (common.sampling.top_k_bound),
    a number; a number top_k has it by default.
    """
    logits = logits.astype(jnp.float32) / temperature
    if top_k is not None:
        k_bound = k_bound or top_k_bound(top_k, logits.shape[-1])
        largest = jax.lax.top_k(logits, k_bound)[0]  # (B, k_bound), in descending order
        kth = jnp.take(largest, jnp.minimum(top_k, k_bound) - 1, axis=-1)
        logits = jnp.where(logits < kth[..., None], -jnp.inf, logits)
    if top_p is not None:
        order = jnp.argsort(-logits, axis=-1, stable=True)  # most likely first, ties by index
        sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
        probs = jax.nn.softmax(sorted_logits, axis=-1)
        mass_before = jnp.cumsum(probs, axis=-1) - probs
        sorted_logits = jnp.where(mass_before >= top_p, -jnp.inf, sorted_logits)
        nucleus = jnp.take_along_axis(sorted_logits, jnp.argsort(order, axis=-1), axis=-1)  # unsort
        logits = jnp.where(top_p < 1.0, nucleus, logits)
    return logits


def sample_next(logits, temperature, top_k, top_p, keys, greedy: bool, k_bound: int | None = None):
    """(B, V) logits -> (B,) token ids; keys is (B,), one random key per row, so a row's draw
    depends on its own stream alone, not on the rows beside it."""
    if greedy:
        return jnp.argmax(logits, axis=-1)
    filtered = filter_logits(logits, temperature, top_k, top_p, k_bound)
    return jax.vmap(lambda key, row: jax.random.categorical(key, row))(keys, filtered)


@functools.partial(jax.jit, static_argnums=0, static_argnames=("use_cache", "greedy", "k_bound", "prefill_len"),
                   donate_argnums=2, compiler_options=XLA_DECODE_OPTIONS)
def generate(graph: StaticGraph, leaves: list, tokens, prompt_len, max_new_tokens, seeds, temperature=1.0, top_k=None,
             top_p=None, *, use_cache: bool = True, greedy: bool = False, k_bound: int | None = None,
             prefill_len: int | None = None):
    """Fill tokens[:, prompt_len:prompt_len + max_new_tokens] after the prompts in tokens[:, :prompt_len].

    The model comes split as the backend keeps it: `graph`, the static structure of its (model,
    optimizer) pair in eval mode, and `leaves`, their arrays. jax.jit rather than nnx.jit, which
    walks the object graph in Python on every call: on the cpu-baby model that was half of the time
    of 63 cached tokens, and its garbage made Python's collector run inside timed calls.
    tokens is a fixed (B, S) buffer with S >= max(prompt_len + max_new_tokens, block_size), donated
    and filled in place; only its shape is static, so every token count that fits in S shares one
    compiled loop, as do the prompt lengths of one prefill window (prefill_len, a number; see
    common.backend.prefill_length) and the sampling values (top-k's k_bound aside, a number; see
    common.sampling.top_k_bound). Row b samples from the key of seeds[b] (uint32), folded with each
    token's position, so chunks of a generation continue its stream. use_cache needs prompt_len <=
    block_size. The cache holds at most block_size positions. Once the context is longer, each step
    runs the model on the last block_size tokens, exactly as without a cache: with learned absolute
    position embeddings, every token's position changes when the window slides.
    """
    model, _ = graph.merge(leaves)

    def new_cache(slots):
        return KVCache.empty(model.config, tokens.shape[0], model.wte.dtype, slots)

    keys = jax.vmap(jax.random.key)(seeds)

    def sample(logits, i):
        position_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, prompt_len + i)
        return sample_next(logits, temperature, top_k, top_p, position_keys, greedy, k_bound)

    return decode(model, new_cache, model.config.block_size, tokens, prompt_len, sample,
                  max_new_tokens=max_new_tokens, use_cache=use_cache, prefill_len=prefill_len)


def decode(forward, new_cache, block_size: int, tokens, prompt_len, sample, *, max_new_tokens: int,
           use_cache: bool, prefill_len: int | None):
    """The loop of `generate` for any forward(ids, cache=None) -> (logits, cache) and KV cache; the
    Keras GPT has the same loop in keras.ops (tensorflow_impl/generate.py). new_cache(slots) makes an
    empty cache of `slots` positions; prefill_len (common.backend.prefill_length) is the window the
    prompt is prefilled in and the cache's first length, None without a cache."""
    B, S = tokens.shape
    assert S >= block_size, "the token buffer must hold at least block_size positions"

    def write(tokens, at, ids):
        return jax.lax.dynamic_update_slice(tokens, ids[:, None].astype(tokens.dtype), (0, at))

    def windowed_step(i, tokens):
        # A full block_size window keeps the shape static; while the context is shorter, causality
        # makes the columns after it irrelevant to the logits at its last position.
        length = prompt_len + i
        start = jnp.maximum(length - block_size, 0)
        logits, _ = forward(jax.lax.dynamic_slice_in_dim(tokens, start, block_size, axis=1))  # (B, bs, V)
        last = jax.lax.dynamic_index_in_dim(logits, length - 1 - start, axis=1, keepdims=False)  # (B, V)
        return write(tokens, length, sample(last, i))

    def cached_step(i, carry):
        tokens, cache = carry
        length = prompt_len + i
        logits, cache = forward(jax.lax.dynamic_slice_in_dim(tokens, length - 1, 1, axis=1), cache=cache)
        return write(tokens, length, sample(logits[:, -1], i)), cache

    n_cached = 0
    if use_cache:
        # Prefill on the prompt padded to a fixed window; the padding's keys land in cache slots at
        # positions >= prompt_len, which every later query masks until decoding overwrites them.
        logits, cache = forward(tokens[:, :prefill_len], cache=new_cache(prefill_len))
        cache = cache._replace(length=prompt_len)
        last = jax.lax.dynamic_index_in_dim(logits, prompt_len - 1, axis=1, keepdims=False)  # (B, V)
        tokens = write(tokens, prompt_len, sample(last, 0))
        # Steps whose context (prompt_len + i tokens) still fits in block_size extend the cache.
        n_cached = jnp.minimum(block_size - prompt_len + 1, max_new_tokens)
        # The cache grows through cache_windows: step i stores position prompt_len + i - 1, so the
        # steps before slots - prompt_len + 1 fit in `slots`, and attention reads no more than that.
        done = 1
        for slots in (w for w in cache_windows(block_size) if w >= prefill_len):
            end = jnp.clip(slots - prompt_len + 1, done, n_cached)
            tokens, cache = jax.lax.fori_loop(done, end, cached_step, (tokens, cache.grown(slots)))
            done = end
    return jax.lax.fori_loop(n_cached, max_new_tokens, windowed_step, tokens)
