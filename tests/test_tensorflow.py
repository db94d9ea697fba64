"""The Keras GPT against the float64 numpy reference, and its training, generation and state."""
import numpy as np
import pytest

from common.config import GPTConfig, TrainConfig
from common.errors import UserError
from common.params import init_params
from common.sampling import filter_logits
from common.schedule import learning_rate
from tests import reference
from tests.reference import relative_error

pytestmark = pytest.mark.tensorflow

# Tiny, because every compiled function costs seconds of XLA compilation on 2 cores.
CONFIG = GPTConfig(vocab_size=65, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=0.0, bias=True)
TRAIN = TrainConfig(batch_size=4, max_iters=10, lr=1e-2, min_lr=1e-3, warmup_iters=3, lr_decay_iters=10,
                    weight_decay=0.1, grad_clip=0.5, eval_interval=5, eval_iters=1)


def _backend(config=CONFIG, train=TRAIN, seed=0):
    from tensorflow_impl.backend import Backend
    return Backend(config, train, init_params(config, seed), device="cpu")


def _model(config=CONFIG, seed=0, **kwargs):
    from tensorflow_impl.model import GPT, load_canonical
    model = GPT(config, **kwargs)
    load_canonical(model, init_params(config, seed))
    return model


def _batch(config, seed=0, batch_size=3):
    rng = np.random.default_rng(seed)
    return (rng.integers(0, config.vocab_size, (batch_size, config.block_size), dtype=np.int32),
            rng.integers(0, config.vocab_size, (batch_size, config.block_size), dtype=np.int32))


@pytest.fixture(scope="module")
def backend():
    """One compiled backend for the tests that do not care about its weights."""
    return _backend()


@pytest.mark.parity
@pytest.mark.parametrize("bias", [True, False])
def test_logits_match_numpy_reference(bias):
    from tensorflow_impl.model import loss_fn
    config = GPTConfig(**{**CONFIG.__dict__, "bias": bias})
    x, y = _batch(config)
    logits = np.asarray(_model(config)(x))
    expected = reference.forward(init_params(config, 0), config, x)
    assert relative_error(logits, expected) <= 1e-5
    assert abs(float(loss_fn()(y, logits)) - reference.cross_entropy(expected, y)) <= 1e-5


def test_loss_ignores_the_ignore_index():
    from tensorflow_impl.model import loss_fn
    x, y = _batch(CONFIG)
    logits = np.asarray(_model()(x))
    y[:, ::2] = -1
    kept = y != -1
    expected = reference.cross_entropy(logits[kept][None], y[kept][None])
    assert abs(float(loss_fn()(y, logits)) - expected) <= 1e-5


@pytest.mark.parity
def test_one_optimizer_step_matches_numpy_reference():
    backend = _backend()
    x, y = _batch(CONFIG, seed=1)
    params = init_params(CONFIG, 0)
    _, grads = backend.loss_and_grads(x, y)
    norm = np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values()))
    assert norm > TRAIN.grad_clip, "the step under test should clip"
    zeros = {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}
    expected, m, v, count = reference.adamw_step(params, grads, zeros, dict(zeros), 0, 4e-3, TRAIN)
    backend.train_step(x, y, lr=4e-3)
    actual, state = backend.export_params(), backend.optimizer_state()
    for name in params:
        assert relative_error(actual[name], expected[name]) <= 1e-5, name
        assert relative_error(state[f"adam_m.{name}"], m[name]) <= 1e-5, name
        assert relative_error(state[f"adam_v.{name}"], v[name]) <= 1e-5, name
    assert state["adam_count"].dtype == np.int64 and int(state["adam_count"]) == count == 1
    assert state["adam_m.h.0.mlp.c_fc.weight"].shape == (16, 64)  # canonical [in, out]


def test_canonical_params_round_trip():
    from tensorflow_impl.model import to_canonical
    params = init_params(CONFIG, 3)
    exported = to_canonical(_model(seed=3))
    assert exported.keys() == params.keys()
    for name in params:
        np.testing.assert_array_equal(exported[name], params[name])


def test_gradients_are_the_numerical_derivative():
    """A finite difference on one weight agrees with the tape, in float64."""
    import keras
    import tensorflow as tf
    model = _model(dtype="float64")
    x, y = _batch(CONFIG)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    weight = model.h[0].mlp.c_fc.kernel
    with tf.GradientTape() as tape:
        value = loss(y, model(x))
    analytic = float(tape.gradient(value, weight)[3, 5])
    base = weight.numpy()
    shifted = []
    for delta in (1e-6, -1e-6):
        bumped = base.copy()
        bumped[3, 5] += delta
        weight.assign(bumped)
        shifted.append(float(loss(y, model(x))))
    assert abs((shifted[0] - shifted[1]) / 2e-6 - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_train_step_traces_once_across_learning_rates(backend, monkeypatch):
    # Keras runs the Python body of train_step only while tracing its compiled step.
    traces, train_step = [], backend.model.train_step
    monkeypatch.setattr(backend.model, "train_step", lambda data: traces.append(1) or train_step(data))
    backend.model.make_train_function(force=True)
    x, y = _batch(CONFIG, seed=2)
    losses = []
    for step in range(6):
        lr = learning_rate(step, TRAIN)  # a different rate every step
        losses.append(backend.train_step(x, y, lr))
        assert float(backend.optimizer.learning_rate.numpy()) == pytest.approx(lr)
    assert len(traces) == 1
    assert losses[-1] < losses[0]


def test_kv_cache_matches_full_forward_at_every_position():
    from keras import ops
    from tensorflow_impl.model import KVCache
    model = _model()
    x, _ = _batch(CONFIG, batch_size=2)
    full = np.asarray(model(x))
    cache = KVCache.empty(CONFIG, 2)
    prefix, cache = model(x[:, :5], cache=cache)
    steps = []
    for t in range(5, CONFIG.block_size):
        logits, cache = model(x[:, t:t + 1], cache=cache)
        steps.append(logits)
    assert int(cache.length) == CONFIG.block_size
    incremental = np.asarray(ops.concatenate([prefix, *steps], axis=1))
    np.testing.assert_allclose(incremental, full, atol=1e-5, rtol=1e-5)


def test_sampling_filter_matches_common_rules():
    import tensorflow as tf
    from tensorflow_impl.generate import filter_logits as tf_filter_logits, sample_next
    logits = np.random.default_rng(0).normal(size=(4, 65)).astype(np.float32) * 3
    V = logits.shape[-1]
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 10, 0.5),
                                      (0.5, 1, None), (2.0, 64, 0.95)]:
        expected = filter_logits(logits, temperature, top_k, top_p)
        actual = tf_filter_logits(tf.constant(logits), tf.constant(temperature), tf.constant(top_k or V),
                                  tf.constant(1.0 if top_p is None else top_p)).numpy()
        np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))
        kept = np.isfinite(expected)
        np.testing.assert_allclose(actual[kept], expected[kept], rtol=1e-6)
        draws = np.stack([sample_next(tf.constant(logits), tf.constant(temperature), tf.constant(top_k or V),
                                      tf.constant(1.0 if top_p is None else top_p),
                                      tf.constant([0, i], tf.int32)).numpy() for i in range(200)], axis=1)
        for row in range(4):
            assert kept[row, draws[row]].all()
    greedy = sample_next(tf.constant(logits), tf.constant(0.0), tf.constant(V), tf.constant(1.0),
                         tf.constant([0, 0], tf.int32)).numpy()
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


def _no_cache_greedy(backend, prompt, n):
    """The definition: each token is the argmax after the last block_size tokens."""
    tokens = list(prompt)
    for _ in range(n):
        window = np.asarray(tokens[-CONFIG.block_size:], dtype=np.int32)[None]
        tokens.append(int(np.asarray(backend.model(window))[0, -1].argmax()))  # eager: no compile per length
    return tokens[len(prompt):]


def test_generation_is_seeded_traced_once_and_runs_past_block_size(backend):
    prompt, n = [1, 2, 3], 3 * CONFIG.block_size  # the window slides for most of it
    a = backend.generate(prompt, n, temperature=1.0, top_k=10, seed=5)
    b = backend.generate(prompt, n, temperature=1.0, top_k=10, seed=5)
    c = backend.generate(prompt, n, temperature=0.8, top_p=0.9, seed=6)
    greedy = backend.generate(prompt, n, temperature=0.0)
    assert backend._compiled_generate.experimental_get_tracing_count() == 1  # options are tensors, not constants
    assert len(a) == n and a == b and a != c
    assert all(0 <= t < CONFIG.vocab_size for t in a + c)
    assert greedy == _no_cache_greedy(backend, prompt, n)
    # Without the cache: the same greedy tokens, and the same samples (one RNG key per position).
    assert backend.generate(prompt, n, temperature=0.0, use_cache=False) == greedy
    assert backend.generate(prompt, n, temperature=1.0, top_k=10, seed=5, use_cache=False) == a


def test_generation_from_a_prompt_longer_than_block_size(backend):
    prompt = list(range(1, CONFIG.block_size + 4))
    assert backend.generate(prompt, 5, temperature=0.0) == _no_cache_greedy(backend, prompt, 5)
    assert backend.generate(prompt, 0) == []


def test_keras_serialization_round_trip(tmp_path):
    import keras
    from tensorflow_impl.model import GPT
    model = _model()
    config = model.get_config()
    assert config["config"] == CONFIG.__dict__
    assert GPT.from_config(config).config == CONFIG
    x, _ = _batch(CONFIG)
    model.save(tmp_path / "gpt.keras")
    loaded = keras.models.load_model(tmp_path / "gpt.keras")
    assert isinstance(loaded, GPT) and loaded.config == CONFIG
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))


def test_mixed_bfloat16_trains_close_to_float32():
    import keras
    policy = keras.config.dtype_policy()
    x, y = _batch(CONFIG, seed=4)
    bf16 = _backend(train=TrainConfig(**{**TRAIN.__dict__, "dtype": "bfloat16"}))
    assert bf16.model.h[0].mlp.c_fc.compute_dtype == "bfloat16"
    assert bf16.model.h[0].mlp.c_fc.kernel.dtype == "float32"  # float32 master weights
    assert keras.config.dtype_policy() == policy  # the global policy is left alone
    f32 = _backend()
    for step in range(4):
        lr = learning_rate(step, TRAIN)
        low, full = bf16.train_step(x, y, lr), f32.train_step(x, y, lr)
        assert np.isfinite(low) and abs(low - full) <= 0.05, (step, low, full)


def test_dropout_is_active_only_in_training():
    config = GPTConfig(**{**CONFIG.__dict__, "dropout": 0.3})
    model, plain = _model(config), _model()
    x, _ = _batch(config)
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(model(x)))
    np.testing.assert_array_equal(np.asarray(model(x)), np.asarray(plain(x)))  # inference: no dropout
    assert not np.array_equal(np.asarray(model(x, training=True)), np.asarray(model(x, training=True)))


def test_devices_and_environment(backend):
    import tensorflow as tf
    resolve_device = type(backend).resolve_device
    info = backend.device_info()
    assert info["framework_version"].startswith("tensorflow ") and " / keras " in info["framework_version"]
    assert info["device"] == "cpu" and info["device_count"] >= 1
    assert backend.peak_memory_bytes() is None
    with pytest.raises(UserError):
        resolve_device("tpu")
    if not tf.config.list_physical_devices("GPU"):
        assert resolve_device("auto") == "/CPU:0"
        with pytest.raises(UserError, match="--device cpu"):
            resolve_device("gpu")
