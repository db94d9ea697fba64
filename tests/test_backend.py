"""The Backend contract (common/backend.py), one test per promise, over every framework.

Each framework is held to the float64 numpy reference (tests/reference.py) directly; test_parity.py
compares the frameworks with each other. Under KERAS_BACKEND=jax (tests/test_keras_jax.py runs this
module again in a process of its own) the Keras row is keras-jax instead of tensorflow.
"""
import dataclasses
import functools
import json

import numpy as np
import pytest

from common.backend import SEED_LIMIT, check_batch, check_sampling, has_accelerator, load_backend
from common.decode import DecodeConfig
from common.errors import UserError
from common.params import init_params
from common.schedule import learning_rate
from tests import reference
from tests.conftest import BACKENDS, SMALL_CONFIG, SMALL_TRAIN, decisive_params, make_backend, random_batch
from tests.reference import relative_error

pytestmark = pytest.mark.parametrize("framework", BACKENDS)


@functools.cache
def shared_backend(framework: str):
    """One backend per framework for the tests that only read it."""
    return make_backend(framework)


@functools.cache
def decisive_backend(framework: str):
    """One backend per framework with decisive weights, for the generation tests that only read it."""
    return make_backend(framework, params=decisive_params(SMALL_CONFIG))


# --- the model ------------------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("bias", [True, False])
def test_logits_and_loss_match_numpy_reference(framework, bias):
    config = dataclasses.replace(SMALL_CONFIG, bias=bias)
    backend = make_backend(framework, config)
    x, y = random_batch(config)
    expected = reference.forward(init_params(config, 0), config, x)
    logits = backend.logits(x)
    assert logits.shape == (3, config.block_size, config.vocab_size) and logits.dtype == np.float32
    assert relative_error(logits, expected) <= 1e-5
    assert abs(backend.eval_loss(x, y) - reference.cross_entropy(expected, y)) <= 1e-5
    y[0, :5] = y[2, ::2] = -1  # LOSS_IGNORE_INDEX: left out of the mean
    valid = y != -1
    assert abs(backend.eval_loss(x, y) - reference.cross_entropy(expected[valid][None], y[valid][None])) <= 1e-5


def test_params_round_trip_in_canonical_names_and_layouts(framework):
    params = init_params(SMALL_CONFIG, 3)
    exported = make_backend(framework, params=params).export_params()
    assert sorted(exported) == sorted(params)
    for name, value in params.items():
        assert exported[name].dtype == np.float32 and np.array_equal(exported[name], value), name


def test_dropout_is_active_only_in_training(framework):
    params = init_params(SMALL_CONFIG, 0)
    x, y = random_batch(SMALL_CONFIG)
    with_dropout = make_backend(framework, dataclasses.replace(SMALL_CONFIG, dropout=0.3), params=params)
    without = make_backend(framework, params=params)
    assert np.array_equal(with_dropout.logits(x), with_dropout.logits(x))
    assert relative_error(with_dropout.logits(x), without.logits(x)) <= 1e-6
    assert with_dropout.eval_loss(x, y) == pytest.approx(without.eval_loss(x, y), abs=1e-6)
    assert abs(with_dropout.train_step(x, y, 1e-3) - without.train_step(x, y, 1e-3)) > 1e-4


# --- training -------------------------------------------------------------------------------

@pytest.mark.parity
@pytest.mark.parametrize("bias, grad_clip", [(True, 0.5), (False, 0.5), (True, 0.0)])
def test_optimizer_steps_match_reference_adamw(framework, bias, grad_clip):
    """Two steps (so bias correction and moments carry over), clipped or not, decayed where it should."""
    config, train = dataclasses.replace(SMALL_CONFIG, bias=bias), dataclasses.replace(SMALL_TRAIN, grad_clip=grad_clip)
    params = init_params(config, 0)
    backend = make_backend(framework, config, train, params)
    p = {n: v.astype(np.float64) for n, v in params.items()}
    m = {n: np.zeros_like(v) for n, v in p.items()}
    v = {n: np.zeros_like(v) for n, v in p.items()}
    count = 0
    for step, v_bound in ((0, 1e-5), (1, 1e-4)):
        x, y = random_batch(config, seed=step)
        _, grads = backend.loss_and_grads(x, y)
        if grad_clip:
            assert np.sqrt(sum((g.astype(np.float64) ** 2).sum() for g in grads.values())) > grad_clip
        lr = learning_rate(step, train)
        backend.train_step(x, y, lr)
        p, m, v, count = reference.adamw_step(p, grads, m, v, count, lr, train)
        actual, state = backend.export_params(), backend.optimizer_state()
        assert state["adam_count"].dtype == np.int64 and int(state["adam_count"]) == count == step + 1
        for name in params:
            assert relative_error(actual[name], p[name]) <= 1e-5, (step, name)
            assert relative_error(state[f"adam_m.{name}"], m[name]) <= 1e-5, (step, name)
            assert relative_error(state[f"adam_v.{name}"], v[name]) <= v_bound, (step, name)


def test_training_lowers_the_loss(framework):
    backend = make_backend(framework)
    x, y = random_batch(SMALL_CONFIG, seed=2)
    first = backend.train_step(x, y, 1e-2)
    for _ in range(20):
        last = backend.train_step(x, y, 1e-2)
    assert last < first - 1.0


def test_grad_accum_step_is_one_step_on_a_batch_k_times_as_large(framework):
    # SMALL_TRAIN clips at 0.5, below these gradients' norm: the clip must act on the accumulated
    # gradient, as on the big batch's. Two steps, so AdamW's bias correction counts updates.
    # No biases: the key bias's gradient is zero in exact arithmetic (softmax ignores a shift), so
    # Adam makes its rounding noise, which differs with the summation order, a full step either way.
    k = 4
    config = dataclasses.replace(SMALL_CONFIG, bias=False)
    whole = make_backend(framework, config)
    micro = make_backend(framework, config, dataclasses.replace(SMALL_TRAIN, grad_accum=k))
    for step in range(2):
        x, y = random_batch(config, batch_size=2 * k, seed=step)  # k micro-batches of 2 rows
        lr = learning_rate(step, SMALL_TRAIN)
        whole_loss, micro_loss = whole.train_step(x, y, lr), micro.train_step(x, y, lr)
        assert abs(micro_loss - whole_loss) <= 1e-5 * abs(whole_loss), step
        expected, actual = whole.export_params(), micro.export_params()
        for name, value in expected.items():
            assert relative_error(actual[name], value) <= 1e-5, (step, name)
    state = micro.optimizer_state()
    assert int(state["adam_count"]) == int(whole.optimizer_state()["adam_count"]) == 2
    for name in expected:
        assert relative_error(state[f"adam_m.{name}"], whole.optimizer_state()[f"adam_m.{name}"]) <= 1e-5, name
    # Resumed from its state, an accumulating run makes the same next update.
    resumed = make_backend(framework, config, micro.train_config, params=micro.export_params())
    resumed.load_optimizer_state(state)
    x, y = random_batch(config, batch_size=2 * k, seed=7)
    assert resumed.train_step(x, y, 1e-3) == micro.train_step(x, y, 1e-3)
    for name, value in micro.export_params().items():
        assert np.array_equal(resumed.export_params()[name], value), name


def test_optimizer_state_round_trips_and_resumes_identically(framework):
    first = make_backend(framework)
    for step in range(3):
        first.train_step(*random_batch(SMALL_CONFIG, seed=step), learning_rate(step, SMALL_TRAIN))
    state = first.optimizer_state()
    C = SMALL_CONFIG.n_embd
    assert int(state["adam_count"]) == 3 and state["adam_m.h.0.mlp.c_fc.weight"].shape == (C, 4 * C)  # [in, out]
    assert sorted(state) == sorted(["adam_count", *(f"adam_{k}.{n}" for k in "mv" for n in init_params(SMALL_CONFIG, 0))])
    second = make_backend(framework, params=first.export_params())
    second.load_optimizer_state(state)
    assert int(second.optimizer_state()["adam_count"]) == 3
    x, y = random_batch(SMALL_CONFIG, seed=9)
    assert first.train_step(x, y, 1e-3) == second.train_step(x, y, 1e-3)
    for name, value in first.export_params().items():
        assert np.array_equal(second.export_params()[name], value), name


def test_batches_must_split_over_the_replicas(framework):
    with pytest.raises(UserError, match="batch_size 3 does not split over 2 devices: use a multiple of 2"):
        make_backend(framework, train=dataclasses.replace(SMALL_TRAIN, batch_size=3), replicas=2)


# --- generation -----------------------------------------------------------------------------

def _no_cache_greedy(backend, prompt, n):
    """The definition: each token is the argmax of the logits after the last block_size tokens."""
    tokens = list(prompt)
    for _ in range(n):
        window = np.asarray(tokens[-backend.config.block_size:], dtype=np.int32)[None]
        tokens.append(int(backend.logits(window)[0, -1].argmax()))
    return tokens[len(prompt):]


# A one-token prompt at block_size 8 starts in a one-slot cache, whose softmax Keras warns of.
@pytest.mark.filterwarnings("ignore:You are using a softmax over axis -1 of a tensor of shape")
@pytest.mark.parametrize("prompt_len", [1, 3, SMALL_CONFIG.block_size, SMALL_CONFIG.block_size + 5])
def test_generation_is_seeded_and_the_cache_changes_nothing(framework, prompt_len):
    backend = decisive_backend(framework)
    prompt = [int(t) for t in np.random.default_rng(prompt_len).integers(0, SMALL_CONFIG.vocab_size, prompt_len)]
    n = 2 * SMALL_CONFIG.block_size + 3  # well past block_size: the window slides
    greedy = backend.generate(prompt, n, temperature=0.0, use_cache=True)
    assert greedy == backend.generate(prompt, n, temperature=0.0, use_cache=False)
    assert greedy == _no_cache_greedy(backend, prompt, n)
    sampled = backend.generate(prompt, n, temperature=1.0, top_k=10, seed=5)
    assert len(sampled) == n and all(0 <= t < SMALL_CONFIG.vocab_size for t in sampled)
    assert sampled == backend.generate(prompt, n, temperature=1.0, top_k=10, seed=5)
    assert sampled != backend.generate(prompt, n, temperature=1.0, top_k=10, seed=6)
    nucleus = backend.generate(prompt, n, temperature=0.8, top_p=0.9, seed=3)
    assert nucleus == backend.generate(prompt, n, temperature=0.8, top_p=0.9, seed=3, use_cache=False)
    assert backend.generate(prompt, 0) == []


def test_batched_rows_equal_their_own_decode(framework):
    """Greedy rows equal each prompt's own greedy decode; sampled rows each follow their own seed."""
    backend = decisive_backend(framework)
    rng = np.random.default_rng(1)
    prompts = [[int(t) for t in rng.integers(0, SMALL_CONFIG.vocab_size, 3)] for _ in range(3)]
    n = SMALL_CONFIG.block_size + 4  # past block_size: the window slides
    greedy = backend.generate_batch(prompts, n, temperature=0.0)
    assert greedy == [backend.generate(p, n, temperature=0.0) for p in prompts]
    assert greedy == backend.generate_batch(prompts, n, temperature=0.0, use_cache=False)
    seeds = [7, 8, 9]
    sampled = backend.generate_batch([prompts[0]] * 3, n, temperature=1.0, top_k=20, seeds=seeds)
    assert len({tuple(row) for row in sampled}) == 3  # one prompt, three streams
    assert sampled == [backend.generate(prompts[0], n, temperature=1.0, top_k=20, seed=s) for s in seeds]
    nucleus = backend.generate_batch(prompts, n, temperature=0.8, top_p=0.9, seeds=seeds)
    assert nucleus == backend.generate_batch(prompts, n, temperature=0.8, top_p=0.9, seeds=seeds, use_cache=False)
    assert nucleus == [backend.generate(p, n, temperature=0.8, top_p=0.9, seed=s) for p, s in zip(prompts, seeds)]


def test_chunked_generation_equals_one_call(framework):
    """Decoding in pieces, each continuing the last, gives the tokens of one call, cache or not."""
    backend = decisive_backend(framework)
    prompts = [[1, 2, 3], [4, 5, 6]]
    n = 2 * SMALL_CONFIG.block_size + 3
    for options in (dict(temperature=0.0), dict(temperature=1.0, top_k=10, seeds=[4, 5]),
                    dict(temperature=1.0, seeds=[4, 5], use_cache=False)):
        whole = backend.generate_batch(prompts, n, **options)
        pieces = list(backend.generate_chunks(prompts, n, 6, **options))
        assert [p.shape for p in pieces] == [(2, 6)] * 3 + [(2, n - 18)]
        assert np.concatenate(pieces, axis=1).tolist() == whole, options


def test_batches_refuse_what_they_cannot_decode(framework):
    with pytest.raises(UserError, match="the prompts of one batch must have the same number of tokens"):
        check_batch([[1, 2], [3]], [0, 1])
    with pytest.raises(UserError, match="2 prompts need 2 seeds, got 1"):
        check_batch([[1], [2]], [0])
    with pytest.raises(UserError, match=f"seed -1 is out of range: use a whole number from 0 to {SEED_LIMIT - 1}"):
        check_batch([[1]], [-1])
    with pytest.raises(UserError, match="the prompts of one batch must have the same number of tokens"):
        shared_backend(framework).generate_batch([[1, 2], [3]], 4)
    assert shared_backend(framework).generate_batch([[1], [2]], 0) == [[], []]


@pytest.mark.parametrize("options, message", [
    (dict(prompt=[]), "the prompt is empty"),
    (dict(prompt=[1, 65]), "prompt token 65 is outside the vocabulary: use ids from 0 to 64"),
    (dict(max_new_tokens=-1), "max_new_tokens must be a whole number, 0 or more, got -1"),
    (dict(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    (dict(temperature=-0.5), "temperature must be 0 .greedy. or a finite positive number, got -0.5"),
    (dict(temperature=float("nan")), "temperature must be 0 .greedy. or a finite positive number, got nan"),
    (dict(top_k=0), "top_k must be a positive integer, got 0"),
    (dict(top_p=0.0), r"top_p must be above 0 and at most 1, got 0.0"),
    (dict(top_p=1.5), r"top_p must be above 0 and at most 1, got 1.5")])
def test_generation_refuses_options_it_cannot_honour(framework, options, message):
    args = {"prompt": [1, 2], "max_new_tokens": 4, **options}
    with pytest.raises(UserError, match=message):
        check_sampling(args.pop("prompt"), args.pop("max_new_tokens"), SMALL_CONFIG.vocab_size, **{
            "temperature": 1.0, "top_k": None, "top_p": None, **args})
    with pytest.raises(UserError, match=message):
        shared_backend(framework).generate(**{"prompt": [1, 2], "max_new_tokens": 4, **options})


# --- environment ----------------------------------------------------------------------------

def test_devices_and_info(framework):
    Backend, backend = load_backend(framework), shared_backend(framework)
    info = backend.device_info()
    assert {"framework_version", "device", "device_name", "device_count"} <= set(info)
    assert info["device"] == "cpu" and info["device_count"] >= 1 and info["device_name"]
    assert backend.peak_memory_bytes() is None
    assert str(Backend.resolve_device("auto")) == str(backend.device) or has_accelerator(framework)
    assert has_accelerator(framework, "gpu") and not has_accelerator(framework, "cpu")  # as the user asked
    with pytest.raises(UserError, match=f"{Backend.runtime} cannot run on device 'mps': use --device auto, cpu"):
        Backend.resolve_device("mps")
    if not has_accelerator(framework):
        with pytest.raises(UserError, match=f"no GPU is visible to {Backend.runtime}: use --device cpu, or "):
            Backend.resolve_device("gpu")


def test_settings_name_the_tuning_variables_set_and_the_decode_compilation(framework, monkeypatch):
    from common.backend import TUNING_VARIABLES, XLA_DECODE_OPTIONS
    for name in TUNING_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_use_fusion_emitters=false")
    own = {"pytorch": {"decode_compile": "eager"}, "tensorflow": {}}.get(
        framework, {"decode_compiler_options": XLA_DECODE_OPTIONS})  # jax and keras-jax
    assert shared_backend(framework).settings() == {"XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false", **own}
    if framework == "pytorch":  # a compiled decode names torch.compile's arguments
        compiled = make_backend("pytorch", decode=DecodeConfig(compile=True))
        inductor = {"cpp_wrapper": True, "post_grad_fusion_options": {"decompose_mm_pass": {}}, "memory_planning": True,
                    "guard_filter_fn": "skip_all_guards_unsafe"}  # the filter by its name: env.json is JSON
        assert compiled.settings()["decode_compile"] == {"fullgraph": True, "dynamic": False,
                                                         "isolate_recompiles": True, "options": inductor}
        json.dumps(compiled.settings())
