"""Sampling with a KV cache in Keras 3 on TensorFlow: the whole loop is one XLA computation."""
import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

from tensorflow_impl.model import GPT, KVCache  # noqa: E402


def filter_logits(logits, temperature, top_k, top_p):
    """(B, V) logits -> (B, V) scaled logits, -inf outside top-k and then outside the top-p nucleus.

    The rules of common.sampling.filter_logits, with tensor arguments so one compiled loop serves
    every setting: top_k = V and top_p = 1 turn the filters off.
    """
    scaled = logits / temperature
    # One stable descending sort serves both filters: ties keep vocabulary order, as in numpy.
    order = tf.argsort(scaled, axis=-1, direction="DESCENDING", stable=True)
    sorted_logits = tf.gather(scaled, order, batch_dims=1)
    kth = tf.gather(sorted_logits, [top_k - 1], axis=1)  # (B, 1); a gather: k need not be a constant
    sorted_logits = tf.where(sorted_logits < kth, float("-inf"), sorted_logits)
    probs = tf.nn.softmax(sorted_logits, axis=-1)
    mass_before = tf.cumsum(probs, axis=-1) - probs
    sorted_logits = tf.where((mass_before >= top_p) & (top_p < 1.0), float("-inf"), sorted_logits)
    return tf.gather(sorted_logits, tf.argsort(order, axis=-1), batch_dims=1)  # back to vocab order


def sample_next(logits, temperature, top_k, top_p, seed):
    """(B, V) logits -> (B,) token ids; greedy when temperature is 0."""
    logits = tf.cast(logits, tf.float32)
    greedy = tf.argmax(logits, axis=-1, output_type=tf.int32)
    filtered = filter_logits(logits, tf.where(temperature > 0, temperature, 1.0), top_k, top_p)
    sampled = tf.random.stateless_categorical(filtered, 1, seed=seed, dtype=tf.int32)[:, 0]
    return tf.where(temperature > 0, sampled, greedy)


def generate(model: GPT, idx, max_new_tokens: int, temperature, top_k, top_p, seed, use_cache: bool):
    """(B, P) prompt -> (B, P + max_new_tokens); `seed` is a stateless RNG key, an int32 pair.

    The cache holds at most block_size positions. Once the context is longer, each step runs the
    model on the last block_size tokens, exactly as the no-cache path does: with learned absolute
    position embeddings, every token's position changes when the window slides.
    """
    B, P = idx.shape
    block_size = model.config.block_size
    total = P + max_new_tokens
    # A fixed-shape buffer; at least block_size long so the no-cache window always fits.
    tokens = tf.concat([idx, tf.zeros((B, max(total, block_size) - P), tf.int32)], axis=1)

    def append(tokens, length, logits):
        # Stateless: the token at a position depends on (seed, position) only, cache or not.
        step_seed = tf.random.experimental.stateless_fold_in(seed, length)
        next_id = sample_next(logits, temperature, top_k, top_p, step_seed)
        return ops.slice_update(tokens, (0, length), next_id[:, None]), length + 1

    def window_step(tokens, length):
        # The no-cache path on a fixed (B, block_size) window: the last block_size tokens, or the
        # first block_size while shorter; the causal mask keeps the padding after `length` unseen.
        start = tf.maximum(length - block_size, 0)
        window = tf.slice(tokens, [0, start], [B, block_size])
        logits = model(window, training=False)  # (B, block_size, V)
        return append(tokens, length, tf.gather(logits, tf.minimum(length, block_size) - 1, axis=1))

    length = tf.constant(P, tf.int32)
    steps_left = max_new_tokens
    if use_cache and 0 < P <= block_size and max_new_tokens > 0:
        cache = KVCache.empty(model.config, B, model.compute_dtype)
        logits, cache = model(idx, cache=cache, training=False)  # the whole prompt fills the cache
        tokens, length = append(tokens, length, logits[:, -1])
        # One token at a time while the context still fits in block_size.
        cached_steps = min(max_new_tokens - 1, block_size - P)

        def cached_step(i, tokens, length, cache):
            last = tf.slice(tokens, [0, length - 1], [B, 1])
            logits, cache = model(last, cache=cache, training=False)
            return (i + 1, *append(tokens, length, logits[:, -1]), cache)

        _, tokens, length, cache = tf.while_loop(lambda i, *_: i < cached_steps, cached_step,
                                                 (0, tokens, length, cache))
        steps_left -= 1 + cached_steps
    _, tokens, length = tf.while_loop(lambda i, *_: i < steps_left,
                                      lambda i, tokens, length: (i + 1, *window_step(tokens, length)),
                                      (0, tokens, length))
    return tokens[:, :total]


def compiled_generate(model: GPT):
    """`generate` for this model as one XLA function; option values are tensors, so changing them
    does not retrace, while a new prompt length or max_new_tokens does."""
    @tf.function(jit_compile=True)
    def run(idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache):
        return generate(model, idx, max_new_tokens, temperature, top_k, top_p, seed, use_cache)
    return run
