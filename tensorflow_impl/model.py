"""GPT in Keras 3, after nanoGPT's model.py. The architecture is specified in common/spec.py.

Only keras.layers and keras.ops appear here, so the model runs on any Keras backend; train.py and
generate.py compile it with TensorFlow's XLA, or with JAX's for keras-jax (keras_jax.py).
"""
import dataclasses
import math
import re
from typing import Any, NamedTuple

import keras
import numpy as np
from keras import layers, ops

from common.config import GPTConfig
from common.spec import LOSS_IGNORE_INDEX, MLP_RATIO

PACKAGE = "nanogpt_compare"


def _gpt_config(config: GPTConfig | dict) -> GPTConfig:
    # from_config hands the config back as the plain dict that get_config wrote.
    return config if isinstance(config, GPTConfig) else GPTConfig(**config)


class KVCache(NamedTuple):
    """Keys and values of every layer, preallocated for a number of positions (up to block_size) and
    filled in order; a decode grows it a few times (`grown`) rather than read empty slots at every step.

    Immutable, so a compiled loop can carry it: `update` returns a new cache. One tensor per layer:
    a slice of one (n_layer, ...) tensor was a copy at every step (jax_impl.model.KVCache). The heads
    folded into the batch, as attention takes them (jax_impl.model.CausalSelfAttention says why).
    """
    keys: tuple    # n_layer x (B*nh, slots, hs)
    values: tuple  # n_layer x (B*nh, slots, hs)
    length: Any    # positions filled, the same in every layer: an int32 scalar

    @classmethod
    def empty(cls, config: GPTConfig, batch_size: int, dtype="float32", slots: int | None = None) -> "KVCache":
        shape = (batch_size * config.n_head, slots or config.block_size, config.head_size)
        layers = tuple(ops.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(layers, layers, ops.convert_to_tensor(0, "int32"))

    def grown(self, slots: int) -> "KVCache":
        """The same cache with room for `slots` positions, the new ones empty (one copy of each tensor)."""
        def pad(a):
            return ops.pad(a, ((0, 0), (0, slots - a.shape[1]), (0, 0)))
        return self._replace(keys=tuple(map(pad, self.keys)), values=tuple(map(pad, self.values)))

    def update(self, layer: int, k, v):
        """Store this step's (B*nh, T, hs) keys and values at `length`; return the new cache and
        all `slots` keys and values of this layer (the unfilled ones are masked by position)."""
        start = (0, self.length, 0)
        keys = ops.slice_update(self.keys[layer], start, ops.cast(k, self.keys[layer].dtype))
        values = ops.slice_update(self.values[layer], start, ops.cast(v, self.values[layer].dtype))
        return self._replace(keys=_replaced(self.keys, layer, keys),
                             values=_replaced(self.values, layer, values)), keys, values


def _replaced(layers: tuple, layer: int, new) -> tuple:
    return layers[:layer] + (new,) + layers[layer + 1:]


@keras.saving.register_keras_serializable(package=PACKAGE)
class CausalSelfAttention(layers.Layer):

    def __init__(self, config: GPTConfig, layer: int, **kwargs):
        super().__init__(**kwargs)
        self.config, self.layer = _gpt_config(config), layer
        C = self.config.n_embd
        self.n_head = self.config.n_head
        bias, dropout, dtype = self.config.bias, self.config.dropout, self.dtype_policy
        self.c_attn = layers.Dense(3 * C, use_bias=bias, dtype=dtype, name="c_attn")  # q, k, v at once
        self.c_proj = layers.Dense(C, use_bias=bias, dtype=dtype, name="c_proj")
        self.attn_dropout = layers.Dropout(dropout, dtype=dtype)
        self.resid_dropout = layers.Dropout(dropout, dtype=dtype)
        self.record = False  # keep the attention weights for inspection (see `inspect`)

    def build(self, input_shape):
        self.c_attn.build(input_shape)
        self.c_proj.build(input_shape)

    def call(self, x, cache: KVCache | None = None, training=None):
        B, T, C = ops.shape(x)
        hs = C // self.n_head
        # Both projections on tokens as rows of one (B*T, C) matrix, as the MLP: on (B, T, C), under
        # Keras' JAX backend, XLA:CPU fed their weight gradients transposed copies of the residual
        # stream's gradient.
        qkv = ops.reshape(self.c_attn(ops.reshape(x, (B * T, C))), (B, T, 3 * C))
        q, k, v = ops.split(qkv, 3, axis=-1)
        # (B, T, C) -> (B*nh, T, hs): the heads folded into the batch, as in the JAX model, whose
        # comment says why; the same copies of the cache at every token otherwise, under both backends.
        nh = self.n_head
        q, k, v = (ops.reshape(ops.transpose(ops.reshape(t, (B, T, nh, hs)), (0, 2, 1, 3)), (B * nh, T, hs))
                   for t in (q, k, v))
        start = 0
        if cache is not None:
            start = cache.length
            cache, k, v = cache.update(self.layer, k, v)  # k, v: (B*nh, slots, hs)
        # Query i sits at position start + i and sees keys up to there: the causal mask without a
        # cache, and with one also the mask of the positions not filled yet.
        query_pos = ops.arange(T) + start
        key_pos = ops.arange(ops.shape(k)[1])
        visible = key_pos[None, :] <= query_pos[:, None]  # (T, T) or (T, slots)
        scores = ops.matmul(q, ops.swapaxes(k, -1, -2)) * (1.0 / math.sqrt(hs))  # (B*nh, T, keys)
        scores = ops.where(visible, scores, ops.cast(float("-inf"), scores.dtype))
        weights = ops.softmax(scores, axis=-1)
        if self.record:  # the weights before dropout, which inspection runs without
            self.att = ops.reshape(weights, (B, nh, T, -1))
        weights = self.attn_dropout(weights, training=training)
        y = ops.reshape(ops.matmul(weights, v), (B, nh, T, hs))
        y = ops.reshape(ops.transpose(y, (0, 2, 1, 3)), (B * T, C))  # (B, nh, T, hs) -> (B*T, C)
        y = self.resid_dropout(ops.reshape(self.c_proj(y), (B, T, C)), training=training)
        return y, cache

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config), "layer": self.layer}


def gelu(x, approximate: bool):
    """GELU as the config has it. The exact form is written with erf, as torch and TensorFlow compute
    it: ops.gelu's exact form goes through erfc on Keras' JAX backend, which XLA:CPU evaluates about
    twice as slowly (as in jax_impl)."""
    if approximate:
        return ops.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + ops.erf(x * (1.0 / math.sqrt(2.0))))


@keras.saving.register_keras_serializable(package=PACKAGE)
class MLP(layers.Layer):

    def __init__(self, config: GPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = _gpt_config(config)
        C = self.config.n_embd
        bias, dtype = self.config.bias, self.dtype_policy
        self.c_fc = layers.Dense(MLP_RATIO * C, use_bias=bias, dtype=dtype, name="c_fc")
        self.c_proj = layers.Dense(C, use_bias=bias, dtype=dtype, name="c_proj")
        self.dropout = layers.Dropout(self.config.dropout, dtype=dtype)

    def build(self, input_shape):
        self.c_fc.build(input_shape)
        self.c_proj.build((*input_shape[:-1], MLP_RATIO * self.config.n_embd))

    def call(self, x, training=None):
        # Tokens as rows of one (B*T, C) matrix, as in the JAX model: on (B, T, C) XLA:CPU fuses
        # GELU's backward into a transposing copy for the weight gradient.
        h = self.c_fc(ops.reshape(x, (-1, self.config.n_embd)))
        h = gelu(h, self.config.gelu_approximate)  # (B*T, 4C)
        return ops.reshape(self.dropout(self.c_proj(h), training=training), ops.shape(x))  # (B, T, C)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


def _layer_norm(config: GPTConfig, name: str, dtype) -> layers.LayerNormalization:
    # Keras' default epsilon is 1e-3; `center` is the optional bias.
    return layers.LayerNormalization(epsilon=config.layer_norm_eps, center=config.bias, dtype=dtype, name=name)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Block(layers.Layer):

    def __init__(self, config: GPTConfig, layer: int, **kwargs):
        super().__init__(**kwargs)
        self.config, self.layer = _gpt_config(config), layer
        self.ln_1 = _layer_norm(self.config, "ln_1", self.dtype_policy)
        self.attn = CausalSelfAttention(self.config, layer, dtype=self.dtype_policy, name="attn")
        self.ln_2 = _layer_norm(self.config, "ln_2", self.dtype_policy)
        self.mlp = MLP(self.config, dtype=self.dtype_policy, name="mlp")
        self.record = False  # keep the norms below for inspection (see `inspect`)

    def build(self, input_shape):
        for sublayer in (self.ln_1, self.attn, self.ln_2, self.mlp):
            sublayer.build(input_shape)

    def call(self, x, cache: KVCache | None = None, training=None):
        attn_out, cache = self.attn(self.ln_1(x), cache=cache, training=training)
        h = x + attn_out
        mlp_out = self.mlp(self.ln_2(h), training=training)
        if self.record:  # the residual stream's size and what each update adds to it: (3, B, T)
            self.norms = ops.stack([token_norms(t) for t in (x, attn_out, mlp_out)])
        return h + mlp_out, cache

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config), "layer": self.layer}


def token_norms(x):
    """(B, T, C) -> (B, T): the L2 norm of every position's vector, in float32."""
    return ops.norm(ops.cast(x, "float32"), axis=-1)


@keras.saving.register_keras_serializable(package=PACKAGE)
class GPT(keras.Model):

    def __init__(self, config: GPTConfig, **kwargs):
        super().__init__(**kwargs)
        self.config = _gpt_config(config)
        c, dtype = self.config, self.dtype_policy  # Keras layers do not inherit the policy: pass it on
        # The LM head is wte itself (weight tying): ReversibleEmbedding's reverse call is h @ wte.T.
        self.wte = layers.ReversibleEmbedding(c.vocab_size, c.n_embd, tie_weights=True, dtype=dtype,
                                              name="wte")
        self.wpe = layers.Embedding(c.block_size, c.n_embd, dtype=dtype, name="wpe")
        self.drop = layers.Dropout(c.dropout, dtype=dtype)
        self.h = [Block(c, i, dtype=dtype, name=f"h.{i}") for i in range(c.n_layer)]
        self.ln_f = _layer_norm(c, "ln_f", dtype)
        # Weights come from common.params.init_params through load_canonical, not from here.

    def build(self, input_shape=None):
        self.wte.build()
        self.wpe.build()
        for block in self.h:
            block.build((None, None, self.config.n_embd))
        self.ln_f.build((None, None, self.config.n_embd))
        self.built = True

    def call(self, idx, cache: KVCache | None = None, training=None):
        """(B, T) ids -> (logits, cache): one call for training, prefill and decoding, as in every
        framework here. The cache comes back updated (it is immutable, as in JAX); None when none
        was passed."""
        T = ops.shape(idx)[1]
        start = 0 if cache is None else cache.length
        pos = ops.arange(T) + start
        # A plain lookup, not the JAX model's one-hot matmul (jax_impl.model.embed_tokens): that one
        # pays on GPUs, where it was measured for JAX only, and on CPU it slowed keras-jax's step
        # (results/cpu-baby-xeon-amx/NOTES.md).
        x = self.drop(self.wte(idx) + self.wpe(pos), training=training)  # (B, T, C)
        for block in self.h:
            x, cache = block(x, cache=cache, training=training)
        logits = self.wte(self.ln_f(x), reverse=True)  # (B, T, vocab_size)
        return logits, None if cache is None else cache._replace(length=cache.length + T)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        """The loss of Keras' own compiled train and test steps, which hand `call`'s whole result
        here as y_pred: the Keras way to train a model whose call returns more than its predictions."""
        logits, _ = y_pred
        return cross_entropy(logits, y)

    def get_config(self):
        return {**super().get_config(), "config": dataclasses.asdict(self.config)}


def inspect(model: GPT, idx):
    """One forward pass without dropout in which every layer records what it computed, for
    benchmarks/explain.py: the logits (B, T, vocab_size), the attention weights (n_layer, B, nh, T, T)
    and the norms (n_layer, 3, B, T) of the residual stream entering each block and of the block's
    attention and MLP updates. Run eagerly, so the layers' attributes hold values, not symbols."""
    for block in model.h:
        block.record = block.attn.record = True
    try:
        logits, _ = model(idx, training=False)
    finally:
        for block in model.h:
            block.record = block.attn.record = False
    return (logits, ops.stack([block.attn.att for block in model.h]),
            ops.stack([block.norms for block in model.h]))


# A Keras loss object rather than ops: under tf.distribute it divides each replica's mean by the
# number of replicas, so the replicas' gradients sum to the whole batch's (tensorflow_impl/parallel.py).
_CROSS_ENTROPY = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=LOSS_IGNORE_INDEX,
                                                            dtype="float32")


def cross_entropy(logits, targets):
    """Mean over the targets that are not LOSS_IGNORE_INDEX, in float32 whatever the compute dtype."""
    return _CROSS_ENTROPY(targets, logits)


# Canonical names (common/params.py) are the variable paths inside the model, with Keras' variable
# names in torch's words; Dense kernels are [in, out] already, so names change, never layouts.
_VARIABLE_NAMES = {"kernel": ".weight", "gamma": ".weight", "bias": ".bias", "beta": ".bias",
                   "embeddings": ""}


def _canonical_name(model: GPT, path: str) -> str:
    """'gpt/h.0/attn/c_attn/kernel' -> 'h.0.attn.c_attn.weight'; 'gpt/wte/embeddings' -> 'wte'."""
    *layer_names, variable = path.removeprefix(f"{model.path}/").split("/")
    return ".".join(layer_names) + _VARIABLE_NAMES[variable]


def variable_pattern(name: str) -> str:
    """The inverse of _canonical_name, as a regex of variable paths for a keras.distribution.LayoutMap:
    'h.0.attn.c_attn.weight' matches 'gpt/h.0/attn/c_attn/kernel' (a dot in a canonical name is one
    of Keras' separators, or a dot of its layer's own name, as in h.0)."""
    layers, kind = name.rsplit(".", 1) if name.endswith((".weight", ".bias")) else (name, "")
    variables = [v for v, suffix in _VARIABLE_NAMES.items() if suffix == (f".{kind}" if kind else "")]
    return ".*/" + re.escape(layers).replace(r"\.", "[./]") + f"/({'|'.join(variables)})"


def canonical_variables(model: GPT) -> dict[str, keras.Variable]:
    if not model.built:
        model.build()
    return {_canonical_name(model, v.path): v for v in model.trainable_variables}


def load_canonical(model: GPT, params: dict) -> None:
    for name, variable in canonical_variables(model).items():
        variable.assign(np.asarray(params[name], dtype=variable.dtype))


def to_canonical(model: GPT, tensors: dict | None = None) -> dict[str, np.ndarray]:
    """Parameters, or per-variable tensors keyed by variable path (gradients, Adam moments),
    under canonical names, as float32 numpy arrays."""
    out = {}
    for name, variable in canonical_variables(model).items():
        value = variable if tensors is None else tensors[variable.path]
        out[name] = np.asarray(ops.convert_to_numpy(value), dtype=np.float32)
    return out
