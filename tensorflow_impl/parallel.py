"""Data parallelism with tf.distribute.MirroredStrategy: one process, one replica per device.

The model, its compile and its optimizer are built under the strategy's scope, so every variable is
mirrored; Keras' own compiled train step then runs on every replica, each on its own equal,
contiguous slice of the global batch. Each replica divides its mean loss by the number of replicas
and the strategy sums the gradients, so every replica applies the mean gradient of the whole batch:
the update a single device would have made.

Beyond one machine the same model trains under MultiWorkerMirroredStrategy (one process per worker,
each told the cluster through TF_CONFIG), and on TPUs under TPUStrategy; neither is built here.
"""
import numpy as np
import tensorflow as tf

from common.errors import UserError


def mirrored_strategy(replicas: int, device: str) -> tf.distribute.MirroredStrategy:
    """A strategy over the first `replicas` GPUs, or over as many logical CPUs split from the host."""
    kind = "GPU" if device.startswith("/GPU") else "CPU"
    if kind == "CPU":
        _split_cpu(replicas)
    found = tf.config.list_logical_devices(kind)
    if len(found) < replicas:
        raise UserError(f"{replicas} replicas need {replicas} {kind}s and TensorFlow sees {len(found)}: "
                        f"use --replicas {len(found)} or fewer.")
    return tf.distribute.MirroredStrategy([d.name for d in found[:replicas]])


def _split_cpu(replicas: int) -> None:
    """Present the host CPU as `replicas` logical devices (each shares the same cores)."""
    cpu = tf.config.list_physical_devices("CPU")[0]
    current = tf.config.get_logical_device_configuration(cpu)
    if current is not None and len(current) >= replicas:
        return
    try:
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * replicas)
    except RuntimeError:  # the runtime is up and its devices are fixed
        raise UserError(f"TensorFlow started before the CPU could be split into {replicas} devices: build "
                        "the Backend with replicas > 1 in a fresh process, before anything else uses TF.") from None


def split_batch(strategy: tf.distribute.Strategy, *arrays, axis: int = 0):
    """Each replica's contiguous, equal rows of the global batch (along `axis`), as per-replica values."""
    n = strategy.num_replicas_in_sync

    def rows(context):
        i = context.replica_id_in_sync_group
        return tuple(tf.constant(np.split(a, n, axis=axis)[i]) for a in arrays)
    return strategy.experimental_distribute_values_from_function(rows)


def train_on_batch(model, strategy: tf.distribute.Strategy, x, y) -> float:
    """model.train_on_batch, every replica on its own rows: Keras' compiled step, fed split.

    train_on_batch itself hands numpy to strategy.run, which gives every replica the whole batch:
    the update is right (each replica divides its loss by the replicas) but no faster than one
    device. Fed per-replica values, the same step splits the work.
    """
    model.make_train_function()
    model.reset_metrics()
    return float(model.train_function([split_batch(strategy, x, y)])["loss"])


def accumulating_step(model, strategy: tf.distribute.Strategy):
    """A compiled step(x, y) for k micro-batches stacked (k, B, T): every replica sums the gradients
    of its rows of each, then the optimizer applies them once (clipped over the replicas' sum, as
    Keras' own step). Returns the mean loss over all the micro-batches.

    Keras' own accumulation (the optimizer's gradient_accumulation_steps) branches on the micro-batch
    count around the sum over replicas, a cond with a sync point inside, which MirroredStrategy
    refuses; so over replicas the sum happens here, in the replicas' own step, and the optimizer is
    built without it (tensorflow_impl.train.configure_optimizer).
    """
    def on_replica(x, y):  # (k, B / replicas, T)
        k = x.shape[0]
        variables = model.trainable_variables
        total_loss, grads = 0.0, [tf.zeros_like(v) for v in variables]
        for i in range(k):
            with tf.GradientTape() as tape:
                # Keras' loss divides its mean by the replicas (scale_loss_for_distribution).
                loss = model.compute_loss(y=y[i], y_pred=model(x[i], training=True)) / k
            grads = [g + step for g, step in zip(grads, tape.gradient(loss, variables))]
            total_loss += loss
        model.optimizer.apply(grads, variables)
        return total_loss

    @tf.function
    def step(rows):
        return strategy.reduce(tf.distribute.ReduceOp.SUM, strategy.run(on_replica, args=rows), axis=None)

    return lambda x, y: float(step(split_batch(strategy, x, y, axis=1)))


def test_on_batch(model, strategy: tf.distribute.Strategy, x, y) -> float:
    """model.test_on_batch, every replica on its own rows (see train_on_batch)."""
    model.make_test_function()
    model.reset_metrics()
    return float(model.test_function([split_batch(strategy, x, y)])["loss"])


def run_on_slices(strategy: tf.distribute.Strategy, fn, x, y):
    """fn on each replica's rows of (x, y), its results summed over the replicas.

    Inside a replica Keras' loss divides its mean by the number of replicas (as in training), so
    the sums are the mean loss over the whole batch and its gradients.
    """
    per_replica = strategy.run(fn, args=split_batch(strategy, x, y))
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

