"""Training throughput against model size, context length and batch size, every framework alike.

    python -m benchmarks.sweep --framework all [--ladder size,context,batch] [--dtype float32,bfloat16]

Each point of a ladder is one model shape, context and batch; each framework trains it in a process
of its own from the same canonical initialisation (common.params.init_params) on the same random
token batches: the first step (compilation included), a few warm-up steps, then timed steps whose
median gives the step time, tokens/s and MFU, with the process's peak memory. The frameworks take
turns at every point, so a slower minute of the machine falls on all of them. The points land in
points.jsonl as they finish, then report.md (a table per ladder) and sweep.png (log-log tokens/s and
MFU against parameters, a line per framework and dtype), beside sweep.json (command, date, machine).
Kept under results/<set>/ with a NOTES.md, the newest set per machine is plotted in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from benchmarks.harness import child_failure, child_result, host_info, machine_name, peak_rss_bytes, run_child
from common.backend import FRAMEWORKS, canonical_framework, is_installed
from common.config import GPTConfig, TrainConfig
from common.errors import OneLineParser, UserError, command_line, one_line
from common.flops import cpu_peak_flops, mfu
from common.params import num_params

GPT2_VOCAB = 50257
SET_FILE = "sweep.json"  # what the sweep was: command, date, machine


def _shape(n_layer: int, n_head: int, n_embd: int, vocab_size: int, block_size: int, **extra) -> GPTConfig:
    return GPTConfig(vocab_size=vocab_size, block_size=block_size, n_layer=n_layer, n_head=n_head,
                     n_embd=n_embd, dropout=0.0, bias=True, **extra)


# The size ladder, smallest first: the presets' shapes and contexts (character vocabulary) up to
# GPT-2 small's shape at block 256 (its 50,257-token vocabulary, whose tied embedding is 39M of its
# 124M parameters); "gpt-mini" is a step between.
SIZES = {
    "tiny": _shape(2, 2, 32, 65, 32),
    "cpu-baby": _shape(4, 4, 128, 65, 64),
    "shakespeare-char": _shape(6, 6, 384, 65, 256),
    "gpt-mini": _shape(8, 8, 512, GPT2_VOCAB, 256, gelu_approximate=True),
    "gpt2": _shape(12, 12, 768, GPT2_VOCAB, 256, gelu_approximate=True),
}
TOKENS_PER_STEP = 1024  # every point of the size and context ladders trains on batches of this many tokens
CONTEXTS = (64, 128, 256, 512, 1024)
CONTEXT_MODEL = "cpu-baby"
BATCHES = (1, 2, 4, 8, 16, 32)
BATCH_MODEL, BATCH_CONTEXT = "cpu-baby", 64


@dataclass(frozen=True)
class Point:
    """One measurement: a framework training one shape at one context, batch and dtype."""
    ladder: str
    size: str
    framework: str
    dtype: str
    block_size: int
    batch_size: int
    steps: int
    warmup: int
    device: str
    cpu_peak_flops: float | None = None

    @property
    def model(self) -> GPTConfig:
        return replace(SIZES[self.size], block_size=self.block_size)


def ladder_points(ladder: str, sizes: list[str]) -> list[tuple[str, int, int]]:
    """(size, block_size, batch_size) of every point of one ladder."""
    if ladder == "size":
        return [(s, SIZES[s].block_size, 0) for s in sizes]
    if ladder == "context":
        return [(CONTEXT_MODEL, block, 0) for block in CONTEXTS]
    return [(BATCH_MODEL, BATCH_CONTEXT, batch) for batch in BATCHES]


def plan(args) -> list[Point]:
    frameworks = [f for f in FRAMEWORKS if is_installed(f)] if args.framework == "all" else list(dict.fromkeys(
        canonical_framework(f) for f in args.framework.split(",")))
    missing = [f for f in frameworks if not is_installed(f)]
    if missing or not frameworks:
        raise UserError(f"{', '.join(missing) or 'no framework'} not installed: pip install -e \".[all]\" (see README).")
    dtypes = _list(args.dtype, ("float32", "bfloat16"), "--dtype")
    ladders = _list(args.ladder, ("size", "context", "batch"), "--ladder")
    sizes = _list(args.sizes, tuple(SIZES), "--sizes")
    if args.steps < 1 or args.warmup < 0:
        raise UserError("--steps must be at least 1 and --warmup at least 0.")
    points = []
    for ladder in ladders:
        for size, block, batch in ladder_points(ladder, sizes):
            batch = batch or max(1, TOKENS_PER_STEP // block)
            for dtype in dtypes:
                points += [Point(ladder, size, fw, dtype, block, batch, args.steps, args.warmup, args.device)
                           for fw in frameworks]
    return points


def _list(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in items if t not in allowed]
    if unknown or not items:
        raise UserError(f"{flag} takes a comma-separated list of {', '.join(allowed)}; got {text!r}.")
    return items


# --- one point, in its own process ----------------------------------------------------------------

def start(point: Point):
    """The point's backend, from the shared initialisation, and its two alternating (x, y) batches."""
    from benchmarks.quiet import native_logs_filtered
    from common.allocator import retain_freed_memory
    from common.backend import load_backend
    from common.params import init_params

    retain_freed_memory()  # as every training run does (common/allocator.py)
    model = point.model
    train = replace(TrainConfig(), batch_size=point.batch_size, dtype=point.dtype, max_iters=point.steps)
    with native_logs_filtered():
        backend = load_backend(point.framework)(model, train, init_params(model, seed=0), device=point.device)
    rng = np.random.default_rng(0)
    batches = [rng.integers(0, model.vocab_size, (2, point.batch_size, point.block_size), dtype=np.int32)
               for _ in range(2)]
    return backend, batches


def measure(point: Point) -> dict:
    """Train `point` for warmup + steps steps after the first; the figures of the timed steps."""
    model, train = point.model, TrainConfig()
    started = time.perf_counter()
    backend, batches = start(point)
    times = []
    for step in range(1 + point.warmup + point.steps):
        x, y = batches[step % 2]
        step_started = time.perf_counter()
        backend.train_step(x, y, train.lr)  # returns the loss as a float: the step has finished
        times.append(time.perf_counter() - step_started)
        if step == 0:
            first_step_s, setup_s = times[0], step_started - started
    timed = np.array(times[1 + point.warmup:])
    tokens_per_s = point.batch_size * point.block_size / float(np.median(timed))
    peak = backend.peak_memory_bytes()
    info = backend.device_info()
    return {**asdict(point), "params": num_params(model), "step_ms": 1e3 * float(np.median(timed)),
            "step_ms_p90": 1e3 * float(np.percentile(timed, 90)), "tokens_per_s": tokens_per_s,
            "mfu": mfu(tokens_per_s, model, point.cpu_peak_flops if info["device"] == "cpu" and point.dtype == "float32"
                       else None),  # the CPU's peak is measured in float32: no MFU for bfloat16 against it
            "first_step_s": first_step_s, "setup_s": setup_s,
            "peak_memory_bytes": peak if peak is not None else peak_rss_bytes(),
            "peak_memory_kind": "device" if peak is not None else "process RSS",
            "framework_version": info["framework_version"], "device_name": info.get("device_name"),
            "settings": backend.settings()}


# --- the whole sweep --------------------------------------------------------------------------------

def run(points: list[Point], out: Path, verbose: bool = False) -> list[dict]:
    results = []
    with (out / "points.jsonl").open("a") as log:
        for i, point in enumerate(points, 1):
            done = run_child("benchmarks.sweep", "--point", json.dumps(asdict(point)), capture=True)
            label = f"[{point.framework}] {point.ladder} {point.size} block {point.block_size} batch {point.batch_size} {point.dtype}"
            if done.returncode != 0:
                reason = child_failure(done)
                result = {**asdict(point), "failed": one_line(reason)}
                print(f"{label}: failed: {one_line(reason)} ({i}/{len(points)})", file=sys.stderr)
            else:
                result = child_result(done)
                print(f"{label}: {result['step_ms']:.1f} ms/step, {result['tokens_per_s']:,.0f} tok/s "
                      f"({i}/{len(points)})", file=sys.stderr)
            if verbose and done.stderr:
                print(done.stderr, file=sys.stderr)
            log.write(json.dumps(result) + "\n")
            log.flush()  # a sweep cut short keeps every point it finished
            results.append(result)
    return results


def machine(spec: dict, results: list[dict]) -> str:
    """The kind of machine a sweep ran on: the GPU's model, or the CPU's with its ISA and native bfloat16."""
    gpu = next((r.get("device_name") for r in results if spec["device"] != "cpu" and r.get("device_name")), None)
    if gpu:
        return gpu
    host = spec["host"]
    return f"{machine_name(host)}, native bfloat16: {', '.join(host.get('cpu_bf16') or []) or 'none'}"


def load_set(folder: Path) -> tuple[dict, list[dict]]:
    """sweep.json and the points of one sweep folder (a run, or a set kept under results/)."""
    spec = json.loads((folder / SET_FILE).read_text())
    return spec, [json.loads(line) for line in (folder / "points.jsonl").read_text().splitlines() if line.strip()]


def newest_sets(results: Path, ladder: str = "size") -> list[tuple[str, dict, list[dict]]]:
    """(name, spec, points) of the newest sweep kept under results/ with points of `ladder`, on each
    kind of machine, newest first."""
    newest = {}
    for folder in sorted(results.glob(f"*/{SET_FILE}")):
        spec, points = load_set(folder.parent)
        if not any(r["ladder"] == ladder and "failed" not in r for r in points):
            continue
        key = machine(spec, points)
        if key not in newest or spec["date"] > newest[key][1]["date"]:
            newest[key] = (folder.parent.name, spec, points)
    return sorted(newest.values(), key=lambda item: item[1]["date"], reverse=True)


def benchmarks_section(results: Path, figure_dir: Path) -> tuple[list[str], dict[Path, bytes]]:
    """BENCHMARKS.md's sweep part, per kind of machine the size ladder's plot with its report linked:
    the lines, and the PNGs to write at their paths (figure_dir/sweep-<i>.png)."""
    lines, figures = [], {}
    for i, (name, spec, points) in enumerate(newest_sets(results, "size")):
        sized = [r for r in points if r["ladder"] == "size" and "failed" not in r]
        sizes = list(dict.fromkeys(r["size"] for r in sized))
        lines += [f"## Training speed against model size: {machine(spec, points)}", "",
                  "| framework | dtype | " + " | ".join(f"{s} ({_params(sized, s)}) tokens/s" for s in sizes) + " |",
                  "|---|---|" + "---|" * len(sizes)]
        for framework, dtype in dict.fromkeys((r["framework"], r["dtype"]) for r in sized):
            lines.append(f"| {framework} | {dtype} | " + " | ".join(next(
                (f"{r['tokens_per_s']:,.0f}" for r in sized if (r["framework"], r["dtype"], r["size"]) ==
                 (framework, dtype, s)), "–") for s in sizes) + " |")
        lines.append("")
        if len(sizes) > 1:  # a plot of one size would be a column of dots
            figure = figure_dir / f"sweep-{i}.png"
            figures[figure] = size_figure(points)
            lines += [f"![tokens/s and MFU against parameters]({figure.as_posix()})", ""]
        lines += [f"`{spec['command']}`; every figure in [{name}](results/{name}/report.md).", ""]
    return lines, figures


def write_report(results: list[dict], out: Path, title: str) -> Path:
    """report.md: per ladder a table of tokens/s (and MFU) per framework and dtype; sweep.png."""
    lines = [f"# Training sweep: {title}", ""]
    for ladder in dict.fromkeys(r["ladder"] for r in results):
        rows = [r for r in results if r["ladder"] == ladder]
        columns = list(dict.fromkeys((r["size"], r["block_size"], r["batch_size"]) for r in rows))
        lines += [f"## {ladder} ladder: tokens/s (MFU)", "",
                  "| framework | dtype | " + " | ".join(f"{s} ({_params(rows, s)}) T={t} B={b}" for s, t, b in columns) + " |",
                  "|---|---|" + "---|" * len(columns)]
        for framework, dtype in dict.fromkeys((r["framework"], r["dtype"]) for r in rows):
            cells = []
            for column in columns:
                r = next((r for r in rows if (r["size"], r["block_size"], r["batch_size"]) == column
                          and r["framework"] == framework and r["dtype"] == dtype), None)
                cells.append("–" if r is None or "failed" in r else
                             f"{r['tokens_per_s']:,.0f}" + (f" ({100 * r['mfu']:.1f}%)" if _mfu(r) else ""))
            lines.append(f"| {framework} | {dtype} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Every point", "", "| ladder | size | T | B | framework | dtype | step ms (p90) | tokens/s | first step s "
              "| peak memory |", "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['ladder']} | {r['size']} | {r['block_size']} | {r['batch_size']} | {r['framework']} | {r['dtype']} "
              f"| {r['step_ms']:,.1f} ({r['step_ms_p90']:,.1f}) | {r['tokens_per_s']:,.0f} | {r['first_step_s']:.1f} "
              f"| {r['peak_memory_bytes'] / 2**30:.2f} GiB {'RSS' if r['peak_memory_kind'] == 'process RSS' else ''} |"
              for r in results if "failed" not in r]
    lines.append("")
    failed = [r for r in results if "failed" in r]
    lines += [f"- {r['framework']} {r['size']} {r['dtype']}: {r['failed']}" for r in failed]
    png = size_figure(results)
    if png is not None:
        (out / "sweep.png").write_bytes(png)
        lines += ["", "![tokens/s and MFU against parameters](sweep.png)"]
    (out / "report.md").write_text("\n".join(lines).rstrip() + "\n")
    return out / "report.md"


def _mfu(point: dict) -> float | None:
    """MFU where its peak is of the same kind: a GPU's table per dtype, the CPU's float32 matmul peak."""
    return point.get("mfu") if point["device"] != "cpu" or point["dtype"] == "float32" else None


def _params(rows: list[dict], size: str) -> str:
    n = num_params(SIZES[size])
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k"


def size_figure(results: list[dict]) -> bytes | None:
    """PNG: tokens/s and MFU against parameters (log-log), one line per framework and dtype; None
    without a size ladder."""
    rows = [r for r in results if r["ladder"] == "size" and "failed" not in r]
    if not rows:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (speed, util) = plt.subplots(1, 2, figsize=(11, 4))
    for framework, dtype in dict.fromkeys((r["framework"], r["dtype"]) for r in rows):
        line = sorted((r for r in rows if r["framework"] == framework and r["dtype"] == dtype), key=lambda r: r["params"])
        style = "-" if dtype == "float32" else "--"
        params = [r["params"] for r in line]
        speed.plot(params, [r["tokens_per_s"] for r in line], style, marker="o", label=f"{framework} {dtype}")
        if all(_mfu(r) for r in line):
            util.plot(params, [100 * r["mfu"] for r in line], style, marker="o", label=f"{framework} {dtype}")
    for axis, label in ((speed, "training tokens/s"), (util, "MFU (%)")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("parameters")
        axis.set_ylabel(label)
        axis.grid(True, which="both", alpha=0.3)
    speed.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = OneLineParser(prog="python -m benchmarks.sweep", description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--framework", default="all", help="pytorch, tensorflow, jax, keras-jax (comma-separated), or all")
    p.add_argument("--ladder", default="size", help="comma-separated: size, context, batch")
    p.add_argument("--sizes", default=",".join(SIZES), help="the size ladder's shapes, comma-separated")
    p.add_argument("--dtype", default="float32", help="comma-separated: float32, bfloat16")
    p.add_argument("--steps", type=int, default=5, help="timed steps per point (their median is the figure)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
    p.add_argument("--device", default="cpu", choices=["auto", "cpu", "gpu"])
    p.add_argument("--out", help="folder for points.jsonl, report.md and sweep.png (default runs/sweep-<date>)")
    p.add_argument("--verbose", action="store_true", help="show each point's own output")
    p.add_argument("--report", metavar="DIR", help="only write DIR's report.md and sweep.png again, from its "
                   "points.jsonl (a sweep folder, or a set kept under results/)")
    p.add_argument("--point", help=argparse.SUPPRESS)  # a child process: one Point as JSON
    return p.parse_args(argv)


@command_line
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.point:
        print(json.dumps(measure(Point(**json.loads(args.point)))))
        return 0
    if args.report:
        folder = Path(args.report)
        if not (folder / SET_FILE).is_file() or not (folder / "points.jsonl").is_file():
            raise UserError(f"{folder} holds no {SET_FILE} and points.jsonl: name the folder a sweep wrote.")
        spec, results = load_set(folder)
        print(f"report: {write_report(results, folder, machine(spec, results))}", file=sys.stderr)
        return 0
    points = plan(args)
    out = Path(args.out or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} is a file: name a folder.")
    out.mkdir(parents=True, exist_ok=True)
    if (out / "points.jsonl").exists():
        raise UserError(f"{out} already holds a sweep: choose another --out.")
    peak = cpu_peak_flops() if args.device == "cpu" else None
    points = [replace(p, cpu_peak_flops=peak) for p in points]
    host = host_info()
    spec = {"command": "python -m benchmarks.sweep " + " ".join(argv if argv is not None else sys.argv[1:]),
            "date": host["date"], "device": args.device, "cpu_peak_flops": peak, "host": host}
    (out / SET_FILE).write_text(json.dumps(spec, indent=2))
    results = run(points, out, args.verbose)
    print(f"report: {write_report(results, out, machine(spec, results))}", file=sys.stderr)
    return 0 if all("failed" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
