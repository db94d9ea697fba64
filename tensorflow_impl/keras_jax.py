"""The Keras GPT of tensorflow_impl/model.py, unchanged, on Keras' JAX backend (`--framework keras-jax`).

The same model, loss and AdamW as the TensorFlow row, with Keras' own train step compiled by jax.jit
instead of TensorFlow's XLA: the Keras row on machines that have JAX but no TensorFlow, and a
measure of what the backend alone changes. Keras reads its backend once per process, so
common.backend.load_backend sets KERAS_BACKEND=jax before this module imports Keras.
"""
import contextlib
import functools

import jax
import jax.numpy as jnp
import keras
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from common.backend import XLA_DECODE_OPTIONS, Backend as BaseBackend, micro_batches
from common.decode import DecodeProgram, decode_loop, filter_logits
from common.errors import UserError
from common.memory import shard_axis
from common.params import param_shapes
from jax_impl.parallel import bytes_on
from tensorflow_impl.generate import FILTER_OPS, LOOP_OPS
from tensorflow_impl.model import GPT, KVCache, canonical_variables, cross_entropy, load_canonical, variable_pattern
from tensorflow_impl.train import KerasModelState, compile_model, train_step


@functools.partial(jax.jit, static_argnums=0, static_argnames=("program",), donate_argnums=2,
                   compiler_options=XLA_DECODE_OPTIONS)
def _generate(model: GPT, variables, tokens, prompt_len, max_new_tokens, seeds, temperature, top_k, top_p, *,
              program: DecodeProgram):
    """The Keras decode loop (common.decode.decode_loop in keras.ops) under jax.jit, the model's
    variables passed in as arrays and the token buffer donated, filled in place; JAX's own keys draw
    the tokens, one per row (from its uint32 seed) folded with the position."""
    trainable, non_trainable = variables
    keys = jax.vmap(jax.random.key)(seeds)
    sampling = program.sampling

    def forward(ids, cache=None):
        out, _ = model.stateless_call(trainable, non_trainable, ids, cache=cache, training=False)
        return out  # (logits, cache)

    def new_cache(slots):
        return KVCache.empty(model.config, tokens.shape[0], model.compute_dtype, slots)

    def sample(logits, i):
        if sampling.greedy:
            return jnp.argmax(logits, axis=-1)
        filtered = filter_logits(FILTER_OPS, logits, temperature, top_k, top_p, sampling.k_bound)
        draw = lambda key, row: jax.random.categorical(jax.random.fold_in(key, prompt_len + i), row)  # noqa: E731
        return jax.vmap(draw)(keys, filtered)

    return decode_loop(LOOP_OPS, program, forward, new_cache, tokens, prompt_len, max_new_tokens, sample)


def fully_sharded(config, devices: list, shard: int) -> keras.distribution.ModelParallel:
    """FSDP in Keras: every weight split over an "fsdp" axis of `shard` devices, along the axis
    common.memory.shard_axis picks (Adam's moments take their weight's layout), and each batch's
    rows split over the same axis; XLA gathers the weights where the step needs them whole."""
    if len(devices) < shard:
        raise UserError(f"--shard {shard} needs {shard} devices and JAX sees {len(devices)}: set XLA_FLAGS="
                        f"--xla_force_host_platform_device_count={shard} on a CPU (benchmarks.run does), or use "
                        f"--shard {len(devices)}.")
    mesh = keras.distribution.DeviceMesh((shard,), ["fsdp"], devices[:shard])
    layout_map = keras.distribution.LayoutMap(mesh)
    for name, shape in param_shapes(config).items():
        axis = shard_axis(shape, shard)
        layout_map[variable_pattern(name)] = tuple("fsdp" if i == axis else None for i in range(len(shape)))
    return keras.distribution.ModelParallel(layout_map=layout_map, batch_dim_name="fsdp")


@functools.partial(jax.jit, static_argnums=0)
def _loss_and_grads(model: GPT, trainable, non_trainable, x, y):
    """The loss and its gradients with respect to the trainable variables, compiled once per model."""
    def loss(trainable):
        (logits, _), _ = model.stateless_call(trainable, non_trainable, x, training=False)
        return cross_entropy(logits, y)
    return jax.value_and_grad(loss)(trainable)


class Backend(KerasModelState, BaseBackend):
    name = "keras-jax"
    runtime = "JAX"
    device_kinds = {"cpu": "", "gpu": "install jax[cuda12] for it", "tpu": "install jax[tpu] for it"}

    def _build(self, params):
        config, train, replicas = self.config, self.train_config, self.replicas
        if replicas > 1:
            raise UserError("keras-jax trains data-parallel only sharded: use --shard N, or --replicas with the "
                            "tensorflow and jax rows.")
        if keras.backend.backend() != "jax":
            raise UserError(f"Keras runs on {keras.backend.backend()} in this process: run keras-jax in a "
                            "process of its own (benchmarks.run does), or with KERAS_BACKEND=jax.")
        # float32 means float32, as in jax_impl: no reduced-precision matmul passes on accelerators.
        self.precision = "highest" if train.dtype == "float32" else "default"
        self.distribution = fully_sharded(config, jax.devices(self.device.platform), self.shard) if self.shard > 1 else None
        with self._placed():
            self.model = GPT(config, dtype="mixed_bfloat16" if train.dtype == "bfloat16" else "float32")
            load_canonical(self.model, params)
            compile_model(self.model, train)

    @contextlib.contextmanager
    def _placed(self):
        # Sharded, the distribution places every variable Keras makes and splits each batch it is given.
        where = self.distribution.scope() if self.distribution else jax.default_device(self.device)
        with where, jax.default_matmul_precision(self.precision):
            yield

    def _replicated(self, a):
        """An array on the device, or whole on every device of the mesh."""
        if not self.distribution:
            return jax.device_put(a, self.device)
        return jax.device_put(a, NamedSharding(self.distribution.device_mesh.backend_mesh, P()))

    def train_step(self, x, y, lr):
        with self._placed():
            return train_step(self.model, micro_batches(np.asarray(x, np.int32), np.asarray(y, np.int32),
                                                       self.train_config.grad_accum), lr)

    def eval_loss(self, x, y):
        with self._placed():
            return float(self.model.test_on_batch(np.asarray(x, np.int32), np.asarray(y, np.int32)))

    def logits(self, x):
        with self._placed():
            logits, _ = self.model.predict_on_batch(np.asarray(x, np.int32))
            return np.asarray(logits, dtype=np.float32)

    def _variables(self):
        return ([v.value for v in self.model.trainable_variables],
                [v.value for v in self.model.non_trainable_variables])

    def loss_and_grads(self, x, y):
        with self._placed():
            value, grads = _loss_and_grads(self.model, *self._variables(), np.asarray(x, np.int32),
                                           np.asarray(y, np.int32))
        return float(value), self.canonical_grads(grads)

    def _quantize(self, mode):
        from tensorflow_impl.quantize import quantize
        with self._placed():
            quantize(self.model, mode)  # the jitted functions take the variables as arguments: they retrace

    def _generate(self, tokens, seeds, plan):
        with self._placed():
            return _generate(self.model, self._variables(), self._replicated(tokens),
                             np.int32(plan.prompt_len), np.int32(plan.max_new_tokens), seeds,
                             None if plan.greedy else np.float32(plan.temperature),
                             None if plan.top_k is None else np.int32(plan.top_k),
                             None if plan.top_p is None else np.float32(plan.top_p), program=plan.program)

    def state_bytes(self):
        first = self.distribution.device_mesh.devices.flat[0] if self.distribution else self.device
        variables = list(canonical_variables(self.model).values())
        moments = [m.value for v in variables for m in self.model.optimizer.moments(v)]
        # The gradient lives inside Keras' compiled step; one is made here, laid out as XLA lays it out there.
        ids = self._replicated(np.zeros((self.shard, 1), np.int32))
        with self._placed():
            _, grads = _loss_and_grads(self.model, *self._variables(), ids, ids)
        return {"params": bytes_on(first, [v.value for v in variables]), "grads": bytes_on(first, grads),
                "adam": bytes_on(first, moments)}

    def device_info(self):
        kind = {"cuda": "gpu", "rocm": "gpu"}.get(self.device.platform, self.device.platform)
        return {"framework_version": f"keras {keras.__version__} / jax {jax.__version__}", "device": kind,
                "device_name": self.device.device_kind, "device_count": len(jax.devices(self.device.platform))}

    def settings(self):
        return {**super().settings(), "decode_compiler_options": XLA_DECODE_OPTIONS}

    def peak_memory_bytes(self):
        if self.device.platform == "cpu":
            return None
        return (self.device.memory_stats() or {}).get("peak_bytes_in_use")

    def profile(self, log_dir):
        return jax.profiler.trace(log_dir)

    # --- looking inside ------------------------------------------------------------------------
    def _inspect(self, ids):
        from tensorflow_impl.model import inspect
        with self._placed():
            return inspect(self.model, ids)
