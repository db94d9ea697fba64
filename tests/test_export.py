"""python -m benchmarks.export: a run's model as a Hugging Face GPT-2 folder that transformers loads unchanged."""
import numpy as np
import pytest

from benchmarks import export
from common.checkpoint import save_checkpoint
from common.config import GPTConfig
from common.params import init_params
from common.tokenizers import BPETokenizer, CharTokenizer
from tests.conftest import SMALL_TRAIN, framework_param, make_backend, random_batch
from tests.reference import relative_error

pytestmark = pytest.mark.pytorch  # transformers runs on PyTorch

TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n"


def _run(folder, tokenizer, **config):
    """A run folder holding a model.safetensors with every tensor random, biases included."""
    config = GPTConfig(**{"vocab_size": tokenizer.vocab_size, "block_size": 12, "n_layer": 2, "n_head": 3,
                          "n_embd": 24, "bias": True, **config})
    rng = np.random.default_rng(0)
    params = {n: v + rng.normal(0, 0.05, v.shape).astype(np.float32) for n, v in init_params(config, 0).items()}
    save_checkpoint(folder / "model.safetensors", params, config, step=20, tokenizer_json=tokenizer.to_json(),
                    framework="jax")
    return config, params


@pytest.mark.parametrize("tokenizer", [CharTokenizer.train(TEXT), BPETokenizer.train(TEXT * 20, vocab_size=280)],
                         ids=["char", "bpe"])
def test_transformers_loads_the_export_with_our_logits_and_tokenizer(tmp_path, tokenizer):
    transformers = pytest.importorskip("transformers")
    import torch
    config, params = _run(tmp_path, tokenizer)
    assert export.main([str(tmp_path), "--hf", str(tmp_path / "hf")]) == 0
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x, _ = random_batch(config, batch_size=2)
    with torch.no_grad():
        theirs = model(torch.from_numpy(x.astype(np.int64))).logits.numpy()
    ours = make_backend("pytorch", config, params=params).logits(x)
    assert relative_error(theirs, ours) <= 1e-5
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    ids = hf_tokenizer.encode(TEXT, add_special_tokens=False)
    assert ids == tokenizer.encode(TEXT) and hf_tokenizer.decode(ids) == TEXT


@pytest.mark.parametrize("framework", [framework_param("jax"), framework_param("tensorflow")])
def test_a_model_trained_in_jax_or_keras_exports_with_its_logits(tmp_path, framework):
    """20 steps in the framework, exported: transformers computes the logits the framework does."""
    transformers = pytest.importorskip("transformers")
    import torch
    tokenizer = CharTokenizer.train(TEXT)
    config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=12, n_layer=2, n_head=3, n_embd=24, bias=True)
    backend = make_backend(framework, config)
    for step in range(20):
        backend.train_step(*random_batch(config, seed=step), SMALL_TRAIN.lr)
    save_checkpoint(tmp_path / "model.safetensors", backend.export_params(), config, step=20,
                    tokenizer_json=tokenizer.to_json(), framework=framework)
    assert export.main([str(tmp_path), "--hf", str(tmp_path / "hf")]) == 0
    model = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x, _ = random_batch(config, batch_size=2, seed=99)
    with torch.no_grad():
        theirs = model(torch.from_numpy(x.astype(np.int64))).logits.numpy()
    assert relative_error(theirs, backend.logits(x)) <= 1e-5


def test_out_dir_with_files_is_refused_unless_forced(tmp_path, capsys):
    _run(tmp_path, CharTokenizer.train(TEXT))
    out = tmp_path / "hf"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert export.main([str(tmp_path), "--hf", str(out)]) == 2
    assert "already holds files: choose an empty or new folder, or pass --force" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert export.main([str(tmp_path), "--hf", str(out), "--force"]) == 0
    assert (out / "model.safetensors").is_file() and (out / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("source, message", [
    ("{tmp}/nothing", "does not exist: pass the folder of one framework's run"),
    ("{tmp}", "holds no model.safetensors and no checkpoints/"),
    ("{tmp}/file.txt", "is not a nanogpt-compare checkpoint|is corrupt or truncated")])
def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys, source, message):
    import re
    (tmp_path / "file.txt").write_text("not a checkpoint")
    assert export.main([source.format(tmp=tmp_path), "--hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err
    assert not (tmp_path / "hf").exists()
