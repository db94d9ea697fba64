"""Sampling with a KV cache in JAX: the whole generation is one compiled loop."""
import functools

import jax
import jax.numpy as jnp

from common.backend import XLA_DECODE_OPTIONS
from common.decode import DecodeProgram, FilterOps, LoopOps, decode_loop, filter_logits
from jax_impl.model import KVCache
from jax_impl.train import StaticGraph


def sample_next(logits, temperature, top_k, top_p, keys, greedy: bool, k_bound: int | None = None):
    """(B, V) logits -> (B,) token ids; keys is (B,), one random key per row, so a row's draw
    depends on its own stream alone, not on the rows beside it."""
    if greedy:
        return jnp.argmax(logits, axis=-1)
    filtered = filter_logits(FILTER_OPS, logits, temperature, top_k, top_p, k_bound)
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


# filter_logits' primitives in JAX.
FILTER_OPS = FilterOps(
    cast=lambda x, dtype: x.astype(dtype), top_k=jax.lax.top_k, take=jnp.take, minimum=jnp.minimum,
    where=jnp.where, softmax=jax.nn.softmax, cumsum=jnp.cumsum, take_along_axis=jnp.take_along_axis,
    argsort=jnp.argsort)
