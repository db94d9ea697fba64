"""Sampling with a KV cache for the Keras GPT, written once in keras.ops for both of Keras' backends.

TensorFlow compiles the whole loop as one XLA computation (`compiled_generate`, here); Keras on JAX
compiles the same loop with jax.jit (tensorflow_impl/keras_jax.py). Only the random draw differs:
each backend has its own stateless random numbers.
"""
from keras import ops

from common.decode import DecodeProgram, LoopOps, decode_loop
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


# decode_loop's primitives in keras.ops, for both Keras backends.
LOOP_OPS = LoopOps(
    fori_loop=ops.fori_loop, minimum=ops.minimum, maximum=ops.maximum, clip=ops.clip,
    columns=lambda tokens, start, length: ops.slice(tokens, (0, start), (ops.shape(tokens)[0], length)),
    column=lambda logits, index: ops.take(logits, index, axis=1),
    write=lambda tokens, at, ids: ops.slice_update(tokens, (0, at), ops.cast(ids[:, None], tokens.dtype)),
    holding=lambda cache, n: cache._replace(length=ops.convert_to_tensor(n, "int32")))


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
