"""results/ and BENCHMARKS.md: packing run folders into run sets, reading them back, the generated page."""
import json
from pathlib import Path

import pytest

from benchmarks.report import (MOST_FINDINGS, PAGE_LINES, REGENERATE, RunSet, benchmarks_page, find_runs, group_runs,
                               headline_sets, main, summary_rows, write_report)
from benchmarks.results import RUNS_FILE, TRAIN_EVERY, load_run, load_run_set, pack
from common.errors import UserError
from tests.conftest import REPO

STEPS = 200  # the tiny preset's whole schedule, so a set of these runs heads a table


def make_run(folder: Path, framework="pytorch", seed=1337, tokens_per_s=1000.0, max_iters=STEPS,
             cpu_isa="AVX2", date="2026-12-01T10:00:00+00:00", val=1.95, round_number=None, shard=1) -> Path:
    """A finished harness run folder, written by hand with the files and fields the harness writes; every
    step takes the same time, 12.5 tokens at tokens_per_s. With round_number, made in interleaved rounds."""
    folder.mkdir(parents=True)
    config = {"framework": framework, "preset": "tiny", "dataset": "tinyshakespeare",
              "model": {"n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 32},
              "train": {"batch_size": 4, "max_iters": max_iters, "seed": seed},
              **({"round": round_number} if round_number is not None else {})}
    step_time = 12.5 / tokens_per_s
    env = {"framework": framework, "framework_version": f"{framework} 1.0", "device": "cpu", "device_name": "cpu",
           "device_count": 1, "cpu": "Test CPU", "cpu_isa": cpu_isa, "cpu_count": 2, "python": "3.11",
           "platform": "Linux", "host_malloc": "glibc mallopt mmap_max=0", "git_commit": "abc1234", "date": date,
           "settings": {"XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"} if framework == "jax" else {},
           "command": f"python -m benchmarks.run --framework {framework} --seed {seed}"}
    summary = {"framework": framework, "device": "cpu", "device_name": "cpu", "dtype": "float32", "compile": False,
               "seed": seed, "replicas": 1, "shard": shard, "params": 29_000, "tokens_per_s": tokens_per_s, "final_val_loss": val,
               "best_val_loss": val, "whole_val_loss": val + 0.01, "median_step_ms": 1e3 * step_time,
               "p10_step_ms": 1e3 * step_time, "p90_step_ms": 1e3 * step_time, "mfu": 0.2, "peak_flops": 1e11, "flops_per_token": 2e7,
               "peak_memory_bytes": None, "peak_rss_bytes": 300 * 2**20, "kv_cache_speedup": 6.0,
               "generation_timed_tokens": 31, "sample_tokens": 40, "quality": {"word_validity": 0.5}}
    rows = []
    for step in range(max_iters):
        if step % 50 == 0:
            rows.append({"type": "eval", "step": step, "train_loss": 4.0 - step / 100, "val_loss": 4.1 - step / 100,
                         "val_bpc": 5.9 - step / 70, "time": step * 0.0125})
        rows.append({"type": "train", "step": step, "loss": 4.0 - step / 90, "lr": 1e-3, "step_time": step_time,
                     "time": (step + 1) * 0.0125})
    for name, value in (("config.json", config), ("env.json", env), ("summary.json", summary)):
        (folder / name).write_text(json.dumps(value))
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "samples.txt").write_text("ROMEO:\nWhat, ho!\n" + "-" * 72 + "\nJULIET:\nAy me.\n", encoding="utf-8")
    return folder


def test_committed_benchmarks_page_is_what_results_generate():
    committed = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8")
    assert committed == benchmarks_page(REPO / "results"), f"BENCHMARKS.md is stale: run `{REGENERATE}`"


def test_benchmarks_page_is_short_and_starts_with_a_headline_table():
    lines = (REPO / "BENCHMARKS.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= PAGE_LINES
    content = [line for line in lines if line and not line.startswith("#")]
    assert content[0].startswith("| framework | tokens/s vs eager PyTorch [95% interval] |")
    assert (REPO / "docs" / "benchmarks" / "headline.png").is_file()
    for line in lines:  # every run set the page links to is there
        for target in [part.split(")")[0] for part in line.split("](")[1:]]:
            assert (REPO / target).exists(), target


def test_run_data_lives_in_results_not_in_the_code_package():
    assert not (REPO / "benchmarks" / "results").exists()
    for run_set in (REPO / "results").glob(f"*/{RUNS_FILE}"):
        assert (run_set.parent / "NOTES.md").is_file(), run_set.parent


def test_packing_keeps_summary_evaluations_samples_and_every_tenth_step(tmp_path):
    folder = make_run(tmp_path / "runs" / "pytorch")
    pack([folder], tmp_path / "results" / "set")
    original, [packed] = load_run(folder), load_run_set(tmp_path / "results" / "set")
    assert packed.name == "pytorch"
    assert (packed.summary, packed.config, packed.env) == (original.summary, original.config, original.env)
    assert packed.evals == original.evals and len(packed.evals) == 4
    assert packed.samples == original.samples
    kept = [r["step"] for r in packed.steps]
    assert kept == [*range(0, STEPS, TRAIN_EVERY), STEPS - 1]
    assert packed.steps == [r for r in original.steps if r["step"] in kept]
    notes = (tmp_path / "results" / "set" / "NOTES.md").read_text()
    assert notes.startswith("# set\n") and "- machine: Test CPU (AVX2, 2 cores)" in notes
    assert "\n- host malloc: glibc mallopt mmap_max=0\n" in notes
    assert "`python -m benchmarks.run --framework pytorch --seed 1337`" in notes


def test_report_over_a_packed_set_equals_the_report_over_its_folders(tmp_path):
    runs = tmp_path / "runs"
    for framework, seed, tps in (("pytorch", 1337, 1000.0), ("pytorch", 1338, 1100.0), ("jax", 1337, 1250.0)):
        make_run(runs / f"{framework}-seed{seed}", framework, seed, tps)
    pack([runs], tmp_path / "results" / "set")
    from_folders = write_report([runs], tmp_path / "a").with_name("report.md").read_text()
    from_set = write_report([tmp_path / "results" / "set"], tmp_path / "b").with_name("report.md").read_text()
    assert from_set == from_folders
    assert "| pytorch (n=2) | cpu | float32 | 1.9500 ± 0.0000 |" in from_set
    assert summary_rows(group_runs(find_runs([tmp_path / "results"]))) == summary_rows(group_runs(find_runs([runs])))


def test_packing_into_a_set_replaces_a_run_of_the_same_name_and_keeps_the_others(tmp_path):
    into = tmp_path / "set"
    pack([make_run(tmp_path / "a" / "pytorch", tokens_per_s=900.0), make_run(tmp_path / "a" / "jax", "jax")], into)
    # The notes start from what each run ran under: the settings a framework recorded (none for pytorch here).
    assert '\n- settings: {"jax": {"XLA_FLAGS": "--xla_cpu_use_fusion_emitters=false"}}\n' in (into / "NOTES.md").read_text()
    (into / "NOTES.md").write_text("# set\n\nMine.\n")
    pack([make_run(tmp_path / "b" / "pytorch", tokens_per_s=1200.0)], into)
    runs = {run.name: run.summary["tokens_per_s"] for run in load_run_set(into)}
    assert runs == {"jax": 1000.0, "pytorch": 1200.0}
    assert (into / "NOTES.md").read_text() == "# set\n\nMine.\n"  # notes written by hand are kept
    with pytest.raises(UserError, match="two runs are named pytorch"):
        pack([tmp_path / "a" / "pytorch", tmp_path / "b" / "pytorch"], tmp_path / "other")


def test_headline_takes_the_newest_set_comparing_frameworks_per_machine(tmp_path):
    def run_set(name, date, frameworks=("pytorch", "jax"), max_iters=STEPS, cpu_isa="AVX2", jax_speed=1500.0,
                shard=1):
        folders = [make_run(tmp_path / name / f, f, tokens_per_s=1000.0 if f == "pytorch" else jax_speed,
                            max_iters=max_iters, cpu_isa=cpu_isa, date=date, shard=shard if f == "jax" else 1)
                   for f in frameworks]
        pack(folders, tmp_path / "results" / name)
    run_set("old", "2026-11-01T00:00:00+00:00")
    run_set("new", "2026-12-01T00:00:00+00:00", jax_speed=1200.0)
    run_set("newest-but-20-steps", "2026-12-02T00:00:00+00:00", max_iters=20)
    run_set("newest-but-pytorch-alone", "2026-12-03T00:00:00+00:00", frameworks=("pytorch",))
    run_set("newest-but-sharded", "2026-12-04T00:00:00+00:00", shard=2)
    run_set("other-cpu", "2026-10-01T00:00:00+00:00", cpu_isa="AVX-512 + AMX")
    page = benchmarks_page(tmp_path / "results")
    chosen = [s.name for s in headline_sets([RunSet(p.parent.name, group_runs(load_run_set(p.parent)))
                                             for p in (tmp_path / "results").glob(f"*/{RUNS_FILE}")])]
    assert chosen == ["new", "other-cpu"]
    assert page.index("## Test CPU (AVX2, 2 cores)\n\n| framework") < page.index("## Test CPU (AVX-512 + AMX, 2 cores)")
    # MFU from the set's shared peak: 1,200 tokens/s × 2e7 FLOP / 1e11 FLOP/s.
    assert "| jax | 1.20× (one round, no interval) | 1,200 | 1.9500 | 24.0% | 300 MiB host RSS | 6.0× |" in page
    assert "one framework after another before rounds existed" in page
    assert "[newest-but-20-steps](results/newest-but-20-steps/NOTES.md)" in page  # listed, not headlined


def test_findings_come_from_results_and_stay_few(tmp_path):
    pack([make_run(tmp_path / "a" / "pytorch"), make_run(tmp_path / "a" / "jax", "jax")], tmp_path / "results" / "set")
    findings = tmp_path / "results" / "FINDINGS.md"
    findings.write_text("# Findings\n\nIntro.\n\n- **Fast.** See [set](set/NOTES.md)\n  and [x](https://x.org).\n")
    page = benchmarks_page(tmp_path / "results")
    assert "## Findings\n\n- **Fast.** See [set](results/set/NOTES.md)\n  and [x](https://x.org).\n" in page
    assert "Intro." not in page
    findings.write_text("".join(f"- finding {i}\n" for i in range(MOST_FINDINGS + 1)))
    with pytest.raises(UserError, match=f"lists {MOST_FINDINGS + 1} findings"):
        benchmarks_page(tmp_path / "results")


@pytest.mark.parametrize("argv, message", [
    (["--benchmarks", "runs/"], "--benchmarks reads results/ and takes no other arguments"),
    ([], "name the run folders or run sets to compare"),
    (["{set}"], "is packed run data under results/; name a folder for the report with --out"),
    (["{run}", "--pack", "{file}"], "is a file; name a folder for the run set"),
])
def test_cli_mistakes_are_one_line_and_exit_2(argv, message, tmp_path, capsys):
    run = make_run(tmp_path / "runs" / "pytorch")
    pack([run], tmp_path / "set")
    (tmp_path / "file").write_text("")
    argv = [a.format(set=tmp_path / "set", run=run, file=tmp_path / "file") for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_page_without_a_set_comparing_frameworks_says_what_to_pack(tmp_path):
    pack([make_run(tmp_path / "a" / "pytorch")], tmp_path / "results" / "pytorch-alone")
    with pytest.raises(UserError, match="no run set under .* compares eager PyTorch with another framework"):
        benchmarks_page(tmp_path / "results")
    with pytest.raises(UserError, match="no run sets"):
        benchmarks_page(tmp_path / "empty")
