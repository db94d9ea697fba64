"""Train, evaluate and sample one GPT per framework, writing a run folder as it goes.

    python -m benchmarks.run --framework pytorch|tensorflow|jax|keras-jax|all [--preset auto] [--max-iters N] ...

A run folder holds config.json, env.json, metrics.jsonl (appended while training), samples.txt,
summary.json and the framework-neutral checkpoint (model.safetensors + optimizer.safetensors).
`--framework all` runs each framework in its own subprocess, one after another, on the same
batches and the same initial weights, then writes the comparison report.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from common.allocator import retain_freed_memory
from common.backend import FRAMEWORKS, canonical_framework, is_installed, load_backend, missing_modules
from common.checkpoint import load_training_state, save_checkpoint, save_training_state
from common.config import PRESET_NAMES, GPTConfig, TrainConfig, apply_overrides, get_preset
from common.data import eval_batches, get_batch, prepare, split_batches
from common.errors import UserError, one_line
from common.flops import accelerator_peak, cpu_peak_flops, flops_per_token
from common.quality import sample_quality
from common.sampling import cut_at_stop
from common.schedule import learning_rate
from common.spec import LOSS_IGNORE_INDEX
from common.tokenizers import bits_per_char

REPO = Path(__file__).resolve().parents[1]
WARMUP_STEPS = 10  # steps left out of the step-time statistics (compilation, allocator warm-up)


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, like every other error here, instead of usage + message
        raise UserError(f"{message} (see python -m benchmarks.run --help).")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = _Parser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--framework", help="pytorch | tensorflow | jax | keras-jax (the Keras model on Keras' JAX "
                   "backend) | all (aliases: torch, keras, tf, flax)")
    p.add_argument("--preset", default="auto", help=f"one of {', '.join(PRESET_NAMES)}")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "gpu", "tpu"])
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="compute dtype (default: the preset's)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile for PyTorch (JAX and Keras always compile with XLA)")
    p.add_argument("--max-iters", type=int, help="training steps (the cosine schedule follows)")
    p.add_argument("--seed", type=int, default=None, help="seed for the initial weights and batches")
    p.add_argument("--replicas", type=int, default=1, help="data-parallel replicas (torchrun processes for "
                   "PyTorch, devices of a mesh for JAX, MirroredStrategy devices for Keras)")
    p.add_argument("--repeat", type=int, default=1, help="runs per framework, seeds seed..seed+N-1")
    p.add_argument("--dataset", default="tinyshakespeare",
                   help="tinyshakespeare | shakespeare-plays | path to the plays CSV or a text file")
    p.add_argument("--tokenizer", default="char", choices=["char", "bpe"])
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    p.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                   help="override any GPTConfig/TrainConfig field, e.g. --set n_layer=2 --set lr=3e-4")
    p.add_argument("--out", help="output folder (default runs/<date>-<preset>)")
    p.add_argument("--force", action="store_true", help="overwrite a run folder that already holds a run")
    p.add_argument("--prompt", default="\n", help="prompt for the samples")
    p.add_argument("--num-samples", type=int, default=3)
    p.add_argument("--sample-tokens", type=int, default=500)
    p.add_argument("--temperature", type=float, default=0.8)
    p.add_argument("--top-k", type=int, default=200)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--stop", action="append", default=None, help="cut samples at this string (repeatable)")
    p.add_argument("--profile", action="store_true", help="write the framework's trace for a few steps")
    p.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                   help="write the comparison report after several runs")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest checkpoint")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default eval_interval)")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # set by the parent for each subprocess
    args = p.parse_args(argv)
    if not args.framework and not args.resume:
        raise UserError("name a framework: --framework pytorch|tensorflow|jax|keras-jax|all (or --resume RUN_DIR).")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UserError("--checkpoint-every must be at least 1.")
    if args.replicas < 1:
        raise UserError("--replicas must be at least 1.")
    if args.repeat < 1 or args.num_samples < 0 or args.sample_tokens < 1:
        raise UserError("--repeat and --sample-tokens must be at least 1 and --num-samples at least 0.")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or \
            (args.top_p is not None and not 0 < args.top_p <= 1):
        raise UserError("need --temperature >= 0, --top-k >= 1 and 0 < --top-p <= 1.")
    return args


def _overrides(args) -> dict[str, str]:
    overrides = {}
    for item in args.set:
        if "=" not in item:
            raise UserError(f"--set takes FIELD=VALUE, got {item!r}.")
        key, value = item.split("=", 1)
        overrides[key.strip()] = value.strip()
    for field, value in (("max_iters", args.max_iters), ("dtype", args.dtype), ("seed", args.seed)):
        if value is not None:
            overrides[field] = str(value)
    if args.compile is not None:
        overrides["compile"] = str(args.compile)
    return overrides


def _accelerator_present(framework: str, device: str) -> bool:
    if device != "auto":
        return device in ("gpu", "tpu")
    if framework == "pytorch":
        import torch
        return torch.cuda.is_available()
    if framework in ("jax", "keras-jax"):
        import jax
        return jax.default_backend() != "cpu"
    import tensorflow as tf
    return bool(tf.config.list_physical_devices("GPU"))


def environment(backend, args, host_malloc: str) -> dict:
    import importlib.metadata as md
    versions = {}
    for package in ("numpy", "torch", "jax", "flax", "optax", "tensorflow-cpu", "tensorflow", "keras"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    try:
        # "-dirty" when tracked files differ from the commit: the figures are then not of that commit.
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=REPO,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    commit = commit or os.environ.get("NANOGPT_GIT_COMMIT")  # a copy of the tree without .git
    from common.flops import _cpu_model, cpu_vector_isa
    return {"framework": backend.name, **backend.device_info(), "python": platform.python_version(),
            "platform": platform.platform(), "cpu": _cpu_model(), "cpu_isa": cpu_vector_isa(),
            "cpu_count": os.cpu_count(), "host_malloc": host_malloc,
            "versions": versions, "git_commit": commit,
            "command": os.environ.get("NANOGPT_COMMAND") or " ".join(["python -m benchmarks.run", *sys.argv[1:]]),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


class MetricsLog:
    """metrics.jsonl, one JSON object a line, flushed as each is written so a crash loses nothing."""

    def __init__(self, path: Path):
        self.file = open(path, "a", encoding="utf-8")

    def write(self, **record) -> None:
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _percentile(values, q):
    return float(np.percentile(values, q)) if len(values) else None


def evaluate(backend, batches) -> float:
    return float(np.mean([backend.eval_loss(x, y) for x, y in batches]))


def evaluate_split(backend, batches) -> float:
    """Mean loss over every real target of common.data.split_batches (padding targets are ignored)."""
    counts = [int(np.count_nonzero(y != LOSS_IGNORE_INDEX)) for _, y in batches]
    losses = [backend.eval_loss(x, y) for x, y in batches]
    return float(np.dot(losses, counts) / sum(counts))


def _fresh_setup(args, framework: str, run_dir: Path):
    if os.environ.get("RANK", "0") != "0":  # a torchrun worker: rank 0 owns the run folder
        pass
    elif (run_dir / "metrics.jsonl").exists() and not args.force:
        raise UserError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue it, --force to "
                        f"overwrite it, or choose another --out.")
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in ("metrics.jsonl", "summary.json", "samples.txt", "model.safetensors"):
            (run_dir / stale).unlink(missing_ok=True)
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
    data = prepare(args.dataset, args.tokenizer, args.vocab_size)
    model_cfg, train_cfg = get_preset(args.preset, _accelerator_present(framework, args.device))
    model_cfg, train_cfg = apply_overrides(model_cfg, train_cfg,
                                           {**_overrides(args), "vocab_size": str(data.tokenizer.vocab_size)})
    run_config = {"framework": framework, "preset": args.preset, "dataset": args.dataset,
                  "corpus": data.corpus_name, "tokenizer": args.tokenizer, "vocab_size": args.vocab_size,
                  "device": args.device, "replicas": args.replicas, "model": asdict(model_cfg),
                  "train": asdict(train_cfg)}
    from common.params import init_params
    return data, model_cfg, train_cfg, run_config, init_params(model_cfg, train_cfg.seed), None, 0


def _resume_setup(run_dir: Path):
    """Everything as the interrupted run had it; training goes on from its newest checkpoint."""
    try:
        run_config = json.loads((run_dir / "config.json").read_text())
        model_cfg, train_cfg = GPTConfig(**run_config["model"]), TrainConfig(**run_config["train"])
    except (OSError, ValueError, KeyError, TypeError):
        raise UserError(f"{run_dir} holds no readable config.json of a run to resume.") from None
    data = prepare(run_config["dataset"], run_config["tokenizer"], run_config["vocab_size"])
    state = load_training_state(run_dir, model_cfg, data.tokenizer.to_json())
    if state is None:
        raise UserError(f"{run_dir} has no checkpoint to resume from; start a new run instead.")
    params, optimizer, step = state.params, state.optimizer, state.step
    if os.environ.get("RANK", "0") == "0":
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        (run_dir / "summary.json").unlink(missing_ok=True)
    return data, model_cfg, train_cfg, run_config, params, optimizer, step


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep what was logged before `step`; later lines (and a line cut by a kill) are replayed."""
    kept = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("step", math.inf) < step:
                kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in kept), encoding="utf-8")
    os.replace(tmp, path)


def run_one(args, framework: str, run_dir: Path, resume: bool = False) -> dict:
    """One framework, one seed: the whole benchmark, written into run_dir (or continued there)."""
    setup = _resume_setup(run_dir) if resume else _fresh_setup(args, framework, run_dir)
    data, model_cfg, train_cfg, run_config, params, optimizer_state, start_step = setup
    framework = run_config["framework"]
    if model_cfg.block_size >= min(len(data.train), len(data.val)):
        raise UserError(f"block_size {model_cfg.block_size} is larger than the data "
                        f"({len(data.val)} validation tokens): lower it with --set block_size=N.")
    tokenizer = data.tokenizer
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise UserError("the prompt is empty after tokenization: pass a non-empty --prompt.")

    host_malloc = retain_freed_memory()  # before the framework allocates anything (common/allocator.py)
    Backend = load_backend(framework)
    backend = Backend(model_cfg, train_cfg, params, device=run_config["device"],
                      replicas=run_config.get("replicas", 1))
    if optimizer_state is not None:
        backend.load_optimizer_state(optimizer_state)
    if backend.rank != 0:
        # Another data-parallel process: the same batches, its slice of them; rank 0 does the rest.
        for step in range(start_step, train_cfg.max_iters):
            x, y = get_batch(data.train, train_cfg.batch_size, model_cfg.block_size, train_cfg.seed, step)
            backend.train_step(x, y, learning_rate(step, train_cfg))
        backend.close()
        return {}
    env = environment(backend, args, host_malloc)
    (run_dir / "config.json").write_text(json.dumps(run_config, indent=2))
    (run_dir / "env.json").write_text(json.dumps(env, indent=2))

    accelerator = env["device"] != "cpu"
    peak = accelerator_peak(env["device_name"], train_cfg.dtype) if accelerator else cpu_peak_flops()
    flops = flops_per_token(model_cfg)
    tokens_per_step = train_cfg.batch_size * model_cfg.block_size
    val_batches = eval_batches(data.val, train_cfg.batch_size, model_cfg.block_size, train_cfg.seed,
                               train_cfg.eval_iters)
    train_batches = eval_batches(data.train, train_cfg.batch_size, model_cfg.block_size, train_cfg.seed,
                                 train_cfg.eval_iters)

    earlier = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()] \
        if resume else []
    log = MetricsLog(run_dir / "metrics.jsonl")
    from benchmarks.progress import Progress
    progress = Progress(train_cfg.max_iters, f"[{framework}]", start=start_step)
    step_times, evals = [], [r for r in earlier if r["type"] == "eval"]
    eval_time = checkpoint_time = 0.0
    first_step_time = None
    best_val = min((r["val_loss"] for r in evals), default=math.inf)
    checkpoint_every = args.checkpoint_every or train_cfg.eval_interval

    def do_eval(step: int, elapsed: float):
        nonlocal eval_time, best_val
        start = time.perf_counter()
        train_loss, val_loss = evaluate(backend, train_batches), evaluate(backend, val_batches)
        eval_time += time.perf_counter() - start
        record = {"type": "eval", "step": step, "train_loss": train_loss, "val_loss": val_loss,
                  "val_bpc": bits_per_char(val_loss, len(data.val), data.val_chars), "time": elapsed}
        evals.append(record)
        log.write(**record)
        progress.message(f"step {step}: train {train_loss:.4f}, val {val_loss:.4f}")
        if not math.isfinite(val_loss):
            raise UserError(f"the validation loss is {val_loss} at step {step}: lower the learning rate "
                            f"(--set lr=...); resume from the last good checkpoint with --resume {run_dir}.")
        best_val = min(best_val, val_loss)

    def checkpoint(step: int):
        nonlocal checkpoint_time
        start = time.perf_counter()
        save_training_state(run_dir, backend.export_params(), backend.optimizer_state(), model_cfg, step=step,
                            tokenizer_json=tokenizer.to_json(), framework=framework)
        checkpoint_time += time.perf_counter() - start

    profile_window = range(start_step + WARMUP_STEPS, start_step + WARMUP_STEPS + 5) if args.profile else range(0)
    profiler = None
    loop_start = time.perf_counter()
    # Training wall-clock, evaluation and checkpoints excluded; a resumed run continues its clock.
    wall_before = max((r["time"] for r in earlier), default=0.0)
    train_wall = wall_before
    try:
        for step in range(start_step, train_cfg.max_iters):
            if step % train_cfg.eval_interval == 0:
                do_eval(step, train_wall)
            if args.profile and step == profile_window.start:
                profiler = backend.profile(str(run_dir / "profile"))
                profiler.__enter__()
            x, y = get_batch(data.train, train_cfg.batch_size, model_cfg.block_size, train_cfg.seed, step)
            lr = learning_rate(step, train_cfg)
            start = time.perf_counter()
            loss = backend.train_step(x, y, lr)
            elapsed = time.perf_counter() - start
            if profiler is not None and step == profile_window[-1]:
                profiler.__exit__(None, None, None)
                profiler = None
            if first_step_time is None:
                first_step_time = elapsed
            step_times.append(elapsed)
            train_wall = wall_before + time.perf_counter() - loop_start - eval_time - checkpoint_time
            if not math.isfinite(loss):
                raise UserError(f"the training loss became {loss} at step {step}: lower the learning rate "
                                f"(--set lr=...) or clip gradients (--set grad_clip=1.0); resume from the last good checkpoint "
                                f"with --resume {run_dir}.")
            log.write(type="train", step=step, loss=loss, lr=lr, step_time=elapsed, time=train_wall)
            progress.update(step, loss, tokens_per_step / elapsed)
            if (step + 1) % checkpoint_every == 0 and step + 1 < train_cfg.max_iters:
                checkpoint(step + 1)
        if not evals or evals[-1]["step"] != train_cfg.max_iters:
            do_eval(train_cfg.max_iters, train_wall)
        checkpoint(train_cfg.max_iters)
        save_checkpoint(run_dir / "model.safetensors", backend.export_params(), model_cfg,
                        step=train_cfg.max_iters, tokenizer_json=tokenizer.to_json(), framework=framework,
                        extra={"val_loss": evals[-1]["val_loss"]})
    finally:
        if profiler is not None:
            profiler.__exit__(None, None, None)
        log.close()
    loop_wall = time.perf_counter() - loop_start

    steady = step_times[WARMUP_STEPS:] or step_times
    median_step = _percentile(steady, 50)
    tokens_per_s = tokens_per_step / median_step if median_step else None
    overhead = loop_wall - sum(step_times) - eval_time - checkpoint_time

    start = time.perf_counter()
    whole_val = evaluate_split(backend, split_batches(data.val, train_cfg.batch_size, model_cfg.block_size))
    whole_val_s = time.perf_counter() - start
    progress.message(f"val loss over the whole validation split: {whole_val:.4f} ({whole_val_s:.1f} s)")

    generation = sample(backend, tokenizer, prompt_ids, args, data)
    (run_dir / "samples.txt").write_text(generation.pop("text"), encoding="utf-8")

    peak_memory = backend.peak_memory_bytes()
    summary = {
        "framework": framework, "device": env["device"], "device_name": env["device_name"],
        "framework_version": env["framework_version"], "preset": run_config["preset"], "dtype": train_cfg.dtype,
        "compile": train_cfg.compile, "seed": train_cfg.seed, "replicas": backend.world_size * (
            backend.replicas if backend.world_size == 1 else 1), "max_iters": train_cfg.max_iters,
        "params": int(sum(v.size for v in backend.export_params().values())),
        "final_val_loss": evals[-1]["val_loss"], "best_val_loss": best_val,
        "final_train_loss": evals[-1]["train_loss"], "final_val_bpc": evals[-1]["val_bpc"],
        "whole_val_loss": whole_val, "whole_val_bpc": bits_per_char(whole_val, len(data.val), data.val_chars),
        "whole_val_s": whole_val_s,
        "time_to_first_step_s": first_step_time, "median_step_ms": median_step * 1e3 if median_step else None,
        "p10_step_ms": _percentile(steady, 10) * 1e3, "p90_step_ms": _percentile(steady, 90) * 1e3,
        "tokens_per_s": tokens_per_s, "flops_per_token": flops, "peak_flops": peak,
        "peak_flops_source": "measured float32 matmul" if not accelerator else "datasheet",
        "mfu": tokens_per_s * flops / peak if tokens_per_s and peak else None,
        "peak_memory_bytes": peak_memory,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "memory_kind": "device" if peak_memory is not None else "host RSS",
        "train_wall_s": sum(step_times), "eval_wall_s": eval_time, "checkpoint_wall_s": checkpoint_time,
        "harness_overhead_s": overhead, "harness_overhead_frac": overhead / loop_wall if loop_wall else None,
        "loop_wall_s": loop_wall,
        **generation,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    backend.close()
    progress.message(f"done: val loss {summary['final_val_loss']:.4f}, {tokens_per_s or 0:,.0f} tok/s, "
                     f"{summary['median_step_ms']:.1f} ms/step median -> {run_dir}")
    return summary


def sample(backend, tokenizer, prompt_ids, args, data) -> dict:
    """Samples for reading and for the quality metrics, and generation speed with and without cache.

    The speeds are measured over two spans: the tokens that fit in one context window after the
    prompt, which is where a KV cache applies, and the whole sample, which is what a user waits for.
    Past block_size every implementation crops the context, and with learned absolute positions
    each step must then recompute its whole window, cache or not.
    """
    options = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    n = args.sample_tokens
    timed = max(1, min(n, backend.config.block_size - len(prompt_ids)))
    speeds, generated = {}, {}
    for span in sorted({timed, n}):
        for use_cache in (True, False):
            backend.generate(prompt_ids, span, seed=0, use_cache=use_cache, **options)  # compile, warm up
            start = time.perf_counter()
            generated[span, use_cache] = backend.generate(prompt_ids, span, seed=0, use_cache=use_cache, **options)
            speeds[span, use_cache] = span / (time.perf_counter() - start)
    texts = [generated[n, True]] + [backend.generate(prompt_ids, n, seed=i + 1, **options)
                                    for i in range(1, args.num_samples)]
    samples = []
    for ids in texts[:args.num_samples]:
        text, _ = cut_at_stop(tokenizer.decode(ids), args.stop)
        samples.append(args.prompt + text)
    joined = "\n".join(samples)
    quality = sample_quality(joined, data.train_text, data.val_text) if samples else {}
    separator = "\n" + "-" * 72 + "\n"
    return {"generation_tokens_per_s": speeds[timed, True], "generation_nocache_tokens_per_s": speeds[timed, False],
            "kv_cache_speedup": speeds[timed, True] / speeds[timed, False], "generation_timed_tokens": timed,
            "sample_tokens": n, "kv_cache_speedup_whole_sample": speeds[n, True] / speeds[n, False],
            "quality": quality, "text": separator.join(samples) + "\n"}


def _run_folder(out: Path, framework: str, seed: int | None, repeat: int) -> Path:
    return out / (framework if repeat == 1 else f"{framework}-seed{seed}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        if args.resume:
            run_dir = Path(args.resume)
            try:
                saved = json.loads((run_dir / "config.json").read_text())
            except (OSError, ValueError):
                raise UserError(f"{run_dir} is not a run folder (no readable config.json): pass the folder of "
                                f"one framework's run, e.g. runs/<name>/pytorch.") from None
            replicas = saved.get("replicas", 1)
            _host_devices_for_jax(saved.get("framework", ""), replicas, saved.get("device", "auto"))
            if saved.get("framework") == "pytorch" and replicas > 1 and "WORLD_SIZE" not in os.environ:
                return _torchrun(argv, replicas, saved.get("device", "auto"))
            run_one(args, None, run_dir, resume=True)
            return 0
        _host_devices_for_jax(args.framework, args.replicas, args.device)
        names = FRAMEWORKS if args.framework.strip().lower() == "all" else (canonical_framework(args.framework),)
        if args.preset not in PRESET_NAMES:
            raise UserError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESET_NAMES)}.")
        if args.run_dir:  # a subprocess of `all` / `--repeat`
            if _needs_torchrun(names[0], args):
                return _torchrun(argv, args.replicas, args.device)
            run_one(args, names[0], Path(args.run_dir))
            return 0
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = Path(args.out or REPO / "runs" / f"{stamp}-{args.preset}")
        base_seed = args.seed if args.seed is not None else get_preset(
            "tiny" if args.preset == "auto" else args.preset)[1].seed
        jobs = [(fw, base_seed + r) for fw in names for r in range(args.repeat)]
        # Checked here too, so a bad --set fails once, at once, not in every subprocess of `all`.
        apply_overrides(*get_preset(args.preset, args.device in ("gpu", "tpu")), _overrides(args))
        if len(jobs) == 1:
            if not is_installed(names[0]):
                load_backend(names[0])  # raises the one-line "not installed" error
            run_dir = _run_folder(out, names[0], base_seed, 1)
            if _needs_torchrun(names[0], args):
                return _torchrun([*argv, "--run-dir", str(run_dir)], args.replicas, args.device)
            run_one(args, names[0], run_dir)
            return 0
        return _run_many(args, argv, out, jobs)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: metrics written so far are in the run folder.", file=sys.stderr)
        return 130


def _run_many(args, argv, out: Path, jobs) -> int:
    """Each run in its own subprocess: clean memory figures, and one crash loses nothing of the others."""
    out.mkdir(parents=True, exist_ok=True)
    finished, problems = [], []
    # One CPU peak for every run of this comparison, and the command that made them all.
    os.environ.setdefault("NANOGPT_CPU_PEAK_FLOPS", repr(cpu_peak_flops()))
    os.environ["NANOGPT_COMMAND"] = " ".join(["python -m benchmarks.run", *argv])
    for framework, seed in jobs:
        if not is_installed(framework):
            problems.append(f"{framework}: not installed (missing {', '.join(missing_modules(framework))}), skipped")
            print(f"[{framework}] not installed, skipped", file=sys.stderr)
            continue
        run_dir = _run_folder(out, framework, seed, args.repeat)
        child = [a for a in _strip_option(argv, "--framework") if a]
        command = [sys.executable, "-m", "benchmarks.run", *child, "--framework", framework,
                   "--seed", str(seed), "--run-dir", str(run_dir)]
        result = subprocess.run(command, cwd=REPO)
        if result.returncode == 0:
            finished.append(run_dir)
        else:
            problems.append(f"{framework} (seed {seed}): failed with exit code {result.returncode}")
            print(f"[{framework}] failed (exit code {result.returncode}); going on", file=sys.stderr)
    (out / "problems.txt").write_text("\n".join(problems) + ("\n" if problems else ""))
    if finished and args.report:
        from benchmarks.report import write_report
        report = write_report(finished, out, problems)
        print(f"report: {report}", file=sys.stderr)
    for line in problems:
        print(f"note: {line}", file=sys.stderr)
    return 0 if finished and len(finished) + sum("not installed" in p for p in problems) == len(jobs) else 1


def _host_devices_for_jax(framework: str, replicas: int, device: str) -> None:
    """JAX sees one CPU device unless XLA is told, before jax is first imported, to make one per replica.

    Each host device then runs its own program, so the devices already keep the cores busy; XLA's
    concurrency-optimised scheduler, which orders each program to run independent ops side by side,
    only oversubscribes them. Measured on the 2-core CPU, cpu-baby with 2 replicas: median step
    37.5-45.4 ms with it, 35.9-39.1 ms without (one replica: no difference, so it stays on there).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if (replicas > 1 and framework.strip().lower() in ("jax", "flax", "all") and device in ("cpu", "auto")
            and "xla_force_host_platform_device_count" not in flags):
        extra = f"--xla_force_host_platform_device_count={replicas}"
        if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
            extra += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()


def _needs_torchrun(framework: str, args) -> bool:
    return framework == "pytorch" and args.replicas > 1 and "WORLD_SIZE" not in os.environ


def _torchrun(argv: list[str], replicas: int, device: str) -> int:
    """Start this same command once per replica under torchrun (DDP needs a process each)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={replicas}",
               "-m", "benchmarks.run", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS",
                                                           str(max(1, (os.cpu_count() or 1) // replicas)))}
    if not _accelerator_present("pytorch", device):
        # The peak of the whole CPU, measured here: each process has only its share of the threads.
        env.setdefault("NANOGPT_CPU_PEAK_FLOPS", repr(cpu_peak_flops()))
    return subprocess.run(command, cwd=REPO, env=env).returncode


def _strip_option(argv: list[str], name: str) -> list[str]:
    """argv without `name VALUE`, `name=VALUE`, or --seed (set per child)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
            continue
        if a in (name, "--seed"):
            skip = True
            continue
        if a.startswith(name + "=") or a.startswith("--seed="):
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
