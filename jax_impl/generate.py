"""Sampling with a KV cache in JAX: the whole generation is one compiled loop."""
import functools

import jax
import jax.numpy as jnp

from common.backend import XLA_DECODE_OPTIONS
from common.decode import DecodeProgram, LoopOps, decode_loop
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


@functools.partial(jax.jit, static_argnums=0, static_argnames=("program",), donate_argnums=2,
                   compiler_options=XLA_DECODE_OPTIONS)
def generate(graph: StaticGraph, leaves: list, tokens, prompt_len, max_new_tokens, seeds, temperature=None, top_k=None,
             top_p=None, *, program: DecodeProgram):
    """Fill tokens[:, prompt_len:prompt_len + max_new_tokens] after the prompts in tokens[:, :prompt_len],
    as common.decode.decode_loop does, under the plan's `program` (static: its prefill window and
    sampling form); the numbers and sampling values are traced, so they compile nothing new.

    The model comes split as the backend keeps it: `graph`, the static structure of its (model,
    optimizer) pair in eval mode, and `leaves`, their arrays. jax.jit rather than nnx.jit, which
    walks the object graph in Python on every call, and whose garbage made Python's collector run
    inside timed calls. tokens is a fixed (B, S) buffer, donated and filled in place. Row b samples
    from the key of seeds[b] (uint32), folded with each token's position, so chunks of a generation
    continue its stream.
    """
    model, _ = graph.merge(leaves)
    sampling = program.sampling

    def new_cache(slots):
        return KVCache.empty(model.config, tokens.shape[0], model.wte.dtype, slots)

    keys = jax.vmap(jax.random.key)(seeds)

    def sample(logits, i):
        position_keys = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys, prompt_len + i)
        return sample_next(logits, temperature, top_k, top_p, position_keys, sampling.greedy, sampling.k_bound)

    return decode_loop(LOOP_OPS, program, model, new_cache, tokens, prompt_len, max_new_tokens, sample)


# decode_loop's primitives in JAX.
LOOP_OPS = LoopOps(
    fori_loop=jax.lax.fori_loop, minimum=jnp.minimum, maximum=jnp.maximum, clip=jnp.clip,
    columns=lambda tokens, start, length: jax.lax.dynamic_slice_in_dim(tokens, start, length, axis=1),
    column=lambda logits, index: jax.lax.dynamic_index_in_dim(logits, index, axis=1, keepdims=False),
    write=lambda tokens, at, ids: jax.lax.dynamic_update_slice(tokens, ids[:, None].astype(tokens.dtype), (0, at)),
    holding=lambda cache, n: cache._replace(length=n))
