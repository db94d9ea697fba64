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

from benchmarks.compare import Ratio, noise_flags, paired_ratio, steady, step_spread
from benchmarks.harness import machine_name
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
    busy_cores: int = 0     # cores other processes kept busy on purpose (--busy-cores)
    shard: int = 1          # devices the training state was split over (--shard)
    runs: list[Run] = field(default_factory=list)

    @property
    def name(self) -> str:
        name = f"{self.framework} compiled" if self.compiled else self.framework
        name = name if self.replicas == 1 else f"{name} ×{self.replicas}"
        name = name if self.shard == 1 else f"{name} sharded ×{self.shard}"
        return name if not self.busy_cores else f"{name}, {self.busy_cores} core{'s' * (self.busy_cores > 1)} busy"

    @property
    def seeds(self) -> int:
        return len({run.summary.get("seed") for run in self.runs})

    @property
    def label(self) -> str:
        """The name, with the number of seeds where there are several (rounds of one seed are one training)."""
        return self.name if self.seeds == 1 else f"{self.name} (n={self.seeds})"

    def values(self, key: str) -> list[float]:
        return [r.summary[key] for r in self.runs if r.summary.get(key) is not None]

    def mean(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.fmean(values) if values else None

    def median(self, key: str) -> float | None:
        values = self.values(key)
        return statistics.median(values) if values else None

    def spread(self, key: str) -> float | None:
        """The standard deviation across seeds (rounds of one seed train alike: their speeds have intervals)."""
        values = self.values(key)
        return statistics.stdev(values) if len(values) > 1 and self.seeds > 1 else None


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
               bool(s.get("compile")) and s["framework"] == "pytorch", run.config.get("busy_cores", 0),
               s.get("shard", 1))
        groups.setdefault(key, Group(*key)).runs.append(run)
    return sorted(groups.values(), key=lambda g: (g.device_name, g.dtype, g.busy_cores,
                                                  FRAMEWORK_ORDER.get(g.framework, 9), g.compiled, g.replicas,
                                                  g.shard))


def baseline_group(groups: list[Group]) -> Group:
    """What every speed is a ratio to: eager PyTorch on one process where it ran, else the first row."""
    return next((g for g in groups if g.framework == "pytorch" and not g.compiled and g.replicas == 1
                 and g.shard == 1 and not g.busy_cores), groups[0])


def _pairing_key(run: Run, across_commands: bool = False) -> tuple:
    """The runs of one seed in one round of one command were made in the same minutes: those are compared.
    A command's runs share a folder (a run set, packed, holds each name once)."""
    return run.summary.get("seed"), run.round, None if across_commands else str(run.folder.parent)


def _tokens_per_step(run: Run) -> float:
    s = run.summary
    return s["tokens_per_s"] * s["median_step_ms"] / 1e3


def speed_ratio(group: Group, baseline: Group, across_commands: bool = False) -> Ratio | None:
    """group's tokens/s over baseline's, paired by seed and round (benchmarks/compare.py); None
    where they share no round or kept no step times."""
    def key(run):
        return _pairing_key(run, across_commands)
    base = {key(r): r for r in baseline.runs if r.step_times}
    pairs = [(base[key(r)], r) for r in group.runs if r.step_times and key(r) in base]
    if not pairs or any(not r.summary.get("tokens_per_s") for pair in pairs for r in pair):
        return None
    b, o = pairs[0]
    return paired_ratio([steady(b.step_times) for b, _ in pairs], [steady(o.step_times) for _, o in pairs],
                        tokens_ratio=_tokens_per_step(o) / _tokens_per_step(b))


def contention_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Each framework's tokens/s with cores kept busy (--busy-cores) over its own on a quiet machine,
    rounds paired by number (two commands, run one after the other): how much a shared machine costs it."""
    quiet = {(g.framework, g.device_name, g.dtype, g.replicas, g.compiled): g for g in groups if not g.busy_cores}
    header = ["framework", "busy cores", "tokens/s, quiet", "tokens/s, busy", "busy ÷ quiet [95% interval]"]
    rows = []
    for g in groups:
        alone = quiet.get((g.framework, g.device_name, g.dtype, g.replicas, g.compiled))
        if g.busy_cores and alone:
            ratio = speed_ratio(g, alone, across_commands=True)
            rows.append([alone.name, str(g.busy_cores), _fmt(alone.median("tokens_per_s"), 0),
                         _fmt(g.median("tokens_per_s"), 0), ratio.text() if ratio else "–"])
    return header, rows


def made_in_rounds(runs: list[Run]) -> bool:
    """Runs of the harness since it interleaves frameworks in rounds (their config says which round)."""
    return all("round" in run.config for run in runs)


def ratio_text(group: Group, baseline: Group, ratio: Ratio | None) -> str:
    """The ratio with its interval; one pair of runs gets none, since the step-to-step noise of one run
    says nothing of how far the next run of it moves."""
    if group is baseline:
        return "1 (baseline)"
    if ratio is not None and ratio.rounds > 1:
        return ratio.text()
    plain = _fmt(group.mean("tokens_per_s") / baseline.mean("tokens_per_s"), 2)
    return f"{plain}× (one round, no interval)" if ratio else f"{plain}× (no paired rounds)"


def scaling_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """Data-parallel scaling: tokens/s on N replicas against N times the one-replica figure."""
    single = {(g.framework, g.device_name, g.dtype, g.compiled): g.mean("tokens_per_s")
              for g in groups if g.replicas == 1 and g.shard == 1 and not g.busy_cores}
    header = ["framework", "device", "replicas", "tokens/s", "speed-up", "scaling efficiency"]
    rows = []
    for g in groups:
        base = single.get((g.framework, g.device_name, g.dtype, g.compiled))
        if g.replicas > 1 and base:
            tps = g.mean("tokens_per_s")
            rows.append([g.framework, g.device_name, str(g.replicas), _fmt(tps, 0), _fmt(tps / base, 2) + "×",
                         _fmt(tps / (base * g.replicas), 1, percent=True)])
    return header, rows


def shard_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    """What one device held of the training state, measured from its arrays, against the whole state."""
    header = ["framework", "devices", "parameters", "gradients", "Adam moments", "per device", "share of whole",
              "val loss"]
    rows = []
    for g in groups:
        state = g.runs[0].summary.get("state_bytes")
        if g.shard > 1 and state:
            mib = {k: _fmt(v / 2**20, 2) + " MiB" for k, v in state.items()}
            rows.append([g.framework, str(g.shard), mib["params"], mib["grads"], mib["adam"],
                         _fmt(sum(state.values()) / 2**20, 2) + " MiB", _fmt(g.mean("state_share"), 3),
                         _fmt(g.mean("final_val_loss"), 6)])
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


def _decode_speed(group: Group) -> str:
    """Decode tokens/s with the KV cache, the median over runs; an eager decode beside the same decode
    compiled, as the XLA frameworks always run it, with the compiled first call's seconds."""
    eager, compiled = group.median("generation_tokens_per_s"), group.median("generation_compiled_tokens_per_s")
    if compiled is None:
        return _fmt(eager, 0)
    first = _fmt(group.median("generation_compile_s"), 1)
    return f"{_fmt(eager, 0)} eager · {_fmt(compiled, 0)} compiled (first call {first} s)"


def summary_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    baseline = baseline_group(groups)
    header = ["framework", "device", "dtype", "final val loss", "best val loss", "whole val split", "val bpc", "tokens/s",
              f"tokens/s vs {baseline.name} [95% interval]", "step ms median (p10–p90)", "first step s", "MFU",
              "peak memory", "decode tok/s (KV cache)", "KV speedup (one window · whole sample)", "harness overhead"]
    rows = []
    for g in groups:
        memory = g.mean("peak_memory_bytes")
        memory_text = _bytes(memory) + " device" if memory is not None else _bytes(g.mean("peak_rss_bytes")) + " RSS"
        rows.append([
            g.label, g.device_name, g.dtype,
            _fmt(g.mean("final_val_loss"), 4, g.spread("final_val_loss")),
            _fmt(g.mean("best_val_loss"), 4, g.spread("best_val_loss")),
            _fmt(g.mean("whole_val_loss"), 4, g.spread("whole_val_loss")),
            _fmt(g.mean("final_val_bpc"), 3),
            _fmt(g.median("tokens_per_s"), 0),
            ratio_text(g, baseline, speed_ratio(g, baseline)),
            f"{_fmt(g.mean('median_step_ms'), 1)} ({_fmt(g.mean('p10_step_ms'), 1)}–{_fmt(g.mean('p90_step_ms'), 1)})",
            _fmt(g.mean("time_to_first_step_s"), 2),
            _fmt(g.mean("mfu"), 1, percent=True),
            memory_text,
            _decode_speed(g),
            _kv_speedups(g),
            _fmt(g.mean("harness_overhead_frac"), 1, percent=True),
        ])
    return header, rows


def round_rows(groups: list[Group]) -> tuple[list[str], list[list[str]], list[str]]:
    """Every run in the order it ran, with what else the machine did meanwhile; and the flagged ones."""
    runs = sorted((run for g in groups for run in g.runs), key=lambda r: r.env.get("date", ""))
    labels = {id(run): g.name for g in groups for run in g.runs}
    header = ["round", "seed", "framework", "tokens/s", "step spread (p90−p10)/median", "steal", "other processes' CPU",
              "load average", "flag"]
    rows, flagged = [], []
    for run, flags in zip(runs, noise_flags([r.summary for r in runs])):
        s, noise = run.summary, run.summary.get("noise") or {}
        rows.append([str(run.round), str(s.get("seed")), labels[id(run)], _fmt(s.get("tokens_per_s"), 0),
                     _fmt(step_spread(s), 1, percent=True), _fmt(noise.get("steal_frac"), 1, percent=True),
                     _fmt(noise.get("others_cpu_frac"), 1, percent=True), _fmt(noise.get("load_average"), 2),
                     "; ".join(flags) or "–"])
        if flags:
            flagged.append(f"round {run.round} of {labels[id(run)]} ({'; '.join(flags)})")
    return header, rows, flagged


def contention_line(flagged: list[str], runs: list[Run]) -> str:
    if not made_in_rounds(runs):
        return ("These runs were made one framework after another, not in interleaved rounds: each ratio is of runs "
                "made minutes apart.")
    if flagged:
        return "Contended: " + "; ".join(flagged) + ". Their figures are kept; the interval shows what they move."
    return "No round stood out from the others in step-time spread, steal time or other processes' CPU use."


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


def environment_rows(groups: list[Group]) -> tuple[list[str], list[list[str]]]:
    header = ["framework", "version", "device", "CPU", "date", "git", "command"]
    rows = []
    for g in groups:
        env = g.runs[0].env
        rows.append([g.framework, env.get("framework_version", "?"), f"{env.get('device_name')} ×{env.get('device_count', 1)}",
                     machine_name(env), env.get("date", "?"),
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


SPEED_NOTE = ("tokens/s is the median step's, the median over runs; each ratio is the median of its rounds' ratios, "
              "paired by round, with a 95% two-level bootstrap interval (rounds, then steps; benchmarks/compare.py); "
              "\"tied\" where the interval holds 1.")


def write_report(run_dirs: list[Path], out: Path, problems: list[str] | None = None) -> Path:
    groups = group_runs(find_runs([Path(p) for p in run_dirs]))
    out.mkdir(parents=True, exist_ok=True)
    images = figures(groups)
    for name, data in images.items():
        (out / name).write_bytes(data)
    rounds_header, rounds, flagged = round_rows(groups)
    tables = {"Training, throughput and memory": summary_rows(groups), "Rounds": (rounds_header, rounds),
              "Sample quality": quality_rows(groups), "Environment": environment_rows(groups)}
    notes = {"Training, throughput and memory": SPEED_NOTE, "Rounds": contention_line(flagged, [r for g in groups for r in g.runs])}
    scaling = scaling_rows(groups)
    if scaling[1]:
        tables["Data-parallel scaling"] = scaling
    sharded = shard_rows(groups)
    if sharded[1]:
        tables["Sharded training state"] = sharded
    contention = contention_rows(groups)
    if contention[1]:
        tables["On a shared machine"] = contention
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
        if heading in notes:
            md.append(notes[heading] + "\n")
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
        if heading in notes:
            body.append(f"<p>{html.escape(notes[heading])}</p>")
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
        return machine_name(self.first.env) if self.on_cpu else self.machine

    @property
    def date(self) -> str:
        return max(run.env.get("date", "") for g in self.groups for run in g.runs)

    @property
    def eager_pytorch(self) -> Group | None:
        return next((g for g in self.groups if g.framework == "pytorch" and not g.compiled and g.replicas == 1
                     and not g.busy_cores), None)

    @property
    def compares_frameworks(self) -> bool:
        """Eager PyTorch and another row, each trained for its preset's whole schedule, unsharded: a
        set made for something else (generation speed after 20 steps, one framework's seeds,
        sharding's memory) heads no table."""
        from common.config import get_preset
        full = all(run.config["train"]["max_iters"] == get_preset(run.config["preset"])[1].max_iters
                   for g in self.groups for run in g.runs)
        unsharded = all(g.shard == 1 for g in self.groups)
        return full and unsharded and self.eager_pytorch is not None and len(self.groups) > 1


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


def headline_ratios(run_set: RunSet) -> dict[str, Ratio | None]:
    """Each row's tokens/s over eager PyTorch's, paired by seed and round (None for the baseline)."""
    return {g.label: None if g is run_set.eager_pytorch else speed_ratio(g, run_set.eager_pytorch)
            for g in run_set.groups}


def headline_rows(run_set: RunSet) -> tuple[list[str], list[list[str]]]:
    header = ["framework", "tokens/s vs eager PyTorch [95% interval]", "tokens/s", "best val loss", "MFU",
              "peak memory", "KV-cache decode speed-up"]
    ratios = headline_ratios(run_set)
    rows = []
    for g in run_set.groups:
        memory = g.mean("peak_memory_bytes")
        rows.append([g.label, ratio_text(g, run_set.eager_pytorch, ratios[g.label]), f"{g.median('tokens_per_s'):,.0f}",
                     _fmt(g.mean("best_val_loss"), 4, g.spread("best_val_loss")), _fmt(g.mean("mfu"), 1, percent=True),
                     _bytes(memory) + " device" if memory is not None else _bytes(g.mean("peak_rss_bytes")) + " host RSS",
                     _fmt(g.mean("kv_cache_speedup"), 1) + "×"])
    return header, rows


def _caption(run_set: RunSet) -> str:
    """What the table's rows ran, and against what its MFU and decode speed-up are measured."""
    first = run_set.first
    model, train, summary = first.config["model"], first.config["train"], first.summary
    runs = [run for g in run_set.groups for run in g.runs]
    seeds = sorted({run.summary.get("seed") for run in runs})
    rounds = max(run.round for run in runs)
    seeds_text = f"seeds {', '.join(map(str, seeds))} (loss mean ± std)" if len(seeds) > 1 else f"seed {seeds[0]}"
    if made_in_rounds(runs):
        seeds_text += (f", {rounds} interleaved round{'s' if rounds > 1 else ''} (ratios paired by round, median with "
                       "a 95% bootstrap interval over rounds and steps)")
    else:
        seeds_text += (", one framework after another before rounds existed (ratios of runs made minutes apart; "
                       "an interval only where several seeds pair up)")
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
        found, eager = headline_ratios(run_set), run_set.eager_pytorch.mean("tokens_per_s")
        ratios = [found[g.label] if found[g.label] and found[g.label].rounds > 1 else  # no interval from one round
                  Ratio(*[g.mean("tokens_per_s") / eager] * 3, 1) for g in groups]
        ax.barh([g.label for g in groups], [r.median for r in ratios],
                xerr=[[r.median - r.low for r in ratios], [r.high - r.median for r in ratios]],
                color=[COLORS.get(g.framework, "grey") for g in groups])
        ax.axvline(1.0, color="black", lw=0.8)
        ax.set_title(run_set.heading, fontsize=9)
        ax.set_xlabel("training tokens/s ÷ eager PyTorch's (95% interval)")
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
              "time, the frameworks taking turns in rounds (`python -m benchmarks.run --framework all --rounds 3`); "
              "tokens/s from the median step, the median over rounds; each ratio is the median of the rounds' ratios "
              "with a 95% bootstrap interval (README, \"Rounds and intervals\"). Each table is the newest run set on "
              "its machine that trains eager PyTorch and another framework for the whole preset.",
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
        rows = [row for row in rows if not row.get("quantize")]  # the quantized rows: in the set's report
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
