"""Inference benchmark: prefill, decode speed per batch size, first token, memory and bandwidth use.

    python -m benchmarks.infer --framework all --preset cpu-baby
    python -m benchmarks.infer --framework pytorch,jax --checkpoint runs/<name>/jax --batch-sizes 1,8
    python -m benchmarks.infer --framework all --init-from gpt2 --prompt-lengths 128,1024 --new-tokens 128

Every row decodes the same weights (a run's checkpoint, a GPT-2 folder, or random weights at a
preset's size) through the Backend's public generate_batch, from the same random prompts: greedily,
or with --temperature (and --top-k, --top-p) sampled as a training run's samples are, each row of a
batch from its own seeded stream.
The rows are the frameworks and PyTorch a second time with torch.compile (pytorch-compiled). Each
row runs in a process of its own once per round (--repeat); the rounds take the rows in turn, so a
drift of the machine over minutes touches every row alike. The output folder holds inference.json
(the set: model, options, machine, the host memory bandwidth), one <row>.json per row, report.md
and the plot of decode tokens/s against batch size.

What is measured, per row:
- first token: the process's first generate call (batch 1, the longest prompt, one new token),
  compilation included, as a user of a fresh process waits for it;
- prefill: one new token after prompts of several lengths, batch 1, warm; a prompt is prefilled in
  the smallest of block_size / 8, / 4, / 2 and block_size that holds it (the default lengths);
- decode: the time of one step (one new token in every row of the batch) is the time of a call making
  new_tokens after a one-token prompt less the round's median call making one, over new_tokens - 1:
  the prompt's prefill (block_size / 8 positions: at GPT-2's block, 128, as long as ten or more
  steps on a CPU) is in both, so it is left out; tokens/s is the batch size over that time. Median
  and p90 over every timed call of every round; with and without the KV cache at batch 1;
- bandwidth utilisation: the bytes a decode step must read, every weight once and the K and V
  cached for the context so far in every layer and row, over the step time, against the host's
  memory bandwidth (measured once by the parent: see host_memory_bandwidth) or a GPU's datasheet.
  Weights that fit in a CPU's caches (cpu-baby's 3 MB) are read from there, not from memory, so a
  small model's figure says how far it is from a memory-bound decode, and can pass 100%.
"""
from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from benchmarks.compare import Ratio, paired_ratio
from benchmarks.harness import REPO, host_info, machine_name, peak_rss_bytes, run_child
from benchmarks.quiet import native_logs_filtered, quiet_third_party
from common.backend import canonical_framework, check_sampling, is_installed, load_backend, missing_modules
from common.decode import DecodeConfig
from common.config import PRESETS, GPTConfig, TrainConfig, get_preset, to_dict
from common.errors import OneLineParser, UserError, command_line
from common.hf_gpt2 import PRETRAINED, PRETRAINED_SHAPES
from common.quantize import INT4_GROUP, QUANTIZE_MODES, WEIGHT_BITS, check_quantize
from common.params import init_params, num_params

COMPILED = "pytorch-compiled"  # PyTorch with DecodeConfig.compile: torch.compile'd decode
FLOAT_ROWS = ("pytorch", COMPILED, "tensorflow", "jax", "keras-jax")  # `all`, in report order
# With --quantize int8 (or int4, int8-dynamic, or several) each row runs again with quantized weights
# (Backend.quantize), beside its float twin.
ROWS = tuple(name for row in FLOAT_ROWS for name in (row, *(f"{row}-{mode}" for mode in QUANTIZE_MODES)))
SET_FILE = "inference.json"
PLOT_FILE = "decode_tokens_per_s.png"
DECODE_PROMPT_TOKENS = 1  # decode starts after one token, so new_tokens = block_size - 1 fills one window
FLOAT_BYTES = {"float32": 4, "bfloat16": 2}

# Memory bandwidth by device name fragment (vendor datasheets), more specific names first.
DEVICE_BANDWIDTH = {
    "H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12, "L4": 300e9, "A10G": 600e9, "T4": 320e9, "V100": 900e9, "RTX 4090": 1008e9,
    "TPU v4": 1.2e12, "TPU v5 lite": 819e9, "TPU v5e": 819e9, "TPU v5p": 2.765e12, "TPU v6": 1.64e12,
}


# --- the arithmetic -------------------------------------------------------------------------------

def host_memory_bandwidth(mib: int = 256, repeats: int = 5) -> float:
    """Bytes per second numpy moves copying a mib MiB array into another (each byte read once and
    written once), best of `repeats`: one thread's streaming copy, what one core draws from memory."""
    source = np.ones(mib * 2**20 // 4, dtype=np.float32)
    target = np.empty_like(source)
    np.copyto(target, source)  # fault the pages in
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return 2 * source.nbytes / best


def device_bandwidth(device_name: str) -> float | None:
    return next((bw for fragment, bw in DEVICE_BANDWIDTH.items() if fragment.lower() in device_name.lower()), None)


def weight_bytes(config: GPTConfig, quantize: str | None = None) -> int:
    """Bytes of the weights a decode step reads at the least: float32 each; quantized, the blocks'
    kernels and the head (wte) one byte each (int8, int8-dynamic), plus a float32 scale per output channel, or half
    a byte (int4, packed as Keras packs it; torchao and the JAX layer hold each in a byte), plus a
    float32 scale and an int8 zero point per group of INT4_GROUP inputs (common/quantize.py)."""
    if quantize is None:
        return 4 * num_params(config)
    C, V = config.n_embd, config.vocab_size
    kernels = config.n_layer * 12 * C * C + V * C  # c_attn 3C², attn.c_proj C², c_fc 4C², mlp.c_proj 4C²; the head
    if WEIGHT_BITS[quantize] == 8:
        stored = kernels + 4 * (config.n_layer * 9 * C + V)  # output channels: 3C + C + 4C + C, and the head's V
    else:
        stored = kernels // 2 + 5 * kernels // INT4_GROUP
    return stored + 4 * (num_params(config) - kernels)


def decode_bytes_per_step(config: GPTConfig, batch_size: int, prompt_tokens: int, new_tokens: int,
                          dtype: str = "float32", quantize: str | None = None) -> float:
    """Bytes one decode step reads at the least, averaged over the timed steps: the weights
    (weight_bytes), and the keys and values of every earlier position, in every layer, for every row
    of the batch.

    Step k attends to prompt_tokens + k - 1 positions, the last one its own; the timed steps are
    k = 2 .. new_tokens (the first comes with the prompt's prefill): prompt_tokens + new_tokens / 2
    on average.
    """
    weights = weight_bytes(config, quantize)
    context = prompt_tokens + new_tokens / 2
    kv = 2 * config.n_layer * config.n_embd * FLOAT_BYTES[dtype] * batch_size * context
    return weights + kv


def percentiles(values: list[float]) -> tuple[float, float]:
    """(median, p90)."""
    return float(np.percentile(values, 50)), float(np.percentile(values, 90))


# --- one row, one round: the child process --------------------------------------------------------

def random_shape(name: str) -> GPTConfig:
    """A preset's model, or a GPT-2 model's whole shape by its name, GPT-2's 50,257-token head
    included (the presets at GPT-2's width keep the corpus's vocabulary)."""
    return PRETRAINED_SHAPES[name] if name in PRETRAINED_SHAPES else get_preset(name)[0]


def load_weights(source: dict) -> tuple[GPTConfig, dict[str, np.ndarray], str]:
    """The model and canonical parameters every row decodes, and where they came from, in words."""
    from benchmarks.sample import load_model, load_pretrained
    if source.get("checkpoint"):
        model = load_model(source["checkpoint"])
    elif source.get("init_from"):
        model = load_pretrained(source["init_from"])
    else:
        config = random_shape(source["preset"])
        return config, init_params(config, source["seed"]), f"random weights at {source['preset']}, seed {source['seed']}"
    return model.config, model.params, model.source


def prompts(config: GPTConfig, batch_size: int, length: int) -> list[list[int]]:
    """Random token ids, the same in every row."""
    rng = np.random.default_rng([batch_size, length])
    return rng.integers(0, config.vocab_size, (batch_size, length)).tolist()


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(backend, config: GPTConfig, options: dict) -> dict:
    """One round of one row: raw times in seconds, the first call first."""
    calls, new = options["calls"], options["new_tokens"]

    def generate(batch_size, length, max_new_tokens, use_cache=True):
        ids = prompts(config, batch_size, length)
        return lambda: backend.generate_batch(ids, max_new_tokens, temperature=options["temperature"],
                                              top_k=options["top_k"], top_p=options["top_p"], use_cache=use_cache)

    def warm(call):
        call()  # a framework compiles once per shape: per prompt length, batch size or token count
        gc.collect()  # the garbage compiling leaves, collected now rather than inside a timed call

    first_token_s = timed(generate(1, max(options["prompt_lengths"]), 1))
    prefill = {}
    for length in options["prompt_lengths"]:
        first_token = generate(1, length, 1)
        warm(first_token)
        prefill[str(length)] = [timed(first_token) for _ in range(calls)]

    calls_s = {}

    def steps(batch_size, use_cache=True):
        decode, first = (generate(batch_size, DECODE_PROMPT_TOKENS, n, use_cache) for n in (new, 1))
        warm(decode)
        warm(first)
        pairs = [(timed(decode), timed(first)) for _ in range(calls)]
        calls_s[f"{batch_size}{'' if use_cache else ' no cache'}"] = pairs
        # Less the round's median one-token call: a hiccup in one of them does not land on one step time.
        one = float(np.median([one for _, one in pairs]))
        return [(whole - one) / (new - 1) for whole, _ in pairs]

    decode = {str(b): steps(b) for b in options["batch_sizes"]}
    return {"first_token_s": first_token_s, "prefill_s": prefill, "decode_step_s": decode,
            "nocache_step_s": steps(1, use_cache=False) if options.get("nocache", True) else None,
            "decode_calls_s": calls_s}  # (a call making new_tokens, one making 1), for any other reading


def measure_quality(backend, fixture: dict) -> dict:
    """What the weights' form costs in quality, on the set's fixed batches: the mean validation loss
    (nats a token) and bits per byte, and the greedy tokens after the fixture's prompts, which the
    report holds against the float32 twin's."""
    losses = [backend.eval_loss(np.asarray(x, np.int32), np.asarray(y, np.int32)) for x, y in fixture["batches"]]
    loss = float(np.mean(losses))
    return {"val_loss": loss, "bits_per_byte": (loss * fixture["targets"] / fixture["bytes"] / math.log(2)
                                                if fixture["bytes"] else None),
            "greedy_tokens": backend.generate_batch(fixture["prompts"], fixture["new_tokens"], temperature=0.0)}


def run_row(out: Path, row: str, round_index: int) -> int:
    """A child: one round of one row, written to out/rounds/<row>-<round>.json."""
    from benchmarks.loop import environment
    from common.allocator import retain_freed_memory
    started = time.perf_counter()
    spec = json.loads((out / SET_FILE).read_text())
    config, params, _ = load_weights(spec["source"])
    host_malloc = retain_freed_memory()  # as in every training run, before the framework allocates
    train = TrainConfig(dtype=spec["options"]["dtype"])
    with native_logs_filtered():  # the framework is imported here
        backend = load_backend(framework_of(row))(config, train, params, device=spec["options"]["device"],
                                                  decode=DecodeConfig(compile=unquantized(row) == COMPILED))
        if quantization_of(row):
            backend.quantize(quantization_of(row))
    startup_s = time.perf_counter() - started
    times = measure(backend, config, spec["options"])
    if round_index == 0 and spec.get("quality"):  # the same in every round: the weights do not change
        times["quality"] = measure_quality(backend, spec["quality"])
    device_memory = backend.peak_memory_bytes()
    result = {"row": row, "round": round_index, "startup_s": startup_s, **times, "load_average": os.getloadavg()[0],
              "peak_memory_bytes": device_memory if device_memory is not None else peak_rss_bytes(),
              "memory_kind": "device" if device_memory is not None else "host RSS",
              "env": environment(backend, SimpleNamespace(command=spec["command"]), host_malloc)}
    (out / "rounds").mkdir(exist_ok=True)
    (out / "rounds" / f"{row}-{round_index}.json").write_text(json.dumps(result, indent=1))
    return 0


# --- combining the rounds of a row ----------------------------------------------------------------

def rounds_of(out: Path, row: str) -> list[dict]:
    """The rounds one row's processes wrote (not those of a row whose name starts with its own)."""
    return [json.loads(path.read_text()) for path in sorted((out / "rounds").glob(f"{row}-*.json"))
            if path.stem.rpartition("-")[0] == row]


def combine(spec: dict, rounds: list[dict]) -> dict:
    """A row's figures over its rounds: what <row>.json holds and the report reads."""
    config = GPTConfig(**spec["model"])
    options = spec["options"]
    env = rounds[0]["env"]
    bandwidth, bandwidth_source = ((spec["host_bandwidth"], spec["host_bandwidth_method"]) if env["device"] == "cpu"
                                   else (device_bandwidth(env["device_name"]), "datasheet"))

    def pooled(key, shape=None):
        """Every round's figures for key (and one prompt length or batch size) in one list."""
        entries = [r[key] if shape is None else r[key][str(shape)] for r in rounds]
        return [v for entry in entries for v in (entry if isinstance(entry, list) else [entry])]

    def decode_row(batch_size, key, shape):
        times = pooled(key, shape)
        median, p90 = percentiles(times)
        step_bytes = decode_bytes_per_step(config, batch_size, DECODE_PROMPT_TOKENS, options["new_tokens"],
                                           options["dtype"], quantization_of(rounds[0]["row"]))
        timed = min(times) > 0  # else the steps took less than the calls' noise: too few --new-tokens to time
        return {"batch_size": batch_size, "step_ms_median": 1e3 * median, "step_ms_p90": 1e3 * p90,
                "tokens_per_s": batch_size / median if timed else None, "bytes_per_step": step_bytes,
                "bandwidth_bytes_per_s": step_bytes / median if timed else None,
                "bandwidth_utilisation": step_bytes / median / bandwidth if bandwidth and timed else None}

    decode = [decode_row(b, "decode_step_s", b) for b in options["batch_sizes"]]
    nocache = decode_row(1, "nocache_step_s", None) if rounds[0].get("nocache_step_s") is not None else None
    cached_1 = next((d for d in decode if d["batch_size"] == 1), None)
    first_median, first_p90 = percentiles(pooled("first_token_s"))
    return {
        "row": rounds[0]["row"], "framework": env["framework"], "compile": unquantized(rounds[0]["row"]) == COMPILED,
        "quantize": quantization_of(rounds[0]["row"]), "quality": rounds[0].get("quality"),
        "device": env["device"], "device_name": env["device_name"], "framework_version": env["framework_version"],
        "rounds": len(rounds), "calls_per_round": options["calls"], "params": num_params(config),
        "first_token_s": first_median, "first_token_s_p90": first_p90,
        "startup_s": float(np.median(pooled("startup_s"))), "load_average_max": max(pooled("load_average")),
        "prefill": [{"prompt_tokens": n, "ms_median": 1e3 * median, "ms_p90": 1e3 * p90}
                    for n in options["prompt_lengths"] for median, p90 in [percentiles(pooled("prefill_s", n))]],
        "decode": decode, "nocache": nocache,
        "kv_cache_speedup": (cached_1["tokens_per_s"] / nocache["tokens_per_s"]
                             if cached_1 and nocache and cached_1["tokens_per_s"] and nocache["tokens_per_s"] else None),
        "memory_bandwidth_bytes_per_s": bandwidth, "memory_bandwidth_source": bandwidth_source,
        "peak_memory_bytes": max(r["peak_memory_bytes"] for r in rounds), "memory_kind": rounds[0]["memory_kind"],
        "env": env, "raw": rounds,
    }


# --- the report -----------------------------------------------------------------------------------

def load_set(folder: Path) -> tuple[dict, list[dict]]:
    """inference.json and every row's <row>.json, in report order."""
    spec = json.loads((folder / SET_FILE).read_text())
    rows = [json.loads((folder / f"{row}.json").read_text()) for row in ROWS if (folder / f"{row}.json").exists()]
    return spec, rows


def _num(value, unit: str = "") -> str:
    """Whole numbers from 100 up, three significant digits below: a small figure never reads as 0."""
    return "–" if value is None else (f"{value:,.0f}" if value >= 100 else f"{value:.3g}") + unit


def _pct(value) -> str:
    return _num(None if value is None else 100 * value, "%")


def decode_at(row: dict, batch_size: int) -> dict | None:
    return next((d for d in row["decode"] if d["batch_size"] == batch_size), None)


def summary_table(spec: dict, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """One line per row: first token, prefill per prompt length, decode tok/s per batch size, the cache."""
    options = spec["options"]
    first_batch = options["batch_sizes"][0]
    header = ["row", "first token s (compile incl.)",
              *[f"prefill ms @{n}" for n in options["prompt_lengths"]],
              *[f"decode tok/s @{b}" for b in options["batch_sizes"]],
              f"ms/token @{first_batch} median (p90)", "no-cache tok/s @1", "KV-cache speed-up",
              f"bandwidth used @{first_batch}", "peak memory"]
    lines = []
    for row in rows:
        first = decode_at(row, first_batch)
        lines.append([row["row"], _num(row["first_token_s"]), *[_num(p["ms_median"]) for p in row["prefill"]],
                      *[_num(d["tokens_per_s"]) for d in row["decode"]],
                      f"{_num(first['step_ms_median'])} ({_num(first['step_ms_p90'])})",
                      _num(row["nocache"] and row["nocache"]["tokens_per_s"]), _num(row["kv_cache_speedup"], "×"),
                      _pct(first["bandwidth_utilisation"]),
                      f"{row['peak_memory_bytes'] / 2**20:,.0f} MiB {row['memory_kind']}"])
    return header, lines


def short_table(spec: dict, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """BENCHMARKS.md's few columns: decode tok/s per batch size, what the cache gives, the first token."""
    first_batch = spec["options"]["batch_sizes"][0]
    header = ["row", *[f"decode tok/s @{b}" for b in spec["options"]["batch_sizes"]], "KV-cache speed-up @1",
              "first token s (compile incl.)", f"bandwidth used @{first_batch}"]
    lines = [[row["row"], *[_num(d["tokens_per_s"]) for d in row["decode"]], _num(row["kv_cache_speedup"], "×"),
              _num(row["first_token_s"]), _pct(decode_at(row, first_batch)["bandwidth_utilisation"])]
             for row in rows]
    return header, lines


def decode_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Every (row, batch size): the step time, tokens/s and the bytes it moves."""
    header = ["row", "batch", "ms/token median", "ms/token p90", "tokens/s", "GB/s read", "bandwidth used"]
    lines = [[row["row"], str(d["batch_size"]), _num(d["step_ms_median"]), _num(d["step_ms_p90"]),
              _num(d["tokens_per_s"]), _num(d["bandwidth_bytes_per_s"] and d["bandwidth_bytes_per_s"] / 1e9),
              _pct(d["bandwidth_utilisation"])]
             for row in rows for d in row["decode"]]
    return header, lines


def greedy_agreement(tokens: list[list[int]], reference: list[list[int]]) -> tuple[int, int, int]:
    """(positions equal, positions, the first position where any row differs, or all of them)."""
    a, b = np.asarray(tokens), np.asarray(reference)
    equal = (a == b)
    differ = np.flatnonzero(~equal.all(axis=0))
    return int(equal.sum()), int(equal.size), int(differ[0]) if differ.size else a.shape[1]


def speed_against_twin(row: dict, twin: dict, batch_size: int) -> Ratio | None:
    """A quantized row's decode tokens/s over its float32 twin's at one batch size, paired by round
    (benchmarks/compare.py): the rounds take the rows in turn, so round i of the two shared the
    machine's minutes. None for a set that kept no rounds."""
    twin_rounds = {r["round"]: r for r in twin.get("raw", [])}
    pairs = [(twin_rounds[r["round"]], r) for r in row.get("raw", []) if r["round"] in twin_rounds]
    if not pairs:
        return None
    return paired_ratio([t["decode_step_s"][str(batch_size)] for t, _ in pairs],
                        [r["decode_step_s"][str(batch_size)] for _, r in pairs])


def speed_text(row: dict, twin: dict, batch_size: int) -> str:
    """The paired ratio with its 95% interval; one round gives none (its calls' spread says nothing
    of how far the next process moves)."""
    speeds = decode_at(row, batch_size)["tokens_per_s"], decode_at(twin, batch_size)["tokens_per_s"]
    if None in speeds:
        return "–"  # a step too short to time
    ratio = speed_against_twin(row, twin, batch_size)
    if ratio is None:
        return _num(speeds[0] / speeds[1], "×")
    return ratio.text() if ratio.rounds > 1 else f"{ratio.median:.2f}× (one round, no interval)"


def quality_table(spec: dict, rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Each row's validation loss and bits per byte, and for a quantized row what it costs against its
    float32 twin: the loss, the greedy tokens, and the decode speed it buys (speed_text)."""
    float_rows = {row["row"]: row for row in rows if not row.get("quantize")}
    batches = spec["options"]["batch_sizes"]
    header = ["row", "val loss", "Δ val loss vs float32", "bits per byte", "greedy tokens = float32's",
              "first greedy difference", *[f"decode speed vs float32 @{b}" for b in batches]]
    lines = []
    for row in rows:
        quality = row.get("quality")
        twin = float_rows.get(unquantized(row["row"])) if row.get("quantize") else None
        twin_quality = twin and twin.get("quality")
        if quality is None:
            continue
        agree = greedy_agreement(quality["greedy_tokens"], twin_quality["greedy_tokens"]) if twin_quality else None
        lines.append([row["row"], f"{quality['val_loss']:.4f}",
                      f"{quality['val_loss'] - twin_quality['val_loss']:+.4f}" if twin_quality else "–",
                      "–" if quality["bits_per_byte"] is None else f"{quality['bits_per_byte']:.4f}",
                      f"{agree[0]:,} of {agree[1]:,}" if agree else "–",
                      (f"token {agree[2]}" if agree[2] < len(quality["greedy_tokens"][0]) else "none") if agree else "–",
                      *[speed_text(row, twin, b) if twin else "–" for b in batches]])
    return header, lines


def machine(spec: dict, rows: list[dict]) -> str:
    """The kind of machine the figures hold for: the GPU's model, or the CPU's with its vector ISA."""
    accelerated = next((r for r in rows if r["device"] != "cpu"), None)
    if accelerated:
        return accelerated["device_name"]
    return machine_name(spec["host"])


def caption(spec: dict, rows: list[dict]) -> str:
    model, options = spec["model"], spec["options"]
    on_gpu = next((r for r in rows if r["memory_bandwidth_source"] == "datasheet"), None)
    bandwidth = (f"the datasheet's {on_gpu['memory_bandwidth_bytes_per_s'] / 1e12:,.2f} TB/s" if on_gpu else
                 f"{spec['host_bandwidth'] / 1e9:,.1f} GB/s ({spec['host_bandwidth_method']}; weights that fit "
                 f"in the CPU's caches are read from there)")
    return (f"{spec['source']['described']}: {model['n_layer']} layers × {model['n_head']} heads × {model['n_embd']} "
            f"wide, block {model['block_size']}, {spec['params'] / 1e6:.1f}M parameters, {options['dtype']}; "
            f"{decoding(options)}, {options['new_tokens']} new tokens after {DECODE_PROMPT_TOKENS}, {step_timing(options)}; "
            f"{options['repeat']} round(s) × {options['calls']} timed calls. Bandwidth used against {bandwidth}. "
            f"{spec['date'][:10]}.")


def step_timing(options: dict) -> str:
    """How the set timed a decode step; sets made before the difference of two calls included the prompt's
    prefill (block_size / 8 positions) in their steps."""
    if options.get("step_timing") == "difference":
        return f"a step timed as calls making {options['new_tokens']} tokens less calls making 1 (no prefill)"
    return "a step timed as a call over its tokens (the prompt's prefill included)"


def decode_figure(sets: list[tuple[str, list[dict]]]) -> bytes:
    """Decode tokens/s against batch size, one line per row, one panel per (title, rows)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter, ScalarFormatter

    from benchmarks.report import COLORS
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3.5), squeeze=False, layout="constrained")
    for ax, (title, rows) in zip(axes[0], sets):
        for row in rows:
            batches = [d["batch_size"] for d in row["decode"]]
            ax.plot(batches, [d["tokens_per_s"] for d in row["decode"]], "--" if row["compile"] else "-",
                    marker="o", color=COLORS.get(row["framework"]), label=row["row"])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sorted({d["batch_size"] for row in rows for d in row["decode"]}))
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("batch size")
        ax.set_ylabel("decode tokens/s (KV cache)")
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def write_report(out: Path, problems: list[str]) -> Path:
    from benchmarks.report import markdown_table
    spec, rows = load_set(out)
    (out / PLOT_FILE).write_bytes(decode_figure([(machine(spec, rows), rows)]))
    load = max(row["load_average_max"] for row in rows)
    md = [f"# Inference: {machine(spec, rows)}\n", caption(spec, rows) + "\n",
          f"Highest 1-minute load average after a row's round: {load:.1f} on {spec['host']['cpu_count']} cores (above "
          f"the core count, other processes shared the cores: PyTorch's OpenMP threads then wait on each other).\n"]
    if problems:
        md.append("Problems: " + "; ".join(problems) + ".\n")
    md += [markdown_table(*summary_table(spec, rows)) + "\n", f"![decode tokens/s against batch size]({PLOT_FILE})\n"]
    if spec.get("quality"):
        quality = spec["quality"]
        md += ["## Quality\n", f"Validation loss on {quality['described']}; greedy tokens: {quality['new_tokens']} "
               f"after each of {len(quality['prompts'])} prompts of {len(quality['prompts'][0])} tokens. A quantized "
               f"row's decode speed is its tokens/s over its float32 twin's in the same round, the median over "
               f"rounds, with a 95% bootstrap interval over rounds and calls (none from one round).\n",
               markdown_table(*quality_table(spec, rows)) + "\n"]
    md += ["## Decode by batch size\n", markdown_table(*decode_table(rows)) + "\n", f"Command: `{spec['command']}`\n"]
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    return out / "report.md"


# --- the command ------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.infer", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--framework", default="all", help=f"{' | '.join(FLOAT_ROWS)} | all, or several joined by commas "
                   "(aliases: torch, keras, tf, flax)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="RUN_DIR|FILE", help="a run folder or a .safetensors file a run wrote")
    source.add_argument("--init-from", metavar="NAME|DIR", help="a Hugging Face GPT-2 folder or name")
    p.add_argument("--preset", default="cpu-baby", help=f"random weights at this size, without --checkpoint or "
                   f"--init-from: one of {', '.join(PRESETS)}, or a GPT-2 name ({', '.join(PRETRAINED)}) for "
                   "that model's shape, its 50,257-token vocabulary included")
    p.add_argument("--seed", type=int, default=1337, help="the random weights' seed")
    p.add_argument("--batch-sizes", default="1,8,32", help="decode batch sizes, joined by commas")
    p.add_argument("--prompt-lengths", help="prefill prompt lengths, joined by commas; None: block_size / 8, "
                   "/ 4, / 2 and block_size")
    p.add_argument("--new-tokens", type=int, help=f"tokens a timed decode makes; None: block_size - "
                   f"{DECODE_PROMPT_TOKENS}, one window")
    p.add_argument("--repeat", type=int, default=3, help="rounds: each row runs once a round, in a fresh process")
    p.add_argument("--calls", type=int, default=3, help="timed calls of each shape in a round")
    p.add_argument("--nocache", action=argparse.BooleanOptionalAction, default=True, help="also time decoding "
                   "without the KV cache at batch 1 (--no-nocache leaves it out: at GPT-2's block every such "
                   "token is a 1024-token forward)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 decodes greedily; above 0 samples "
                   "(a training run's samples use 0.8 with --top-k 200)")
    p.add_argument("--top-k", type=int, help="sample from the k likeliest tokens only")
    p.add_argument("--top-p", type=float, help="sample from the smallest set of tokens holding this mass")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="compute dtype")
    p.add_argument("--quantize", metavar="MODE[,MODE]", help=f"also run every row with quantized weights, in each of "
                   f"these modes ({', '.join(QUANTIZE_MODES)}): int8 (one "
                   f"scale per output channel) or int4 (groups of {INT4_GROUP} inputs), activations float, or "
                   "int8-dynamic (int8 weights, and each layer's input rounded to int8 at every call), quantized by "
                   "the framework's own tool")
    p.add_argument("--quality-batches", type=int, default=4, help="batches of --quality-rows windows whose "
                   "validation loss every row measures (0: none); of the validation split when the weights "
                   "come with a tokenizer, else of random tokens")
    p.add_argument("--quality-rows", type=int, default=4, help="windows of block_size tokens in a quality batch")
    p.add_argument("--dataset", default="tinyshakespeare", help="the corpus whose validation split the quality "
                   "batches come from, for weights with a tokenizer")
    p.add_argument("--out", help="output folder (default runs/infer-<date>)")
    p.add_argument("--force", action="store_true", help="overwrite a folder that already holds a set")
    p.add_argument("--verbose", action="store_true", help="show the frameworks' own log lines and warnings")
    p.add_argument("--child", metavar="OUT", help=argparse.SUPPRESS)  # a subprocess: one round of --row
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--round", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.calls < 1:
        raise UserError("--repeat and --calls must be at least 1.")
    if args.quality_batches < 0 or args.quality_rows < 1:
        raise UserError("--quality-batches must be 0 or more and --quality-rows at least 1.")
    if args.preset not in (*PRESETS, *PRETRAINED):
        raise UserError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESETS)}, or a GPT-2 shape: "
                        f"{', '.join(PRETRAINED)}.")
    return args


def quantization_of(row: str) -> str | None:
    """The row's weight quantization (its name's suffix: jax-int8), None for float weights."""
    return next((mode for mode in QUANTIZE_MODES if row.endswith(f"-{mode}")), None)


def unquantized(row: str) -> str:
    """The float32 twin of a quantized row; a float row itself."""
    mode = quantization_of(row)
    return row.removesuffix(f"-{mode}") if mode else row


def quality_fixture(source: dict, config: GPTConfig, dataset: str, batches: int, rows: int) -> dict | None:
    """The batches every row's validation loss is measured on, and the prompts of its greedy tokens:
    the corpus's validation split in consecutive windows when the weights come with a tokenizer (a
    checkpoint, a GPT-2 folder), else uniform random tokens; with the bytes of text the targets
    stand for, for bits per byte."""
    if batches == 0:
        return None
    tokenizer = None
    if source.get("checkpoint") or source.get("init_from"):
        from benchmarks.sample import load_model, load_pretrained
        tokenizer = (load_model(source["checkpoint"]) if source.get("checkpoint")
                     else load_pretrained(source["init_from"])).tokenizer
    if tokenizer is not None:
        from common.data import prepare, split_batches
        windows = split_batches(prepare(dataset, tokenizer).val, rows, config.block_size)[:batches]
        described = f"the validation split of {dataset}, {len(windows) * rows} windows of {config.block_size}"
    else:
        rng = np.random.default_rng([batches, rows, config.vocab_size])
        windows = [tuple(rng.integers(0, config.vocab_size, (rows, config.block_size), dtype=np.int32)
                         for _ in "xy") for _ in range(batches)]
        described = f"uniform random tokens, {batches * rows} windows of {config.block_size}"
    targets = sum(int((y >= 0).sum()) for _, y in windows)
    text_bytes = (sum(len(tokenizer.decode([int(t) for t in row if t >= 0]).encode("utf-8"))
                      for _, y in windows for row in y) if tokenizer is not None else None)
    prompt_len = max(1, config.block_size // 8)
    x = windows[0][0]
    return {"described": described, "batches": [(x.tolist(), y.tolist()) for x, y in windows],
            "targets": targets, "bytes": text_bytes, "prompts": x[:, :prompt_len].tolist(),
            "new_tokens": min(64, config.block_size - prompt_len)}


def framework_of(row: str) -> str:
    return "pytorch" if unquantized(row) == COMPILED else unquantized(row)


def decoding(options: dict) -> str:
    """How the set decodes, in words; sets written before sampling was an option decoded greedily."""
    if not options.get("temperature"):
        return "greedy"
    filters = [f"top-k {options['top_k']}" if options.get("top_k") else "",
               f"top-p {options['top_p']}" if options.get("top_p") else ""]
    return ", ".join([f"sampled at temperature {options['temperature']:g}", *filter(None, filters)])


def rows_of(text: str, quantize: list[str] = ()) -> list[str]:
    """The rows --framework names, in report order; `all` is every one; with quantization modes, each
    beside its float twin."""
    names = set()
    for item in (part.strip().lower() for part in text.split(",")):
        if item == "all":
            names.update(FLOAT_ROWS)
        elif item == COMPILED:
            names.add(item)
        else:
            try:
                names.add(canonical_framework(item))
            except UserError:
                raise UserError(f"unknown framework {item!r}: choose from {', '.join(FLOAT_ROWS)} or all, "
                                f"joined by commas.") from None
    names |= {f"{row}-{mode}" for row in names for mode in quantize}
    return [row for row in ROWS if row in names]


def _numbers(text: str, flag: str, most: int | None = None) -> list[int]:
    try:
        values = sorted({int(v) for v in text.split(",")})
    except ValueError:
        values = []
    if not values or values[0] < 1 or (most is not None and values[-1] > most):
        limit = f" up to {most}, the model's block_size," if most is not None else ""
        raise UserError(f"{flag} takes whole numbers from 1{limit} joined by commas, got {text!r}.")
    return values


def plan(args, argv: list[str]) -> tuple[Path, dict, list[str], list[str]]:
    """The set's inference.json, the rows to run and those of `all` that are not installed, all checked
    before any process starts."""
    modes = [check_quantize(mode.strip()) for mode in args.quantize.split(",")] if args.quantize else []
    rows = rows_of(args.framework, modes)
    frameworks = {framework_of(row) for row in rows}
    named_alone = "all" not in args.framework.lower()
    for framework in frameworks:
        if named_alone and not is_installed(framework):
            load_backend(framework)  # the one-line "not installed" error
    missing = [row for row in rows if not is_installed(framework_of(row))]
    source = {"checkpoint": args.checkpoint and str(Path(args.checkpoint).resolve()),
              "init_from": args.init_from, "preset": args.preset, "seed": args.seed}
    config, params, described = load_weights(source)
    for mode in modes:
        check_quantize(mode, config.n_embd)
    block = config.block_size
    lengths = (_numbers(args.prompt_lengths, "--prompt-lengths", block) if args.prompt_lengths else
               sorted({max(1, block // 8), max(1, block // 4), max(1, block // 2), block}))
    new_tokens = args.new_tokens if args.new_tokens is not None else block - DECODE_PROMPT_TOKENS
    if new_tokens < 2:
        raise UserError(f"--new-tokens must be at least 2 (a step's time is that of a call making them less "
                        f"one making 1), got {new_tokens}.")
    check_sampling([0], new_tokens, config.vocab_size, args.temperature, args.top_k, args.top_p)
    greedy = args.temperature == 0  # the filters only shape a sampled distribution
    out = Path(args.out or REPO / "runs" / f"infer-{dt.datetime.now():%Y%m%d-%H%M%S}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a folder (it is made if it does not exist).")
    if (out / SET_FILE).exists() and not args.force:
        raise UserError(f"{out} already holds an inference set: pass --force to overwrite it, or choose another --out.")
    spec = {"command": " ".join(["python -m benchmarks.infer", *argv]), "source": {**source, "described": described},
            "model": to_dict(config), "params": int(sum(p.size for p in params.values())),
            "options": {"batch_sizes": _numbers(args.batch_sizes, "--batch-sizes"), "prompt_lengths": lengths,
                        "new_tokens": new_tokens, "step_timing": "difference", "calls": args.calls, "repeat": args.repeat,
                        "temperature": args.temperature, "top_k": None if greedy else args.top_k,
                        "top_p": None if greedy else args.top_p,
                        "device": args.device, "dtype": args.dtype, "quantize": modes, "nocache": args.nocache},
            "quality": quality_fixture(source, config, args.dataset, args.quality_batches, args.quality_rows),
            "host": host_info()}
    spec["date"] = spec["host"]["date"]
    return out, spec, [row for row in rows if row not in missing], missing


def run_set(out: Path, spec: dict, rows: list[str], missing: list[str], verbose: bool) -> int:
    """Every row in a fresh process each round, the rows in turn; then each row's file and the report."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        for stale in [*out.glob("rounds/*.json"), *(out / f"{row}.json" for row in ROWS)]:
            stale.unlink(missing_ok=True)
    except OSError as e:
        raise UserError(f"cannot write the output folder {out} ({e.strerror}): choose another --out.") from None
    spec["host_bandwidth"] = host_memory_bandwidth()  # once, for every row
    spec["host_bandwidth_method"] = "numpy copy of 256 MiB, bytes read + written, best of 5"
    (out / SET_FILE).write_text(json.dumps(spec, indent=1))
    problems = [f"{row}: not installed (missing {', '.join(missing_modules(framework_of(row)))})"
                for row in missing]
    failed = set()
    for round_index in range(spec["options"]["repeat"]):
        for row in (r for r in rows if r not in failed):
            print(f"[{row}] round {round_index + 1}/{spec['options']['repeat']}", file=sys.stderr)
            done = run_child("benchmarks.infer", "--child", str(out), "--row", row, "--round", str(round_index),
                             *(["--verbose"] if verbose else []))
            if done.returncode != 0:
                failed.add(row)
                problems.append(f"{row}: failed with exit code {done.returncode}")
    for row in rows:
        if row not in failed:
            combined = combine(spec, rounds_of(out, row))
            (out / f"{row}.json").write_text(json.dumps(combined, indent=1))
            problems += [f"{row}: a call decoding at batch {d['batch_size']} took no longer than its one-token call; raise "
                         f"--new-tokens (now {spec['options']['new_tokens']}) to time it"
                         for d in combined["decode"] if d["tokens_per_s"] is None]
    shutil.rmtree(out / "rounds", ignore_errors=True)  # each row's file holds its rounds
    for line in problems:
        print(f"note: {line}", file=sys.stderr)
    if len(failed) < len(rows):
        print(f"report: {write_report(out, problems)}", file=sys.stderr)
    return 0 if rows and not failed else 1


@command_line
def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    quiet_third_party(args.verbose)
    if args.child:
        return run_row(Path(args.child), args.row, args.round)
    out, spec, rows, missing = plan(args, argv)
    if not rows:
        raise UserError(f"none of the rows asked for is installed ({', '.join(missing)}): "
                        f"pip install -e \".[all]\".")
    return run_set(out, spec, rows, missing, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
