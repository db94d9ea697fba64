"""Sampling with a KV cache for the Keras GPT, written once in keras.ops for both of Keras' backends.

TensorFlow compiles the whole loop as one XLA computation (`compiled_generate`, here); Keras on JAX
compiles the same loop with jax.jit (tensorflow_impl/keras_jax.py). Only the random draw differs:
each backend has its own stateless random numbers.
"""
from keras import ops

from common.backend import cache_windows
from common.sampling import top_k_bound
from tensorflow_impl.model import GPT, KVCache


def filter_logits(logits, temperature, top_k=None, top_p=None, k_bound: int | None = None):
    """(B, V) logits -> (B, V) scaled logits, -inf outside top-k and then outside the top-p nucleus.

    The rules of common.sampling.filter_logits. None switches a filter off; the values may be tensors,
    so new values compile nothing. A tensor top_k needs its k_bound (common.sampling.top_k_bound), a
    number; a number top_k has it by default.
    """
    scaled = ops.cast(logits, "float32") / temperature
    if top_k is not None:
        k_bound = k_bound or top_k_bound(top_k, ops.shape(scaled)[-1])
        largest, _ = ops.top_k(scaled, k_bound)  # (B, k_bound), in descending order
        kth = ops.expand_dims(ops.take(largest, ops.minimum(top_k, k_bound) - 1, axis=1), -1)  # (B, 1)
        scaled = ops.where(scaled < kth, float("-inf"), scaled)
    if top_p is not None:
        # top_k over the whole vocabulary is a stable descending sort on both backends: ties keep
        # vocabulary order, as numpy's stable argsort does.
        sorted_logits, order = ops.top_k(scaled, ops.shape(scaled)[-1])
        probs = ops.softmax(sorted_logits, axis=-1)
        mass_before = ops.cumsum(probs, axis=-1) - probs
        sorted_logits = ops.where((mass_before >= top_p) & (top_p < 1.0), float("-inf"), sorted_logits)
        scaled = ops.take_along_axis(sorted_logits, ops.argsort(order, axis=-1), axis=-1)  # back to vocab order
    return scaled


def decode(forward, new_cache, block_size: int, tokens, prompt_len, sample, *, max_new_tokens: int,
           use_cache: bool, prefill_len: int | None):
    """Fill tokens[:, prompt_len:prompt_len + max_new_tokens] after the prompt in tokens[:, :prompt_len].

    forward(ids, cache=None) -> (logits, cache) is the model; new_cache(slots) makes an empty cache
    of `slots` positions; sample(logits, i) -> (B,) ids draws the i-th new token. tokens is a fixed
    (B, S) buffer with S >= max(prompt_len + max_new_tokens, block_size); only its shape is static,
    so every token count that fits in S shares one compiled loop, as do the prompt lengths of one
    prefill window: prefill_len (common.backend.prefill_length), the cache's first length, None
    without a cache. use_cache needs prompt_len <= block_size. The cache holds at most block_size
    positions. Once the context is longer, each step runs the model on the last block_size tokens,
    exactly as without a cache: with learned absolute position embeddings, every token's position
    changes when the window slides. The loop of jax_impl/generate.py, in keras.ops.
    """
    B = ops.shape(tokens)[0]

    def write(tokens, at, ids):
        return ops.slice_update(tokens, (0, at), ops.cast(ids[:, None], tokens.dtype))

    def windowed_step(i, tokens):
        # A full block_size window keeps the shape static; while the context is shorter, causality
        # makes the columns after it irrelevant to the logits at its last position.
        length = prompt_len + i
        start = ops.maximum(length - block_size, 0)
        logits, _ = forward(ops.slice(tokens, (0, start), (B, block_size)))  # (B, bs, V)
        return write(tokens, length, sample(ops.take(logits, length - 1 - start, axis=1), i))  # (B, V)

    def cached_step(i, carry):
        tokens, cache = carry
        length = prompt_len + i
        logits, cache = forward(ops.slice(tokens, (0, length - 1), (B, 1)), cache=cache)
        return write(tokens, length, sample(logits[:, -1], i)), cache

    n_cached = 0
    if use_cache:
        # Prefill on the prompt padded to a fixed window; the padding's keys land in cache slots at
        # positions >= prompt_len, which every later query masks until decoding overwrites them.
        logits, cache = forward(tokens[:, :prefill_len], cache=new_cache(prefill_len))
        cache = cache._replace(length=ops.convert_to_tensor(prompt_len, "int32"))
        tokens = write(tokens, prompt_len, sample(ops.take(logits, prompt_len - 1, axis=1), 0))  # (B, V)
        # Steps whose context (prompt_len + i tokens) still fits in block_size extend the cache.
        n_cached = ops.minimum(block_size - prompt_len + 1, max_new_tokens)
        # The cache grows through cache_windows: step i stores position prompt_len + i - 1, so the
        # steps before slots - prompt_len + 1 fit in `slots`, and attention reads no more than that.
        done = 1
        for slots in (w for w in cache_windows(block_size) if w >= prefill_len):
            end = ops.clip(slots - prompt_len + 1, done, n_cached)
            tokens, cache = ops.fori_loop(done, end, cached_step, (tokens, cache.grown(slots)))
            done = end
    return ops.fori_loop(n_cached, max_new_tokens, windowed_step, tokens)


def sample_next(logits, temperature, top_k, top_p, seeds, greedy: bool, k_bound: int | None = None):
    """TensorFlow's draw: (B, V) logits -> (B,) token ids. `seeds` is (B, 2) int32, one stateless RNG
    key per row, drawn row by row so that a row's token depends on its own key alone, not on the rows
    beside it."""
    import tensorflow as tf
    if greedy:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    filtered = filter_logits(logits, temperature, top_k, top_p, k_bound)
    return tf.map_fn(lambda row: tf.random.stateless_categorical(row[0][None], 1, seed=row[1], dtype=tf.int32)[0, 0],
                     (filtered, seeds), fn_output_signature=tf.int32)


def compiled_generate(model: GPT):
    """`decode` around this model as one XLA function on TensorFlow. The prompts' length, the token
    count and the sampling values are tensors; a new buffer shape retraces it, and so do a new
    prefill window and sampling form (greedy, which filters are on: None or a tensor, top-k's
    k_bound), as in JAX."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def run(tokens, prompt_len, max_new_tokens, temperature, top_k, top_p, seeds, use_cache, greedy, k_bound,
            prefill_len):
        def forward(ids, cache=None):
            return model(ids, cache=cache, training=False)

        def new_cache(slots):
            return KVCache.empty(model.config, tokens.shape[0], model.compute_dtype, slots)

        def sample(logits, i):
            # Stateless: row b's token at a position depends on (seeds[b], position) only, cache or not.
            position_seeds = tf.map_fn(lambda seed: tf.random.experimental.stateless_fold_in(seed, prompt_len + i),
                                       seeds)
            return sample_next(logits, temperature, top_k, top_p, position_seeds, greedy, k_bound)

        return decode(forward, new_cache, model.config.block_size, tokens, prompt_len, sample,
                      max_new_tokens=max_new_tokens, use_cache=use_cache, prefill_len=prefill_len)
    return run
