"""What only the Keras GPT has to show on TensorFlow; the Backend contract is tests/test_backend.py's."""
import numpy as np
import pytest

from common.config import TrainConfig
from common.decode import filter_logits as compiled_filter_logits
from common.params import init_params
from common.sampling import filter_logits, top_k_bound
from common.schedule import learning_rate
from tests.conftest import SMALL_CONFIG as CONFIG, SMALL_TRAIN as TRAIN, make_backend, random_batch

pytestmark = pytest.mark.tensorflow


def _backend(train=TRAIN):
    return make_backend("tensorflow", train=train)


def _model(config=CONFIG, seed=0, **kwargs):
    from tensorflow_impl.model import GPT, load_canonical
    model = GPT(config, **kwargs)
    load_canonical(model, init_params(config, seed))
    return model


@pytest.fixture(scope="module")
def backend():
    """One compiled backend for the tests that do not care about its weights."""
    return _backend()


def test_gradients_are_the_numerical_derivative():
    """A finite difference on one weight agrees with the tape, in float64."""
    import keras
    import tensorflow as tf
    model = _model(dtype="float64")
    x, y = random_batch(CONFIG)
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, dtype="float64")
    weight = model.h[0].mlp.c_fc.kernel
    with tf.GradientTape() as tape:
        value = loss(y, model(x)[0])
    analytic = float(tape.gradient(value, weight)[3, 5])
    base = weight.numpy()
    shifted = []
    for delta in (1e-6, -1e-6):
        bumped = base.copy()
        bumped[3, 5] += delta
        weight.assign(bumped)
        shifted.append(float(loss(y, model(x)[0])))
    assert abs((shifted[0] - shifted[1]) / 2e-6 - analytic) <= 1e-6 * max(1.0, abs(analytic))


def test_train_step_traces_once_across_learning_rates(backend, monkeypatch):
    # Keras runs the Python body of train_step only while tracing its compiled step.
    traces, train_step = [], backend.model.train_step
    monkeypatch.setattr(backend.model, "train_step", lambda data: traces.append(1) or train_step(data))
    backend.model.make_train_function(force=True)
    x, y = random_batch(CONFIG, seed=2)
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
    x, _ = random_batch(CONFIG, batch_size=2)
    full, no_cache = model(x)
    assert no_cache is None
    full = np.asarray(full)
    cache = KVCache.empty(CONFIG, 2, slots=5)  # grown as it fills, as a decode grows it
    prefix, cache = model(x[:, :5], cache=cache)
    steps = []
    for t in range(5, CONFIG.block_size):
        if t == cache.keys[0].shape[1]:
            cache = cache.grown(6 if t == 5 else CONFIG.block_size)
        logits, cache = model(x[:, t:t + 1], cache=cache)
        steps.append(logits)
    assert int(cache.length) == CONFIG.block_size
    incremental = np.asarray(ops.concatenate([prefix, *steps], axis=1))
    np.testing.assert_allclose(incremental, full, atol=1e-5, rtol=1e-5)


def test_sampling_filter_matches_common_rules():
    import tensorflow as tf
    from tensorflow_impl.generate import FILTER_OPS, sample_next
    logits = np.random.default_rng(0).normal(size=(4, 65)).astype(np.float32) * 3
    V = logits.shape[-1]
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 10, 0.5),
                                      (0.5, 1, None), (2.0, 64, 0.95), (1.0, 100, None), (1.0, None, 1.0)]:
        expected = filter_logits(logits, temperature, top_k, top_p)
        options = (tf.constant(temperature), None if top_k is None else tf.constant(top_k),
                   None if top_p is None else tf.constant(top_p))
        k_bound = None if top_k is None else top_k_bound(top_k, V)
        actual = compiled_filter_logits(FILTER_OPS, tf.constant(logits), *options, k_bound).numpy()
        np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))
        kept = np.isfinite(expected)
        np.testing.assert_allclose(actual[kept], expected[kept], rtol=1e-6)
        seeds = [tf.constant([[row, i] for row in range(4)], tf.int32) for i in range(200)]
        draws = np.stack([sample_next(tf.constant(logits), *options, seed, greedy=False, k_bound=k_bound).numpy()
                          for seed in seeds], axis=1)
        for row in range(4):
            assert kept[row, draws[row]].all()
    greedy = sample_next(tf.constant(logits), tf.constant(0.0), None, None, tf.constant([[0, 0]] * 4, tf.int32),
                         greedy=True).numpy()
    np.testing.assert_array_equal(greedy, logits.argmax(-1))


@pytest.mark.parametrize("top_k", [100, 1000])
def test_tensor_top_k_past_its_bound_matches_the_common_rules(top_k):
    """A tensor top_k is read from the top-k op's static k_bound: for 100 of 300 tokens (bound 128)
    and a k past the vocabulary, the filter keeps what numpy's keeps."""
    import tensorflow as tf
    from tensorflow_impl.generate import FILTER_OPS
    logits = np.random.default_rng(1).normal(0, 3, size=(2, 300)).astype(np.float32)
    expected = filter_logits(logits, 1.0, top_k, None)
    run = tf.function(lambda x, k: compiled_filter_logits(FILTER_OPS, x, 1.0, k, None, top_k_bound(top_k, 300)),
                      jit_compile=True)
    assert np.array_equal(np.isinf(run(tf.constant(logits), tf.constant(top_k)).numpy()), np.isinf(expected))
    assert np.isfinite(expected).sum(axis=-1).tolist() == [min(top_k, 300)] * 2


def test_generation_traces_once_per_sampling_form(backend):
    """The sampling values are tensors: new values, prompt lengths within a prefill window and token
    counts retrace nothing. The form does (greedy, which filters are on, top-k's bound), once each, as
    JAX compiles per form, and so does a new prefill window."""
    prompt, n = [1, 2, 3], 3 * CONFIG.block_size  # the window slides for most of it
    traces = backend._compiled_generate.experimental_get_tracing_count
    before = traces()
    outputs = [backend.generate(prompt, n, **o) for o in (dict(temperature=1.0, top_k=10, seed=5),
                                                           dict(temperature=0.5, top_k=3, seed=7))]
    outputs.append(backend.generate([4, 5, 6, 7], n, temperature=0.8, top_k=20))  # another prompt length
    outputs.append(backend.generate(prompt, n - CONFIG.block_size + 1, temperature=1.0, top_k=1))  # fewer tokens
    assert traces() - before == 1
    for form in (dict(temperature=0.0), dict(temperature=0.8, top_p=0.9), dict(temperature=1.0)):
        outputs.append(backend.generate(prompt, n, **form))
        outputs.append(backend.generate(prompt, n, **{**form, "seed": 3}))
    assert traces() - before == 4
    outputs.append(backend.generate([4, 5, 6, 7, 8], n, temperature=0.8, top_k=20))  # another prefill window
    assert traces() - before == 5
    assert [len(out) for out in outputs] == [n] * 3 + [n - CONFIG.block_size + 1] + [n] * 7


def test_keras_serialization_round_trip(tmp_path):
    import keras
    from tensorflow_impl.model import GPT
    model = _model()
    config = model.get_config()
    assert config["config"] == CONFIG.__dict__
    assert GPT.from_config(config).config == CONFIG
    x, _ = random_batch(CONFIG)
    model.save(tmp_path / "gpt.keras")
    loaded = keras.models.load_model(tmp_path / "gpt.keras")
    assert isinstance(loaded, GPT) and loaded.config == CONFIG
    np.testing.assert_array_equal(np.asarray(loaded(x)[0]), np.asarray(model(x)[0]))


def test_mixed_bfloat16_keeps_float32_weights_and_the_global_policy():
    """Keras' mixed_bfloat16 per layer (how it trains: tests/test_parity.py's bfloat16 bounds)."""
    import keras
    policy = keras.config.dtype_policy()
    bf16 = _backend(train=TrainConfig(**{**TRAIN.__dict__, "dtype": "bfloat16"}))
    assert bf16.model.h[0].mlp.c_fc.compute_dtype == "bfloat16"
    assert bf16.model.h[0].mlp.c_fc.kernel.dtype == "float32"  # float32 master weights
    assert keras.config.dtype_policy() == policy  # the global policy is left alone