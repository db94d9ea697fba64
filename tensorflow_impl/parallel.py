"""Data parallelism with tf.distribute.MirroredStrategy: one process, one replica per device.

The model, its compile and its optimizer are built under the strategy's scope, so every variable is
mirrored; Keras' own compiled train step then runs on every replica, each on its own equal,
contiguous slice of the global batch. Each replica divides its mean loss by the number of replicas
and the strategy sums the gradients, so every replica applies the mean gradient of the whole batch:
the update a single device would have made.

Beyond one machine the same model trains under MultiWorkerMirroredStrategy (one process per worker,
each told the cluster through TF_CONFIG), and on TPUs under TPUStrategy; neither is built here.
"""
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


def split_batch(strategy: tf.distribute.Strategy, *arrays):
    """Each replica's contiguous, equal rows of the global batch, as per-replica values."""
    n = strategy.num_replicas_in_sync

    def rows(context):
        i = context.replica_id_in_sync_group
        return tuple(tf.constant(a[i * len(a) // n:(i + 1) * len(a) // n]) for a in arrays)
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

