"""Keras 3 on TensorFlow behind the common Backend interface."""
import contextlib
import os

import keras
import numpy as np
import tensorflow as tf

from common.backend import Backend as BaseBackend, micro_batches
from common.errors import UserError
from tensorflow_impl import parallel
from tensorflow_impl.generate import compiled_generate
from tensorflow_impl.model import GPT, cross_entropy, load_canonical
from tensorflow_impl.train import KerasModelState, compile_model, train_step


class Backend(KerasModelState, BaseBackend):
    name = "tensorflow"
    runtime = "TensorFlow"
    device_kinds = {"cpu": "", "gpu": "install tensorflow[and-cuda] in place of tensorflow-cpu on a CUDA machine"}

    def _build(self, params):
        config, train, replicas = self.config, self.train_config, self.replicas
        if keras.backend.backend() != "tensorflow":
            raise UserError(f"Keras runs on {keras.backend.backend()} here (KERAS_BACKEND): set "
                            "KERAS_BACKEND=tensorflow, or unset it, to use the TensorFlow implementation.")
        # Variables built under a strategy's scope are mirrored on its replicas; Keras' calls find it.
        self.strategy = None
        if replicas > 1:
            self.strategy = parallel.mirrored_strategy(replicas, self.device)
        # float32 means float32: no TF32 matmuls, so the GPU agrees with the CPU and the others.
        tf.config.experimental.enable_tensor_float_32_execution(False)
        policy = "mixed_bfloat16" if train.dtype == "bfloat16" else "float32"
        with self._placed():
            self.model = GPT(config, dtype=policy)
            load_canonical(self.model, params)
            # Over replicas the micro-batches' gradients are summed in the replicas' own step.
            accumulating = self.strategy is not None and train.grad_accum > 1
            compile_model(self.model, train, accumulate=not accumulating)
            self._accumulating_step = parallel.accumulating_step(self.model, self.strategy) if accumulating else None
        if self.strategy:
            # XLA would compile Keras' whole step, the strategy's fan-out included, for one device,
            # which cannot reach the other replicas' variables; Keras' own "auto" turns it off too.
            self.model.jit_compile = False
        self.optimizer = self.model.optimizer
        self._compiled_generate = compiled_generate(self.model)
        self._loss_and_grads = tf.function(self._loss_and_grads_fn, jit_compile=not self.strategy)
        self._logits = tf.function(lambda x: self.model(x, training=False)[0], jit_compile=not self.strategy)

    def _placed(self):
        return self.strategy.scope() if self.strategy else tf.device(self.device)

    def train_step(self, x, y, lr):
        x, y = np.asarray(x, np.int32), np.asarray(y, np.int32)
        batches = micro_batches(x, y, self.train_config.grad_accum)
        if self._accumulating_step:  # the k micro-batches stacked (k, B, T), one step over the replicas
            return train_step(self.model, [tuple(np.stack(a) for a in zip(*batches))], lr, self._accumulating_step)
        if self.strategy:
            return train_step(self.model, batches, lr,
                              lambda x, y: parallel.train_on_batch(self.model, self.strategy, x, y))
        with tf.device(self.device):
            return train_step(self.model, batches, lr)

    def eval_loss(self, x, y):
        x, y = np.asarray(x, np.int32), np.asarray(y, np.int32)
        if self.strategy and len(x) % self.replicas == 0:
            return parallel.test_on_batch(self.model, self.strategy, x, y)
        with self._placed():
            return float(self.model.test_on_batch(x, y))

    def logits(self, x):
        # Not predict_on_batch: on TensorFlow it converts every output of call with .numpy(), the
        # None cache included; under a strategy it would also run the whole batch on every replica.
        with self._placed():
            return np.asarray(self._logits(np.asarray(x, np.int32)), dtype=np.float32)

    def _loss_and_grads_fn(self, x, y):
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            loss = cross_entropy(self.model(x, training=False)[0], y)
        return loss, tape.gradient(loss, variables)

    def loss_and_grads(self, x, y):
        x, y = np.asarray(x, np.int32), np.asarray(y, np.int32)
        if self.strategy:
            loss, grads = parallel.run_on_slices(self.strategy, self._loss_and_grads, x, y)
        else:
            with tf.device(self.device):
                loss, grads = self._loss_and_grads(x, y)
        return float(loss), self.canonical_grads(grads)

    def _quantize(self, mode):
        from tensorflow_impl.quantize import quantize
        with self._placed():
            quantize(self.model, mode)
        # The traced functions hold the float variables, which quantize replaced.
        self._compiled_generate = compiled_generate(self.model)
        self._logits = tf.function(lambda x: self.model(x, training=False)[0], jit_compile=True)

    def _generate(self, tokens, seeds, plan):
        seeds = seeds.astype(np.int64)
        with self._placed():
            return self._compiled_generate(
                tf.constant(tokens), tf.constant(plan.prompt_len, tf.int32), tf.constant(plan.max_new_tokens, tf.int32),
                None if plan.greedy else tf.constant(plan.temperature, tf.float32),
                None if plan.top_k is None else tf.constant(plan.top_k, tf.int32),
                None if plan.top_p is None else tf.constant(plan.top_p, tf.float32),
                tf.constant(np.stack([seeds & 0x7FFFFFFF, seeds >> 31], axis=1).astype(np.int32)), plan.program)

    def device_info(self):
        threads = tf.config.threading.get_intra_op_parallelism_threads() or os.cpu_count()
        info = {"framework_version": f"tensorflow {tf.__version__} / keras {keras.__version__}",
                "device": "cpu", "device_name": "cpu", "device_count": 1, "threads": threads}
        if self.device.startswith("/GPU"):
            gpus = tf.config.list_physical_devices("GPU")
            details = tf.config.experimental.get_device_details(gpus[0])
            info.update(device="gpu", device_name=details.get("device_name", "gpu"), device_count=len(gpus))
        return info

    def peak_memory_bytes(self):
        if self.device.startswith("/GPU"):
            return tf.config.experimental.get_memory_info("GPU:0")["peak"]
        return None

    def reset_peak_memory(self):
        if self.device.startswith("/GPU"):
            tf.config.experimental.reset_memory_stats("GPU:0")

    @contextlib.contextmanager
    def profile(self, log_dir):
        tf.profiler.experimental.start(str(log_dir))
        try:
            yield
        finally:
            tf.profiler.experimental.stop()

    # --- looking inside ------------------------------------------------------------------------
    def _inspect(self, ids):
        from tensorflow_impl.model import inspect
        with self._placed():
            return inspect(self.model, ids)
