"""Model FLOPs per token and the peak FLOP/s they are measured against (MFU)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from common.config import GPTConfig
from common.params import num_params


def flops_per_token(config: GPTConfig, seq_len: int | None = None) -> float:
    """Forward + backward FLOPs per trained token (PaLM appendix B, as nanoGPT counts them).

    6N for the weight matmuls (2 forward, 4 backward), N without the position embeddings, which are
    a lookup; plus 12·L·T·C for attention scores and the weighted sum over a T-token context.
    """
    T = seq_len or config.block_size
    n = num_params(config, include_position=False)
    return 6.0 * n + 12.0 * config.n_layer * config.n_embd * T


# Dense peak FLOP/s by device name fragment and compute dtype (vendor datasheets, no sparsity).
# float32 on NVIDIA tensor-core parts counts TF32 only where the framework enables it; we don't.
PEAK_FLOPS = {
    "H200": {"bfloat16": 989e12, "float32": 67e12},
    "H100 PCIe": {"bfloat16": 756e12, "float32": 51e12},
    "H100": {"bfloat16": 989e12, "float32": 67e12},
    "A100": {"bfloat16": 312e12, "float32": 19.5e12},
    "L4": {"bfloat16": 121e12, "float32": 30.3e12},
    "A10G": {"bfloat16": 70e12, "float32": 31.2e12},
    "T4": {"bfloat16": 65e12, "float32": 8.1e12},
    "V100": {"bfloat16": 125e12, "float32": 15.7e12},
    "RTX 4090": {"bfloat16": 165e12, "float32": 82.6e12},
    "TPU v4": {"bfloat16": 275e12, "float32": 275e12 / 4},
    "TPU v5 lite": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5e": {"bfloat16": 197e12, "float32": 197e12 / 4},
    "TPU v5p": {"bfloat16": 459e12, "float32": 459e12 / 4},
    "TPU v6": {"bfloat16": 918e12, "float32": 918e12 / 4},
}


def accelerator_peak(device_name: str, dtype: str) -> float | None:
    """The datasheet peak for a known accelerator, or None when the name is not in the table."""
    for fragment, peaks in PEAK_FLOPS.items():  # more specific names come first
        if fragment.lower() in device_name.lower():
            return peaks.get(dtype)
    return None


def measure_cpu_peak(size: int = 2048, repeats: int = 10) -> float:
    """Best-of-N float32 matmul throughput with numpy's BLAS, using every core it is allowed."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    a @ b  # warm the BLAS thread pool
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def cpu_peak_flops() -> float:
    """The CPU's float32 peak, measured now, under the conditions the benchmark runs in.

    Not cached across runs: a peak measured while something else loaded the machine would make
    every later MFU too high. The launcher measures once for a comparison and writes the figure
    into each run's config.json, so runs compared side by side share one denominator.
    """
    return measure_cpu_peak()


def _cpuinfo_field(*keys: str, cpuinfo: str | None = None) -> str | None:
    """The value of the first /proc/cpuinfo line whose key is one of `keys`; None if there is none."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            return None
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in keys:
            return value.strip()
    return None


def cpu_model() -> str:
    import platform
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


# Widest first. Two machines sold under one model name ("AMD EPYC") can differ here, and float32
# matmul speed, with each framework's ranking, follows the vector width (BENCHMARKS.md).
_VECTOR_ISAS = (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"), ("sve", "SVE"), ("asimd", "NEON"))


def cpu_vector_isa(cpuinfo: str | None = None) -> str | None:
    """The CPU's widest vector extension from /proc/cpuinfo ("AVX-512", "AVX2", ...), with "+ AMX"
    where it has Intel's matrix tiles; None where /proc/cpuinfo is not there to say."""
    flags = set((_cpuinfo_field("flags", "Features", cpuinfo=cpuinfo) or "").split())  # x86, Arm
    isa = next((name for flag, name in _VECTOR_ISAS if flag in flags), None)
    return f"{isa} + AMX" if isa and "amx_tile" in flags else isa


# The CPU instructions that compute in bfloat16 natively; without them a framework's bfloat16
# matmul converts to float32 and back, and is slower than float32 (BENCHMARKS.md).
_BF16_FLAGS = {"avx512_bf16": "AVX512_BF16", "amx_bf16": "AMX-BF16", "sve_bf16": "SVE-BF16", "bf16": "BF16"}


def cpu_native_bf16(cpuinfo: str | None = None) -> list[str]:
    """The native bfloat16 extensions /proc/cpuinfo lists ([] where it has none or cannot say)."""
    flags = set((_cpuinfo_field("flags", "Features", cpuinfo=cpuinfo) or "").split())
    return [name for flag, name in _BF16_FLAGS.items() if flag in flags]


def mfu(tokens_per_second: float, config: GPTConfig, peak_flops: float | None) -> float | None:
    if not peak_flops:
        return None
    return tokens_per_second * flops_per_token(config) / peak_flops
