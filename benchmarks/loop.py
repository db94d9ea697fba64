"""The process that trains one run: everything it does is read from, and written to, its run folder.

    setup (config.json, the newest readable checkpoint) -> training_loop (with its evaluation,
    checkpoint and profile hooks) -> whole-split evaluation -> samples -> summary.json

A fresh run, a subprocess of `all`, a torchrun worker and `--resume` all come here the same way:
a run with no checkpoint starts at step 0, one with a checkpoint goes on from it, and one whose
training had finished (killed before its summary was written) only evaluates, samples and
summarises.
"""
from __future__ import annotations

import functools
import gc
import json
import math
import os
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from benchmarks.harness import Noise, NoiseMark, host_info, peak_rss_bytes
from benchmarks.quiet import native_logs_filtered
from benchmarks.run_config import RunConfig
from benchmarks.summary import WARMUP_STEPS, Generation, StepTimes, Summary
from benchmarks.tensorboard import ScalarWriter
from common.allocator import retain_freed_memory
from common.backend import load_backend
from common.checkpoint import load_training_state, save_checkpoint, save_training_state
from common.data import Prepared, eval_batches, get_batch, prepare, split_batches
from common.decode import DecodeConfig
from common.errors import UserError, one_line
from common.flops import accelerator_peak, cpu_peak_flops, flops_per_token
from common.hf_gpt2 import HFModel, load_gpt2
from common.params import crop_block_size, init_params
from common.quality import sample_quality
from common.sampling import cut_at_stop
from common.schedule import learning_rate
from common.spec import LOSS_IGNORE_INDEX
from common.tokenizers import bits_per_char

if TYPE_CHECKING:
    from common.backend import Backend
    from common.config import GPTConfig, TrainConfig



def train(run_dir: Path) -> Summary | None:
    """Train the run in run_dir from its newest readable checkpoint (or from step 0) and finish it."""
    config = RunConfig.load(run_dir)
    pretrained = load_gpt2(config.init_from) if config.init_from else None
    data = prepare(config.dataset, pretrained.tokenizer if pretrained else config.tokenizer, config.vocab_size)
    state = load_training_state(run_dir, config.model, data.tokenizer.to_json())
    host_malloc = retain_freed_memory()  # before the framework allocates anything (common/allocator.py)
    params = state.params if state else initial_params(config, pretrained)
    del pretrained  # its weights are in params now, or the checkpoint's replace them
    with native_logs_filtered():  # the framework is imported here
        backend = load_backend(config.framework)(config.model, config.train, params, device=config.device,
                                                 replicas=config.replicas, shard=config.shard,
                                                 decode=DecodeConfig(compile=config.train.compile))
    if state:
        backend.load_optimizer_state(state.optimizer)
    start_step = state.step if state else 0
    if backend.rank != 0:
        follow(backend, config, data, start_step)
        return None
    env = environment(backend, config, host_malloc)
    (run_dir / "env.json").write_text(json.dumps(env, indent=2))
    training = Training.start(run_dir, config, data, backend, start_step)
    if state and state.skipped:
        training.progress.message(f"warning: skipped unreadable checkpoint(s) {one_line('; '.join(state.skipped))}; "
                                  f"resuming from step {start_step}.")
    start_mark = NoiseMark.now()
    try:
        training_loop(training, start_step)
    finally:
        training.close()
    return finish(training, env, Noise.between(start_mark, NoiseMark.now()))


def initial_params(config: RunConfig, pretrained: HFModel | None) -> dict[str, np.ndarray]:
    """Step 0's weights: the pretrained model's, its positions cropped to the run's block_size, or
    the one initialisation every framework shares."""
    if pretrained is None:
        return init_params(config.model, config.train.seed)
    return crop_block_size(pretrained.params, config.model.block_size)


def training_loop(t: "Training", start_step: int) -> None:
    """Steps start_step..max_iters-1 with an evaluation every eval_interval, then the final checkpoint."""
    model, train = t.config.model, t.config.train
    checkpoint_every = t.config.checkpoint_every or train.eval_interval
    for step in range(start_step, train.max_iters):
        if step % train.eval_interval == 0:
            t.evaluate(step)
        t.profiler.before(step)
        x, y = step_batch(t.data.train, train, model.block_size, step)
        lr = learning_rate(step, train)
        started = time.perf_counter()
        loss = t.backend.train_step(x, y, lr)
        t.record_step(step, loss, lr, time.perf_counter() - started)
        t.profiler.after(step)
        if (step + 1) % checkpoint_every == 0 and step + 1 < train.max_iters:
            t.checkpoint(step + 1)
    if not t.evals or t.evals[-1]["step"] != train.max_iters:
        t.evaluate(train.max_iters)
    t.checkpoint(train.max_iters)
    t.save_model()


def step_batch(tokens: np.ndarray, train: TrainConfig, block_size: int, step: int):
    """The whole batch of a step, all its grad_accum micro-batches of batch_size rows (the Backend
    splits it): with grad_accum = 1 the batch every run drew before micro-batches existed."""
    return get_batch(tokens, train.batch_size * train.grad_accum, block_size, train.seed, step)


def follow(backend: Backend, config: RunConfig, data: Prepared, start_step: int) -> None:
    """Another data-parallel process: the same batches, its slice of them; rank 0 does the rest.
    A sharded one holds part of every weight, so it makes each of rank 0's calls beside it."""
    model, train = config.model, config.train
    if config.shard > 1:
        backend.serve()
    else:
        for step in range(start_step, train.max_iters):
            x, y = step_batch(data.train, train, model.block_size, step)
            backend.train_step(x, y, learning_rate(step, train))
    backend.close()


# --- The loop's state and hooks --------------------------------------------------------------------

@dataclass
class Clock:
    """Training wall-clock (evaluation and checkpoints excluded), continued from an earlier process."""
    before: float  # the training time earlier processes of this run logged
    start: float = field(default_factory=time.perf_counter)
    end: float | None = None  # when the loop ended; evaluation of the whole split and samples come after
    spent: dict[str, float] = field(default_factory=lambda: {"eval": 0.0, "checkpoint": 0.0, "steps": 0.0})

    @contextmanager
    def timing(self, kind: str):
        started = time.perf_counter()
        yield
        self.spent[kind] += time.perf_counter() - started

    def train_wall(self) -> float:
        return self.before + self.loop_wall() - self.spent["eval"] - self.spent["checkpoint"]

    def loop_wall(self) -> float:
        return (self.end or time.perf_counter()) - self.start


class MetricsLog:
    """metrics.jsonl, one JSON object a line, flushed as each is written so a crash loses nothing."""

    def __init__(self, path: Path, start_step: int):
        self.records = _records_before(path, start_step)  # what earlier processes logged; the rest is replayed
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in self.records), encoding="utf-8")
        os.replace(tmp, path)
        self.file = open(path, "a", encoding="utf-8")

    def write(self, record: dict) -> None:
        self.records.append(record)
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _records_before(path: Path, step: int) -> list[dict]:
    """The records of steps before `step`; a line cut short by a kill is dropped."""
    records = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if record.get("step", math.inf) < step:
                records.append(record)
    return records


class ProfileWindow:
    """The framework's own trace over a few steps once warm-up is over (--profile)."""
    STEPS = 5

    def __init__(self, backend: Backend, folder: Path, start_step: int, enabled: bool):
        first = start_step + WARMUP_STEPS
        self.backend, self.folder = backend, folder
        self.steps = range(first, first + self.STEPS) if enabled else range(0)
        self.active = None

    def before(self, step: int) -> None:
        if self.steps and step == self.steps.start:
            self.active = self.backend.profile(str(self.folder))
            self.active.__enter__()

    def after(self, step: int) -> None:
        if self.steps and step == self.steps[-1]:
            self.close()

    def close(self) -> None:
        if self.active is not None:
            self.active.__exit__(None, None, None)
            self.active = None


class Progress:
    """A tqdm bar on a terminal; elsewhere (logs, CI, pipes) a plain line every LOG_EVERY steps."""
    LOG_EVERY = 50

    def __init__(self, label: str, total: int, start_step: int):
        self.label, self.total, self.first, self.started = label, total, start_step, time.perf_counter()
        self.bar = tqdm(total=total, initial=start_step, desc=label, unit="step", file=sys.stderr,
                        disable=not sys.stderr.isatty(), dynamic_ncols=True)

    def step(self, step: int, loss: float, tokens_per_s: float) -> None:
        done = step + 1
        if not self.bar.disable:
            self.bar.set_postfix_str(f"loss {loss:.4f}, {tokens_per_s:,.0f} tok/s", refresh=False)
            self.bar.update(1)
        elif done % self.LOG_EVERY == 0 or done == self.total:
            elapsed = time.perf_counter() - self.started
            eta = elapsed / (done - self.first) * (self.total - done)
            self.message(f"step {done}/{self.total} loss {loss:.4f} {tokens_per_s:,.0f} tok/s ETA {eta:.0f}s")

    def message(self, text: str) -> None:
        tqdm.write(f"{self.label} {text}", file=sys.stderr)

    def close(self) -> None:
        self.bar.close()


@dataclass
class Training:
    """One run while it trains, in rank 0's process; its methods are the training loop's hooks."""
    run_dir: Path
    config: RunConfig
    data: Prepared
    backend: Backend
    eval_sets: dict[str, list]  # "train" and "val": the same sampled batches at every evaluation
    metrics: MetricsLog
    board: ScalarWriter
    progress: Progress
    profiler: ProfileWindow
    clock: Clock

    @classmethod
    def start(cls, run_dir: Path, config: RunConfig, data: Prepared, backend: Backend, start_step: int):
        (run_dir / "summary.json").unlink(missing_ok=True)  # a summary now would describe an older run
        model, train = config.model, config.train
        eval_sets = {split: eval_batches(tokens, train.batch_size, model.block_size, train.seed, train.eval_iters)
                     for split, tokens in (("train", data.train), ("val", data.val))}
        metrics = MetricsLog(run_dir / "metrics.jsonl", start_step)
        clock = Clock(before=max((r["time"] for r in metrics.records), default=0.0))
        return cls(run_dir, config, data, backend, eval_sets, metrics, ScalarWriter(run_dir, start_step),
                   Progress(f"[{config.framework}]", train.max_iters, start_step),
                   ProfileWindow(backend, run_dir / "profile", start_step, config.profile), clock)

    @property
    def evals(self) -> list[dict]:
        return [r for r in self.metrics.records if r["type"] == "eval"]

    def evaluate(self, step: int) -> None:
        with self.clock.timing("eval"):
            losses = {split: float(np.mean([self.backend.eval_loss(x, y) for x, y in batches]))
                      for split, batches in self.eval_sets.items()}
        val_bpc = bits_per_char(losses["val"], len(self.data.val), self.data.val_chars)
        self.metrics.write({"type": "eval", "step": step, "train_loss": losses["train"], "val_loss": losses["val"],
                            "val_bpc": val_bpc, "time": self.clock.train_wall()})
        self.board.scalars(step, {"eval/train_loss": losses["train"], "eval/val_loss": losses["val"]})
        self.board.flush()
        self.progress.message(f"step {step}: train {losses['train']:.4f}, val {losses['val']:.4f}")
        if not math.isfinite(losses["val"]):
            raise UserError(f"the validation loss is {losses['val']} at step {step}: lower the learning rate "
                            f"(--set lr=...); resume from the last good checkpoint with --resume {self.run_dir}.")

    def record_step(self, step: int, loss: float, lr: float, step_time: float) -> None:
        self.clock.spent["steps"] += step_time
        if not math.isfinite(loss):
            raise UserError(f"the training loss became {loss} at step {step}: lower the learning rate "
                            f"(--set lr=...) or clip gradients (--set grad_clip=1.0); resume from the last good "
                            f"checkpoint with --resume {self.run_dir}.")
        self.metrics.write({"type": "train", "step": step, "loss": loss, "lr": lr, "step_time": step_time,
                            "time": self.clock.train_wall()})
        self.board.scalars(step, {"train/loss": loss, "train/lr": lr, "train/step_ms": step_time * 1e3})
        tokens_per_step = tokens_per_step_of(self.config.train, self.config.model)
        self.progress.step(step, loss, tokens_per_step / step_time)

    def checkpoint(self, step: int) -> None:
        with self.clock.timing("checkpoint"):
            save_training_state(self.run_dir, self.backend.export_params(), self.backend.optimizer_state(),
                                self.config.model, step=step, tokenizer_json=self.data.tokenizer.to_json(),
                                framework=self.config.framework)

    def save_model(self) -> None:
        save_checkpoint(self.run_dir / "model.safetensors", self.backend.export_params(), self.config.model,
                        step=self.config.train.max_iters, tokenizer_json=self.data.tokenizer.to_json(),
                        framework=self.config.framework, extra={"val_loss": self.evals[-1]["val_loss"]})

    def close(self) -> None:
        self.clock.end = time.perf_counter()
        self.profiler.close()
        self.progress.close()
        self.metrics.close()
        self.board.close()


# --- After training --------------------------------------------------------------------------------

def finish(t: Training, env: dict, noise: Noise | None = None) -> Summary:
    """Whole-split evaluation, samples and summary.json of a run whose training is done."""
    model, train = t.config.model, t.config.train
    started = time.perf_counter()
    whole_val = evaluate_split(t.backend, split_batches(t.data.val, train.batch_size, model.block_size))
    whole_val_s = time.perf_counter() - started
    t.progress.message(f"val loss over the whole validation split: {whole_val:.4f} ({whole_val_s:.1f} s)")
    generation, text = sample(t.backend, t.data, t.config)
    (t.run_dir / "samples.txt").write_text(text, encoding="utf-8")
    summary = summarize(t, env, whole_val, whole_val_s, generation, noise)
    summary.write(t.run_dir)
    t.backend.close()
    t.progress.message(f"done: val loss {summary.final_val_loss:.4f}, {summary.tokens_per_s or 0:,.0f} tok/s, "
                       f"{summary.median_step_ms or 0:.1f} ms/step median -> {t.run_dir}")
    return summary


def tokens_per_step_of(train: TrainConfig, model: GPTConfig) -> int:
    """Every micro-batch's tokens: a step of grad_accum micro-batches trains on all of them."""
    return train.batch_size * train.grad_accum * model.block_size


def summarize(t: Training, env: dict, whole_val: float, whole_val_s: float, generation: Generation,
              noise: Noise | None = None) -> Summary:
    model, train, backend, final = t.config.model, t.config.train, t.backend, t.evals[-1]
    step_times = [r["step_time"] for r in sorted((r for r in t.metrics.records if r["type"] == "train"),
                                                  key=lambda r: r["step"])]
    steps = StepTimes.of(step_times, tokens_per_step_of(train, model))
    accelerator = env["device"] != "cpu"
    peak = accelerator_peak(env["device_name"], train.dtype) if accelerator else \
        t.config.cpu_peak_flops or cpu_peak_flops()
    flops = flops_per_token(model)
    peak_memory = backend.peak_memory_bytes()
    params = int(sum(v.size for v in backend.export_params().values()))
    state = backend.state_bytes()
    loop_wall = t.clock.loop_wall()
    overhead = loop_wall - sum(t.clock.spent.values())
    return Summary(
        framework=t.config.framework, device=env["device"], device_name=env["device_name"],
        framework_version=env["framework_version"], preset=t.config.preset, dtype=train.dtype,
        compile=train.compile, seed=train.seed, round=t.config.round,
        replicas=t.config.replicas, shard=t.config.shard, max_iters=train.max_iters, params=params,
        final_val_loss=final["val_loss"], best_val_loss=min(r["val_loss"] for r in t.evals),
        final_train_loss=final["train_loss"], final_val_bpc=final["val_bpc"], whole_val_loss=whole_val,
        whole_val_bpc=bits_per_char(whole_val, len(t.data.val), t.data.val_chars), whole_val_s=whole_val_s,
        **asdict(steps), flops_per_token=flops, peak_flops=peak,
        peak_flops_source="datasheet" if accelerator else "measured float32 matmul",
        mfu=steps.tokens_per_s * flops / peak if steps.tokens_per_s and peak else None,
        peak_memory_bytes=peak_memory, peak_rss_bytes=peak_rss_bytes(),
        memory_kind="device" if peak_memory is not None else "host RSS",
        train_wall_s=sum(step_times), eval_wall_s=t.clock.spent["eval"],
        checkpoint_wall_s=t.clock.spent["checkpoint"], harness_overhead_s=overhead,
        harness_overhead_frac=overhead / loop_wall if loop_wall else None, loop_wall_s=loop_wall,
        noise=noise.as_dict() if noise else None, state_bytes=state,
        state_share=sum(state.values()) / (16 * params) if state else None, **asdict(generation))


def evaluate_split(backend: Backend, batches) -> float:
    """Mean loss over every real target of common.data.split_batches (padding targets are ignored)."""
    counts = [int(np.count_nonzero(y != LOSS_IGNORE_INDEX)) for _, y in batches]
    losses = [backend.eval_loss(x, y) for x, y in batches]
    return float(np.dot(losses, counts) / sum(counts))


def sample(backend: Backend, data: Prepared, config: RunConfig) -> tuple[Generation, str]:
    """Samples for reading and for the quality metrics, and generation speed with and without cache.

    The speeds are measured over two spans: the tokens that fit in one context window after the
    prompt, which is where a KV cache applies, and the whole sample, which is what a user waits for.
    Past block_size every implementation crops the context, and with learned absolute positions
    each step must then recompute its whole window, cache or not. Each figure is timed after a
    warm-up call with the same shapes (which compiles) and a full garbage collection: a single call
    right after compiling once caught the collector's full pass (127 ms on the cpu-baby JAX model,
    ~7x its 63 cached tokens). The window's figure is a median of three calls.
    """
    prompt_ids = data.tokenizer.encode(config.prompt)
    options = dict(temperature=config.temperature, top_k=config.top_k, top_p=config.top_p)
    n = config.sample_tokens
    timed = max(1, min(n, config.model.block_size - len(prompt_ids)))
    speeds, generated = {}, {}
    for span in sorted({timed, n}):
        for use_cache in (True, False):
            decode = functools.partial(backend.generate, prompt_ids, span, seed=0, use_cache=use_cache, **options)
            generated[span, use_cache] = decode()  # compiles, warms up
            speeds[span, use_cache] = span / median_seconds(decode, 3 if span == timed else 1)
    texts = [generated[n, True]] + [backend.generate(prompt_ids, n, seed=i + 1, **options)
                                    for i in range(1, config.num_samples)]
    compiled = (compiled_decode_speed(backend, prompt_ids, timed, options)
                if config.compiled_decode and not backend.compiles_decode and config.shard == 1 else {})
    samples = [config.prompt + cut_at_stop(data.tokenizer.decode(ids), config.stop)[0]
               for ids in texts[:config.num_samples]]
    quality = sample_quality("\n".join(samples), data.train_text, data.val_text) if samples else {}
    generation = Generation(
        generation_tokens_per_s=speeds[timed, True], generation_nocache_tokens_per_s=speeds[timed, False],
        kv_cache_speedup=speeds[timed, True] / speeds[timed, False], generation_timed_tokens=timed,
        sample_tokens=n, kv_cache_speedup_whole_sample=speeds[n, True] / speeds[n, False], quality=quality,
        **compiled)
    return generation, ("\n" + "-" * 72 + "\n").join(samples) + "\n"


def median_seconds(call, repeats: int) -> float:
    """The median time of `repeats` calls of a warm `call`, after a full garbage collection."""
    gc.collect()
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        seconds.append(time.perf_counter() - started)
    return float(np.median(seconds))


def compiled_decode_speed(backend: Backend, prompt_ids: list[int], tokens: int, options: dict) -> dict:
    """An eager decode timed again compiled, as the XLA frameworks always decode: the first call's
    seconds (compilation included) and tokens/s over `tokens` (median of three warm calls)."""
    backend.compiles_decode = True
    try:
        decode = functools.partial(backend.generate, prompt_ids, tokens, seed=0, **options)
        started = time.perf_counter()
        decode()
        first_s = time.perf_counter() - started
        return {"generation_compiled_tokens_per_s": tokens / median_seconds(decode, 3), "generation_compile_s": first_s}
    finally:
        backend.compiles_decode = False


def environment(backend: Backend, config: RunConfig, host_malloc: str) -> dict:
    return {"framework": backend.name, **backend.device_info(), **host_info(), "host_malloc": host_malloc,
            "settings": backend.settings(), "command": config.command}
