"""AdamW and one training step in JAX: Optax under nnx.Optimizer, the step compiled once by jax.jit."""
import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from common.config import TrainConfig
from common.params import decays
from jax_impl.model import GPT, canonical_name, cross_entropy


def _decay_mask(params):
    # Weight decay on matrices and embeddings only (common.params.decays): never biases or LayerNorm.
    # Dict keys make up the state path; the attribute key of an nnx.Variable's value is no part of it.
    def decay(path, p):
        name = canonical_name(tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey)))
        return decays(name, p.shape)
    return jax.tree_util.tree_map_with_path(decay, params)


def clip_by_global_norm(max_norm: float) -> optax.GradientTransformation:
    """Every gradient times min(1, max_norm / (norm + 1e-6)): clipping by the global norm, as torch does.

    optax.clip_by_global_norm selects between the gradients and their scaled copies. XLA:CPU writes
    that selection out, a pass over every gradient that AdamW's fusions then read back; a product
    fuses into them. The clipped AdamW update alone, over GPT-2's parameters on 2 CPU cores: 253 ms
    that way, 140 ms this way (torch's fused AdamW: 130 ms).
    """
    def scale(updates, params=None):
        factor = jnp.minimum(1.0, max_norm / (optax.global_norm(updates) + 1e-6))
        return jax.tree.map(lambda g: g * factor.astype(g.dtype), updates)
    return optax.stateless(scale)


@functools.cache
def transformation(train: TrainConfig) -> optax.GradientTransformation:
    """clip_by_global_norm then AdamW, with the learning rate a value in the optimizer state.

    inject_hyperparams makes the rate an array the compiled step reads, so the common schedule can
    set it every step without a recompile. Cached per config: the transformation is static in the
    optimizer's graphdef, so one object per config lets every model with that config share the
    compiled step.
    """
    def make(learning_rate):
        adamw = optax.adamw(learning_rate, b1=train.beta1, b2=train.beta2, eps=train.eps,
                            weight_decay=train.weight_decay, mask=_decay_mask)
        if train.grad_clip > 0:
            return optax.chain(clip_by_global_norm(train.grad_clip), adamw)
        return adamw

    return optax.inject_hyperparams(make)(learning_rate=train.lr)


def configure_optimizer(model: GPT, train: TrainConfig) -> nnx.Optimizer:
    return nnx.Optimizer(model, transformation(train), wrt=nnx.Param)


def adam_state(optimizer: nnx.Optimizer) -> optax.ScaleByAdamState:
    """The Adam moments and step count inside the (possibly clipped) chain."""
    inner = optimizer.opt_state.inner_state
    return next(s for s in jax.tree.leaves(inner, is_leaf=lambda s: isinstance(s, optax.ScaleByAdamState))
                if isinstance(s, optax.ScaleByAdamState))


class StaticGraph:
    """The structure of a split NNX object as a static jit argument; its arrays travel as a flat list.

    jax.jit hashes a static argument and flattens the others on every call. A GraphDef rehashes its
    whole tree each time and an nnx.State flattens and rebuilds its Variables in Python: together
    ~1 ms a step on the cpu-baby model. This hashes once and leaves jit a plain list of arrays.
    """

    def __init__(self, graphdef: nnx.GraphDef, treedef):
        self.graphdef, self.treedef = graphdef, treedef
        self._hash = hash((graphdef, treedef))

    @classmethod
    def split(cls, node) -> tuple["StaticGraph", list]:
        graphdef, state = nnx.split(node)
        leaves, treedef = jax.tree.flatten(state)
        return cls(graphdef, treedef), leaves

    def merge(self, leaves: list):
        return nnx.merge(self.graphdef, jax.tree.unflatten(self.treedef, leaves))

    def leaves(self, node) -> list:
        return jax.tree.leaves(nnx.state(node))

    def __hash__(self):
        return self._hash

    def __eq__(self, other):
        return self is other or (isinstance(other, StaticGraph) and self._hash == other._hash
                                 and (self.graphdef, self.treedef) == (other.graphdef, other.treedef))


def loss_fn(model: GPT, x, y):
    logits, _ = model(x)
    return cross_entropy(logits, y)


def accumulated_loss_and_grads(model: GPT, x, y):
    """The mean loss and its gradient over k micro-batches, x and y of shape (k, B, T).

    A lax.scan over the micro-batches sums each one's gradient into one buffer, so the step
    compiles once whatever k and holds one micro-batch's activations at a time; an unrolled loop
    would compile k copies of the model. The model is split so the scan carries plain arrays: its
    parameters are differentiated, the rest (dropout's RNG counts) is carried on from micro-batch to
    micro-batch and written back, so the next step draws fresh masks as after one batch.
    """
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def micro(carry, xy):
        loss_sum, grad_sum, rest = carry

        def loss(params):
            micro_model = nnx.merge(graphdef, params, rest)
            value = loss_fn(micro_model, *xy)
            return value, nnx.split(micro_model, nnx.Param, ...)[2]

        (value, rest), grads = jax.value_and_grad(loss, has_aux=True)(params)
        return (loss_sum + value, jax.tree.map(jnp.add, grad_sum, grads), rest), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (loss_sum, grad_sum, rest), _ = jax.lax.scan(micro, (jnp.zeros((), jnp.float32), zeros, rest), (x, y))
    nnx.update(model, rest)
    k = x.shape[0]
    return loss_sum / k, jax.tree.map(lambda g: g / k, grad_sum)


@functools.partial(jax.jit, static_argnums=0, donate_argnums=1)
def train_step(graph: StaticGraph, leaves: list, x, y, lr):
    """One update of a split (model, optimizer) pair; returns the loss before it and the new leaves.

    x and y are one batch (B, T), or k micro-batches (k, B, T) whose mean gradient makes the update.
    Flax's functional training loop rather than nnx.jit on the objects: nnx.jit walks the object
    graph in Python on every call (a third of a cpu-baby step on 2 cores; results/cpu-baby-xeon-amx/NOTES.md),
    where this call walks it only while tracing.
    """
    model, optimizer = graph.merge(leaves)
    optimizer.opt_state.hyperparams["learning_rate"][...] = lr
    if x.ndim == 3:
        loss, grads = accumulated_loss_and_grads(model, x, y)
    else:
        loss, grads = nnx.value_and_grad(loss_fn)(model, x, y)
    optimizer.update(model, grads)
    return loss, graph.leaves((model, optimizer))
