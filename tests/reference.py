"""An independent float64 numpy GPT and AdamW step: what every framework is checked against."""
import math

import numpy as np

from common.config import GPTConfig, TrainConfig
from common.params import decays
from common.spec import MLP_RATIO


def _layer_norm(x, p, prefix, eps):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    y = (x - mean) / np.sqrt(var + eps) * p[f"{prefix}.weight"]
    return y + p[f"{prefix}.bias"] if f"{prefix}.bias" in p else y


def _dense(x, p, prefix):
    y = x @ p[f"{prefix}.weight"]
    return y + p[f"{prefix}.bias"] if f"{prefix}.bias" in p else y


def _gelu(x, approximate):
    if approximate:  # GPT-2's gelu_new
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def forward(params: dict, config: GPTConfig, idx: np.ndarray) -> np.ndarray:
    p = {k: v.astype(np.float64) for k, v in params.items()}
    B, T = idx.shape
    C, nh, eps = config.n_embd, config.n_head, config.layer_norm_eps
    hs = C // nh
    x = p["wte"][idx] + p["wpe"][:T]
    causal = np.tril(np.ones((T, T), dtype=bool))
    for i in range(config.n_layer):
        h = _layer_norm(x, p, f"h.{i}.ln_1", eps)
        q, k, v = np.split(_dense(h, p, f"h.{i}.attn.c_attn"), 3, axis=-1)
        q, k, v = (t.reshape(B, T, nh, hs).transpose(0, 2, 1, 3) for t in (q, k, v))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(hs)
        scores = np.where(causal, scores, -np.inf)
        weights = np.exp(scores - scores.max(-1, keepdims=True))
        weights /= weights.sum(-1, keepdims=True)
        y = (weights @ v).transpose(0, 2, 1, 3).reshape(B, T, C)
        x = x + _dense(y, p, f"h.{i}.attn.c_proj")
        h = _layer_norm(x, p, f"h.{i}.ln_2", eps)
        assert p[f"h.{i}.mlp.c_fc.weight"].shape[1] == MLP_RATIO * C
        h = _gelu(_dense(h, p, f"h.{i}.mlp.c_fc"), config.gelu_approximate)
        x = x + _dense(h, p, f"h.{i}.mlp.c_proj")
    return _layer_norm(x, p, "ln_f", eps) @ p["wte"].T


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> float:
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return float(-np.take_along_axis(log_probs, targets[..., None], axis=-1).mean())


def adamw_step(params, grads, m, v, count, lr, train: TrainConfig):
    """One step of torch.optim.AdamW after global-norm clipping; returns new (params, m, v, count)."""
    norm = math.sqrt(sum(float((g.astype(np.float64) ** 2).sum()) for g in grads.values()))
    scale = min(1.0, train.grad_clip / (norm + 1e-6)) if train.grad_clip > 0 else 1.0
    count += 1
    new_p, new_m, new_v = {}, {}, {}
    for name, value in params.items():
        g = grads[name].astype(np.float64) * scale
        w = value.astype(np.float64)
        if decays(name, value.shape):
            w = w * (1 - lr * train.weight_decay)
        new_m[name] = train.beta1 * m[name] + (1 - train.beta1) * g
        new_v[name] = train.beta2 * v[name] + (1 - train.beta2) * g * g
        m_hat = new_m[name] / (1 - train.beta1 ** count)
        v_hat = new_v[name] / (1 - train.beta2 ** count)
        new_p[name] = w - lr * m_hat / (np.sqrt(v_hat) + train.eps)
    return new_p, new_m, new_v, count


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """‖a − b‖ / ‖b‖, b the reference."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def assert_trained_params_match(actual: dict, expected: dict, bound: float, n_embd: int) -> None:
    """Every tensor within `bound` (relative), but for the key third of c_attn.bias, which no data
    determines.

    Its gradient is exactly zero in real arithmetic: softmax ignores a constant added to a whole row
    of scores, and q·b_k is such a constant. What float32 leaves there is rounding noise (~1e-12),
    which Adam scales up to steps of about lr in arbitrary directions, so any change of summation
    order (another attention kernel, another framework, the gradient split over replicas) changes
    it completely; PyTorch disagrees with itself on it between two of its own attention kernels.
    Both runs must leave it near zero instead.
    """
    C = n_embd
    for name, want in expected.items():
        got = actual[name]
        if name.endswith("attn.c_attn.bias"):
            for value in (got, want):
                assert np.linalg.norm(value[C:2 * C]) <= 1e-2, name
            got, want = np.delete(got, np.s_[C:2 * C]), np.delete(want, np.s_[C:2 * C])
        assert relative_error(got, want) <= bound, name
