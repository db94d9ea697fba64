"""Sampling with a KV cache for the Keras GPT, written once in keras.ops for both of Keras' backends.

TensorFlow compiles the whole loop as one XLA computation (`compiled_generate`, here); Keras on JAX
compiles the same loop with jax.jit (tensorflow_impl/keras_jax.py). Only the random draw differs:
each backend has its own stateless random numbers.
"""
from keras import ops

from common.decode import DecodeProgram, FilterOps, LoopOps, decode_loop, filter_logits
from tensorflow_impl.model import GPT, KVCache


# decode_loop's primitives in keras.ops, for both Keras backends.
LOOP_OPS = LoopOps(
    fori_loop=ops.fori_loop, minimum=ops.minimum, maximum=ops.maximum, clip=ops.clip,
    columns=lambda tokens, start, length: ops.slice(tokens, (0, start), (ops.shape(tokens)[0], length)),
    column=lambda logits, index: ops.take(logits, index, axis=1),
    write=lambda tokens, at, ids: ops.slice_update(tokens, (0, at), ops.cast(ids[:, None], tokens.dtype)),
    holding=lambda cache, n: cache._replace(length=ops.convert_to_tensor(n, "int32")))

# filter_logits' primitives: keras.ops' own.
FILTER_OPS = FilterOps._make(getattr(ops, name) for name in FilterOps._fields)


def sample_next(logits, temperature, top_k, top_p, seeds, greedy: bool, k_bound: int | None = None):
    """TensorFlow's draw: (B, V) logits -> (B,) token ids. `seeds` is (B, 2) int32, one stateless RNG
    key per row, drawn row by row so that a row's token depends on its own key alone, not on the rows
    beside it."""
    import tensorflow as tf
    if greedy:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    filtered = filter_logits(FILTER_OPS, logits, temperature, top_k, top_p, k_bound)
    return tf.map_fn(lambda row: tf.random.stateless_categorical(row[0][None], 1, seed=row[1], dtype=tf.int32)[0, 0],
                     (filtered, seeds), fn_output_signature=tf.int32)


def compiled_generate(model: GPT):
    """common.decode.decode_loop around this model as one XLA function on TensorFlow. The prompts'
    length, the token count and the sampling values are tensors; a new buffer shape retraces it, and
    so does a new decode program (prefill window, sampling form), as in JAX."""
    import tensorflow as tf

    @tf.function(jit_compile=True)
    def run(tokens, prompt_len, max_new_tokens, temperature, top_k, top_p, seeds, program: DecodeProgram):
        sampling = program.sampling

        def forward(ids, cache=None):
            return model(ids, cache=cache, training=False)

        def new_cache(slots):
            return KVCache.empty(model.config, tokens.shape[0], model.compute_dtype, slots)

        def sample(logits, i):
            # Stateless: row b's token at a position depends on (seeds[b], position) only, cache or not.
            position_seeds = tf.map_fn(lambda seed: tf.random.experimental.stateless_fold_in(seed, prompt_len + i),
                                       seeds)
            return sample_next(logits, temperature, top_k, top_p, position_seeds, sampling.greedy, sampling.k_bound)

        return decode_loop(LOOP_OPS, program, forward, new_cache, tokens, prompt_len, max_new_tokens, sample)
    return run
