"""Where a training step's time goes, per framework, from each framework's own profiler.

    python -m benchmarks.breakdown --framework all [--size cpu-baby] [--batch N] [--steps 5] [--out DIR]

Each framework trains one size of benchmarks/sweep.py in a process of its own, warms up, then
profiles a few steps: PyTorch with torch.profiler, JAX and keras-jax with jax.profiler, TensorFlow
with tf.profiler. The ops they record go to five parts of a step:

- matmul: the projections, the MLP, the tied head (and JAX's one-hot embedding) and their gradients;
- attention: q k^T, the mask and softmax, and the product with v, with their gradients;
- elementwise & norms: LayerNorm, GELU, residual adds, dropout, the loss, embedding lookups;
- optimizer: gradient clipping and AdamW;
- overhead: the rest of the step's wall time, when no op runs (dispatch, Python, the framework's
  own bookkeeping, waiting).

The time when some op runs is split between the first four in proportion to their ops' own time
(XLA runs independent ops on several threads at once, so op times add up to more than the wall time).
XLA's ops are told apart by what compiled them: the Python functions and TensorFlow op names XLA
keeps in each instruction's metadata (read from the HLO it dumps), so an attention matmul counts as
attention and a projection as matmul. Writes breakdown.json, report.md (the parts, then each
framework's heaviest kernels: which op, on what shapes, for how long) and a stacked bar per framework.
"""
from __future__ import annotations

import argparse
import glob
import io
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from benchmarks.harness import child_failure, child_result, host_info, machine_name, run_child
from benchmarks.sweep import SIZES, TOKENS_PER_STEP, Point, start
from common.backend import FRAMEWORKS, canonical_framework, is_installed
from common.errors import OneLineParser, UserError, command_line, one_line

PARTS = ("matmul", "attention", "elementwise & norms", "optimizer", "overhead")
COLORS = ("#4285f4", "#db4437", "#f4b400", "#0f9d58", "#9e9e9e")


def part_of(context: str, is_matmul: bool) -> str:
    """The part of a step an op belongs to, from what made it (lower-case function, file and op
    names) and whether it is a matrix product."""
    # PyTorch clips and updates with its multi-tensor _foreach_ ops, which nothing else here uses;
    # XLA names a fusion after one of its ops, which in JAX's fused AdamW update may be any of optax's
    # transformations (its losses live in optax/losses).
    if any(word in context for word in ("optimizer", "adam", "clip", "_foreach_", "optax/_src", "optax/transforms",
                                        "optax/tree")):
        return "optimizer"
    projection = any(name in context for name in ("c_attn", "c_proj", "linear.", "dense.", "aten::linear"))
    if ("attention" in context or "/attn" in context) and not projection:
        return "attention"
    return "matmul" if is_matmul else "elementwise & norms"


def busy_time(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of (start, end) intervals: the time when at least one op runs."""
    total, reach = 0.0, -np.inf
    for begin, end in sorted(intervals):
        if end > reach:
            total += end - max(begin, reach)
            reach = end
    return total


def split_step(ops: list[tuple], wall: float, steps: int) -> dict[str, float]:
    """Milliseconds a step per part, from (part, start, duration, ...) ops in seconds over `steps` steps."""
    own = {part: sum(op[2] for op in ops if op[0] == part) for part in PARTS[:-1]}
    busy = min(busy_time([(op[1], op[1] + op[2]) for op in ops]), wall)
    total = sum(own.values()) or 1.0
    split = {part: 1e3 * busy * own[part] / total / steps for part in PARTS[:-1]}
    return {**split, "overhead": 1e3 * (wall - busy) / steps}


def heaviest_kernels(ops: list[tuple[str, float, float, str]], steps: int, count: int = 8) -> list[dict]:
    """The kernels with the most own time, summed over every call, in milliseconds a step."""
    totals: dict[tuple[str, str], float] = {}
    for part, _, duration, kernel in ops:
        totals[kernel, part] = totals.get((kernel, part), 0.0) + duration
    ranked = sorted(totals.items(), key=lambda item: -item[1])[:count]
    return [{"kernel": kernel, "part": part, "ms": 1e3 * seconds / steps} for (kernel, part), seconds in ranked]


# --- PyTorch ------------------------------------------------------------------------------------

MATMUL_OPS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmv", "aten::mv"}


def torch_ops(run_steps) -> tuple[list[tuple[str, float, float, str]], float]:
    """Every aten op's own time, each given the part of its outermost named caller and named, as a
    kernel, by the op and the shapes of its first two inputs."""
    import torch
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        wall = run_steps()
    ops = []
    for event in prof.events():
        if not event.name.startswith("aten::"):
            continue
        chain, parent = [event.name], event.cpu_parent
        while parent is not None:
            chain.append(parent.name)
            parent = parent.cpu_parent
        context = " ".join(chain).lower()
        shapes = " ".join("x".join(map(str, shape)) for shape in event.input_shapes[:2] if shape)
        ops.append((part_of(context, event.name in MATMUL_OPS), event.time_range.start / 1e6,
                    event.self_cpu_time_total / 1e6, f"{event.name} {shapes}".strip()))
    return ops, wall


# --- XLA (JAX, keras-jax, TensorFlow) ------------------------------------------------------------

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\((.*)$")
_TABLE_ROW = re.compile(r"^(\d+) (.*)$")


def hlo_contexts(hlo_text: str) -> dict[str, tuple[str, bool, str]]:
    """{instruction name: (lower-case context, is a matrix product, kernel)} for one optimised HLO
    module: the context is its op_name and the function and file names of the stack that traced it;
    the kernel names the instruction by its name without the copy's number, its output shape and
    the op it came from."""
    tables, current, computations, computation = {}, None, {}, None
    for line in hlo_text.splitlines():
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = tables.setdefault(line, {})
            continue
        row = _TABLE_ROW.match(line)
        if current is not None and row:
            current[int(row.group(1))] = row.group(2)
            continue
        current = None
        if line.startswith("%") or line.startswith("ENTRY"):
            computation = line.split()[1 if line.startswith("ENTRY") else 0].lstrip("%")
            computations[computation] = []
        elif computation:
            computations[computation].append(line)
    names = {k: v.strip('"') for k, v in tables.get("FunctionNames", {}).items()}
    files = {k: v.strip('"') for k, v in tables.get("FileNames", {}).items()}
    locations = {k: dict(re.findall(r"(\w+)=(\d+)", v)) for k, v in tables.get("FileLocations", {}).items()}
    frames = {k: dict(re.findall(r"(\w+)=(\d+)", v)) for k, v in tables.get("StackFrames", {}).items()}

    def stack(frame_id: int) -> str:
        seen, parts = set(), []
        while frame_id in frames and frame_id not in seen:
            seen.add(frame_id)
            location = locations.get(int(frames[frame_id]["file_location_id"]), {})
            parts.append(f"{files.get(int(location.get('file_name_id', 0)), '')}:"
                         f"{names.get(int(location.get('function_name_id', 0)), '')}")
            frame_id = int(frames[frame_id].get("parent_frame_id", 0))
        return " ".join(parts)

    has_dot = {name for name, lines in computations.items() if any(" dot(" in line for line in lines)}
    contexts = {}
    for lines in computations.values():
        for line in lines:
            match = _INSTRUCTION.match(line)
            if not match:
                continue
            name, shape, opcode, rest = match.groups()
            op_name = re.search(r'op_name="([^"]*)"', rest)
            frame = re.search(r"stack_frame_id=(\d+)", rest)
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            context = f"{op_name.group(1) if op_name else ''} {stack(int(frame.group(1))) if frame else ''}".lower()
            matmul = (opcode == "dot" or (called is not None and called.group(1) in has_dot)
                      or any(kind in name for kind in ("ynn", "xnn", "onednn", "matmul", "gemm")))
            source = op_name.group(1).split("/")[-1] if op_name else ""
            family = re.sub(r"\.\d+$", "", name)  # every layer's copy of an instruction in one row
            kernel = f"{family} {shape.split('{')[0]} {source}".strip()
            contexts[name] = (context, matmul, kernel)
    return contexts


def xla_events(trace_dir: str) -> list[tuple[str, float, float]]:
    """(name, start s, duration s) of every event on XLA's worker threads in the newest trace."""
    path = sorted(glob.glob(f"{trace_dir}/**/*.xplane.pb", recursive=True))[-1]
    try:
        from jax._src.lib import _profile_data  # JAX and keras-jax processes
        planes = _profile_data.ProfileData.from_file(path).planes
        return [(e.name, e.start_ns / 1e9, e.duration_ns / 1e9) for plane in planes for line in plane.lines
                if "Eigen" in line.name or "XLA" in line.name for e in line.events]
    except ImportError:  # TensorFlow alone
        from tensorflow.tsl.profiler.protobuf import xplane_pb2
        space = xplane_pb2.XSpace()
        space.ParseFromString(Path(path).read_bytes())
        events = []
        for plane in space.planes:
            for line in plane.lines:
                if "Eigen" in line.name or "XLA" in line.name:
                    start_ns = line.timestamp_ns
                    events += [(plane.event_metadata[e.metadata_id].name, (start_ns + e.offset_ps / 1e3) / 1e9,
                                e.duration_ps / 1e12) for e in line.events]
        return events


def xla_ops(framework: str, run_steps, dump_dir: str, trace_dir: str) -> tuple[list[tuple[str, float, float, str]], float]:
    """The XLA instructions the profiler saw run, each given its part from the HLO XLA dumped."""
    if framework == "tensorflow":
        import tensorflow as tf
        tf.profiler.experimental.start(trace_dir)
        wall = run_steps()
        tf.profiler.experimental.stop()
    else:
        import jax
        with jax.profiler.trace(trace_dir):
            wall = run_steps()
    contexts = {}
    for path in sorted(glob.glob(f"{dump_dir}/*after_optimizations.txt"), key=os.path.getsize):
        contexts.update(hlo_contexts(Path(path).read_text()))  # the largest (the train step) last
    ops = [(part_of(*contexts[name][:2]), begin, duration, contexts[name][2])
           for name, begin, duration in xla_events(trace_dir) if name in contexts]
    return ops, wall


# --- one framework, in its own process --------------------------------------------------------------

def profile(point: Point, workdir: str) -> dict:
    backend, batches = start(point)
    for step in range(1 + point.warmup):
        backend.train_step(*batches[step % 2], 1e-3)

    def run_steps() -> float:
        began = time.perf_counter()
        for step in range(point.steps):
            backend.train_step(*batches[step % 2], 1e-3)
        return time.perf_counter() - began

    if point.framework == "pytorch":
        ops, wall = torch_ops(run_steps)
    else:
        ops, wall = xla_ops(point.framework, run_steps, f"{workdir}/dump", f"{workdir}/trace")
    if not ops:
        raise UserError(f"{point.framework}'s profiler recorded no ops: run with --verbose to see its output.")
    return {**asdict(point), "step_ms": 1e3 * wall / point.steps, "parts_ms": split_step(ops, wall, point.steps),
            "kernels": heaviest_kernels(ops, point.steps), "settings": backend.settings()}


def run_one(point: Point, verbose: bool) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        env = {**os.environ, "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_dump_to={workdir}/dump "
                                         "--xla_dump_hlo_as_text".strip()}
        done = run_child("benchmarks.breakdown", "--point", json.dumps(asdict(point)), "--workdir", workdir,
                         capture=True, env=env)
    if verbose:
        print(done.stderr, file=sys.stderr)
    if done.returncode != 0:
        reason = one_line(child_failure(done))
        print(f"[{point.framework}] failed: {reason}", file=sys.stderr)
        return {**asdict(point), "failed": reason}
    result = child_result(done)
    print(f"[{point.framework}] {result['step_ms']:.1f} ms/step: " + ", ".join(
        f"{part} {ms:.1f}" for part, ms in result["parts_ms"].items()), file=sys.stderr)
    return result


def figure(results: list[dict]) -> bytes:
    """PNG: one stacked bar of milliseconds a step per framework."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 3.8))
    names, bottom = [r["framework"] for r in results], np.zeros(len(results))
    for part, color in zip(PARTS, COLORS):
        values = np.array([r["parts_ms"][part] for r in results])
        ax.bar(names, values, bottom=bottom, color=color, label=part)
        bottom += values
    ax.set_ylabel("ms per training step")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1, 1))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def write_report(results: list[dict], out: Path, title: str) -> Path:
    done = [r for r in results if "failed" not in r]
    lines = [f"# Where a training step goes: {title}", "",
             "| framework | step ms | " + " | ".join(PARTS) + " |", "|---|---|" + "---|" * len(PARTS)]
    for r in done:
        lines.append(f"| {r['framework']} | {r['step_ms']:.1f} | " + " | ".join(
            f"{r['parts_ms'][part]:.1f} ({100 * r['parts_ms'][part] / r['step_ms']:.0f}%)" for part in PARTS) + " |")
    lines += [f"- {r['framework']}: failed: {r['failed']}" for r in results if "failed" in r]
    if done:
        (out / "breakdown.png").write_bytes(figure(done))
        lines += ["", "![milliseconds a step per part, per framework](breakdown.png)", "",
                  "## Heaviest kernels", "",
                  "Own time of each kernel in ms a step, every call summed (XLA runs some at once on "
                  "several threads, so these can add up to more than the step).", "",
                  "| framework | kernel | part | ms |", "|---|---|---|---|"]
        lines += [f"| {r['framework']} | `{k['kernel']}` | {k['part']} | {k['ms']:.2f} |"
                  for r in done for k in r["kernels"]]
    (out / "report.md").write_text("\n".join(lines) + "\n")
    return out / "report.md"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.breakdown", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--framework", default="all", help="pytorch, tensorflow, jax, keras-jax (comma-separated), or all")
    p.add_argument("--size", default="cpu-baby", help=f"one of {', '.join(SIZES)} (benchmarks/sweep.py)")
    p.add_argument("--batch", type=int, help=f"sequences a step (default: {TOKENS_PER_STEP:,} tokens a step, as the sweep)")
    p.add_argument("--steps", type=int, default=5, help="profiled steps")
    p.add_argument("--out", help="folder for breakdown.json, report.md and breakdown.png (default runs/breakdown-<date>)")
    p.add_argument("--verbose", action="store_true", help="show each framework's own output")
    p.add_argument("--point", help=argparse.SUPPRESS)  # a child process: one Point as JSON
    p.add_argument("--workdir", help=argparse.SUPPRESS)  # its HLO dump and trace
    return p.parse_args(argv)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.point:
        print(json.dumps(profile(Point(**json.loads(args.point)), args.workdir)))
        return 0
    if args.size not in SIZES:
        raise UserError(f"unknown --size {args.size!r}: choose one of {', '.join(SIZES)}.")
    if args.steps < 1:
        raise UserError("--steps must be at least 1.")
    if args.batch is not None and args.batch < 1:
        raise UserError("--batch must be at least 1.")
    frameworks = [f for f in FRAMEWORKS if is_installed(f)] if args.framework == "all" else list(
        dict.fromkeys(canonical_framework(f) for f in args.framework.split(",")))
    missing = [f for f in frameworks if not is_installed(f)]
    if missing or not frameworks:
        raise UserError(f"{', '.join(missing) or 'no framework'} not installed: pip install -e \".[all]\" (see README).")
    out = Path(args.out or f"runs/breakdown-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a folder.")
    out.mkdir(parents=True, exist_ok=True)
    block = SIZES[args.size].block_size
    batch = args.batch or max(1, TOKENS_PER_STEP // block)
    results = [run_one(Point("breakdown", args.size, framework, "float32", block, batch, args.steps, 2, "cpu"),
                       args.verbose) for framework in frameworks]
    (out / "breakdown.json").write_text(json.dumps(results, indent=2))
    title = f"{args.size} at batch {batch}, {machine_name(host_info())}"
    print(f"report: {write_report(results, out, title)}", file=sys.stderr)
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
