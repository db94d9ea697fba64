"""Report arithmetic on made-up runs: grouping, scaling efficiency, paired speed ratios, rounds, decode columns."""
from pathlib import Path

import numpy as np

from benchmarks.report import (Group, Run, baseline_group, contention_rows, group_runs, round_rows, scaling_rows,
                               shard_rows, summary_rows, write_report)


TOKENS_PER_STEP = 768


def _run(framework, replicas, tokens_per_s, best=1.95, final=1.95, seed=0, compile=False, round_number=1,
         jitter=0.0, date="2026-12-06T10:00:00"):
    """A run whose every step took TOKENS_PER_STEP / tokens_per_s seconds (times 1 + jitter noise)."""
    step_s = TOKENS_PER_STEP / tokens_per_s
    times = step_s * (1 + jitter * np.random.default_rng(round_number).standard_normal(200))
    summary = {"framework": framework, "device_name": "cpu", "dtype": "float32", "replicas": replicas, "seed": seed,
               "tokens_per_s": tokens_per_s, "best_val_loss": best, "final_val_loss": final, "compile": compile,
               "median_step_ms": 1e3 * step_s, "p10_step_ms": 1e3 * float(np.percentile(times[10:], 10)),
               "p90_step_ms": 1e3 * float(np.percentile(times[10:], 90)), "noise": {"steal_frac": 0.0,
                                                                                   "others_cpu_frac": 0.0},
               "kv_cache_speedup": 6.0, "generation_timed_tokens": 63, "harness_overhead_frac": 0.01}
    config = {"preset": "cpu-baby", "model": {"block_size": 64}, "train": {"max_iters": 2000}, "round": round_number}
    return Run(Path(f"{framework}-{replicas}-{seed}-{round_number}"), summary, config, {"date": date}, [], [], "",
               step_times=list(times))


def test_scaling_efficiency_against_the_one_replica_run():
    groups = [Group("jax", "cpu", "float32", 1, runs=[_run("jax", 1, 1000.0)]),
              Group("jax", "cpu", "float32", 2, runs=[_run("jax", 2, 1500.0)])]
    _, rows = scaling_rows(groups)
    assert rows == [["jax", "cpu", "2", "1500", "1.50×", "75.0%"]]


def test_a_sharded_run_is_its_own_row_with_what_a_device_held():
    one, sharded = _run("jax", 1, 1000.0), _run("jax", 1, 900.0)
    sharded.summary.update(shard=2, state_bytes={"params": 2**20, "grads": 2**20, "adam": 2**21}, state_share=0.5)
    groups = group_runs([one, sharded])
    assert [g.name for g in groups] == ["jax", "jax sharded ×2"] and baseline_group(groups).shard == 1
    header, rows = shard_rows(groups)
    assert rows == [["jax", "2", "1.00 MiB", "1.00 MiB", "2.00 MiB", "4.00 MiB", "0.500", "1.950000"]]
    assert scaling_rows(groups)[1] == []  # not a replica count


def test_cpu_runs_share_the_highest_measured_peak():
    runs = [_run("pytorch", 1, 1000.0), _run("pytorch", 2, 900.0), _run("jax", 1, 800.0)]
    for run, peak in zip(runs, [200e9, 100e9, 160e9]):
        run.summary.update(device="cpu", peak_flops=peak, flops_per_token=1e6, mfu=run.summary["tokens_per_s"] * 1e6 / peak)
    gpu = _run("jax", 1, 5000.0)
    gpu.summary.update(device="gpu", device_name="H100", peak_flops=900e12, flops_per_token=1e6, mfu=0.1)
    groups = group_runs([*runs, gpu])
    assert [round(g.mean("mfu"), 6) for g in groups if g.device_name == "cpu"] == [0.005, 0.0045, 0.004]
    assert gpu.summary["mfu"] == 0.1 and gpu.summary["peak_flops"] == 900e12


def _cell(groups, label, column):
    header, rows = summary_rows(groups)
    return next(row[header.index(column)] for row in rows if row[0] == label)


def test_speed_column_is_a_paired_ratio_with_its_interval_and_ties():
    runs = [run for r in (1, 2, 3) for run in (_run("pytorch", 1, 1000.0 * (1 + 0.1 * (r - 2)), round_number=r),
                                              _run("jax", 1, 1250.0 * (1 + 0.1 * (r - 2)), round_number=r),
                                              _run("tensorflow", 1, 1000.0 * [1.1, 0.9, 1.0][r - 1], round_number=r))]
    groups = group_runs(runs)
    column = "tokens/s vs pytorch [95% interval]"
    assert _cell(groups, "pytorch", column) == "1 (baseline)"
    # jax ran 1.25x pytorch in each round, the machine's drift shared: no width.
    assert _cell(groups, "jax", column) == "1.25× [1.25–1.25]"
    # tensorflow's rounds against pytorch's: 1100/900, 900/1000, 1000/1100; their median and, from
    # resampled rounds, an interval that reaches from the lowest round to the highest.
    assert _cell(groups, "tensorflow", column) == "0.91× [0.90–1.22], tied"


def test_round_table_lists_every_run_in_order_and_flags_the_noisy_one():
    runs = [_run(fw, 1, 1000.0, round_number=r, jitter=0.3 if (fw, r) == ("jax", 2) else 0.02,
                 date=f"2026-12-06T10:0{r}:{i}0") for r in (1, 2) for i, fw in enumerate(("pytorch", "jax"))]
    header, rows, flagged = round_rows(group_runs(runs))
    assert [(row[0], row[2]) for row in rows] == [("1", "pytorch"), ("1", "jax"), ("2", "pytorch"), ("2", "jax")]
    assert [row[-1] == "–" for row in rows] == [True, True, True, False]
    assert len(flagged) == 1 and flagged[0].startswith("round 2 of jax (step spread")


def test_an_eager_decode_is_shown_beside_itself_compiled():
    eager = _run("pytorch", 1, 1000.0)
    eager.summary.update(generation_tokens_per_s=917.0, generation_compiled_tokens_per_s=5829.0,
                         generation_compile_s=2.36)
    xla = _run("jax", 1, 1000.0)
    xla.summary.update(generation_tokens_per_s=9311.0)
    groups = group_runs([eager, xla])
    assert _cell(groups, "pytorch", "decode tok/s (KV cache)") == "917 eager · 5829 compiled (first call 2.4 s)"
    assert _cell(groups, "jax", "decode tok/s (KV cache)") == "9311"


def test_a_report_shows_measurements_not_verdicts(tmp_path, monkeypatch):
    from tests.test_results import make_run
    folders = [make_run(tmp_path / f"{fw}-round{r}", fw, round_number=r, tokens_per_s=speed)
               for r in (1, 2) for fw, speed in (("pytorch", 1000.0), ("jax", 1200.0))]
    write_report(folders, tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "| jax | cpu |" in text and "1.20× [1.20–1.20]" in text
    assert "## Rounds" in text and "No round stood out" in text
    for verdict in ("Bars from the issues", "**no**", "| yes |", "≥ 1.3×", "≥ 5×"):
        assert verdict not in text


def test_a_shared_machine_costs_each_framework_its_own_share():
    quiet = [_run(fw, 1, speed, round_number=r) for r in (1, 2) for fw, speed in (("pytorch", 1000.0), ("jax", 900.0))]
    busy = [_run(fw, 1, speed, round_number=r) for r in (1, 2) for fw, speed in (("pytorch", 400.0), ("jax", 810.0))]
    for run in busy:
        run.config["busy_cores"] = 1
    groups = group_runs(quiet + busy)
    assert [g.name for g in groups] == ["pytorch", "jax", "pytorch, 1 core busy", "jax, 1 core busy"]
    header, rows = contention_rows(groups)
    assert rows == [["pytorch", "1", "1000", "400", "0.40× [0.40–0.40]"], ["jax", "1", "900", "810", "0.90× [0.90–0.90]"]]
    # the baseline of every other row stays eager PyTorch on a quiet machine
    assert _cell(groups, "jax, 1 core busy", "tokens/s vs pytorch [95% interval]") == "0.81× [0.81–0.81]"


def test_one_round_gives_a_ratio_without_an_interval():
    """The step noise of one run says nothing of how far the next run moves: no interval from it."""
    groups = group_runs([_run("pytorch", 1, 1000.0, jitter=0.05), _run("jax", 1, 800.0, jitter=0.05)])
    assert _cell(groups, "jax", "tokens/s vs pytorch [95% interval]") == "0.80× (one round, no interval)"
