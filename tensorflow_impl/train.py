"""AdamW and one training step in Keras 3, compiled with XLA (on TensorFlow, or on JAX for keras-jax)."""
import keras
import numpy as np
from keras import ops

from common.config import TrainConfig
from common.params import decays
from tensorflow_impl.model import GPT, PACKAGE, canonical_variables, to_canonical


@keras.saving.register_keras_serializable(package=PACKAGE)
class AdamW(keras.optimizers.AdamW):
    """Keras' AdamW with epsilon where torch and optax put it: after the bias correction.

    Keras divides by sqrt(v) + eps and folds the correction into the step size, which amounts to
    an epsilon 1/sqrt(1 - beta2**t) times larger: 10x at step 1 with beta2 = 0.99. The gradients
    of a clipped GPT are small enough for that to show: after one step, Keras' own AdamW is up to
    3e-2 (relative) off torch's in some tensors, this one within 1e-6.
    """

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        step = ops.cast(self.iterations + 1, variable.dtype)
        m, v = self.moments(variable)
        self.assign_add(m, (gradient - m) * (1 - self.beta_1))
        self.assign_add(v, (ops.square(gradient) - v) * (1 - self.beta_2))
        bias_correction1 = 1 - ops.power(ops.cast(self.beta_1, variable.dtype), step)
        bias_correction2 = 1 - ops.power(ops.cast(self.beta_2, variable.dtype), step)
        denom = ops.sqrt(v) / ops.sqrt(bias_correction2) + self.epsilon
        self.assign_sub(variable, lr / bias_correction1 * m / denom)

    def _clip_gradients(self, grads):
        # Under tf.distribute Keras clips each replica's share of the gradient before the shares
        # are summed (tensorflow/tensorflow#33929): clip their sum, the whole batch's gradient,
        # then hand each replica its share of it again.
        if keras.backend.backend() != "tensorflow":  # the same model trained on Keras' JAX backend
            return super()._clip_gradients(grads)
        import tensorflow as tf
        replica = tf.distribute.get_replica_context()
        if self.global_clipnorm and replica is not None and replica.num_replicas_in_sync > 1:
            n = replica.num_replicas_in_sync
            return [g / n for g in super()._clip_gradients(replica.all_reduce("sum", grads))]
        return super()._clip_gradients(grads)

    def moments(self, variable):
        """The first and second moment variables of one model variable."""
        index = self._get_variable_index(variable)
        return self._momentums[index], self._velocities[index]


def configure_optimizer(model: GPT, train: TrainConfig, accumulate: bool = True) -> AdamW:
    """accumulate=False leaves grad_accum to the caller (tensorflow_impl.parallel.accumulating_step)."""
    optimizer = AdamW(learning_rate=train.lr, weight_decay=train.weight_decay, beta_1=train.beta1,
                      beta_2=train.beta2, epsilon=train.eps,  # Keras' default epsilon is 1e-7
                      # One norm over all gradients, as torch; Keras scales by clip/norm where torch
                      # has clip/(norm + 1e-6), a relative 1e-6 that parity does not see.
                      global_clipnorm=train.grad_clip or None,
                      # Keras sums k micro-batches' gradients and on the k-th applies their mean,
                      # clipped, with the bias correction of the updates made (iterations counts
                      # updates, _iterations micro-batches): the one update a k-times batch makes.
                      gradient_accumulation_steps=train.grad_accum if accumulate and train.grad_accum > 1 else None)
    # Weight decay on matrices and embeddings only (common.params.decays): never biases or LayerNorm.
    optimizer.exclude_from_weight_decay(
        var_list=[v for name, v in canonical_variables(model).items() if not decays(name, v.shape)])
    return optimizer


def compile_model(model: GPT, train: TrainConfig, accumulate: bool = True) -> GPT:
    """Keras' own train step (forward, loss, gradients, AdamW) as one XLA computation; the loss is
    the model's compute_loss (model.cross_entropy on the logits), so compile names none."""
    model.compile(optimizer=configure_optimizer(model, train, accumulate), jit_compile=True)
    model.optimizer.build(model.trainable_variables)  # now, so its state can be read and loaded
    return model


def train_step(model: GPT, batches, lr: float, train_on_batch=None) -> float:
    """One update from the (x, y) micro-batches; returns their mean loss before it.

    Keras' own step runs once per micro-batch and its optimizer, built with
    gradient_accumulation_steps = k (configure_optimizer), updates on the k-th.
    """
    # The common schedule sets the rate every step. It is a variable read inside the compiled
    # step, so a new value does not retrace it.
    model.optimizer.learning_rate = lr
    train_on_batch = train_on_batch or model.train_on_batch
    return sum(float(train_on_batch(x, y)) for x, y in batches) / len(batches)


class KerasModelState:
    """The Backend methods that read and write the Keras model's own variables: the same whether
    Keras runs on TensorFlow (tensorflow_impl.backend) or on JAX (keras_jax), so both mix this in."""

    model: GPT

    def canonical_grads(self, grads) -> dict[str, np.ndarray]:
        """Gradients listed in trainable_variables order, under canonical names and layouts."""
        return to_canonical(self.model, {v.path: g for v, g in zip(self.model.trainable_variables, grads)})

    def export_params(self) -> dict[str, np.ndarray]:
        params = to_canonical(self.model)
        if self.quantized:  # the int8 weights are no longer trainable variables
            from tensorflow_impl.quantize import dequantized_weights
            params.update(dequantized_weights(self.model))
        return params

    def _adam_moments(self) -> tuple[dict, dict, int]:
        variables = canonical_variables(self.model)
        m, v = ({name: np.asarray(self.model.optimizer.moments(var)[i].numpy(), np.float32)
                 for name, var in variables.items()} for i in (0, 1))
        return m, v, int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))

    def _load_adam_moments(self, m: dict, v: dict, count: int) -> None:
        for name, variable in canonical_variables(self.model).items():
            for moment, arrays in zip(self.model.optimizer.moments(variable), (m, v)):
                moment.assign(np.asarray(arrays[name], dtype=moment.dtype))
        # With gradient accumulation `iterations` is derived (updates = micro-batches // k): set
        # the micro-batch counter it comes from.
        self.model.optimizer._iterations.assign(count * (self.model.optimizer.gradient_accumulation_steps or 1))
