"""summary.json: the figures of one finished run, which the report reads."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

WARMUP_STEPS = 10  # steps left out of the step-time statistics (compilation, allocator warm-up)


@dataclass
class Generation:
    """Sampling speed with and without the KV cache, over one context window and the whole sample."""
    generation_tokens_per_s: float
    generation_nocache_tokens_per_s: float
    kv_cache_speedup: float
    generation_timed_tokens: int
    sample_tokens: int
    kv_cache_speedup_whole_sample: float
    quality: dict  # common.quality.sample_quality of the samples
    # A decode that runs eager (PyTorch without --compile) timed again compiled, so that its row
    # compares like with like against the XLA frameworks, which always compile: tokens/s over the
    # same window, and the first call's seconds, compilation included. None where decode compiles anyway.
    generation_compiled_tokens_per_s: float | None = None
    generation_compile_s: float | None = None


@dataclass
class StepTimes:
    """Step-time figures over every training step the run logged, warm-up steps left out."""
    time_to_first_step_s: float | None
    median_step_ms: float | None
    p10_step_ms: float | None
    p90_step_ms: float | None
    tokens_per_s: float | None

    @classmethod
    def of(cls, step_times: list[float], tokens_per_step: int) -> "StepTimes":
        steady = step_times[WARMUP_STEPS:] or step_times
        if not steady:
            return cls(None, None, None, None, None)
        p10, median, p90 = (float(np.percentile(steady, q)) for q in (10, 50, 90))
        return cls(step_times[0], median * 1e3, p10 * 1e3, p90 * 1e3, tokens_per_step / median)


@dataclass
class Summary:
    framework: str
    device: str
    device_name: str
    framework_version: str
    preset: str
    dtype: str
    compile: bool
    seed: int
    round: int                             # which interleaved round of its comparison (--rounds)
    replicas: int
    max_iters: int
    params: int
    final_val_loss: float
    best_val_loss: float
    final_train_loss: float
    final_val_bpc: float
    whole_val_loss: float                  # over every target of the validation split, not a sample
    whole_val_bpc: float
    whole_val_s: float
    time_to_first_step_s: float | None     # compilation included
    median_step_ms: float | None
    p10_step_ms: float | None
    p90_step_ms: float | None
    tokens_per_s: float | None             # at the median step time
    flops_per_token: float
    peak_flops: float | None
    peak_flops_source: str                 # "measured float32 matmul" on a CPU, "datasheet" otherwise
    mfu: float | None
    peak_memory_bytes: int | None          # the device's, where the framework reports one
    peak_rss_bytes: int
    memory_kind: str                       # "device" or "host RSS"
    train_wall_s: float                    # sum of the logged step times
    eval_wall_s: float                     # this process's evaluations, checkpoints and loop
    checkpoint_wall_s: float
    harness_overhead_s: float
    harness_overhead_frac: float | None
    loop_wall_s: float
    noise: dict | None                     # benchmarks.harness.Noise over the training loop
    generation_tokens_per_s: float
    generation_nocache_tokens_per_s: float
    kv_cache_speedup: float
    generation_timed_tokens: int
    sample_tokens: int
    kv_cache_speedup_whole_sample: float
    quality: dict
    generation_compiled_tokens_per_s: float | None
    generation_compile_s: float | None
    shard: int = 1                         # devices the training state is split over (--shard)
    # One device's parameters, gradients and Adam moments in bytes, measured from its arrays (its
    # shards), and their share of the whole state (16 bytes a parameter: four float32 copies).
    state_bytes: dict | None = None
    state_share: float | None = None

    def write(self, run_dir: Path) -> None:
        (run_dir / "summary.json").write_text(json.dumps(asdict(self), indent=2))
