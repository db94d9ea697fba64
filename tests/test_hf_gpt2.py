"""Hugging Face GPT-2 folders in and out, checked against transformers' own GPT2LMHeadModel.

No GPT-2 weights can be downloaded here, so the tests build a tiny random one with transformers, in
shapes that catch mapping mistakes: an odd vocabulary (289), n_positions 48 (not a power of two),
4 heads, and every bias and LayerNorm parameter non-zero.
"""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from common.config import GPTConfig
from common.errors import UserError
from common.hf_gpt2 import HFConfig, load_gpt2, read_config, write_gpt2
from common.params import init_params, param_shapes
from common.tokenizers import BPETokenizer, CharTokenizer, GPT2Tokenizer
from tests import reference
from tests.conftest import REPO
from tests.reference import relative_error

TEXTS = ["the lazy fox\n  jumps", "", " ", "\n\n\nA:\n", "é€😀 naïve", "a<|endoftext|>\nb", "'tis, 'twas--O!"]
TINY = dict(n_layer=2, n_head=4, n_embd=32, n_positions=48)
IDS = np.random.default_rng(0).integers(0, 289, size=(2, 48))  # a full context of the odd vocabulary


def tiny_bpe() -> BPETokenizer:
    return BPETokenizer.train("the quick brown fox jumps over the lazy dog\n" * 50, vocab_size=300)  # 289 tokens


def tiny_gpt2(tokenizer: BPETokenizer, seed: int = 0, **changes):
    """A random transformers GPT2LMHeadModel (GPT-2's gelu_new and epsilon 1e-5) for `tokenizer`;
    `changes` go into its GPT2Config (a larger vocab_size, another layer_norm_epsilon).

    Every tensor is perturbed: zero biases and unit LayerNorm gains would hide a swapped or dropped
    one. Other tests may build their folder with `save_gpt2_folder(tiny_gpt2(tiny_bpe()), ...)`.
    """
    import torch
    import transformers
    torch.manual_seed(seed)
    config = transformers.GPT2Config(**{**TINY, "vocab_size": tokenizer.vocab_size, **changes},
                                     bos_token_id=tokenizer.eot_id, eos_token_id=tokenizer.eot_id)
    model = transformers.GPT2LMHeadModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return model


def save_gpt2_folder(model, tokenizer: BPETokenizer, folder, **save_pretrained):
    """As save_pretrained writes it (`transformer.`-prefixed names, no lm_head), plus tokenizer.json."""
    model.save_pretrained(folder, **save_pretrained)
    (folder / "tokenizer.json").write_text(tokenizer.to_hf_json(), encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def bpe():
    return tiny_bpe()


@pytest.fixture(scope="module")
def hf_model(bpe):
    pytest.importorskip("torch", reason="transformers' GPT-2 runs on PyTorch")
    pytest.importorskip("transformers", reason="the tests build their GPT-2 with transformers")
    model = tiny_gpt2(bpe)
    assert model.config.activation_function == "gelu_new" and model.config.layer_norm_epsilon == 1e-5
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, bpe, tmp_path_factory):
    return save_gpt2_folder(hf_model, bpe, tmp_path_factory.mktemp("hf") / "tiny-gpt2")


def _canonical(hf_model) -> dict[str, np.ndarray]:
    """transformers' state dict under canonical names, by hand: what the loader must produce."""
    out = {}
    for name, value in hf_model.state_dict().items():
        name = name.removeprefix("transformer.")
        if name != "lm_head.weight":
            out[{"wte.weight": "wte", "wpe.weight": "wpe"}.get(name, name)] = value.float().numpy()
    return out


def _hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch
    with torch.no_grad():
        return model(torch.as_tensor(ids)).logits.numpy()


def _rewrite_weights(folder, transform):
    """Rewrite a folder's model.safetensors as another writer would have."""
    path = folder / "model.safetensors"
    save_file(transform(load_file(str(path))), str(path), metadata={"format": "pt"})


def _copy(src, dst):
    dst.mkdir()
    for file in src.iterdir():
        (dst / file.name).write_bytes(file.read_bytes())
    return dst


# --- in ----------------------------------------------------------------------------------------

def test_config_maps_to_project_terms(hf_dir):
    config = read_config(hf_dir)
    assert config == HFConfig(GPTConfig(vocab_size=289, block_size=48, n_layer=2, n_head=4, n_embd=32,
                                        dropout=0.0, bias=True, gelu_approximate=True, layer_norm_eps=1e-5))


@pytest.mark.parametrize("activation, approximate", [("gelu_new", True), ("gelu_pytorch_tanh", True),
                                                     ("gelu", False)])
def test_config_activation_and_epsilon(hf_dir, tmp_path, activation, approximate):
    folder = _copy(hf_dir, tmp_path / "m")
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, "activation_function": activation,
                                                    "layer_norm_epsilon": 3e-6, "resid_pdrop": 0.3}))
    config = read_config(folder)
    assert config.model.gelu_approximate is approximate and config.model.layer_norm_eps == 3e-6
    assert config.model.dropout == 0.0  # a training choice, not part of the weights


@pytest.mark.parametrize("change, fragment", [
    ({"activation_function": "relu"}, "activation 'relu'"),
    ({"n_inner": 64}, "n_inner"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"model_type": "llama"}, "not GPT-2"),
    ({"layer_norm_epsilon": -1}, "layer_norm_epsilon"),
    ({"n_head": 5}, "divisible by n_head"),
    ({"n_layer": "2"}, "lacks n_layer as whole numbers"),
])
def test_config_refuses_what_the_models_cannot_compute(hf_dir, tmp_path, change, fragment):
    folder = _copy(hf_dir, tmp_path / "m")
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **change}))
    with pytest.raises(UserError, match=fragment) as e:
        read_config(folder)
    assert "\n" not in str(e.value)


def _hub_form(tensors):
    # The Hub's GPT-2 files: no prefix, the old attention-mask buffers saved beside the weights.
    out = {name.removeprefix("transformer."): value for name, value in tensors.items()}
    for i in range(TINY["n_layer"]):
        out[f"h.{i}.attn.bias"] = np.tril(np.ones((1, 1, 48, 48), np.float32))
        out[f"h.{i}.attn.masked_bias"] = np.array(-1e4, np.float32)
    return out


def _with_tied_head(tensors):
    return {**tensors, "lm_head.weight": tensors["transformer.wte.weight"].copy()}


@pytest.mark.parametrize("form", [None, _hub_form, _with_tied_head], ids=["save_pretrained", "hub", "tied-head"])
def test_load_gives_exactly_the_hf_weights_under_canonical_names(hf_model, hf_dir, tmp_path, form):
    folder = hf_dir if form is None else _copy(hf_dir, tmp_path / "m")
    if form is not None:
        _rewrite_weights(folder, form)
    loaded = load_gpt2(folder)
    want = _canonical(hf_model)
    assert list(loaded.params) != [] and set(loaded.params) == set(want) == set(param_shapes(loaded.config.model))
    for name, value in want.items():
        assert loaded.params[name].dtype == np.float32
        assert np.array_equal(loaded.params[name], value), name
    assert loaded.params["h.1.attn.c_attn.weight"].shape == (32, 96)  # Conv1D's [in, out] is canonical


def test_sharded_weights_load_the_same(hf_model, hf_dir, bpe, tmp_path):
    folder = save_gpt2_folder(hf_model, bpe, tmp_path / "sharded", max_shard_size="40KB")
    assert not (folder / "model.safetensors").exists() and len(list(folder.glob("model-*.safetensors"))) > 1
    loaded, whole = load_gpt2(folder), load_gpt2(hf_dir)
    assert all(np.array_equal(loaded.params[n], whole.params[n]) for n in whole.params)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_load_as_float32(hf_model, bpe, tmp_path, dtype):
    import copy
    import torch
    half = copy.deepcopy(hf_model).to(getattr(torch, dtype))
    loaded = load_gpt2(save_gpt2_folder(half, bpe, tmp_path / dtype))
    for name, value in _canonical(half).items():  # widened to float32 by torch: exact
        assert loaded.params[name].dtype == np.float32
        assert np.array_equal(loaded.params[name], value), name


def test_untied_head_is_refused(hf_dir, tmp_path):
    folder = _copy(hf_dir, tmp_path / "m")
    _rewrite_weights(folder, lambda t: {**t, "lm_head.weight": t["transformer.wte.weight"] + 1e-3})
    with pytest.raises(UserError, match="lm_head different from its token embedding"):
        load_gpt2(folder)


def test_weights_not_matching_the_config_are_named(hf_dir, tmp_path):
    folder = _copy(hf_dir, tmp_path / "m")
    _rewrite_weights(folder, lambda t: {k: v for k, v in t.items() if k != "transformer.h.1.mlp.c_fc.bias"})
    with pytest.raises(UserError, match=r"h\.1\.mlp\.c_fc\.bias"):
        load_gpt2(folder)


def test_numpy_forward_of_loaded_params_equals_transformers(hf_model, hf_dir):
    loaded = load_gpt2(hf_dir)
    want = _hf_logits(hf_model, IDS)
    got = reference.forward(loaded.params, loaded.config.model, IDS)
    assert relative_error(got, want) <= 1e-5
    # The bound tells the GELUs apart: the exact form the models run by default misses it 20-fold.
    exact = reference.forward(loaded.params, replace(loaded.config.model, gelu_approximate=False), IDS)
    assert relative_error(exact, want) > 1e-4


def test_gpt2_tokenizer_comes_with_the_folder(hf_dir, bpe):
    tokenizer = load_gpt2(hf_dir).tokenizer
    assert isinstance(tokenizer, GPT2Tokenizer) and tokenizer.kind == "gpt2"
    assert tokenizer.vocab_size == 289 and tokenizer.eot_id == bpe.eot_id
    for text in TEXTS:
        assert tokenizer.encode(text) == bpe.encode(text)
        assert tokenizer.decode(tokenizer.encode(text)) == text


# --- errors that name the fix --------------------------------------------------------------------

def test_pickled_weights_are_refused_unopened(hf_dir, tmp_path):
    folder = tmp_path / "bin-only"
    folder.mkdir()
    (folder / "config.json").write_text((hf_dir / "config.json").read_text())
    (folder / "tokenizer.json").write_text((hf_dir / "tokenizer.json").read_text())
    (folder / "pytorch_model.bin").write_bytes(b"not even a pickle")  # opening it would fail differently
    with pytest.raises(UserError, match=r"only pickled PyTorch weights \(\.bin\).*never opened") as e:
        load_gpt2(folder)
    assert "\n" not in str(e.value) and "save_pretrained" in str(e.value)


def test_missing_tokenizer_or_corrupt_weights(hf_dir, tmp_path):
    folder = _copy(hf_dir, tmp_path / "m")
    (folder / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="no tokenizer.json"):
        load_gpt2(folder)
    folder = _copy(hf_dir, tmp_path / "n")
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated"):
        load_gpt2(folder)


@pytest.mark.parametrize("name, fragment", [
    ("gpt2", "cannot fetch 'gpt2' from the Hugging Face Hub"),
    ("openai-community/gpt2-medium", "cannot fetch 'openai-community/gpt2-medium'"),
    ("./no/such/folder", "neither a folder nor a Hugging Face model id"),
])
def test_by_name_offline_without_a_copy_is_one_line(tmp_path, name, fragment):
    # huggingface_hub reads its settings when imported, so the check runs in a process of its own.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "empty-hf-home")}
    env.pop("HF_HUB_CACHE", None)
    script = ("from common.errors import UserError\nfrom common.hf_gpt2 import load_gpt2\n"
              f"try:\n    load_gpt2({name!r})\nexcept UserError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 1 and fragment in lines[0]
    assert "put the model's folder (config.json, model.safetensors, tokenizer.json)" in lines[0]


# --- out ---------------------------------------------------------------------------------------

def test_export_loads_in_transformers_with_the_same_weights_and_logits(hf_model, hf_dir, tmp_path):
    transformers = pytest.importorskip("transformers")
    loaded = load_gpt2(hf_dir)
    out = write_gpt2(tmp_path / "out", loaded.params, loaded.config.model, loaded.tokenizer)
    assert sorted(load_file(str(out / "model.safetensors"))) == sorted(load_file(str(hf_dir / "model.safetensors")))
    again = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    want, got = hf_model.state_dict(), again.state_dict()
    assert sorted(got) == sorted(want)  # lm_head.weight included, tied back to wte
    for name in want:
        assert want[name].equal(got[name]), name
    assert again.config.activation_function == "gelu_new" and again.config.layer_norm_epsilon == 1e-5
    assert np.array_equal(_hf_logits(again, IDS), _hf_logits(hf_model, IDS))


def test_exported_tokenizer_loads_in_transformers(hf_dir, bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    loaded = load_gpt2(hf_dir)
    out = write_gpt2(tmp_path / "out", loaded.params, loaded.config.model, loaded.tokenizer)
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    assert theirs.eos_token == "<|endoftext|>" and theirs.eos_token_id == bpe.eot_id
    for text in TEXTS:
        ids = bpe.encode(text)
        assert theirs.encode(text) == ids
        assert theirs.decode(ids) == text


@pytest.mark.parametrize("changes", [{}, {"gelu_approximate": False, "layer_norm_eps": 3e-6}])
def test_export_then_load_round_trips(hf_dir, tmp_path, changes):
    loaded = load_gpt2(hf_dir)
    config = replace(loaded.config.model, **changes)  # the GELU form and epsilon travel in config.json
    again = load_gpt2(write_gpt2(tmp_path / "out", loaded.params, config, loaded.tokenizer))
    assert again.config == HFConfig(config)
    assert all(np.array_equal(again.params[n], loaded.params[n]) for n in loaded.params)
    assert again.tokenizer.to_json() == loaded.tokenizer.to_json()


def test_char_model_without_biases_exports_to_transformers(tmp_path):
    """A model trained here (exact GELU, no biases, a character vocabulary) as a Hugging Face folder."""
    pytest.importorskip("torch", reason="transformers' GPT-2 runs on PyTorch")
    transformers = pytest.importorskip("transformers", reason="the test loads the export with transformers")
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
    tokenizer = CharTokenizer.train(text)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=48, n_layer=2, n_head=4, n_embd=32, bias=False)
    params = init_params(config, seed=3)
    out = write_gpt2(tmp_path / "char", params, config, tokenizer)
    raw = json.loads((out / "config.json").read_text())
    assert raw["activation_function"] == "gelu" and raw["eos_token_id"] is None and raw["vocab_size"] == 30
    model = transformers.GPT2LMHeadModel.from_pretrained(out).eval()
    assert not model.transformer.h[0].attn.c_attn.bias.any()  # zero biases compute what no biases do
    ids = np.array([tokenizer.encode(text[:48])])
    want = reference.forward(params, config, ids)  # the spec's exact GELU and epsilon 1e-5
    assert relative_error(_hf_logits(model, ids), want) <= 1e-5
    theirs = transformers.AutoTokenizer.from_pretrained(out)
    for sample in ["Speak, speak.\n", "\n\nAll:\n", " "]:
        assert theirs.encode(sample) == tokenizer.encode(sample)
        assert theirs.decode(tokenizer.encode(sample)) == sample


def test_export_refuses_a_tokenizer_larger_than_the_model(bpe, tmp_path):
    config = GPTConfig(vocab_size=100, block_size=8, n_layer=1, n_head=1, n_embd=8, bias=True)
    with pytest.raises(UserError, match="tokenizer has 289 tokens but the model only 100"):
        write_gpt2(tmp_path / "out", init_params(config, 0), config, bpe)


def test_loading_and_exporting_import_no_framework(hf_dir, tmp_path):
    """torch and transformers build the test folder; reading and writing one needs neither."""
    script = ("import sys\nfrom common.hf_gpt2 import load_gpt2, write_gpt2\n"
              f"m = load_gpt2({str(hf_dir)!r})\n"
              f"write_gpt2({str(tmp_path / 'out')!r}, m.params, m.config.model, m.tokenizer)\n"
              "print(sorted(n for n in ('torch', 'transformers', 'jax', 'tensorflow', 'keras', 'flax') "
              "if n in sys.modules))\n")
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]" and (tmp_path / "out" / "model.safetensors").is_file()
