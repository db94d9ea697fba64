"""python -m benchmarks.infer: the inference benchmark's command, its arithmetic and its refusals."""
import dataclasses
import json
import re
import shutil

import numpy as np
import pytest

from benchmarks import infer
from benchmarks.report import write_benchmarks
from benchmarks.results import pack
from common.backend import is_installed
from common.checkpoint import save_checkpoint
from common.config import GPTConfig, get_preset
from common.params import init_params, num_params
from common.tokenizers import CharTokenizer
from tests.test_results import make_run

# Two layers of width 4 over a 10-token vocabulary and 8 positions, no biases: wte 40, wpe 32, and per
# layer ln_1 4, c_attn 48, attn.c_proj 16, ln_2 4, c_fc 64, mlp.c_proj 64; ln_f 4.
SMALL = GPTConfig(vocab_size=10, block_size=8, n_layer=2, n_head=2, n_embd=4, bias=False)
SMALL_PARAMS = 40 + 32 + 2 * (4 + 48 + 16 + 4 + 64 + 64) + 4


@pytest.fixture(scope="module")
def inference_set(tmp_path_factory):
    """One command's set: PyTorch and JAX on the tiny preset, one round of one call of each shape."""
    if not (is_installed("pytorch") and is_installed("jax")):
        pytest.skip("needs PyTorch and JAX")
    out = tmp_path_factory.mktemp("infer") / "set"
    assert infer.main(["--framework", "pytorch,jax", "--preset", "tiny", "--batch-sizes", "1,2",
                       "--prompt-lengths", "4,32", "--new-tokens", "4", "--repeat", "1", "--calls", "1",
                       "--out", str(out)]) == 0
    return out


def test_two_frameworks_write_every_row_their_table_and_plot(inference_set):
    out = inference_set
    spec, rows = infer.load_set(out)
    assert [r["row"] for r in rows] == ["pytorch", "jax"] and spec["host_bandwidth"] > 0
    for row in rows:
        figures = [row["first_token_s"], row["startup_s"], row["peak_memory_bytes"], row["kv_cache_speedup"],
                   *(p[k] for p in row["prefill"] for k in ("ms_median", "ms_p90")),
                   *(d[k] for d in [*row["decode"], row["nocache"]]
                     for k in ("step_ms_median", "step_ms_p90", "tokens_per_s", "bandwidth_utilisation"))]
        assert all(value > 0 for value in figures), row
        assert [d["batch_size"] for d in row["decode"]] == [1, 2] and row["memory_kind"] == "host RSS"
    report = (out / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| row | first token"))
    for column in ("prefill ms @4", "prefill ms @32", "decode tok/s @1", "decode tok/s @2", "ms/token @1 median (p90)",
                   "no-cache tok/s @1", "KV-cache speed-up", "bandwidth used @1", "peak memory"):
        assert f"| {column} |" in header
    for name in ("pytorch", "jax"):
        cells = next(line for line in report.splitlines() if line.startswith(f"| {name} | ")).split(" | ")[1:]
        assert len(cells) == header.count(" | ")
        for cell in cells:
            numbers = re.findall(r"\d[\d,]*(?:\.\d+)?", cell)
            assert numbers and all(float(n.replace(",", "")) > 0 for n in numbers), (name, cell)
    assert (out / infer.PLOT_FILE).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Highest 1-minute load average after a row's round: " in report
    assert f"]({infer.PLOT_FILE})" in report and not (out / "rounds").exists()  # each row's file holds its rounds


def test_benchmarks_page_shows_the_newest_inference_set_per_machine(inference_set, tmp_path):
    results = tmp_path / "results"
    pack([make_run(tmp_path / "a" / "pytorch"), make_run(tmp_path / "a" / "jax", "jax")], results / "training")
    shutil.copytree(inference_set, results / "infer-new")
    shutil.copytree(inference_set, results / "infer-old")
    shutil.copytree(inference_set, results / "infer-batch-1")
    spec = json.loads((results / "infer-old" / infer.SET_FILE).read_text())
    (results / "infer-old" / infer.SET_FILE).write_text(json.dumps({**spec, "date": "2020-01-01T00:00:00+00:00"}))
    one_batch_size = {**spec, "date": "2030-01-01T00:00:00+00:00", "options": {**spec["options"], "batch_sizes": [1]}}
    (results / "infer-batch-1" / infer.SET_FILE).write_text(json.dumps(one_batch_size))  # newest, no sweep
    write_benchmarks(tmp_path)
    page = (tmp_path / "BENCHMARKS.md").read_text()
    assert page.count("## Inference: ") == 1 and "[infer-new](results/infer-new/report.md)" in page
    assert "infer-old" not in page.split("## Run sets")[0] and "infer-batch-1" not in page.split("## Run sets")[0]
    header = "| row | decode tok/s @1 | decode tok/s @2 | KV-cache speed-up @1 | first token s (compile incl.) |"
    assert header in page and "\n| pytorch | " in page and "\n| jax | " in page
    assert (tmp_path / "docs" / "benchmarks" / "inference.png").read_bytes()[:4] == b"\x89PNG"


def test_every_row_loads_the_same_weights_from_a_preset_or_a_checkpoint(tmp_path):
    config, params, described = infer.load_weights({"preset": "tiny", "seed": 3})
    assert config == get_preset("tiny")[0] and described == "random weights at tiny, seed 3"
    assert all(np.array_equal(params[name], value) for name, value in init_params(config, 3).items())
    save_checkpoint(tmp_path / "model.safetensors", params, config, step=0,
                    tokenizer_json=CharTokenizer.train("ab").to_json(), framework="jax")
    loaded_config, loaded, where = infer.load_weights({"checkpoint": str(tmp_path), "preset": "cpu-baby", "seed": 0})
    assert loaded_config == config and where == str(tmp_path / "model.safetensors")
    assert loaded.keys() == params.keys() and all(np.array_equal(loaded[n], params[n]) for n in params)


def test_a_row_takes_its_own_rounds_only(tmp_path):
    (tmp_path / "rounds").mkdir()
    for name in ("pytorch-0", "pytorch-1", "pytorch-compiled-0", "jax-0"):
        (tmp_path / "rounds" / f"{name}.json").write_text(json.dumps({"row": name.rpartition("-")[0]}))
    assert [r["row"] for r in infer.rounds_of(tmp_path, "pytorch")] == ["pytorch", "pytorch"]
    assert [r["row"] for r in infer.rounds_of(tmp_path, infer.COMPILED)] == [infer.COMPILED]


def test_bytes_a_decode_step_reads():
    """Weights once (float32), then K and V of every position so far: steps 2 .. 6 after a one-token
    prompt (the first comes with the prefill, untimed) attend to 2 .. 6 positions, 4 on average, in 2
    layers of width 4, for each of 3 rows."""
    assert infer.decode_bytes_per_step(SMALL, batch_size=3, prompt_tokens=1, new_tokens=6) == \
        4 * SMALL_PARAMS + 2 * 2 * 4 * 4 * 3 * 4
    assert infer.decode_bytes_per_step(SMALL, 3, 1, 6, dtype="bfloat16") == 4 * SMALL_PARAMS + 2 * 2 * 4 * 2 * 3 * 4


SPEC = {"model": vars(SMALL), "host_bandwidth": 1e9, "host_bandwidth_method": "copy",
        "options": {"batch_sizes": [1, 4], "prompt_lengths": [8], "new_tokens": 5, "calls": 2, "dtype": "float32"}}


def _round(row: str, decode_s: dict, nocache_s: list, first: float, device_name: str = "cpu") -> dict:
    return {"row": row, "round": 0, "startup_s": 1.0, "load_average": 0.5, "first_token_s": first, "prefill_s": {"8": [0.002, 0.004]},
            "decode_step_s": decode_s, "nocache_step_s": nocache_s, "peak_memory_bytes": 2**20,
            "memory_kind": "host RSS", "env": {"framework": "pytorch", "device": "cpu" if device_name == "cpu" else "gpu",
                                                 "device_name": device_name, "framework_version": "x"}}


def test_a_row_pools_its_rounds_and_measures_bandwidth_against_the_host():
    spec = SPEC
    rounds = [_round(infer.COMPILED, {"1": [0.001, 0.003], "4": [0.002, 0.002]}, [0.004, 0.004], 3.0),
              _round(infer.COMPILED, {"1": [0.002, 0.002], "4": [0.002, 0.002]}, [0.004, 0.006], 5.0)]
    row = infer.combine(spec, rounds)
    one, four = row["decode"]
    assert one["step_ms_median"] == pytest.approx(2.0) and one["step_ms_p90"] == pytest.approx(2.7)  # of 1, 2, 2, 3
    assert one["tokens_per_s"] == pytest.approx(500) and four["tokens_per_s"] == pytest.approx(2000)
    assert four["bandwidth_utilisation"] == pytest.approx((4 * SMALL_PARAMS + 2 * 2 * 4 * 4 * 4 * 3.5) / 0.002 / 1e9)
    assert row["nocache"]["tokens_per_s"] == pytest.approx(250) and row["kv_cache_speedup"] == pytest.approx(2.0)
    assert row["first_token_s"] == pytest.approx(4.0) and row["prefill"] == [
        {"prompt_tokens": 8, "ms_median": pytest.approx(3.0), "ms_p90": pytest.approx(4.0)}]
    assert row["compile"] and row["rounds"] == 2 and row["memory_bandwidth_source"] == "copy"


def test_a_gpu_is_measured_against_its_datasheet_and_the_host_copy_is_timed():
    assert infer.device_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert infer.device_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert infer.device_bandwidth("NVIDIA A100-SXM4-80GB") == 2.039e12
    assert infer.device_bandwidth("Some Future Accelerator") is None
    row = infer.combine(SPEC, [_round("pytorch", {"1": [0.001], "4": [0.001]}, [0.002], 1.0, "NVIDIA H100 PCIe")])
    assert row["memory_bandwidth_source"] == "datasheet"
    assert row["decode"][0]["bandwidth_utilisation"] == pytest.approx((4 * SMALL_PARAMS + 2 * 2 * 4 * 4 * 3.5) / 1e-3 / 2e12)
    assert infer.host_memory_bandwidth(mib=16, repeats=2) > 1e8  # any machine copies 100 MB/s


@pytest.mark.parametrize("args, message", [
    (["--framework", "mxnet"], "unknown framework 'mxnet'"),
    (["--batch-sizes", "1,x"], "--batch-sizes takes whole numbers from 1"),
    (["--batch-sizes", "0,8"], "--batch-sizes takes whole numbers from 1"),
    (["--prompt-lengths", "4,33"], "up to 32, the model's block_size"),
    (["--new-tokens", "1"], "--new-tokens must be at least 2"),
    (["--repeat", "0"], "--repeat and --calls must be at least 1"),
    (["--preset", "huge"], "unknown preset 'huge'"),
    (["--checkpoint", "no/such/run"], "no checkpoint at"),
    (["--checkpoint", "{tmp}", "--init-from", "gpt2"], "not allowed with argument"),
    (["--out", "{file}"], "is a file: name a folder"),
    (["--out", "{done}"], "already holds an inference set: pass --force"),
    (["--calls", "many"], "argument --calls: invalid int value"),
    (["--temperature", "-1"], "temperature must be 0 (greedy) or a finite positive number"),
    (["--temperature", "nan"], "temperature must be 0 (greedy) or a finite positive number"),
    (["--temperature", "0.8", "--top-k", "0"], "top_k must be a positive integer"),
    (["--temperature", "0.8", "--top-p", "1.5"], "top_p must be above 0 and at most 1"),
    (["--quantize", "int3"], "unknown quantization 'int3': use int8, int4, int8-dynamic"),
    (["--quantize", "int8,int3"], "unknown quantization 'int3'"),
    (["--quality-rows", "0"], "--quality-batches must be 0 or more and --quality-rows at least 1"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / infer.SET_FILE).write_text("{}")
    args = [a.format(tmp=tmp_path, file=tmp_path / "file", done=tmp_path / "done") for a in args]
    assert infer.main(["--preset", "tiny", "--framework", "pytorch", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and re.search(re.escape(message), err), err


def test_steps_shorter_than_the_calls_noise_give_no_speed():
    """A difference of two calls at or below zero: the steps were too short to time, so no tokens/s,
    bandwidth or speed ratio is made of it."""
    row = infer.combine(SPEC, [_round("jax", {"1": [-0.0001, 0.001], "4": [0.002, 0.002]}, [0.004, 0.004], 3.0)])
    one, four = row["decode"]
    assert one["tokens_per_s"] is one["bandwidth_utilisation"] is row["kv_cache_speedup"] is None
    assert four["tokens_per_s"] == pytest.approx(2000)
    twin = {**row, "raw": [{"round": 0, "decode_step_s": {"1": [0.001, 0.001]}}]}
    assert infer.speed_text(row, twin, 1) == "–"


def test_a_decode_step_is_timed_without_the_prompts_prefill(monkeypatch):
    """A model whose one-token prompt costs 300 ms to prefill (GPT-2's 128-position window on a CPU)
    and 20 ms a step after it, 4 ms more a row: a call's time over its tokens would read 29.4 ms at
    batch 1; the difference of two calls reads the step."""
    class Clocked:
        def generate_batch(self, prompts, max_new_tokens, **options):
            return 0.300 + (max_new_tokens - 1) * (0.020 + 0.004 * (len(prompts) - 1))  # seconds, not tokens

    monkeypatch.setattr(infer, "timed", lambda call: call())
    options = {"calls": 2, "new_tokens": 32, "prompt_lengths": [2], "batch_sizes": [1, 8],
               "temperature": 0.0, "top_k": None, "top_p": None, "nocache": False}
    measured = infer.measure(Clocked(), SMALL, options)
    steps = measured["decode_step_s"]
    assert steps["1"] == pytest.approx([0.020, 0.020]) and steps["8"] == pytest.approx([0.048, 0.048])
    assert measured["decode_calls_s"]["1"] == [pytest.approx((0.300 + 31 * 0.020, 0.300))] * 2
    # The report says which way a set timed its steps: sets from before timed a call over its tokens.
    assert infer.step_timing({**options, "step_timing": "difference"}).endswith("less calls making 1 (no prefill)")
    assert infer.step_timing(options) == "a step timed as a call over its tokens (the prompt's prefill included)"


def test_a_sampled_set_samples_every_timed_call_and_says_so(tmp_path):
    """--temperature (with --top-k, --top-p) reaches every generate call, so the set's decode compares
    with a training run's sampled figure; a set without the options decoded greedily."""
    class Recorder:
        def __init__(self):
            self.calls = []

        def generate_batch(self, prompts, max_new_tokens, **options):
            self.calls.append(options)
            return [[0] * max_new_tokens for _ in prompts]

    options = {"calls": 1, "new_tokens": 3, "prompt_lengths": [2], "batch_sizes": [1, 2],
               "temperature": 0.8, "top_k": 5, "top_p": None}
    backend = Recorder()
    infer.measure(backend, SMALL, options)
    assert len(backend.calls) > 6 and all(
        (c["temperature"], c["top_k"], c["top_p"]) == (0.8, 5, None) for c in backend.calls)
    assert infer.decoding(options) == "sampled at temperature 0.8, top-k 5"
    assert infer.decoding({**options, "top_p": 0.9}) == "sampled at temperature 0.8, top-k 5, top-p 0.9"
    assert infer.decoding({"calls": 1}) == infer.decoding({**options, "temperature": 0.0}) == "greedy"
    args = ["--preset", "tiny", "--framework", "pytorch", "--temperature", "0", "--top-k", "5",
            "--out", str(tmp_path / "set")]
    _, spec, _, _ = infer.plan(infer.parse_args(args), args)
    assert (spec["options"]["temperature"], spec["options"]["top_k"]) == (0.0, None)  # greedy: no filter


def test_int8_rows_stand_beside_their_float_twins_and_read_a_quarter_of_the_kernel_bytes():
    assert infer.rows_of("jax,pytorch-compiled", ["int8"]) == [infer.COMPILED, f"{infer.COMPILED}-int8", "jax", "jax-int8"]
    assert infer.rows_of("jax", ["int8-dynamic", "int8"]) == ["jax", "jax-int8", "jax-int8-dynamic"]
    assert infer.quantization_of("jax-int8-dynamic") == "int8-dynamic" and infer.unquantized("jax-int8-dynamic") == "jax"
    assert infer.weight_bytes(SMALL, "int8-dynamic") == infer.weight_bytes(SMALL, "int8")  # the same int8 weights
    assert infer.rows_of("all") == list(infer.FLOAT_ROWS)
    assert (infer.framework_of(f"{infer.COMPILED}-int8"), infer.quantization_of("keras-jax-int8")) == ("pytorch", "int8")
    assert infer.unquantized("keras-jax-int8") == "keras-jax" and infer.quantization_of("keras-jax") is None
    # SMALL: kernels 2 × (48 + 16 + 64 + 64) = 384 and the head's 40 in one byte each; their scales,
    # 2 × (12 + 4 + 16 + 4) + 10 = 82, and the other 476 - 384 - 40 = 52 parameters in four.
    assert infer.weight_bytes(SMALL, "int8") == 384 + 40 + 4 * (82 + 52)
    assert infer.decode_bytes_per_step(SMALL, 3, 1, 5, quantize="int8") == 960 + 2 * 2 * 4 * 4 * 3 * 3.5
    # int4, one block of width 32: kernels 12 × 32² = 12,288 and the head's 320 at half a byte, a scale
    # and a zero point (5 bytes) per 32 of them, and the other 12,944 + 256 + 12 × 32 - 12,608 in four.
    wide = dataclasses.replace(SMALL, n_layer=1, n_embd=32)
    assert infer.weight_bytes(wide, "int4") == 12608 // 2 + 5 * 12608 // 32 + 4 * (num_params(wide) - 12608)



def test_a_gpt2_name_gives_random_weights_at_that_models_whole_shape_head_included():
    """--preset gpt2: GPT-2 124M as published, its 50,257-token head one of the weights a decode step
    reads; the preset at its width keeps the corpus's 65 characters."""
    gpt2 = infer.random_shape("gpt2")
    assert (gpt2.vocab_size, gpt2.n_layer, gpt2.n_embd, gpt2.block_size) == (50257, 12, 768, 1024)
    assert num_params(gpt2) == 124_439_808  # GPT-2 small's count, the head tied to wte
    assert infer.random_shape("finetune-shakespeare").vocab_size == 65
    assert infer.parse_args(["--preset", "gpt2-medium"]).preset == "gpt2-medium"


def test_int4_rows_are_refused_before_any_row_runs_for_a_width_of_partial_groups(tmp_path, capsys):
    save_checkpoint(tmp_path / "model.safetensors", init_params(SMALL, 0), SMALL, step=0,
                    tokenizer_json=CharTokenizer.train("abcdefghij").to_json(), framework="jax")
    assert infer.main(["--framework", "jax", "--checkpoint", str(tmp_path), "--quantize", "int4", "--out",
                       str(tmp_path / "set")]) == 2
    assert capsys.readouterr().err == ("error: int4 weights come in groups of 32 inputs, and n_embd 4 is not a "
                                       "multiple of 32: use --quantize int8.\n")
    assert not (tmp_path / "set").exists()


def test_the_quality_table_holds_each_int8_row_against_its_float_twin():
    assert infer.greedy_agreement([[1, 2, 3], [4, 5, 6]], [[1, 2, 3], [4, 9, 6]]) == (5, 6, 1)
    assert infer.greedy_agreement([[1, 2]], [[1, 2]]) == (2, 2, 2)

    def row(name, loss, tokens, speed):
        return {"row": name, "quantize": infer.quantization_of(name), "decode": [{"batch_size": 1, "tokens_per_s": speed}],
                "quality": {"val_loss": loss, "bits_per_byte": loss / np.log(2), "greedy_tokens": tokens}}
    rows = [row("jax", 1.5, [[1, 2, 3, 4]], 100.0), row("jax-int8", 1.5125, [[1, 2, 7, 4]], 180.0)]
    header, lines = infer.quality_table({"options": {"batch_sizes": [1]}}, rows)
    assert header[2] == "Δ val loss vs float32" and header[-1] == "decode speed vs float32 @1"
    assert lines[0][:5] == ["jax", "1.5000", "–", "2.1640", "–"]
    assert lines[1] == ["jax-int8", "1.5125", "+0.0125", "2.1821", "3 of 4", "token 2", "1.8×"]  # a set without rounds


def test_a_quantized_rows_speed_is_paired_with_its_twins_round_by_round():
    """Round 1 ran on a slower machine for both rows: paired, the ratio stays 2×; pooled, the slow
    round would widen it. One round gives a ratio without an interval."""
    def row(name, step_s_by_round):
        raw = [{"round": i, "decode_step_s": {"1": steps}} for i, steps in enumerate(step_s_by_round)]
        return {"row": name, "raw": raw, "decode": [{"batch_size": 1, "tokens_per_s": 1 / np.median(raw[0]["decode_step_s"]["1"])}]}
    twin = row("jax", [[0.020, 0.021, 0.019], [0.040, 0.042, 0.038], [0.022, 0.020, 0.021]])
    int8 = row("jax-int8", [[0.010, 0.0105, 0.0095], [0.020, 0.021, 0.019], [0.011, 0.010, 0.0105]])
    ratio = infer.speed_against_twin(int8, twin, 1)
    # Within a round the calls' ratios run from 0.019 / 0.0105 = 1.81 to 0.021 / 0.0095 = 2.21; taken
    # across rounds they would run from 0.019 / 0.021 = 0.9 to 0.042 / 0.0095 = 4.4.
    assert (ratio.median, ratio.rounds) == (2.0, 3)
    assert 0.019 / 0.0105 - 1e-9 <= ratio.low < 2.0 < ratio.high <= 0.021 / 0.0095 + 1e-9
    assert infer.speed_text(int8, twin, 1) == ratio.text() and ratio.text().startswith("2.00× [")
    one = {**int8, "raw": int8["raw"][:1]}
    assert infer.speed_text(one, twin, 1) == "2.00× (one round, no interval)"


@pytest.mark.jax
def test_a_quantized_set_measures_int8_rows_and_their_quality_on_a_checkpoints_validation_split(tmp_path):
    """A char model's checkpoint: its tokenizer's validation windows give every row a loss and bits per
    byte, and the int8 row keeps near its float twin."""
    from common.data import prepare
    config = get_preset("tiny")[0]
    tokenizer = prepare("tinyshakespeare", "char").tokenizer
    save_checkpoint(tmp_path / "model.safetensors", init_params(config, 0), config, step=0,
                    tokenizer_json=tokenizer.to_json(), framework="jax")
    out = tmp_path / "set"
    assert infer.main(["--framework", "jax", "--checkpoint", str(tmp_path), "--quantize", "int8", "--batch-sizes", "1",
                       "--prompt-lengths", "4", "--new-tokens", "4", "--repeat", "1", "--calls", "1",
                       "--quality-batches", "2", "--quality-rows", "2", "--out", str(out)]) == 0
    spec, rows = infer.load_set(out)
    assert [r["row"] for r in rows] == ["jax", "jax-int8"] and spec["quality"]["bytes"] == 2 * 2 * config.block_size
    float32, int8 = (r["quality"] for r in rows)
    assert abs(int8["val_loss"] - float32["val_loss"]) < 0.02 and float32["val_loss"] > 3  # random weights
    assert float32["bits_per_byte"] == pytest.approx(float32["val_loss"] / np.log(2))  # one byte a character
    assert rows[1]["decode"][0]["bytes_per_step"] < rows[0]["decode"][0]["bytes_per_step"]
    report = (out / "report.md").read_text()
    assert "## Quality" in report and "| jax-int8 | " in report.split("## Quality")[1]
