"""Compare benchmark runs (report.md and a self-contained report.html), pack them, write BENCHMARKS.md.

    python -m benchmarks.report RUN_DIR [RUN_DIR ...] [--out DIR]   # the report over any runs
    python -m benchmarks.report RUN_DIR [RUN_DIR ...] --pack results/NAME   # add runs to a run set
    python -m benchmarks.report --benchmarks   # BENCHMARKS.md and its plot, from results/

A RUN_DIR is a harness run folder (it has summary.json), a packed run set (results/NAME), or a folder
holding either. Runs of the same framework on the same device and dtype with different seeds are
summarised as mean ± std.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.results import RUNS_FILE, Run, is_run_set, load_run, load_run_set, pack
from common.errors import UserError, one_line

FRAMEWORK_ORDER = {"pytorch": 0, "tensorflow": 1, "keras-jax": 2, "jax": 3}
COLORS = {"pytorch": "#ee4c2c", "tensorflow": "#ff8f00", "keras-jax": "#d00000", "jax": "#4285f4"}


@dataclass
class Group:
    """The runs of one framework on one device and dtype, across seeds."""
    framework: str
    device_name: str
    dtype: str
    replicas: int = 1
    compiled: bool = False  # torch.compile; JAX and Keras always compile, so only PyTorch sets it
    runs: list[Run] = field(default_factory=list)

    @property
    def label(self) -> str:
        name = f"{self.framework} compiled" if self.compiled else self.framework
        name = name if self.replicas == 1 else f"{name} ×{self.replicas}"
        return name if len(self.runs) == 1 else f"{name} (n={len(self.runs)})"

    def values(self, key: str) -> list[float]:
        return [r.summary[key] for r in self.runs if r.summary.get(key) is not None]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def spread(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 else None


def find_runs(paths: list[Path]) -> list[Run]:
    """The runs under each path: a run folder, a packed run set, or a folder of either (results/)."""
    runs = []
    for path in paths:
        if (path / "summary.json").exists():
            runs.append(load_run(path))
        elif is_run_set(path):
            runs.extend(load_run_set(path))
        elif path.is_dir():
            runs.extend(load_run(p.parent) for p in sorted(path.glob("*/summary.json")))
            for run_set in sorted(p.parent for p in path.glob(f"*/{RUNS_FILE}")):
                runs.extend(load_run_set(run_set))
        else:
            raise UserError(f"{path} is not a run folder, a run set or a folder of them.")
    if not runs:
        raise UserError(f"no finished runs (summary.json or {RUNS_FILE}) under {', '.join(map(str, paths))}.")
    return runs


def share_cpu_peak(runs: list[Run]) -> float | None:
    """Put every CPU run's MFU over the highest peak any of them measured; return that peak.

    Each run measures the CPU's float32 matmul peak (best of 10) unless a parent hands it one. A
    reading taken while something else held a core comes out low, one taken inside a one-thread
    torchrun process half as high, and either inflates that run's MFU: runs made by separate
    commands measured 159-208 GFLOP/s on this machine, PyTorch x2's processes 102. Runs compared
    in one report share the highest reading, the best estimate of the peak.
    """
    cpu = [r for r in runs if r.summary.get("device") == "cpu" and r.summary.get("peak_flops")]
    if not cpu:
        return None
    peak = max(r.summary["peak_flops"] for r in cpu)
    for run in cpu:
        s = run.summary
        s["peak_flops"] = peak
        if s.get("tokens_per_s") and s.get("flops_per_token"):
            s["mfu"] = s["tokens_per_s"] * s["flops_per_token"] / peak
    return peak


def group_runs(runs: list[Run]) -> list[Group]:
    share_cpu_peak(runs)
    groups: dict[tuple, Group] = {}
    for run in runs:
        s = run.summary
        key = (s["framework"], s["device_name"], s["dtype"], s.get("replicas", 1),
               bool(s.get("compile")) and s["framework"] == "pytorch")
        groups.setdefault(key, Group(*key)).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.device_name, g.dtype, FRAMEWORK_ORDER.get(g.framework, 9),
                                                  g.compiled, g.replicas))


def scaling_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Data-parallel scaling: tokens/s on N replicas against N times the one-replica figure."""
    single = {(g.framework, g.device_name, g.dtype, g.compiled): g.mean("tokens_per_s")
              for g in groups if g.replicas == 1}
    header = ["framework", "device", "replicas", "tokens/s", "speed-up", "scaling efficiency"]
    rows = []
    for g in groups:
        base = single.get((g.framework, g.device_name, g.dtype, g.compiled))
        if g.replicas > 1 and base:
            tps = g.mean("tokens_per_s")
            rows.append([g.framework, g.device_name, str(g.replicas), _fmt(tps, 0), _fmt(tps / base, 2) + "×",
                         _fmt(tps / (base * g.replicas), 1, percent=True)])
    return header, rows


# --- numbers -------------------------------------------------------------------------------------

def _fmt(value, digits=3, spread=None, percent=False) -> str:
    if value is None:
        return "–"
    scale = 100 if percent else 1
    text = f"{value * scale:.{digits}f}" + ("%" if percent else "")
    if spread is not None:
        text += f" ± {spread * scale:.{digits}f}"
    return text


def _bytes(value) -> str:
    return "–" if value is None else f"{value / 2**20:,.0f} MiB"


def _whole_sample_span(group: Group) -> int | None:
    """The sample length, where the run timed it apart from the window (older runs did not)."""
    summary = group.runs[0].summary
    tokens, window = summary.get("sample_tokens"), summary.get("generation_timed_tokens")
    if group.mean("kv_cache_speedup_whole_sample") is None or not window or tokens <= window:
        return None
    return tokens


def _kv_speedups(group: Group) -> str:
    window = _fmt(group.mean("kv_cache_speedup"), 1) + "×"
    tokens = _whole_sample_span(group)
    if tokens is None:
        return window
    return f"{window} · {_fmt(group.mean('kv_cache_speedup_whole_sample'), 1)}× over {tokens}"


def summary_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    fastest = max((g.mean("tokens_per_s") or 0 for g in groups), default=0)
    header = ["framework", "device", "dtype", "final val loss", "best val loss", "whole val split", "val bpc", "tokens/s",
              "× fastest", "step ms median (p10–p90)", "first step s", "MFU", "peak memory",
              "gen tok/s (KV cache)", "KV speedup (one window · whole sample)", "harness overhead"]
    rows = []
    for g in groups:
        memory = g.mean("peak_memory_bytes")
        memory_text = _bytes(memory) + " device" if memory is not None else _bytes(g.mean("peak_rss_bytes")) + " RSS"
        tps = g.mean("tokens_per_s")
        rows.append([
            g.label, g.device_name, g.dtype,
            _fmt(g.mean("final_val_loss"), 4, g.spread("final_val_loss")),
            _fmt(g.mean("best_val_loss"), 4, g.spread("best_val_loss")),
            _fmt(g.mean("whole_val_loss"), 4, g.spread("whole_val_loss")),
            _fmt(g.mean("final_val_bpc"), 3),
            _fmt(tps, 0, g.spread("tokens_per_s")),
            _fmt(tps / fastest if tps and fastest else None, 2),
            f"{_fmt(g.mean('median_step_ms'), 1)} ({_fmt(g.mean('p10_step_ms'), 1)}–{_fmt(g.mean('p90_step_ms'), 1)})",
            _fmt(g.mean("time_to_first_step_s"), 2),
            _fmt(g.mean("mfu"), 1, percent=True),
            memory_text,
            _fmt(g.mean("generation_tokens_per_s"), 0),
            _kv_speedups(g),
            _fmt(g.mean("harness_overhead_frac"), 1, percent=True),
        ])
    return header, rows


def quality_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    keys = ["word_validity", "char4_jsd", "distinct_2", "copy_rate", "speaker_line_share"]
    header = ["framework", "device", "word validity ↑", "char-4gram JSD to val ↓", "distinct-2",
              "copy rate (32 chars)", "speaker lines"]
    rows = []
    for g in groups:
        cells = []
        for key in keys:
            values = [r.summary.get("quality", {}).get(key) for r in g.runs]
            values = [v for v in values if v is not None]
            cells.append(_fmt(statistics.fmean(values) if values else None, 3,
                              statistics.stdev(values) if len(values) > 1 else None))
        rows.append([g.label, g.device_name, *cells])
    return header, rows


def cpu_description(env: dict) -> str:
    """"AMD EPYC (AVX2, 2 cores)": with the vector ISA where the run recorded it (runs since it did)."""
    details = [env["cpu_isa"]] if env.get("cpu_isa") else []
    details.append(f"{env.get('cpu_count')} cores")
    return f"{env.get('cpu')} ({', '.join(details)})"


def _cpu_title(env: dict) -> str:
    return f"{env.get('cpu')}, {env['cpu_isa']}" if env.get("cpu_isa") else str(env.get("cpu"))


def environment_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    header = ["framework", "version", "device", "CPU", "date", "git", "command"]
    rows = []
    for g in groups:
        env = g.runs[0].env
        rows.append([g.framework, env.get("framework_version", "?"), f"{env.get('device_name')} ×{env.get('device_count', 1)}",
                     cpu_description(env), env.get("date", "?"),
                     env.get("git_commit") or "?", f"`{env.get('command', '?')}`"])
    return header, rows


def markdown_table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines)


def html_table(header, rows) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c)).replace('`', '')}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- figures -------------------------------------------------------------------------------------

def _mean_curve(runs: list[Run], key: str, x: str):
    by_x = defaultdict(list)
    for run in runs:
        for record in run.evals:
            by_x[record["step"]].append((record[x], record[key]))
    steps = sorted(by_x)
    return ([statistics.fmean(v[0] for v in by_x[s]) for s in steps],
            [statistics.fmean(v[1] for v in by_x[s]) for s in steps])


def figures(groups: list[Group]) -> dict[str, bytes]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def png(fig) -> bytes:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        return buffer.getvalue()

    out = {}
    for x, name, xlabel in (("step", "loss_vs_step.png", "training step"),
                            ("time", "loss_vs_time.png", "training wall-clock (s, evaluation excluded)")):
        fig, ax = plt.subplots(figsize=(7, 4))
        for g in groups:
            style = "-" if g.dtype == "float32" else "--"
            label = f"{g.label} · {g.device_name} · {g.dtype}"
            xs, val = _mean_curve(g.runs, "val_loss", x)
            ax.plot(xs, val, style, color=COLORS.get(g.framework), label=f"{label} val", marker="o", ms=3)
            xs, train = _mean_curve(g.runs, "train_loss", x)
            ax.plot(xs, train, style, color=COLORS.get(g.framework), alpha=0.35, label=f"{label} train")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("cross-entropy (nats/token)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        out[name] = png(fig)

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    # The seed count on a line of its own: at five bars, "tensorflow (n=5)" runs into its neighbours.
    labels = ["\n".join((g.label.replace(" (", "\n("), g.device_name[:18], g.dtype)) for g in groups]
    colors = [COLORS.get(g.framework, "grey") for g in groups]
    ax1.bar(labels, [g.mean("tokens_per_s") or 0 for g in groups], color=colors,
            yerr=[g.spread("tokens_per_s") or 0 for g in groups])
    ax1.set_title("training tokens/s (median step)")
    ax2.bar(labels, [100 * (g.mean("mfu") or 0) for g in groups], color=colors)
    ax2.set_title("MFU (%)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", labelsize=7)
        ax.grid(axis="y", alpha=0.3)
    out["throughput.png"] = png(fig)
    return out


# --- report --------------------------------------------------------------------------------------

def _first_sample(run: Run) -> str:
    return run.samples.split("\n" + "-" * 72 + "\n")[0].strip("\n")


def write_report(run_dirs: list[Path], out: Path, problems: list[str] | None = None) -> Path:
    groups = group_runs(find_runs([Path(p) for p in run_dirs]))
    out.mkdir(parents=True, exist_ok=True)
    images = figures(groups)
    for name, data in images.items():
        (out / name).write_bytes(data)
    tables = {"Training, throughput and memory": summary_rows(groups),
              "Sample quality": quality_rows(groups), "Environment": environment_rows(groups)}
    scaling = scaling_rows(groups)
    if scaling[1]:
        tables["Data-parallel scaling"] = scaling
    bars = checks(groups)
    if bars:
        tables["Bars from the issues, measured here"] = (["bar", "measured", "met"], bars)
    first = groups[0].runs[0]
    model = first.config["model"]
    title = (f"{first.config['preset']} on {first.config['dataset']}: {model['n_layer']} layers, "
             f"{model['n_head']} heads, {model['n_embd']} wide, block {model['block_size']}, "
             f"{first.config['train']['max_iters']} steps of batch {first.config['train']['batch_size']}")

    md = [f"# nanogpt-compare report\n\n{title}.\n"]
    if problems:
        md.append("Problems: " + "; ".join(problems) + ".\n")
    for heading, (header, rows) in tables.items():
        md.append(f"## {heading}\n\n{markdown_table(header, rows)}\n")
    md.append("## Loss curves\n\n![loss vs step](loss_vs_step.png)\n\n![loss vs time](loss_vs_time.png)\n")
    md.append("## Throughput\n\n![throughput](throughput.png)\n")
    md.append("## Samples (same prompt, first seed)\n")
    for g in groups:
        md.append(f"### {g.label} · {g.device_name} · {g.dtype}\n\n```\n{_first_sample(g.runs[0])}\n```\n")
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")

    def img(name):
        return f'<img alt="{name}" src="data:image/png;base64,{base64.b64encode(images[name]).decode()}">'
    sample_cells = "".join(f"<td><h4>{html.escape(g.label)} · {html.escape(g.device_name)}</h4>"
                           f"<pre>{html.escape(_first_sample(g.runs[0]))}</pre></td>" for g in groups)
    body = [f"<h1>nanogpt-compare report</h1><p>{html.escape(title)}.</p>"]
    if problems:
        body.append(f"<p class=problems>Problems: {html.escape('; '.join(problems))}.</p>")
    for heading, (header, rows) in tables.items():
        body.append(f"<h2>{html.escape(heading)}</h2>{html_table(header, rows)}")
    body.append(f"<h2>Loss curves</h2>{img('loss_vs_step.png')}{img('loss_vs_time.png')}")
    body.append(f"<h2>Throughput</h2>{img('throughput.png')}")
    body.append(f"<h2>Samples (same prompt, first seed)</h2><table class=samples><tr>{sample_cells}</tr></table>")
    style = ("body{font-family:system-ui,sans-serif;margin:2em;max-width:1400px}"
             "table{border-collapse:collapse;margin:1em 0;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:4px 8px;vertical-align:top;text-align:left}"
             "th{background:#f3f3f3}img{max-width:48%;margin:4px}pre{white-space:pre-wrap;font-size:12px}"
             ".samples td{width:33%}.problems{color:#b00}")
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>nanogpt-compare report</title>"
            f"<style>{style}</style></head><body>{''.join(body)}</body></html>")
    (out / "report.html").write_text(page, encoding="utf-8")
    return out / "report.html"


# --- BENCHMARKS.md ----------------------------------------------------------------------------

VAL_LOSS_BARS = {"cpu-baby": 1.90, "shakespeare-char": 1.47}
# On CPU, training tokens/s against eager PyTorch's in the same run set (the JAX and Keras issues).
SPEED_BARS_VS_EAGER_PYTORCH = {"jax": 1.0, "tensorflow": 0.8}


def checks(groups: list[Group]) -> list[list[str]]:
    """The issues' performance bars, measured on these runs: what was asked, what was seen, verdict."""
    rows = []

    def check(what, seen, ok):
        rows.append([what, seen, "yes" if ok else "**no**"])

    preset = groups[0].runs[0].config["preset"]
    max_iters = groups[0].runs[0].config["train"]["max_iters"]
    finals = {g.label: g.mean("final_val_loss") for g in groups}
    bar = VAL_LOSS_BARS.get(preset)
    if bar is not None and max_iters >= {"cpu-baby": 2000, "shakespeare-char": 5000}[preset]:
        # nanoGPT's published figures are its best val loss (it keeps the checkpoint only when val
        # improves); shakespeare-char overfits after ~2000 steps, so its final val loss is higher.
        for g in groups:
            value = g.mean("best_val_loss")
            check(f"{g.label}: best val loss ≤ {bar} (nanoGPT's reference figure)", f"{value:.4f}", value <= bar)
    if len(finals) > 1:
        spread = max(finals.values()) - min(finals.values())
        check("final val losses within 0.03 of each other", f"{spread:.4f}", spread <= 0.03)
    speeds = {g.label: g.mean("tokens_per_s") for g in groups if g.mean("tokens_per_s")}
    if len(speeds) > 1:
        fastest = max(speeds.values())
        for label, value in speeds.items():
            check(f"{label}: tokens/s within 1.5× of the fastest", f"{fastest / value:.2f}×", fastest / value <= 1.5)
    # The baseline is plain PyTorch: eager, one process.
    eager = [g.mean("tokens_per_s") for g in groups
             if g.framework == "pytorch" and not g.compiled and g.replicas == 1]
    if eager and len(speeds) > 1:
        best = max(speeds.values())
        check("some framework ≥ 1.3× eager PyTorch's tokens/s", f"{best / eager[0]:.2f}×", best / eager[0] >= 1.3)
        # The JAX and Keras issues' own bars against the same baseline.
        for g in groups:
            least = SPEED_BARS_VS_EAGER_PYTORCH.get(g.framework)
            if least is not None and g.device_name == "cpu" and g.label in speeds:
                ratio = speeds[g.label] / eager[0]
                check(f"{g.label}: tokens/s ≥ {least}× eager PyTorch's", f"{ratio:.2f}×", ratio >= least)
    for g in groups:
        speedup = g.mean("kv_cache_speedup")
        timed = g.runs[0].summary.get("generation_timed_tokens")
        block = g.runs[0].config["model"]["block_size"]
        if speedup is not None:
            span = (f"{timed} tokens within one block of {block}" if timed else
                    f"{g.runs[0].summary.get('sample_tokens')} tokens, block {block}, mostly past the block")
            check(f"{g.label}: KV-cache generation ≥ 5× no-cache ({span})", f"{speedup:.1f}×", speedup >= 5)
        tokens = _whole_sample_span(g)
        if tokens is not None:
            whole = g.mean("kv_cache_speedup_whole_sample")
            check(f"{g.label}: KV-cache generation ≥ 5× no-cache (all {tokens} tokens of a sample, block {block})",
                  f"{whole:.1f}×", whole >= 5)
        overhead = g.mean("harness_overhead_frac")
        if overhead is not None:
            check(f"{g.label}: harness overhead < 5% of the training loop", f"{100 * overhead:.1f}%", overhead < 0.05)
    return rows


# --- BENCHMARKS.md: the headline of results/ ---------------------------------------------------

REPO = Path(__file__).resolve().parents[1]
PAGE_LINES = 200
MOST_FINDINGS = 10
REGENERATE = "python -m benchmarks.report --benchmarks"


@dataclass
class RunSet:
    """results/<name>: runs made by one person's commands on one machine, packed, with NOTES.md."""
    name: str
    groups: list[Group]

    @property
    def first(self) -> Run:
        return self.groups[0].runs[0]

    @property
    def on_cpu(self) -> bool:
        return self.first.summary.get("device") == "cpu"

    @property
    def machine(self) -> str:
        """The kind of machine the ranking depends on: the GPU's model, or the CPU's with its vector ISA."""
        env = self.first.env
        if not self.on_cpu:
            return self.first.summary["device_name"]
        return f"{env.get('cpu')}, {env.get('cpu_isa') or 'vector ISA not recorded'}"

    @property
    def heading(self) -> str:
        cores = self.first.env.get("cpu_count")
        return f"{self.machine}, {cores} cores" if self.on_cpu and cores else self.machine

    @property
    def date(self) -> str:
        return max(run.env.get("date", "") for g in self.groups for run in g.runs)

    @property
    def eager_pytorch(self) -> Group | None:
        return next((g for g in self.groups if g.framework == "pytorch" and not g.compiled and g.replicas == 1), None)

    @property
    def compares_frameworks(self) -> bool:
        """Eager PyTorch and another row, each trained for its preset's whole schedule: a set made for
        something else (generation speed after 20 steps, one framework's seeds) heads no table."""
        from common.config import get_preset
        full = all(run.config["train"]["max_iters"] == get_preset(run.config["preset"])[1].max_iters
                   for g in self.groups for run in g.runs)
        return full and self.eager_pytorch is not None and len(self.groups) > 1


def load_run_sets(results: Path) -> list[RunSet]:
    sets = [RunSet(p.parent.name, group_runs(load_run_set(p.parent))) for p in sorted(results.glob(f"*/{RUNS_FILE}"))]
    if not sets:
        raise UserError(f"no run sets ({RUNS_FILE}) under {results}; pack runs with --pack {results}/NAME.")
    return sets


def headline_sets(sets: list[RunSet]) -> list[RunSet]:
    """The newest set comparing frameworks on each kind of machine: CPUs first, newest first."""
    newest: dict[str, RunSet] = {}
    for run_set in sorted((s for s in sets if s.compares_frameworks), key=lambda s: s.date):
        newest[run_set.machine] = run_set
    newest_first = sorted(newest.values(), key=lambda s: s.date, reverse=True)
    return sorted(newest_first, key=lambda s: not s.on_cpu)


def vs_eager_pytorch(run_set: RunSet, group: Group) -> float:
    """The group's tokens/s over eager PyTorch's on the same seeds where it ran them all: the runs of one
    seed were made minutes apart, so the ratio carries less of the machine's drift over hours."""
    seeds = {run.summary.get("seed") for run in group.runs}
    eager = run_set.eager_pytorch
    same = [run.summary["tokens_per_s"] for run in eager.runs if run.summary.get("seed") in seeds]
    baseline = statistics.fmean(same) if len(same) == len(seeds) else eager.mean("tokens_per_s")
    return group.mean("tokens_per_s") / baseline


def headline_rows(run_set: RunSet) -> tuple[list[str], list[list[str]]]:
    header = ["framework", "tokens/s vs eager PyTorch", "tokens/s", "best val loss", "MFU", "peak memory",
              "KV-cache decode speed-up"]
    rows = []
    for g in run_set.groups:
        memory = g.mean("peak_memory_bytes")
        rows.append([g.label, _fmt(vs_eager_pytorch(run_set, g), 2) + "×", f"{g.mean('tokens_per_s'):,.0f}",
                     _fmt(g.mean("best_val_loss"), 4, g.spread("best_val_loss")), _fmt(g.mean("mfu"), 1, percent=True),
                     _bytes(memory) + " device" if memory is not None else _bytes(g.mean("peak_rss_bytes")) + " host RSS",
                     _fmt(g.mean("kv_cache_speedup"), 1) + "×"])
    return header, rows


def _caption(run_set: RunSet) -> str:
    """What the table's rows ran, and against what its MFU and decode speed-up are measured."""
    first = run_set.first
    model, train, summary = first.config["model"], first.config["train"], first.summary
    seeds = sorted({run.summary.get("seed") for g in run_set.groups for run in g.runs})
    seeds_text = (f"seeds {', '.join(map(str, seeds))} (mean ± std; ratios against eager PyTorch on the same seeds)"
                  if len(seeds) > 1 else f"seed {seeds[0]}")
    peak = (f"the measured float32 matmul peak, {summary['peak_flops'] / 1e9:,.0f} GFLOP/s" if run_set.on_cpu
            else f"{summary['peak_flops'] / 1e12:,.0f} TFLOP/s ({summary.get('peak_flops_source')})")
    window = summary.get("generation_timed_tokens")
    window_text = f" for {window} tokens in one block" if window else ""
    return (f"{first.config['preset']}: {model['n_layer']} layers × {model['n_head']} heads × {model['n_embd']} wide, "
            f"block {model['block_size']}, {summary['params'] / 1e6:.1f}M parameters, {train['max_iters']} steps of "
            f"batch {train['batch_size']}, {summary['dtype']}, {seeds_text}. MFU against {peak}; decode speed-up of "
            f"the KV cache over no cache{window_text}. {run_set.date[:10]}, "
            f"[{run_set.name}](results/{run_set.name}/NOTES.md).")


def headline_figure(sets: list[RunSet]) -> bytes:
    """Each framework's training tokens/s over eager PyTorch's, one panel per machine."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 3), squeeze=False, layout="constrained")
    for ax, run_set in zip(axes[0], sets):
        groups = run_set.groups[::-1]  # the table's first row on top
        ratios = [vs_eager_pytorch(run_set, g) for g in groups]
        ax.barh([g.label for g in groups], ratios,
                xerr=[r * (g.spread("tokens_per_s") or 0) / g.mean("tokens_per_s") for r, g in zip(ratios, groups)],
                color=[COLORS.get(g.framework, "grey") for g in groups])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_title(run_set.heading, fontsize=9)
        ax.set_xlabel("training tokens/s ÷ eager PyTorch's")
        ax.grid(axis="x", alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return buffer.getvalue()


def _findings(results: Path) -> list[str]:
    """results/FINDINGS.md's list, its links re-pointed from results/ to the page's folder."""
    path = results / "FINDINGS.md"
    if not path.exists():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.startswith(("- ", "  "))]
    count = sum(line.startswith("- ") for line in lines)
    if count > MOST_FINDINGS:
        raise UserError(f"{path} lists {count} findings; keep the {MOST_FINDINGS} a reader most needs "
                        "and leave the rest to the run sets' NOTES.md.")
    return [re.sub(r"\]\((?!https?:|/|#)", "](results/", line) for line in lines]


def _set_summary(results: Path, run_set: RunSet) -> str:
    """The first sentence of the set's NOTES.md under its title."""
    notes = results / run_set.name / "NOTES.md"
    text = notes.read_text(encoding="utf-8") if notes.exists() else ""
    first = next((line for line in text.splitlines() if line.strip() and not line.startswith("#")), "")
    return f"- [{run_set.name}](results/{run_set.name}/NOTES.md) ({run_set.machine}, {run_set.date[:10]}): {first}"


def benchmarks_page(results: Path, figure: str = "docs/benchmarks/headline.png",
                    inference_figure: str = "docs/benchmarks/inference.png") -> str:
    """BENCHMARKS.md: a headline table per kind of machine, one plot, the decoding and model-size
    figures, the findings, then the run sets."""
    sets = load_run_sets(results)
    headline = headline_sets(sets)
    if not headline:
        raise UserError(f"no run set under {results} compares eager PyTorch with another framework over its "
                        "preset's whole schedule; pack one (e.g. the runs of `--framework all`) for the headline.")
    lines = ["# Benchmarks", ""]
    for run_set in headline:
        header, rows = headline_rows(run_set)
        lines += [f"## {run_set.heading}", "", markdown_table(header, rows), "", _caption(run_set), ""]
    lines += [f"![training tokens/s against eager PyTorch's, per machine]({figure})", ""]
    lines += inference_section(results, inference_figure)
    from benchmarks.sweep import benchmarks_section
    lines += benchmarks_section(results, Path(figure).parent)[0]
    findings = _findings(results)
    if findings:
        lines += ["## Findings", "", *findings, ""]
    lines += ["## Run sets", "", *[_set_summary(results, s) for s in sets], "",
              "## Setup", "",
              "Every row trains the same GPT from the same initial weights on the same batches, one framework at a "
              "time (`python -m benchmarks.run --framework all`), tokens/s from the median step; each table is the "
              "newest run set on its machine that trains eager PyTorch and another framework for the whole preset.",
              f"This page is written by `{REGENERATE}` from results/; add a run set with "
              "`python -m benchmarks.report RUN_DIR... --pack results/NAME`, then write its NOTES.md.", ""]
    return "\n".join(lines)


def inference_sets(results: Path) -> list[tuple[str, dict, list[dict]]]:
    """(name, inference.json, rows) of the newest benchmarks.infer set kept under results/ on each kind
    of machine, among those that time the most batch sizes (the page plots tokens/s against batch
    size; a set of one batch size, such as a prefill study, does not displace a sweep): CPUs first,
    newest first."""
    from benchmarks.infer import SET_FILE, load_set, machine
    newest = {}
    for name, (spec, rows) in sorted(((p.parent.name, load_set(p.parent)) for p in results.glob(f"*/{SET_FILE}")),
                                     key=lambda item: (len(item[1][0]["options"]["batch_sizes"]), item[1][0]["date"])):
        if rows:
            newest[machine(spec, rows)] = (name, spec, rows)
    newest_first = sorted(newest.values(), key=lambda item: item[1]["date"], reverse=True)
    return sorted(newest_first, key=lambda item: any(row["device"] != "cpu" for row in item[2]))


def inference_section(results: Path, figure: str) -> list[str]:
    """BENCHMARKS.md's decoding figures: a short table per kind of machine and one plot; none without a set."""
    from benchmarks.infer import caption, machine, short_table
    sets = inference_sets(results)
    lines = []
    for name, spec, rows in sets:
        lines += [f"## Inference: {machine(spec, rows)}", "", markdown_table(*short_table(spec, rows)), "",
                  f"{caption(spec, rows)} [{name}](results/{name}/report.md).", ""]
    return lines + ([f"![decode tokens/s against batch size, per machine]({figure})", ""] if sets else [])


def write_benchmarks(root: Path = REPO) -> Path:
    """Write root/BENCHMARKS.md and its plot from root/results/."""
    results, figure = root / "results", Path("docs/benchmarks/headline.png")
    inference = Path("docs/benchmarks/inference.png")
    page = benchmarks_page(results, figure.as_posix(), inference.as_posix())
    (root / figure).parent.mkdir(parents=True, exist_ok=True)
    (root / figure).write_bytes(headline_figure(headline_sets(load_run_sets(results))))
    newest_inference = inference_sets(results)
    if newest_inference:
        from benchmarks.infer import decode_figure, machine
        (root / inference).write_bytes(decode_figure([(machine(spec, rows), rows)
                                                      for _, spec, rows in newest_inference]))
    from benchmarks.sweep import benchmarks_section
    for sweep_figure, png in benchmarks_section(results, figure.parent)[1].items():
        (root / sweep_figure).write_bytes(png)
    path = root / "BENCHMARKS.md"
    path.write_text(page, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="*", type=Path, help="run folders, packed run sets (results/NAME), or folders of them")
    p.add_argument("--out", type=Path, help="report folder (default: the first RUN_DIR, if it is a harness folder)")
    p.add_argument("--pack", type=Path, metavar="results/NAME", help="pack the RUN_DIRs into this run set instead")
    p.add_argument("--benchmarks", action="store_true", help="write BENCHMARKS.md and its plot from results/ instead")
    args = p.parse_args(argv)
    try:
        if args.benchmarks:
            if args.runs or args.pack or args.out:
                raise UserError("--benchmarks reads results/ and takes no other arguments; run it alone.")
            print(write_benchmarks())
        elif not args.runs:
            raise UserError("name the run folders or run sets to compare, e.g. runs/ or results/NAME.")
        elif args.pack:
            print(pack(args.runs, args.pack))
        else:
            out = args.out or _default_out(args.runs[0])
            print(write_report(args.runs, out))
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


def _default_out(first: Path) -> Path:
    if is_run_set(first) or first.name == "results":
        raise UserError(f"{first} is packed run data under results/; name a folder for the report with --out.")
    return first if not (first / "summary.json").exists() else first.parent


if __name__ == "__main__":
    sys.exit(main())
