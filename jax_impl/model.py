"""GPT in Flax NNX, after nanoGPT's model.py. The architecture is specified in common/spec.py."""

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from common.config import GPTConfig
from common.params import check_params
from common.spec import LOSS_IGNORE_INDEX, MLP_RATIO


class KVCache(NamedTuple):
    """Keys and values of every layer, preallocated for a number of positions (up to block_size) and
    filled in order; a decode grows it a few times (`grown`) rather than read empty slots at every step.

    A pytree of arrays, not a mutable object: `update` returns a new cache, and the model hands the
    updated cache back with the logits. Under jit the copies compile to in-place writes. One array per
    layer, as in the PyTorch cache: attention reads its layer's array as it is, where a slice of one
    (n_layer, ...) array was a copy at every step (a third of a batch-8 decode step at cpu-baby). The
    heads folded into the batch, as attention takes them (CausalSelfAttention).
    """
    keys: tuple[jax.Array, ...]    # n_layer x (B*nh, slots, hs)
    values: tuple[jax.Array, ...]  # n_layer x (B*nh, slots, hs)
    length: jax.Array  # int32 scalar: positions filled, the same in every layer

    @classmethod
    def empty(cls, config: GPTConfig, batch_size: int, dtype=jnp.float32, slots: int | None = None) -> "KVCache":
        shape = (batch_size * config.n_head, slots or config.block_size, config.head_size)
        layers = tuple(jnp.zeros(shape, dtype) for _ in range(config.n_layer))
        return cls(layers, layers, jnp.zeros((), jnp.int32))

    def grown(self, slots: int) -> "KVCache":
        """The same cache with room for `slots` positions, the new ones empty (one copy of each array)."""
        def pad(a):
            return jnp.pad(a, ((0, 0), (0, slots - a.shape[1]), (0, 0)))
        return self._replace(keys=tuple(map(pad, self.keys)), values=tuple(map(pad, self.values)))

    def update(self, layer: int, k: jax.Array, v: jax.Array):
        """Store this step's (B*nh, T, hs) keys and values at `length`; return the new cache and
        the layer's (B*nh, slots, hs) keys and values, of which only the first length + T
        positions are real (attention masks the rest by position)."""
        at = (0, self.length, 0)
        keys = jax.lax.dynamic_update_slice(self.keys[layer], k.astype(self.keys[layer].dtype), at)
        values = jax.lax.dynamic_update_slice(self.values[layer], v.astype(self.values[layer].dtype), at)
        return self._replace(keys=_replaced(self.keys, layer, keys),
                             values=_replaced(self.values, layer, values)), keys, values


def _replaced(layers: tuple, layer: int, new) -> tuple:
    return layers[:layer] + (new,) + layers[layer + 1:]


class CausalSelfAttention(nnx.Module):

    def __init__(self, config: GPTConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        self.layer = layer
        self.n_head, self.n_embd = config.n_head, config.n_embd
        self.c_attn = nnx.Linear(config.n_embd, 3 * config.n_embd, use_bias=config.bias,  # q, k, v at once
                                 dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(config.n_embd, config.n_embd, use_bias=config.bias, dtype=dtype, rngs=rngs)
        self.attn_dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.resid_dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.record = False  # keep the attention weights for inspection (see `inspect`)

    def set_view(self, record: bool | None = None):
        """nnx.view(model, record=True) gives a model that sows what `inspect` reads."""
        if record is not None:
            self.record = record

    def __call__(self, x, cache: KVCache | None = None):
        B, T, C = x.shape
        nh, hs = self.n_head, C // self.n_head
        # On (B, T, C) as it comes: the (B*T, C) rows that the Keras model needs for its projections
        # changed nothing here; only the MLP needs them.
        q, k, v = jnp.split(self.c_attn(x), 3, axis=-1)
        # (B, T, C) -> (B*nh, T, hs): the heads folded into the batch. XLA:CPU's dot takes one batch
        # dimension: given (B, nh) it reshapes the updated cache for the dot, and fusion then writes the
        # update twice, into that reshape and into the cache the next token gets, copying every layer's
        # cache at every token.
        q, k, v = (t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3).reshape(B * nh, T, hs) for t in (q, k, v))
        start = 0
        if cache is not None:
            start = cache.length
            cache, k, v = cache.update(self.layer, k, v)  # k, v: (B*nh, slots, hs)
        # Masking by absolute position covers both cases: the causal mask without a cache, and with
        # one, the cache slots not written yet (they lie after every query's own position).
        mask = jnp.arange(k.shape[1])[None, :] <= (start + jnp.arange(T))[:, None]  # (T, S)
        # Written out rather than jax.nn.dot_product_attention, which has no dropout on the weights.
        att = jnp.einsum("bqd,bkd->bqk", q, k) / math.sqrt(hs)  # (B*nh, T, S)
        att = jnp.where(mask, att.astype(jnp.float32), -jnp.inf)  # softmax in float32 also under bf16
        att = jax.nn.softmax(att, axis=-1)
        if self.record:  # the weights before dropout, which inspection runs without
            self.sow(nnx.Intermediate, "att", att.reshape(B, nh, T, -1))
        att = self.attn_dropout(att.astype(v.dtype))
        y = jnp.einsum("bqk,bkd->bqd", att, v)  # (B*nh, T, hs)
        y = y.reshape(B, nh, T, hs).transpose(0, 2, 1, 3).reshape(B, T, C)  # -> (B, T, C)
        return self.resid_dropout(self.c_proj(y)), cache


def gelu(x, approximate: bool):
    """GELU as the config has it. The exact form is written with erf, as torch computes it:
    jax.nn.gelu defaults to the tanh form, and its exact form goes through erfc, which XLA:CPU
    evaluates about twice as slowly."""
    if approximate:
        return nnx.gelu(x, approximate=True)
    return 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


class MLP(nnx.Module):

    def __init__(self, config: GPTConfig, *, dtype, rngs: nnx.Rngs):
        self.c_fc = nnx.Linear(config.n_embd, MLP_RATIO * config.n_embd, use_bias=config.bias,
                               dtype=dtype, rngs=rngs)
        self.c_proj = nnx.Linear(MLP_RATIO * config.n_embd, config.n_embd, use_bias=config.bias,
                                 dtype=dtype, rngs=rngs)
        self.dropout = nnx.Dropout(config.dropout, rngs=rngs)
        self.gelu_approximate = config.gelu_approximate

    def __call__(self, x):
        # Tokens as rows of one (B*T, C) matrix: on (B, T, C) XLA:CPU fuses GELU's backward into a
        # transposing copy for the weight gradient, which made this backward about twice as slow.
        B, T, C = x.shape
        h = gelu(self.c_fc(x.reshape(B * T, C)), self.gelu_approximate)  # (B*T, 4C)
        return self.dropout(self.c_proj(h)).reshape(B, T, C)


class Block(nnx.Module):

    def __init__(self, config: GPTConfig, layer: int, *, dtype, rngs: nnx.Rngs):
        # epsilon is explicit everywhere: nnx.LayerNorm's default is 1e-6, the spec's (torch's) 1e-5.
        self.ln_1 = nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_eps, use_bias=config.bias,
                                  dtype=dtype, rngs=rngs)
        self.attn = CausalSelfAttention(config, layer, dtype=dtype, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_eps, use_bias=config.bias,
                                  dtype=dtype, rngs=rngs)
        self.mlp = MLP(config, dtype=dtype, rngs=rngs)
        self.record = False  # keep the norms below for inspection (see `inspect`)

    def set_view(self, record: bool | None = None):
        if record is not None:
            self.record = record

    def __call__(self, x, cache: KVCache | None = None):
        attn_out, cache = self.attn(self.ln_1(x), cache)
        h = x + attn_out
        mlp_out = self.mlp(self.ln_2(h))
        if self.record:  # the residual stream's size and what each update adds to it: (3, B, T)
            self.sow(nnx.Intermediate, "norms", jnp.stack([token_norms(t) for t in (x, attn_out, mlp_out)]))
        return h + mlp_out, cache


def token_norms(x):
    """(B, T, C) -> (B, T): the L2 norm of every position's vector, in float32."""
    return jnp.linalg.norm(x.astype(jnp.float32), axis=-1)


class GPT(nnx.Module):
    """`dtype` is the compute dtype; parameters are always float32."""

    def __init__(self, config: GPTConfig, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.config = config
        self.wte = nnx.Embed(config.vocab_size, config.n_embd, dtype=dtype, rngs=rngs)
        self.wpe = nnx.Embed(config.block_size, config.n_embd, dtype=dtype, rngs=rngs)
        self.drop = nnx.Dropout(config.dropout, rngs=rngs)
        self.h = nnx.List([Block(config, i, dtype=dtype, rngs=rngs) for i in range(config.n_layer)])
        self.ln_f = nnx.LayerNorm(config.n_embd, epsilon=config.layer_norm_eps, use_bias=config.bias,
                                  dtype=dtype, rngs=rngs)
        # No lm_head module: the output projection is wte itself (weight tying), see __call__; a
        # quantized model has its own (jax_impl/quantize.py).
        self.lm_head = None
        # Weights come from common.params.init_params through load_canonical, not from here.

    def __call__(self, idx, cache: KVCache | None = None):
        """(B, T) ids -> (logits, cache): one call for training, prefill and decoding, as in every
        framework here. JAX arrays are immutable, so where PyTorch's cache is filled in place this
        one comes back updated; None when none was passed."""
        B, T = idx.shape
        assert T <= self.config.block_size, f"{T} positions > block_size"
        start = cache.length if cache is not None else 0
        x = self.drop(embed_tokens(self.wte, idx) + self.wpe(start + jnp.arange(T)))  # (B, T, C)
        for block in self.h:
            x, cache = block(x, cache)
        x = self.ln_f(x)
        logits = self.wte.attend(x) if self.lm_head is None else self.lm_head(x)  # (B, T, vocab_size)
        return logits, None if cache is None else cache._replace(length=cache.length + T)


# Up to this many tokens the embedding lookup is a one-hot matmul (see embed_tokens); its cost,
# 2 * vocab_size * n_embd flops a token each way, is then around 1% of a step or less.
ONE_HOT_MAX_VOCAB = 1024


def embed_tokens(wte: nnx.Embed, idx):
    """wte(idx), for a small vocabulary as one_hot(idx) @ table: the same values, another gradient.

    The gradient of a lookup adds every position's vector into its token's row. jnp.take's is a
    scatter-add, and on a GPU positions holding the same token serialise on atomic adds: on text,
    where a few characters are most of the positions, that made the shakespeare-char step 3x slower
    (results/gpu-shakespeare-char-bf16/NOTES.md). The one-hot form's gradient is a dense matmul.
    """
    if wte.num_embeddings > ONE_HOT_MAX_VOCAB:
        return wte(idx)
    table = wte.embedding[...].astype(wte.dtype or wte.embedding[...].dtype)
    return jax.nn.one_hot(idx, wte.num_embeddings, dtype=table.dtype) @ table


def inspect(model: GPT, idx):
    """One forward pass without dropout in which every layer records what it computed, for
    benchmarks/explain.py: the logits (B, T, vocab_size), the attention weights (n_layer, B, nh, T, T)
    and the norms (n_layer, 3, B, T) of the residual stream entering each block and of the block's
    attention and MLP updates. `nnx.capture` collects what the layers sow."""
    viewed = nnx.view(model, deterministic=True, record=True)
    (logits, _), recorded = nnx.capture(viewed, nnx.Intermediate)(idx)
    layers = [recorded["h"][i] for i in range(model.config.n_layer)]
    # sow keeps a tuple of what each call sowed: one call here
    attention = jnp.stack([layer["attn"]["att"].get_value()[0] for layer in layers])
    norms = jnp.stack([layer["norms"].get_value()[0] for layer in layers])
    return logits, attention, norms


def cross_entropy(logits, targets):
    """Mean over the targets that are not LOSS_IGNORE_INDEX, in float32 whatever the compute dtype."""
    valid = targets != LOSS_IGNORE_INDEX
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                             jnp.where(valid, targets, 0))
    return jnp.sum(jnp.where(valid, losses, 0.0)) / valid.sum()


# Canonical names (common/params.py) are this model's nnx state paths with Flax's leaf names
# replaced: Linear's `kernel` and LayerNorm's `scale` are `weight`, Embed's `embedding` goes.
# nnx.Linear already stores its kernel [in, out], the canonical layout, so nothing is transposed.
_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": None}


def canonical_name(path: tuple) -> str:
    *module, leaf = (str(part) for part in path)
    renamed = _LEAF_NAMES[leaf]
    return ".".join(module if renamed is None else [*module, renamed])


def to_canonical(state: nnx.State) -> dict[str, np.ndarray]:
    """Params, or any state shaped like them (gradients, Adam moments), under canonical names."""
    # Copies: a numpy view would pin the device buffer, which the next train step donates.
    return {canonical_name(path): np.array(value, dtype=np.float32, copy=True)
            for path, value in nnx.to_flat_state(nnx.as_pure(state))}


def from_canonical_like(state: nnx.State, arrays: dict) -> nnx.State:
    """The inverse of to_canonical: a pure state with `state`'s paths holding `arrays`."""
    return nnx.from_flat_state([(path, jnp.asarray(arrays[canonical_name(path)], dtype=value.dtype))
                                for path, value in nnx.to_flat_state(nnx.as_pure(state))])


def load_canonical(model: GPT, params: dict) -> None:
    check_params(params, model.config)
    nnx.update(model, from_canonical_like(nnx.state(model, nnx.Param), params))
