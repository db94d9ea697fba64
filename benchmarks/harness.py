"""What every benchmark command shares: the child process it starts, the host it records, the noise
of the minutes it ran in, and a process's own peak memory.

benchmarks.run, .infer, .sweep and .breakdown each start one process per measurement (clean memory
figures; a crash loses nothing else) and describe the machine the same way, so that any two of
their results can be set side by side.
"""
from __future__ import annotations

import datetime as dt
import importlib.metadata as md
import json
import os
import platform
import resource
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from common.flops import cpu_model, cpu_native_bf16, cpu_vector_isa

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("numpy", "torch", "jax", "jaxlib", "flax", "optax", "tensorflow-cpu", "tensorflow", "keras")


# --- the child process ---------------------------------------------------------------------------

def run_child(module: str, *args: str, capture: bool = False, env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repository root; with capture, its output comes back as text."""
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=env,
                          capture_output=capture, text=capture or None)


def child_result(done: subprocess.CompletedProcess) -> dict:
    """The JSON object a captured child printed as its last line of stdout."""
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_failure(done: subprocess.CompletedProcess) -> str:
    """A failed child's last line of stderr: its one-line error, or the end of a traceback."""
    return (done.stderr.strip().splitlines() or [f"exit code {done.returncode}, no output"])[-1]


@contextmanager
def busy_processes(count: int):
    """`count` processes that each keep one core busy while the block runs: a shared machine, made on
    purpose, to see which framework's speed depends on having every core to itself."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield spinners
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


# --- the host -------------------------------------------------------------------------------------

def git_commit() -> str | None:
    """The checkout's commit, "-dirty" when tracked files differ from it (figures not of that commit)."""
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"], cwd=REPO,
                                capture_output=True, text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return commit or os.environ.get("NANOGPT_GIT_COMMIT")  # a copy of the tree without .git


def versions() -> dict[str, str]:
    found = {}
    for package in PACKAGES:
        try:
            found[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return found


def host_info() -> dict:
    """The machine, software and moment a measurement was made on: every command records these keys."""
    return {"cpu": cpu_model(), "cpu_isa": cpu_vector_isa(), "cpu_bf16": cpu_native_bf16(),
            "cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions(), "git_commit": git_commit(),
            "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def machine_name(host: dict) -> str:
    """"AMD EPYC (AVX2, 2 cores)": the CPU with what its ranking depends on."""
    details = [host.get("cpu_isa") or "vector ISA not recorded", f"{host.get('cpu_count')} cores"]
    return f"{host.get('cpu')} ({', '.join(details)})"


# --- noise: what else the machine did while a measurement ran -----------------------------------------

def _cpu_jiffies() -> tuple[int, int, int] | None:
    """(busy, steal, total) clock ticks of all CPUs since boot, from /proc/stat; None off Linux."""
    try:
        with open("/proc/stat") as stat:
            fields = [int(v) for v in stat.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal guest guest_nice; guests are inside user and nice
    idle, steal = fields[3] + fields[4], fields[7] if len(fields) > 7 else 0
    total = sum(fields[:8])
    return total - idle - steal, steal, total


@dataclass
class NoiseMark:
    """The machine's counters at one moment; `Noise.between` two marks is what happened in between."""
    wall: float
    jiffies: tuple[int, int, int] | None
    own_cpu_s: float

    @classmethod
    def now(cls) -> "NoiseMark":
        usage = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return cls(time.perf_counter(), _cpu_jiffies(), sum(u.ru_utime + u.ru_stime for u in usage))


@dataclass
class Noise:
    """How contended the machine was over a span: the share of CPU time the hypervisor took (steal),
    the share other processes used (the machine's busy time less this process's), and the load
    average at the end. Fractions are of the whole machine's CPU time over the span."""
    steal_frac: float | None
    others_cpu_frac: float | None
    load_average: float

    @classmethod
    def between(cls, start: NoiseMark, end: NoiseMark) -> "Noise":
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
        if start.jiffies is None or end.jiffies is None or end.jiffies[2] <= start.jiffies[2]:
            return cls(None, None, load)
        busy, steal, total = (b - a for a, b in zip(start.jiffies, end.jiffies))
        tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        others = busy / total - (end.own_cpu_s - start.own_cpu_s) * tick / total
        return cls(steal / total, max(0.0, others), load)

    def as_dict(self) -> dict:
        return asdict(self)


# --- memory --------------------------------------------------------------------------------------

def peak_rss_bytes() -> int:
    """This process's own peak resident memory. Linux's VmHWM starts afresh at exec; getrusage's
    ru_maxrss does not, and in a child started by a larger parent reports the parent's peak."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
