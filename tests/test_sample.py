"""python -m benchmarks.sample: a run's checkpoint or a GPT-2 folder, sampled in every framework."""
import json
import os
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from benchmarks import sample
from common.backend import is_installed
from common.checkpoint import save_checkpoint, save_training_state
from common.config import GPTConfig
from common.tokenizers import BPETokenizer, CharTokenizer
from tests.conftest import REPO, decisive_params, framework_param, make_backend

TEXT = "the quick brown fox jumps over the lazy dog.\nTHE END\n"
TOKENIZER = CharTokenizer.train(TEXT)
CONFIG = GPTConfig(vocab_size=TOKENIZER.vocab_size, block_size=8, n_layer=2, n_head=2, n_embd=16, bias=True)
IN_PROCESS = [framework_param(f) for f in ("pytorch", "jax", "tensorflow")]  # keras-jax needs its own process


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder holding only what sampling reads: its final model.safetensors."""
    folder = tmp_path_factory.mktemp("run")
    save_checkpoint(folder / "model.safetensors", decisive_params(CONFIG), CONFIG, step=0,
                    tokenizer_json=TOKENIZER.to_json(), framework="pytorch")
    return folder


def run_json(capsys, *args) -> list[dict]:
    assert sample.main(["--json", *args]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    return [json.loads(line) for line in out.splitlines()]


def subprocess_json(*args) -> list[dict]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.sample", "--json", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env={**os.environ, "KERAS_BACKEND": ""})
    assert done.returncode == 0, done.stderr
    return [json.loads(line) for line in done.stdout.splitlines()]


GREEDY = ["--prompt", "the ", "--temperature", "0", "--max-new-tokens", "20"]


@pytest.mark.parametrize("framework", IN_PROCESS)
def test_json_rows_decode_to_their_text_and_equal_the_backend(run_dir, capsys, framework):
    [row] = run_json(capsys, "--checkpoint", str(run_dir), "--framework", framework, *GREEDY)
    assert row["prompt_ids"] == TOKENIZER.encode("the ") and row["end"] == "length"
    assert len(row["token_ids"]) == 20 and TOKENIZER.decode(row["token_ids"]) == row["text"]
    backend = make_backend(framework, CONFIG, params=decisive_params(CONFIG))
    assert row["token_ids"] == backend.generate(row["prompt_ids"], 20, temperature=0.0)


def test_greedy_text_is_the_same_in_every_framework(run_dir, capsys):
    installed = [f for f in ("pytorch", "jax", "tensorflow") if is_installed(f)]
    rows = {f: run_json(capsys, "--checkpoint", str(run_dir), "--framework", f, *GREEDY)[0] for f in installed}
    if is_installed("keras-jax"):  # Keras picks its backend once per process
        rows["keras-jax"] = subprocess_json("--checkpoint", str(run_dir), "--framework", "keras-jax", *GREEDY)[0]
    assert len(rows) >= 2, "needs two frameworks to compare"
    assert len({json.dumps(r) for r in rows.values()}) == 1, rows


@pytest.mark.parametrize("framework", IN_PROCESS)
def test_samples_are_one_batch_of_rows_each_its_own_decode(run_dir, capsys, framework):
    rows = run_json(capsys, "--checkpoint", str(run_dir), "--framework", framework, "--prompt", "the ",
                    "--temperature", "1.0", "--top-k", "30", "--seed", "5", "--num-samples", "3",
                    "--max-new-tokens", "40")
    assert len(rows) == 3 and len({tuple(r["token_ids"]) for r in rows}) == 3
    backend = make_backend(framework, CONFIG, params=decisive_params(CONFIG))
    for i, row in enumerate(rows):
        assert row["token_ids"] == backend.generate(row["prompt_ids"], 40, temperature=1.0, top_k=30, seed=5 + i)
        assert TOKENIZER.decode(row["token_ids"]) == row["text"]


def test_a_stop_string_ends_each_sample_where_it_starts(run_dir, capsys):
    [whole] = run_json(capsys, "--checkpoint", str(run_dir), *GREEDY)
    stop = whole["text"][6:8]
    cut = whole["text"].find(stop)
    [row] = run_json(capsys, "--checkpoint", str(run_dir), *GREEDY, "--stop", "never there", "--stop", stop)
    assert row["end"] == "stop" and row["text"] == whole["text"][:cut]
    assert row["token_ids"] == whole["token_ids"][:cut]  # characters: one token each


def test_end_of_text_ends_a_sample(tmp_path, capsys):
    """A BPE model whose greedy continuation is known; swapping one token's embedding with end-of-text's
    relabels that token, so generation must end where it first appears."""
    tokenizer = BPETokenizer.train(TEXT * 20, vocab_size=300)
    config = replace(CONFIG, vocab_size=tokenizer.vocab_size)
    params = decisive_params(config)
    prompt = tokenizer.encode("the ")
    before = make_backend("pytorch", config, params=params).generate(prompt, 12, temperature=0.0)
    target = next(t for t in before[3:] if t not in prompt and t != tokenizer.eot_id)
    assert tokenizer.eot_id not in before  # else the swap would put the target where end-of-text was
    swapped = params["wte"].copy()
    swapped[[target, tokenizer.eot_id]] = swapped[[tokenizer.eot_id, target]]
    save_checkpoint(tmp_path / "model.safetensors", {**params, "wte": swapped}, config, step=0,
                    tokenizer_json=tokenizer.to_json(), framework="jax")
    [row] = run_json(capsys, "--checkpoint", str(tmp_path / "model.safetensors"), "--prompt", "the ",
                     "--temperature", "0", "--max-new-tokens", "12")
    assert row["end"] == "eot" and row["token_ids"] == before[:before.index(target)]
    assert row["text"] == tokenizer.decode(row["token_ids"])


@pytest.mark.parametrize("framework", [*IN_PROCESS, framework_param("keras-jax")])
def test_a_gpt2_folder_decodes_as_transformers_does(tmp_path_factory, capsys, framework):
    """--init-from a tiny random GPT-2: greedy ids equal GPT2LMHeadModel.generate's, cache or not,
    ending where the model emits end-of-text."""
    pytest.importorskip("transformers")
    import torch
    from tests.test_hf_gpt2 import save_gpt2_folder, tiny_bpe, tiny_gpt2
    tokenizer = tiny_bpe()
    model = tiny_gpt2(tokenizer, seed=3)
    folder = save_gpt2_folder(model, tokenizer, tmp_path_factory.mktemp("gpt2"))
    prompt = tokenizer.encode("the lazy dog")
    with torch.no_grad():
        expected = model.generate(torch.tensor([prompt]), max_new_tokens=40, do_sample=False,
                                  pad_token_id=tokenizer.eot_id)[0, len(prompt):].tolist()
    args = ["--init-from", str(folder), "--framework", framework, "--prompt", "the lazy dog", "--temperature", "0",
            "--max-new-tokens", "40"]
    for cache in ("--cache", "--no-cache"):
        [row] = (subprocess_json(*args, cache) if framework == "keras-jax" else run_json(capsys, *args, cache))
        ended = row["end"] == "eot"
        assert row["token_ids"] == expected[:len(row["token_ids"])] and len(row["token_ids"]) == (
            expected.index(tokenizer.eot_id) if ended else 40), (cache, row, expected)


class _Chunks:
    """A backend that returns set tokens, to watch how sampling ends rows and stops decoding."""

    def __init__(self, rows):
        self.rows, self.calls = np.asarray(rows), 0

    def generate_chunks(self, prompts, max_new_tokens, chunk_tokens, **options):
        for start in range(0, max_new_tokens, chunk_tokens):
            self.calls += 1
            yield self.rows[:, start:start + chunk_tokens]


def test_each_row_ends_on_its_own_and_decoding_stops_when_all_have(monkeypatch):
    tokenizer = BPETokenizer.train(TEXT * 20, vocab_size=300)
    monkeypatch.setattr(sample, "CHUNK_TOKENS", 4)
    word, eot = tokenizer.encode("fox"), tokenizer.eot_id
    rows = [word * 4 + [eot] + word * 11, word * 6 + [eot] + word * 9]
    rows = [r[:16] + [eot] * 16 for r in rows]  # 32 tokens: 8 chunks of 4 if nothing stopped
    backend = _Chunks(rows)
    shown = []
    samples = sample.sample(backend, tokenizer, [1], num_samples=2, max_new_tokens=32, stop=[], seed=0,
                            on_text=shown.append)
    n = len(word)
    assert [s.ids for s in samples] == [word * 4, word * 6] and [s.end for s in samples] == ["eot", "eot"]
    assert backend.calls == -(-(6 * n + 1) // 4)  # no chunk after the last row's end-of-text
    assert "".join(shown) == "fox" * 4


def test_newest_checkpoint_when_training_was_cut(tmp_path, capsys):
    params = decisive_params(CONFIG)
    for step, scale in ((10, 1.0), (20, -1.0)):
        save_training_state(tmp_path, {n: v * scale for n, v in params.items()}, {"adam_count": np.array(step)},
                            CONFIG, step=step, tokenizer_json=TOKENIZER.to_json(), framework="jax")
    model = sample.load_model(tmp_path)
    assert model.source.endswith("step_0000020/model.safetensors")
    assert np.array_equal(model.params["wte"], -params["wte"])


@pytest.mark.parametrize("args, message", [
    (["--checkpoint", "no/such/run"], "no checkpoint at no/such/run"),
    (["--checkpoint", "{empty}"], "holds no model.safetensors and no checkpoints/: pass the folder of one"),
    (["--checkpoint", "{run}", "--prompt", "Zebra"], r"characters not in the tokenizer's vocabulary \('Z'\)"),
    (["--checkpoint", "{run}", "--prompt", ""], "the prompt is empty after tokenization"),
    (["--checkpoint", "{run}", "--top-k", "0"], "top_k must be a positive integer, got 0"),
    (["--checkpoint", "{run}", "--temperature", "-1"], "temperature must be 0"),
    (["--checkpoint", "{run}", "--num-samples", "0"], "--num-samples must be at least 1"),
    (["--checkpoint", "{run}", "--seed", "-3"], "--seed must be from 0 to"),
    (["--checkpoint", "{run}", "--stop", ""], "--stop takes a non-empty string"),
    (["--checkpoint", "{run}", "--framework", "mxnet"], "unknown framework 'mxnet'"),
    (["--checkpoint", "{run}", "--prompt-file", "no/such/file"], "cannot read --prompt-file no/such/file"),
    (["--checkpoint", "{run}", "--max-new-tokens", "x"], "argument --max-new-tokens: invalid int value"),
    ([], "name the weights: --checkpoint"),
    (["--checkpoint", "{run}", "--init-from", "gpt2"], "not allowed with argument"),
])
def test_bad_input_is_one_line_and_exit_2(run_dir, tmp_path, capsys, args, message):
    import re
    (tmp_path / "empty").mkdir()
    args = [a.format(run=run_dir, empty=tmp_path / "empty") for a in args]
    assert sample.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(message, err), err


def test_one_sample_on_a_terminal_streams_the_text_of_one_call(run_dir, capsys):
    """On a terminal the sample is printed chunk by chunk, text that may start a stop string held back
    until settled: what is shown is the prompt and the --json row's text, over several chunks."""
    import pty
    args = ["--checkpoint", str(run_dir), "--prompt", "the ", "--max-new-tokens", "100", "--temperature", "1.0"]
    [whole] = run_json(capsys, *args)
    # A stop string that first appears in the third chunk, so the sample streams two chunks before it.
    at = next(i for i in range(2 * sample.CHUNK_TOKENS, 100) if whole["text"].find(whole["text"][i:i + 3]) == i)
    args += ["--stop", whole["text"][at:at + 3]]
    [row] = run_json(capsys, *args)
    assert row["end"] == "stop" and row["text"] == whole["text"][:at]
    shown = []

    def read(fd):
        data = os.read(fd, 1024)
        shown.append(data)
        return data

    pty.spawn([sys.executable, "-m", "benchmarks.sample", *args], read)
    assert b"".join(shown).decode().replace("\r\n", "\n") == "the " + row["text"] + "\n"
