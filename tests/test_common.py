"""Schedule, canonical parameters, checkpoints, FLOPs, sampling rules and the framework loader."""
import math
from dataclasses import replace

import numpy as np
import pytest

from common.backend import canonical_framework
from common.checkpoint import (load_checkpoint, load_optimizer_state, load_training_state, save_checkpoint,
                               save_optimizer_state, save_training_state)
from common.config import GPTConfig, get_preset
from common.errors import UserError
from common.flops import accelerator_peak, cpu_native_bf16, cpu_vector_isa, flops_per_token, mfu
from common.params import decays, init_params, num_params, param_shapes
from common.sampling import cut_at_stop, filter_logits
from common.schedule import learning_rate


def _nanogpt_get_lr(it, learning_rate, warmup_iters, lr_decay_iters, min_lr):
    # nanoGPT train.py's get_lr, verbatim in logic, as the reference for ours.
    if it < warmup_iters:
        return learning_rate * (it + 1) / (warmup_iters + 1)
    if it > lr_decay_iters:
        return min_lr
    decay_ratio = (it - warmup_iters) / (lr_decay_iters - warmup_iters)
    coeff = 0.5 * (1.0 + math.cos(math.pi * decay_ratio))
    return min_lr + coeff * (learning_rate - min_lr)


def test_schedule_is_nanogpts_curve():
    _, train = get_preset("cpu-baby")
    for step in [0, 1, 50, 99, 100, 101, 1000, 1999, 2000, 2001, 5000]:
        assert learning_rate(step, train) == pytest.approx(_nanogpt_get_lr(step, 1e-3, 100, 2000, 1e-4), rel=1e-12)
    assert learning_rate(0, train) == pytest.approx(1e-3 / 101)
    assert learning_rate(100, train) == pytest.approx(1e-3)
    assert learning_rate(1050, train) == pytest.approx(1e-4 + 0.5 * 0.9e-3)


def test_schedule_without_decay_is_lr_at_every_step_warmup_included():
    # nanoGPT's get_lr with decay_lr=False returns learning_rate whatever the step.
    _, train = get_preset("cpu-baby")
    constant = replace(train, decay_lr=False, lr=3e-5, min_lr=0.0)
    assert [learning_rate(step, constant) for step in (0, 1, 99, 100, 1050, 2000, 5000)] == [3e-5] * 7
    assert learning_rate(0, train) != learning_rate(0, replace(train, decay_lr=False))


def test_parameter_counts_by_hand():
    # cpu-baby: per block 12·C² (+ LayerNorm gains 2C), plus wte V·C, wpe T·C, ln_f C.
    model, _ = get_preset("cpu-baby")
    C, V, T, L = 128, 65, 64, 4
    assert num_params(model) == L * (12 * C * C + 2 * C) + V * C + T * C + C == 804_096
    assert num_params(model, include_position=False) == 804_096 - T * C
    model, _ = get_preset("shakespeare-char")  # nanoGPT prints "number of parameters: 10.65M"
    assert num_params(model, include_position=False) == 6 * (12 * 384 ** 2 + 2 * 384) + 65 * 384 + 384
    assert round(num_params(model, include_position=False) / 1e6, 2) == 10.65


def test_init_params_statistics_and_determinism():
    config = GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, bias=True)
    params = init_params(config, seed=0)
    assert params.keys() == param_shapes(config).keys()
    assert all(v.dtype == np.float32 for v in params.values())
    assert params["wte"].std() == pytest.approx(0.02, rel=0.02)
    assert params["h.0.attn.c_proj.weight"].std() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert params["h.3.mlp.c_proj.weight"].std() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert (params["h.1.ln_2.weight"] == 1).all() and (params["h.1.mlp.c_fc.bias"] == 0).all()
    np.testing.assert_array_equal(init_params(config, 0)["wpe"], params["wpe"])
    assert not np.array_equal(init_params(config, 1)["wpe"], params["wpe"])
    assert decays("h.0.attn.c_attn.weight", (128, 384)) and not decays("h.0.ln_1.weight", (128,))


def test_checkpoint_round_trip_and_errors(tmp_path):
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    params = init_params(config, 0)
    path = save_checkpoint(tmp_path / "model.safetensors", params, config, step=7, tokenizer_json='{"k":1}',
                           framework="jax", extra={"val_loss": 1.5})
    loaded, info = load_checkpoint(path, expect_config=config, expect_tokenizer_json='{"k":1}')
    assert info["step"] == 7 and info["framework"] == "jax" and info["extra"] == {"val_loss": 1.5}
    for name in params:
        np.testing.assert_array_equal(loaded[name], params[name])
    assert [p.name for p in tmp_path.iterdir()] == ["model.safetensors"]  # no temp file left behind

    with pytest.raises(UserError, match="different model config"):
        load_checkpoint(path, expect_config=GPTConfig(vocab_size=12, block_size=8, n_layer=1, n_head=2, n_embd=8))
    with pytest.raises(UserError, match="different tokenizer"):
        load_checkpoint(path, expect_tokenizer_json="{}")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_checkpoint(truncated)
    with pytest.raises(UserError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.safetensors")
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.numpy import save_file
    save_file({"weight": np.zeros(3, np.float32)}, str(foreign))
    with pytest.raises(UserError, match="not a nanogpt-compare checkpoint"):
        load_checkpoint(foreign)


def test_checkpoint_with_a_flipped_byte_fails_its_checksum(tmp_path):
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    path = save_checkpoint(tmp_path / "model.safetensors", init_params(config, 0), config, step=1,
                           tokenizer_json="{}", framework="jax")
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF  # inside the last tensor: safetensors itself would load it as a wrong weight
    path.write_bytes(bytes(data))
    with pytest.raises(UserError, match="corrupt \\(its tensors do not match their checksum\\)"):
        load_checkpoint(path)


def _save_steps(run_dir, config, steps):
    for step in steps:
        params = init_params(config, step)
        save_training_state(run_dir, params, {"adam_m.wte": params["wte"], "adam_count": np.array(step)}, config,
                            step=step, tokenizer_json="{}", framework="pytorch")


def test_training_state_falls_back_past_an_unreadable_newest_checkpoint(tmp_path):
    config = GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8)
    assert load_training_state(tmp_path) is None  # never checkpointed: a fresh start
    _save_steps(tmp_path, config, [10, 20, 30])
    root = tmp_path / "checkpoints"
    assert sorted(p.name for p in root.glob("step_*")) == ["step_0000020", "step_0000030"]
    (root / "step_0000040").mkdir()  # a write the run did not finish: newer than `latest`, passed over
    state = load_training_state(tmp_path, config, "{}")
    assert (state.step, state.skipped) == (30, [])
    newest = root / "step_0000030" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    state = load_training_state(tmp_path, config, "{}")
    assert state.step == 20 and int(state.optimizer["adam_count"]) == 20
    np.testing.assert_array_equal(state.params["wte"], init_params(config, 20)["wte"])
    assert len(state.skipped) == 1 and state.skipped[0].startswith("step_0000030 (checkpoint ")
    assert "corrupt or truncated" in state.skipped[0]
    older = root / "step_0000020" / "optimizer.safetensors"
    older.write_bytes(b"garbage")
    with pytest.raises(UserError, match="no checkpoint in .* can be read \\(step_0000030 .*; step_0000020 .*\\): "
                                        "start a new run instead.$"):
        load_training_state(tmp_path, config, "{}")


def test_optimizer_state_file_round_trip(tmp_path):
    state = {"adam_m.wte": np.ones((2, 3), np.float32), "adam_count": np.array(4, np.int64)}
    path = save_optimizer_state(tmp_path / "optimizer.safetensors", state, step=4, framework="pytorch")
    loaded, step = load_optimizer_state(path)
    assert step == 4 and int(loaded["adam_count"]) == 4 and loaded["adam_m.wte"].shape == (2, 3)


def test_flops_per_token_matches_nanogpt():
    model, _ = get_preset("shakespeare-char")
    n = num_params(model, include_position=False)
    assert flops_per_token(model) == 6 * n + 12 * 6 * 6 * 64 * 256
    assert mfu(1000.0, model, peak_flops=flops_per_token(model) * 2000) == pytest.approx(0.5)
    assert accelerator_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
    assert accelerator_peak("NVIDIA H100 PCIe", "bfloat16") == 756e12
    assert accelerator_peak("Some Unknown GPU", "bfloat16") is None


@pytest.mark.parametrize("cpuinfo, isa", [
    ("model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx fma avx2 bmi2\n", "AVX2"),
    ("flags\t\t: fpu avx avx2 avx512f avx512bw avx512_bf16\n", "AVX-512"),
    ("flags\t\t: avx2 avx512f amx_bf16 amx_tile amx_int8\n", "AVX-512 + AMX"),
    ("Features\t: fp asimd evtstrm aes sve\n", "SVE"),
    ("Features\t: fp asimd\n", "NEON"),
    ("processor\t: 0\n", None),
])
def test_cpu_vector_isa_reads_the_widest_extension(cpuinfo, isa):
    assert cpu_vector_isa(cpuinfo) == isa


@pytest.mark.parametrize("flags, native", [
    ("fpu avx2 avx512f avx512_bf16 amx_bf16 amx_tile", ["AVX512_BF16", "AMX-BF16"]),
    ("fpu avx2 avx512f", []), ("fp asimd sve bf16", ["BF16"])])
def test_cpu_native_bf16_lists_what_computes_in_bfloat16(flags, native):
    assert cpu_native_bf16(f"processor\t: 0\nflags\t\t: {flags}\n") == native


def test_filter_logits_rules():
    logits = np.log(np.array([[0.5, 0.25, 0.15, 0.1]]))
    assert np.isfinite(filter_logits(logits, 1.0, 2, None)).tolist() == [[True, True, False, False]]
    # nucleus 0.7: 0.5 < 0.7, 0.5 + 0.25 >= 0.7 -> two tokens; 0.75 -> three tokens
    assert np.isfinite(filter_logits(logits, 1.0, None, 0.7)).sum() == 2
    assert np.isfinite(filter_logits(logits, 1.0, None, 0.76)).sum() == 3
    assert np.isfinite(filter_logits(logits, 1.0, None, 0.01)).sum() == 1  # the best token always stays
    np.testing.assert_allclose(filter_logits(logits, 2.0, None, None), logits / 2)


def test_cut_at_stop():
    assert cut_at_stop("ROMEO:\nhi\n\nJULIET:", ["\n\n", "JULIET"]) == ("ROMEO:\nhi", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)
    assert cut_at_stop("abc", None) == ("abc", False)


def test_framework_names_and_missing_frameworks():
    assert canonical_framework("Keras") == "tensorflow" and canonical_framework("flax") == "jax"
    assert canonical_framework("torch") == "pytorch"
    with pytest.raises(UserError, match="unknown framework 'mxnet'"):
        canonical_framework("mxnet")


def test_common_imports_no_framework():
    import subprocess
    import sys
    code = ("import sys, common.backend, common.checkpoint, common.config, common.data, common.flops, "
            "common.params, common.quality, common.sampling, common.schedule, common.tokenizers; "
            "print(sorted(m for m in ('torch', 'jax', 'tensorflow', 'keras', 'flax') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_model_package_module_chooses_the_keras_backend():
    """Keras reads KERAS_BACKEND once per process, so only entry points choose it (keras-hub's rule):
    common.backend.load_backend for the harness, tests/conftest.py for the tests."""
    import re
    from pathlib import Path
    sets_backend = re.compile(r"""environ\s*(\[\s*|\.setdefault\(\s*|\.update\(.*)["']KERAS_BACKEND|putenv\(\s*["']KERAS_BACKEND""")
    assert sets_backend.search('os.environ.setdefault("KERAS_BACKEND", "jax")')  # the form it once had
    root = Path(__file__).resolve().parents[1]
    offenders = [str(path.relative_to(root)) for package in ("pytorch_impl", "tensorflow_impl", "jax_impl")
                 for path in sorted((root / package).glob("*.py")) if sets_backend.search(path.read_text())]
    assert offenders == []
