"""int8 weight-only quantization of the Keras GPT, with Keras' own model.quantize, on both backends."""
import keras
import numpy as np

from tensorflow_impl.model import GPT, _canonical_name


def quantize(model: GPT, mode: str) -> None:
    """Every Dense kernel and embedding table in int8 with one scale per output channel (per row of
    an embedding, which is the tied head's output channel), in place. Weight-only: Keras' default int8
    also quantizes each activation row on the fly and multiplies in int8, a different method, whose
    int8 dot XLA:CPU runs slower than a float32 one at batch 1."""
    from keras.quantizers import Int8QuantizationConfig
    model.quantize(config=Int8QuantizationConfig(activation_quantizer=None),
                   filters=lambda layer: isinstance(layer, (keras.layers.Dense, keras.layers.Embedding)))


def dequantized_weights(model: GPT) -> dict[str, np.ndarray]:
    """The int8 kernels and tables as the model computes with them (Keras stores q = w * scale),
    float32 under canonical names."""
    variables = {v.path: v for v in model.variables}
    out = {}
    for path, q in variables.items():
        scale = variables.get(f"{path}_scale")
        if scale is None or q.dtype != "int8":
            continue
        scale = np.asarray(keras.ops.convert_to_numpy(scale), np.float32)
        q = np.asarray(keras.ops.convert_to_numpy(q), np.float32)
        # A table's scales are per row (token), a kernel's per column (output channel).
        out[_canonical_name(model, path)] = q / (scale[:, None] if path.endswith("embeddings") else scale)
    return out
