"""JAX (Flax NNX, Optax) behind the common Backend interface."""
import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from common.backend import XLA_DECODE_OPTIONS, Backend as BaseBackend, micro_batches
from jax_impl import parallel
from jax_impl.generate import generate
from jax_impl.model import GPT, from_canonical_like, load_canonical, to_canonical
from jax_impl.train import StaticGraph, adam_state, configure_optimizer, loss_fn, train_step

_PLATFORMS = {"cpu": "cpu", "gpu": "gpu", "cuda": "gpu", "rocm": "gpu", "tpu": "tpu"}


# Jitted functions of the split (model, optimizer) pair, for the same reason as train.train_step.
@functools.partial(jax.jit, static_argnums=0)
def _logits(graph: StaticGraph, leaves, x):
    model, _ = graph.merge(leaves)
    return model(x)[0].astype(jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def _loss(graph: StaticGraph, leaves, x, y):
    model, _ = graph.merge(leaves)
    return loss_fn(model, x, y)


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(graph: StaticGraph, leaves, x, y):
    model, _ = graph.merge(leaves)
    return nnx.value_and_grad(loss_fn)(model, x, y)


class Backend(BaseBackend):
    name = "jax"
    runtime = "JAX"
    device_kinds = {"cpu": "", "gpu": "install jax[cuda12] for it", "tpu": "install jax[tpu] for it"}

    def _build(self, params):
        config, train, replicas = self.config, self.train_config, self.replicas
        # Data-parallel: state replicated over a mesh, or split over it (--shard), batches split
        # along it (jax_impl/parallel.py).
        self.mesh = None
        if replicas > 1:
            self.mesh = parallel.data_mesh(jax.devices(self.device.platform), replicas)
        elif self.shard > 1:
            self.mesh = parallel.data_mesh(jax.devices(self.device.platform), self.shard, axis="fsdp")
        # Parameters stay float32; bfloat16 is the compute dtype of every layer.
        dtype = jnp.bfloat16 if train.dtype == "bfloat16" else jnp.float32
        # float32 means float32: on GPUs and TPUs JAX's default matmul precision rounds the inputs
        # (TF32, bf16 passes). Measured on an H100: logits off the float64 reference by 3e-4 with the
        # default, 2e-7 with "highest", which keeps the GPU agreeing with the CPU and the others.
        self.precision = "highest" if dtype == jnp.float32 else "default"
        model = GPT(config, dtype=dtype, rngs=nnx.Rngs(params=0, dropout=train.seed))
        load_canonical(model, params)
        optimizer = configure_optimizer(model, train)
        # The pair lives split: a static graph per mode (they differ only in Dropout's
        # `deterministic`) and one list of arrays, committed to the device (or copied to every device
        # of the mesh, or split over them) so every call runs there.
        model.train()
        self._split(model, optimizer)

    def _split(self, model: GPT, optimizer) -> None:
        self.train_graph, leaves = StaticGraph.split((model, optimizer))
        self.eval_graph, _ = StaticGraph.split((nnx.view(model, deterministic=True), optimizer))
        self.leaves = jax.device_put(leaves, [self._placement(a.shape) for a in leaves])

    def _placement(self, shape):
        if self.shard > 1:
            return parallel.fsdp_sharding(self.mesh, shape)
        return parallel.replicated(self.mesh) if self.mesh else self.device

    def _merged(self):
        """The (model, optimizer) pair as objects, the model in eval mode."""
        return self.eval_graph.merge(self.leaves)

    def _run(self, fn, *args):
        with jax.default_matmul_precision(self.precision):
            return fn(*args)

    def _ids(self, a) -> jax.Array:
        a = np.asarray(a, dtype=np.int32)
        return parallel.put_batch(a, self.mesh) if self.mesh else jax.device_put(a, self.device)

    # --- training ---------------------------------------------------------------------------
    def train_step(self, x, y, lr):
        k = self.train_config.grad_accum
        if k > 1:  # micro-batches stacked (k, B, T), each split over the mesh along its rows
            x, y = (np.stack(a) for a in zip(*micro_batches(x, y, k)))
        loss, self.leaves = self._run(train_step, self.train_graph, self.leaves, self._ids(x), self._ids(y),
                                     np.float32(lr))
        return float(loss)

    def eval_loss(self, x, y):
        return float(self._run(_loss, self.eval_graph, self.leaves, self._ids(x), self._ids(y)))

    # --- inspection ----------------------------------------------------------------------------
    def logits(self, x):
        return np.asarray(self._run(_logits, self.eval_graph, self.leaves, self._ids(x)))

    def loss_and_grads(self, x, y):
        loss, grads = self._run(_loss_and_grads, self.eval_graph, self.leaves, self._ids(x), self._ids(y))
        return float(loss), to_canonical(grads)

    def export_params(self):
        model, _ = self._merged()
        params = to_canonical(nnx.state(model, nnx.Param))
        if self.quantized:
            from jax_impl.quantize import dequantized_kernels
            params.update(dequantized_kernels(model))
        return params

    def _adam_moments(self):
        _, optimizer = self._merged()
        adam = adam_state(optimizer)
        return to_canonical(adam.mu), to_canonical(adam.nu), int(adam.count[...])

    def _load_adam_moments(self, m, v, count):
        model, optimizer = self._merged()
        adam = adam_state(optimizer)
        for moments, arrays in ((adam.mu, m), (adam.nu, v)):
            nnx.update(moments, from_canonical_like(moments, arrays))
        # Adam's count drives the bias correction; the other two counters are kept in step with it.
        for counter in (adam.count, optimizer.opt_state.count, optimizer.step):
            counter[...] = jnp.asarray(count, dtype=counter[...].dtype)
        model.train()
        self._split(model, optimizer)

    # --- generation --------------------------------------------------------------------------
    def _quantize(self, mode):
        from jax_impl.quantize import quantize
        model, optimizer = self.train_graph.merge(self.leaves)
        quantize(model, mode)
        self._split(model, optimizer)  # a new graph: every jitted function compiles for it afresh

    def _generate(self, tokens, seeds, plan):
        values = [] if plan.greedy else [np.float32(plan.temperature), None if plan.top_k is None else
                                         np.int32(plan.top_k), None if plan.top_p is None else np.float32(plan.top_p)]
        return self._run(functools.partial(generate, program=plan.program), self.eval_graph, self.leaves,
                         self._ids(tokens), np.int32(plan.prompt_len), np.int32(plan.max_new_tokens), seeds, *values)

    def state_bytes(self):
        model, optimizer = self._merged()
        adam = adam_state(optimizer)
        first = self.mesh.devices.flat[0] if self.mesh else self.device
        # The gradient lives inside the compiled step; one is made here, laid out as XLA lays it out there.
        rows = max(self.replicas, self.shard)
        ids = self._ids(np.zeros((rows, 1), np.int32))
        _, grads = self._run(_loss_and_grads, self.eval_graph, self.leaves, ids, ids)
        return {"params": parallel.bytes_on(first, nnx.state(model, nnx.Param)),
                "grads": parallel.bytes_on(first, grads),
                "adam": parallel.bytes_on(first, (adam.mu, adam.nu))}

    # --- environment -------------------------------------------------------------------------
    def device_info(self):
        platform = _PLATFORMS.get(self.device.platform, self.device.platform)
        return {"framework_version": f"jax {jax.__version__} / flax {flax.__version__}",
                "device": platform, "device_name": self.device.device_kind,
                "device_count": len(jax.devices(self.device.platform))}

    def settings(self):
        return {**super().settings(), "decode_compiler_options": XLA_DECODE_OPTIONS}

    def peak_memory_bytes(self):
        if self.device.platform == "cpu":
            return None
        stats = self.device.memory_stats() or {}
        return stats.get("peak_bytes_in_use")

    # reset_peak_memory stays the base class's no-op: JAX has no call to reset the allocator's peak.

    def profile(self, log_dir):
        return jax.profiler.trace(log_dir)

    # --- looking inside ------------------------------------------------------------------------
    def _inspect(self, ids):
        from jax_impl.model import inspect
        model, _ = self._merged()
        return self._run(inspect, model, self._ids(ids))
