"""Train, evaluate and sample one GPT per framework, writing a run folder as it goes.

    python -m benchmarks.run --framework pytorch|tensorflow|jax|keras-jax|all [--preset auto] [--max-iters N] ...

This module is the launcher: it parses the command, resolves and checks every run it asks for
before any starts, writes each run's config.json, and starts the processes (one per run for
`all` and `--repeat`, torchrun's for PyTorch replicas). The training itself is benchmarks/loop.py,
which reads everything from the run folder. A run folder holds config.json, env.json, metrics.jsonl
(appended while training), a TensorBoard event file, samples.txt, summary.json and the
framework-neutral checkpoint (model.safetensors + optimizer.safetensors). `--framework all` runs
each framework in its own subprocess on the same batches and the same initial weights, then writes
the comparison report. With `--rounds N` (and `--repeat N`) the frameworks take turns: every round
runs each framework once before the next round starts, so a slow minute of the machine falls on
one round of every framework, not on all the runs of one. `--init-from` makes those initial weights a Hugging Face
GPT-2's (a folder, or a Hub id fetched into huggingface_hub's cache), with its shape and tokenizer.
"""
from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import shutil
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import psutil

from benchmarks.harness import REPO, busy_processes, run_child
from benchmarks.quiet import native_logs_filtered, quiet_third_party
from benchmarks.run_config import RunConfig
from common.backend import (FRAMEWORKS, canonical_framework, check_replica_split, check_shard, device_memory_bytes,
                            has_accelerator, is_installed, load_backend, missing_modules)
from common.config import PRESET_NAMES, GPTConfig, TrainConfig, apply_overrides, get_preset
from common.data import Prepared, prepare
from common.errors import OneLineParser, UserError, one_line
from common.flops import cpu_peak_flops
from common.hf_gpt2 import PRETRAINED, PRETRAINED_SHAPES, HFModel, load_gpt2
from common.memory import GiB, MemoryPlan, check_fits

RUN_FILES = ("metrics.jsonl", "summary.json", "samples.txt", "model.safetensors", "env.json")
# What --set may change in a model started from pretrained weights; the rest of its shape is theirs.
PRETRAINED_TUNABLE = ("dropout", "block_size")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0],
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
    p.add_argument("--shard", type=int, default=1, metavar="N", help="fully sharded data parallel over N devices: "
                   "parameters, gradients and Adam moments split N ways (FSDP2 under torchrun for PyTorch, "
                   "an fsdp mesh axis for JAX, ModelParallel for keras-jax)")
    p.add_argument("--device-memory", type=float, metavar="GIB", help="plan for devices of this many GiB "
                   "each (default: what the device reports; on a CPU, the host's available memory)")
    p.add_argument("--plan", action="store_true", help="print each run's memory plan and stop, before any "
                   "weights are read")
    p.add_argument("--repeat", type=int, default=1, help="runs per framework, seeds seed..seed+N-1, taken in turns")
    p.add_argument("--rounds", type=int, default=1, help="interleaved rounds: each round runs every framework "
                   "once on the same seed; the report gives each speed ratio with a 95%% interval over them")
    p.add_argument("--dataset", default="tinyshakespeare",
                   help="tinyshakespeare | shakespeare-plays | path to the plays CSV or a text file")
    p.add_argument("--tokenizer", choices=["char", "bpe"], help="the tokenizer trained on the corpus (default: char)")
    p.add_argument("--vocab-size", type=int, help="BPE vocabulary size")
    p.add_argument("--init-from", metavar="NAME|DIR", help=f"start from a Hugging Face GPT-2: {', '.join(PRETRAINED)}, "
                   "a Hub id or a local folder; its shape and tokenizer, the preset's training settings")
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
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its newest readable checkpoint, or "
                   "finish one stopped after training; it runs as its config.json says, other options unused")
    p.add_argument("--checkpoint-every", type=int, help="steps between checkpoints (default eval_interval)")
    p.add_argument("--busy-cores", type=int, default=0, metavar="N", help="keep N cores busy with other processes "
                   "while each run trains: which framework slows down on a shared machine, and by how much")
    p.add_argument("--verbose", action="store_true", help="show the frameworks' own log lines and warnings")
    p.add_argument("--run-dir", help=argparse.SUPPRESS)  # a subprocess: train the run this folder's config.json describes
    args = p.parse_args(argv)
    if not args.framework and not args.resume and not args.run_dir:
        raise UserError("name a framework: --framework pytorch|tensorflow|jax|keras-jax|all (or --resume RUN_DIR).")
    if args.checkpoint_every is not None and args.checkpoint_every < 1:
        raise UserError("--checkpoint-every must be at least 1.")
    if args.replicas < 1 or args.shard < 1:
        raise UserError("--replicas and --shard must be at least 1.")
    if args.device_memory is not None and not 0 < args.device_memory < math.inf:
        raise UserError("--device-memory is a size in GiB above 0, e.g. --device-memory 24.")
    if args.busy_cores < 0:
        raise UserError("--busy-cores must be 0 or more.")
    if args.repeat < 1 or args.rounds < 1 or args.num_samples < 0 or args.sample_tokens < 1:
        raise UserError("--repeat, --rounds and --sample-tokens must be at least 1 and --num-samples at least 0.")
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        args = parse_args(argv)
        quiet_third_party(args.verbose)
        if args.run_dir:  # a subprocess of `all` or --repeat, or a torchrun worker
            return run_folder(Path(args.run_dir), args.verbose)
        if args.resume:
            RunConfig.load(Path(args.resume))  # one line if it is not a run folder, before anything else
            return run_folder(Path(args.resume), args.verbose)
        out, jobs, missing = plan(args, " ".join(["python -m benchmarks.run", *argv]))
        if args.plan:
            return 0
        if len(jobs) == 1 and not missing and not args.busy_cores:
            run_dir, config = jobs[0]
            start_folder(run_dir, config)
            return run_folder(run_dir, args.verbose)
        return _run_many(args, out, jobs, missing)
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: metrics written so far are in the run folder.", file=sys.stderr)
        return 130


def plan(args, command: str) -> tuple[Path, list[tuple[Path, RunConfig]], list[str]]:
    """Every run the command asks for, resolved and checked before any of them starts.

    Returns the output folder, the (run folder, config) of each run and the frameworks of `all`
    that are not installed; one bad value fails the whole command at once, not each subprocess in
    turn.
    """
    _host_devices_for_jax(args.framework, max(args.replicas, args.shard), args.device)  # before `auto` may import jax
    names = FRAMEWORKS if args.framework.strip().lower() == "all" else (canonical_framework(args.framework),)
    if args.preset not in PRESET_NAMES:
        raise UserError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESET_NAMES)}.")
    for framework in names:
        check_shard(framework, args.shard, args.replicas)
    if len(names) == 1 and not is_installed(names[0]):
        load_backend(names[0])  # raises the one-line "not installed" error
    missing = [fw for fw in names if not is_installed(fw)]
    if args.init_from in PRETRAINED_SHAPES and not Path(args.init_from).is_dir():  # its memory is known before its weights are fetched and read
        model, train = _pretrained_configs(PRETRAINED_SHAPES[args.init_from], args.init_from,
                                           *get_preset(args.preset), _overrides(args))
        for framework in names:
            check_memory(args, framework, model, train)
        if args.plan:
            return out_folder(args), [], missing
    out = out_folder(args)
    pretrained = load_gpt2(args.init_from) if args.init_from else None
    if pretrained and (args.tokenizer or args.vocab_size):
        raise UserError("--init-from trains with the model's own tokenizer: drop --tokenizer and --vocab-size.")
    data = prepare(args.dataset, pretrained.tokenizer if pretrained else (args.tokenizer or "char"), args.vocab_size)
    if not data.tokenizer.encode(args.prompt):
        raise UserError("the prompt is empty after tokenization: pass a non-empty --prompt.")
    if args.plan:
        for framework in (fw for fw in names if fw not in missing):
            resolve(args, framework, 0, data, command, pretrained)  # prints the plan
        return out, [], missing
    base_seed = apply_overrides(*get_preset(args.preset), _overrides(args))[1].seed  # --seed or --set seed=N
    configs = {(fw, seed): resolve(args, fw, seed, data, command, pretrained)
               for fw in names if fw not in missing for seed in range(base_seed, base_seed + args.repeat)}
    jobs = []
    for round_number, seed, framework in interleaved(args.rounds, range(base_seed, base_seed + args.repeat),
                                                     [fw for fw in names if fw not in missing]):
        run_dir = out / run_name(framework, seed, round_number, args.repeat, args.rounds)
        _check_run_folder(run_dir, args.force)
        jobs.append((run_dir, replace(configs[framework, seed], round=round_number, compiled_decode=len(names) > 1,
                                      busy_cores=args.busy_cores)))
    return out, jobs, missing


def out_folder(args) -> Path:
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out or REPO / "runs" / f"{stamp}-{args.preset}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a folder (it is made if it does not exist).")
    return out


def check_memory(args, framework: str, model: GPTConfig, train: TrainConfig) -> MemoryPlan:
    """The run's memory plan against its devices (common/memory.py); one line and no run if it does
    not fit. --plan prints it."""
    if args.device_memory:
        device_bytes, host = int(args.device_memory * GiB), False
    else:
        with native_logs_filtered():  # asks the framework, which imports it here
            device_bytes = device_memory_bytes(framework, args.device)
        host = device_bytes is None  # a CPU: every shard lives in the host's memory
        device_bytes = device_bytes or psutil.virtual_memory().available
    plan = check_fits(model, train, framework, args.shard, device_bytes, host)
    if args.plan:
        print(f"[{framework}] {model.n_layer} layers of {model.n_embd}, {args.shard} device(s): {plan.describe()}; "
              f"{device_bytes / GiB:,.1f} GiB {'on the host' if host else 'a device'}", file=sys.stderr)
    return plan


def interleaved(rounds: int, seeds, frameworks: list[str]) -> list[tuple[int, int, str]]:
    """(round, seed, framework) in the order they run: every framework once before any runs again.

    A round of one seed is the unit the report pairs frameworks in: their runs were made in the
    same minutes, so their ratio carries little of the machine's drift."""
    return [(r, seed, fw) for r in range(1, rounds + 1) for seed in seeds for fw in frameworks]


def run_name(framework: str, seed: int, round_number: int, repeat: int, rounds: int) -> str:
    return framework + (f"-seed{seed}" if repeat > 1 else "") + (f"-round{round_number}" if rounds > 1 else "")


def resolve(args, framework: str, seed: int, data: Prepared, command: str,
            pretrained: HFModel | None = None) -> RunConfig:
    """One run's config: the preset (the pretrained model's shape in place of the preset's), the
    command's overrides, and checks that it can run at all."""
    with native_logs_filtered():  # `auto` asks the framework, which imports it here
        accelerator = args.preset == "auto" and has_accelerator(framework, args.device)
    overrides = {**_overrides(args), "seed": str(seed)}
    if pretrained:
        model, train = _pretrained_configs(pretrained.config.model, pretrained.folder,
                                           *get_preset(args.preset, accelerator), overrides)
    else:
        overrides["vocab_size"] = str(data.tokenizer.vocab_size)
        model, train = apply_overrides(*get_preset(args.preset, accelerator), overrides)
    if model.block_size >= min(len(data.train), len(data.val)):
        raise UserError(f"block_size {model.block_size} is larger than the data "
                        f"({len(data.val)} validation tokens): lower it with --set block_size=N.")
    check_replica_split(train.batch_size, max(args.replicas, args.shard))
    check_memory(args, framework, model, train)
    return RunConfig(framework=framework, preset=args.preset, dataset=args.dataset, corpus=data.corpus_name,
                     tokenizer=data.tokenizer.kind, vocab_size=args.vocab_size, device=args.device,
                     replicas=args.replicas, shard=args.shard, model=model, train=train, command=command,
                     checkpoint_every=args.checkpoint_every, profile=args.profile, prompt=args.prompt,
                     num_samples=args.num_samples, sample_tokens=args.sample_tokens,
                     temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, stop=args.stop,
                     init_from=str(pretrained.folder.resolve()) if pretrained else None)


def _pretrained_configs(given: GPTConfig, source, preset: GPTConfig, train: TrainConfig,
                        overrides: dict[str, str]) -> tuple[GPTConfig, TrainConfig]:
    """The folder's model and the preset's training settings, both as --set changes them: dropout,
    a block_size cropped below the model's n_positions (as nanoGPT's crop_block_size) and any
    training field; the rest of the model is its weights' shape and arithmetic. The preset's
    block_size is part of its training settings (finetune-shakespeare-cpu trains 256-token rows),
    so a model with more positions is cropped to it unless --set says otherwise."""
    cropped = replace(given, block_size=min(preset.block_size, given.block_size))
    model, train = apply_overrides(cropped, train, overrides)
    fixed = [f.name for f in fields(GPTConfig)
             if f.name not in PRETRAINED_TUNABLE and getattr(model, f.name) != getattr(given, f.name)]
    if fixed:
        raise UserError(f"--set {fixed[0]} cannot change a model started from {source}, whose weights "
                        f"fix it: with --init-from, --set changes dropout, block_size and training fields only.")
    if model.block_size > given.block_size:
        raise UserError(f"block_size {model.block_size} is longer than the {given.block_size} positions of "
                        f"{source}: use --set block_size=N with N at most {given.block_size}.")
    return model, train


def _check_run_folder(run_dir: Path, force: bool) -> None:
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, where the run folder would go: choose another --out.")
    if (run_dir / "metrics.jsonl").exists() and not force:
        raise UserError(f"{run_dir} already holds a run: pass --resume {run_dir} to continue it, --force to "
                        f"overwrite it, or choose another --out.")


def start_folder(run_dir: Path, config: RunConfig) -> None:
    """An empty run folder with the run's config.json: whoever trains it starts from step 0."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        for stale in [*RUN_FILES, *(p.name for p in run_dir.glob("events.out.tfevents.*"))]:
            (run_dir / stale).unlink(missing_ok=True)
        for folder in ("checkpoints", "profile"):
            shutil.rmtree(run_dir / folder, ignore_errors=True)
        config.save(run_dir)
    except OSError as e:
        raise UserError(f"cannot write the run folder {run_dir} ({e.strerror}): choose another --out.") from None


def run_folder(run_dir: Path, verbose: bool) -> int:
    """Train the run run_dir's config.json describes; under torchrun where it needs a process per replica."""
    config = RunConfig.load(run_dir)
    _host_devices_for_jax(config.framework, max(config.replicas, config.shard), config.device)
    if config.framework == "pytorch" and max(config.replicas, config.shard) > 1 and "WORLD_SIZE" not in os.environ:
        return _torchrun(run_dir, config, verbose)
    from benchmarks.loop import train  # imports the framework: after XLA_FLAGS and the log settings
    train(run_dir)
    return 0


def _run_many(args, out: Path, jobs: list[tuple[Path, RunConfig]], missing: list[str]) -> int:
    """Each run in its own subprocess: clean memory figures, and one crash loses nothing of the others."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot make the output folder {out} ({e.strerror}): choose another --out.") from None
    for framework in missing:
        print(f"[{framework}] not installed, skipped", file=sys.stderr)
    peak = cpu_peak_flops()  # one CPU peak for every run of this comparison
    finished = []
    problems = [f"{fw}: not installed (missing {', '.join(missing_modules(fw))}), skipped" for fw in missing]
    for run_dir, config in jobs:
        config.cpu_peak_flops = peak
        start_folder(run_dir, config)
        if args.rounds > 1:
            print(f"[{config.framework}] round {config.round}/{args.rounds}", file=sys.stderr)
        with busy_processes(config.busy_cores):
            result = run_child("benchmarks.run", "--run-dir", str(run_dir), *(["--verbose"] if args.verbose else []))
        if result.returncode == 0:
            finished.append(run_dir)
        else:
            which = f"seed {config.train.seed}" + (f", round {config.round}" if args.rounds > 1 else "")
            problems.append(f"{config.framework} ({which}): failed with exit code {result.returncode}")
            print(f"[{config.framework}] failed (exit code {result.returncode}); going on", file=sys.stderr)
    (out / "problems.txt").write_text("\n".join(problems) + ("\n" if problems else ""))
    if finished and args.report:
        from benchmarks.report import write_report
        report = write_report(finished, out, problems)
        print(f"report: {report}", file=sys.stderr)
    for line in problems:
        print(f"note: {line}", file=sys.stderr)
    return 0 if finished and len(finished) == len(jobs) else 1


def _host_devices_for_jax(framework: str, replicas: int, device: str) -> None:
    """JAX sees one CPU device unless XLA is told, before jax is first imported, to make one per replica
    (or per shard; keras-jax too).

    Each host device then runs its own program, so the devices already keep the cores busy; XLA's
    concurrency-optimised scheduler, which orders each program to run independent ops side by side,
    only oversubscribes them. Measured on the 2-core CPU, cpu-baby with 2 replicas: median step
    37.5-45.4 ms with it, 35.9-39.1 ms without (one replica: no difference, so it stays on there).
    """
    flags = os.environ.get("XLA_FLAGS", "")
    if (replicas > 1 and framework.strip().lower() in ("jax", "flax", "keras-jax", "all") and device in ("cpu", "auto")
            and "xla_force_host_platform_device_count" not in flags):
        extra = f"--xla_force_host_platform_device_count={replicas}"
        if "xla_cpu_enable_concurrency_optimized_scheduler" not in flags:
            extra += " --xla_cpu_enable_concurrency_optimized_scheduler=false"
        os.environ["XLA_FLAGS"] = f"{flags} {extra}".strip()


def _torchrun(run_dir: Path, config: RunConfig, verbose: bool) -> int:
    """Start this run once per replica or shard under torchrun (DDP and FSDP need a process each)."""
    processes = max(config.replicas, config.shard)
    if config.cpu_peak_flops is None and not has_accelerator("pytorch", config.device):
        # The peak of the whole CPU, measured here: each process has only its share of the threads.
        config.cpu_peak_flops = cpu_peak_flops()
        config.save(run_dir)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={processes}", "-m", "benchmarks.run", "--run-dir", str(run_dir),
               *(["--verbose"] if verbose else [])]
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // processes)))
    return subprocess.run(command, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": threads}).returncode


if __name__ == "__main__":
    sys.exit(main())
