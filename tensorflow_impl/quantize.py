"""Weight-only quantization of the Keras GPT, with Keras' own model.quantize, on both backends."""
import keras
import numpy as np

from common.quantize import INT4_GROUP
from tensorflow_impl.model import GPT, _canonical_name


def quantize(model: GPT, mode: str) -> None:
    """Every Dense kernel and embedding table quantized, in place, per output channel (per row of an
    embedding, which is the tied head's output channel). int8: one scale per channel, weight-only.
    int8-dynamic: Keras' default int8, which also rounds each input row to int8 at every call and
    multiplies in int8. int4: groups of INT4_GROUP inputs with a scale and zero point each, two values
    packed a byte; Keras' int4 is weight-only already."""
    from keras.quantizers import Int4QuantizationConfig, Int8QuantizationConfig
    config = {"int8": lambda: Int8QuantizationConfig(activation_quantizer=None),
              "int8-dynamic": lambda: Int8QuantizationConfig(),
              "int4": lambda: Int4QuantizationConfig(block_size=INT4_GROUP)}[mode]()
    model.quantize(config.mode, config=config,
                   filters=lambda layer: isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)))


def dequantized_weights(model: GPT) -> dict[str, np.ndarray]:
    """The quantized kernels and tables as the model computes with them, float32 under canonical
    names. int8: Keras stores q = w * scale. int4: w = (q - zero) * scale, q packed two a byte along
    the output axis, and g_idx naming each input's group."""
    variables = {v.path: np.asarray(keras.ops.convert_to_numpy(v)) for v in model.variables}
    out = {}
    for path, q in variables.items():
        scale, zero = variables.get(f"{path}_scale"), variables.get(f"{path}_zero")
        if scale is None or q.dtype != np.int8:
            continue
        table = path.endswith("embeddings")
        if zero is None:
            # A table's scales are per row (token), a kernel's per column (output channel).
            out[_canonical_name(model, path)] = q.astype(np.float32) / (scale[:, None] if table else scale)
            continue
        group = variables[path.rsplit("/", 1)[0] + "/g_idx"].astype(np.int32)  # (in,) each input's group
        q = np.asarray(keras.quantizers.unpack_int4(q, len(group) if table else scale.shape[-1], axis=-1), np.float32)
        # A table's groups run along its rows (the head's inputs), a kernel's down its columns.
        out[_canonical_name(model, path)] = ((q - zero[:, group]) * scale[:, group] if table else
                                             (q - zero[group]) * scale[group])
    return out
