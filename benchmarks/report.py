"""Compare benchmark runs: report.md and a self-contained report.html, or BENCHMARKS.md.

    python -m benchmarks.report RUN_DIR [RUN_DIR ...] [--out DIR] [--benchmarks-md BENCHMARKS.md]

A RUN_DIR is one run folder (it has summary.json) or a folder holding run folders. Runs of the
same framework on the same device and dtype with different seeds are summarised as mean ± std.
"""
from __future__ import annotations

import argparse
import base64
import html
import io
import json
import statistics
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import UserError, one_line

FRAMEWORK_ORDER = {"pytorch": 0, "tensorflow": 1, "keras-jax": 2, "jax": 3}
COLORS = {"pytorch": "#ee4c2c", "tensorflow": "#ff8f00", "keras-jax": "#d00000", "jax": "#4285f4"}


@dataclass
class Run:
    folder: Path
    summary: dict
    config: dict
    env: dict
    evals: list[dict]
    steps: list[dict]
    samples: str


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


def load_run(folder: Path) -> Run:
    def read_json(name):
        try:
            return json.loads((folder / name).read_text())
        except (OSError, ValueError) as e:
            raise UserError(f"{folder} is not a complete run folder ({name}: {e}); rerun it or leave it out.") from None
    records = []
    try:
        for line in (folder / "metrics.jsonl").read_text().splitlines():
            if line.strip():
                records.append(json.loads(line))
    except (OSError, ValueError) as e:
        raise UserError(f"{folder}/metrics.jsonl is unreadable ({e}).") from None
    samples = (folder / "samples.txt").read_text(encoding="utf-8") if (folder / "samples.txt").exists() else ""
    return Run(folder, read_json("summary.json"), read_json("config.json"), read_json("env.json"),
               [r for r in records if r.get("type") == "eval"],
               [r for r in records if r.get("type") == "train"], samples)


def find_runs(paths: list[Path]) -> list[Run]:
    folders = []
    for path in paths:
        if (path / "summary.json").exists():
            folders.append(path)
        elif path.is_dir():
            folders.extend(sorted(p.parent for p in path.glob("*/summary.json")))
        else:
            raise UserError(f"{path} is not a run folder or a folder of runs.")
    if not folders:
        raise UserError(f"no finished runs (summary.json) under {', '.join(map(str, paths))}.")
    return [load_run(f) for f in folders]


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


def _version(group: Group) -> str:
    version = str(group.runs[0].env.get("framework_version"))
    return version if version.startswith(group.framework) else f"{group.framework} {version}"


def write_benchmarks_md(run_sets: list[Path], path: Path, figures_dir: Path) -> Path:
    """One section per run set (a folder of runs made by one command), each with its tables and checks."""
    figures_dir.mkdir(parents=True, exist_ok=True)
    lines = ["# Benchmarks", "",
             "Produced by the harness; regenerate this file with the command at its end. Absolute times on a",
             "shared 2-core machine are noisy: compare frameworks within one section (one command, one",
             "machine, run one after another), by medians and ratios.", ""]
    for run_set in run_sets:
        groups = group_runs(find_runs([run_set]))
        first = groups[0].runs[0]
        env, model = first.env, first.config["model"]
        device = "GPU" if env.get("device") != "cpu" else "CPU"
        name = run_set.name
        runs = [run for g in groups for run in g.runs]
        commands = list(dict.fromkeys(run.env.get("command") for run in runs))
        commits = list(dict.fromkeys(str(run.env.get("git_commit")) for run in runs))
        lines += [f"## {first.config['preset']} on {device}: {groups[0].device_name if device == 'GPU' else _cpu_title(env)} "
                  f"({name})",
                  "",
                  *[f"- command: `{command}`" for command in commands],
                  f"- date: {env.get('date')}, commit {', '.join(commits)}",
                  f"- machine: {cpu_description(env)}, {env.get('platform')}, "
                  f"Python {env.get('python')}",
                  *([f"- host malloc: {env['host_malloc']}"] if env.get("host_malloc") else []),
                  "- versions: " + ", ".join(dict.fromkeys(_version(g) for g in groups)),
                  f"- model: {model['n_layer']} layers × {model['n_head']} heads × {model['n_embd']} wide, block "
                  f"{model['block_size']}, {first.summary['params']:,} parameters; "
                  f"{first.config['train']['max_iters']} steps of batch {first.config['train']['batch_size']}",
                  *([f"- MFU: against {first.summary['peak_flops'] / 1e9:.0f} GFLOP/s, the highest float32 matmul "
                     f"peak these runs measured"] if device == "CPU" else []),
                  ""]
        notes = run_set / "NOTES.md"  # what the numbers alone do not say, written by whoever ran them
        if notes.exists():
            lines += [notes.read_text(encoding="utf-8").strip(), ""]
        header, rows = summary_rows(groups)
        lines += [markdown_table(header, rows), ""]
        header, rows = quality_rows(groups)
        lines += ["Sample quality:", "", markdown_table(header, rows), ""]
        header, rows = scaling_rows(groups)
        if rows:
            lines += ["Data-parallel scaling:", "", markdown_table(header, rows), ""]
        rows = checks(groups)
        if rows:
            lines += ["Bars from the issues, measured here:", "", markdown_table(["bar", "measured", "met"], rows), ""]
        for figure, data in figures(groups).items():
            target = figures_dir / f"{name}-{figure}"
            target.write_bytes(data)
            lines.append(f"![{figure[:-4]}]({target.relative_to(path.parent).as_posix()})")
        lines.append("")
    sets = " ".join(str(p) for p in run_sets)
    lines += ["## Regenerate", "", "```bash",
              f"python -m benchmarks.report {sets} --benchmarks-md {path.name}", "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.report", description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--out", type=Path, help="report folder (default: the first RUN_DIR)")
    p.add_argument("--benchmarks-md", type=Path, help="write this BENCHMARKS.md instead, a section per RUN_DIR")
    args = p.parse_args(argv)
    try:
        if args.benchmarks_md:
            print(write_benchmarks_md(args.runs, args.benchmarks_md,
                                      args.benchmarks_md.parent / "docs" / "benchmarks"))
            return 0
        out = args.out or (args.runs[0] if not (args.runs[0] / "summary.json").exists() else args.runs[0].parent)
        print(write_report(args.runs, out))
    except UserError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
