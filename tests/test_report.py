"""Report arithmetic on made-up runs: grouping by replicas, scaling efficiency, the bars."""
from pathlib import Path

from benchmarks.report import Group, Run, checks, group_runs, scaling_rows, summary_rows


def _run(framework, replicas, tokens_per_s, best=1.95, final=1.95, seed=0, compile=False):
    summary = {"framework": framework, "device_name": "cpu", "dtype": "float32", "replicas": replicas,
               "tokens_per_s": tokens_per_s, "best_val_loss": best, "final_val_loss": final, "compile": compile,
               "kv_cache_speedup": 6.0, "generation_timed_tokens": 63, "harness_overhead_frac": 0.01}
    config = {"preset": "cpu-baby", "model": {"block_size": 64}, "train": {"max_iters": 2000}}
    return Run(Path(f"{framework}-{replicas}-{seed}"), summary, config, {}, [], [], "")


def test_scaling_efficiency_against_the_one_replica_run():
    groups = [Group("jax", "cpu", "float32", 1, runs=[_run("jax", 1, 1000.0)]),
              Group("jax", "cpu", "float32", 2, runs=[_run("jax", 2, 1500.0)])]
    _, rows = scaling_rows(groups)
    assert rows == [["jax", "cpu", "2", "1500", "1.50×", "75.0%"]]


def test_bars_use_best_val_and_compare_speeds():
    groups = [Group("pytorch", "cpu", "float32", 1, runs=[_run("pytorch", 1, 1000.0, best=1.89, final=1.93)]),
              Group("jax", "cpu", "float32", 1, runs=[_run("jax", 1, 1400.0, best=1.91, final=1.92)])]
    verdicts = {row[0]: (row[1], row[2]) for row in checks(groups)}
    assert verdicts["pytorch: best val loss ≤ 1.9 (nanoGPT's reference figure)"] == ("1.8900", "yes")
    assert verdicts["jax: best val loss ≤ 1.9 (nanoGPT's reference figure)"] == ("1.9100", "**no**")
    assert verdicts["final val losses within 0.03 of each other"] == ("0.0100", "yes")
    assert verdicts["some framework ≥ 1.3× eager PyTorch's tokens/s"] == ("1.40×", "yes")
    assert verdicts["pytorch: tokens/s within 1.5× of the fastest"] == ("1.40×", "yes")


def test_compiled_pytorch_is_its_own_row_and_not_the_eager_baseline():
    runs = [_run("pytorch", 1, 1000.0), _run("pytorch", 1, 1250.0, compile=True), _run("jax", 1, 1200.0)]
    groups = group_runs(runs)
    assert [g.label for g in groups] == ["pytorch", "pytorch compiled", "jax"]
    verdicts = {row[0]: (row[1], row[2]) for row in checks(groups)}
    # The baseline is the eager run (1000), whichever order the runs come in.
    assert verdicts["some framework ≥ 1.3× eager PyTorch's tokens/s"] == ("1.25×", "**no**")
    assert verdicts["pytorch compiled: tokens/s within 1.5× of the fastest"] == ("1.00×", "yes")


def test_speed_bars_take_single_process_eager_pytorch_as_the_baseline():
    runs = [_run("pytorch", 2, 800.0), _run("pytorch", 1, 1000.0), _run("jax", 1, 900.0), _run("jax", 2, 1100.0),
            _run("tensorflow", 1, 790.0)]
    verdicts = {row[0]: (row[1], row[2]) for row in checks(group_runs(runs))}
    assert verdicts["some framework ≥ 1.3× eager PyTorch's tokens/s"] == ("1.10×", "**no**")
    assert verdicts["jax: tokens/s ≥ 1.0× eager PyTorch's"] == ("0.90×", "**no**")
    assert verdicts["jax ×2: tokens/s ≥ 1.0× eager PyTorch's"] == ("1.10×", "yes")
    assert verdicts["tensorflow: tokens/s ≥ 0.8× eager PyTorch's"] == ("0.79×", "**no**")
    assert not any(what.startswith("pytorch") and "eager PyTorch's" in what for what in verdicts)


def test_cpu_runs_share_the_highest_measured_peak():
    runs = [_run("pytorch", 1, 1000.0), _run("pytorch", 2, 900.0), _run("jax", 1, 800.0)]
    for run, peak in zip(runs, [200e9, 100e9, 160e9]):
        run.summary.update(device="cpu", peak_flops=peak, flops_per_token=1e6, mfu=run.summary["tokens_per_s"] * 1e6 / peak)
    gpu = _run("jax", 1, 5000.0)
    gpu.summary.update(device="gpu", device_name="H100", peak_flops=900e12, flops_per_token=1e6, mfu=0.1)
    groups = group_runs([*runs, gpu])
    assert [round(g.mean("mfu"), 6) for g in groups if g.device_name == "cpu"] == [0.005, 0.0045, 0.004]
    assert gpu.summary["mfu"] == 0.1 and gpu.summary["peak_flops"] == 900e12


def test_kv_speedup_over_the_whole_sample_is_a_bar_of_its_own_where_it_was_timed():
    timed = _run("jax", 1, 1000.0)
    timed.summary.update(sample_tokens=500, kv_cache_speedup_whole_sample=1.8)
    older = _run("tensorflow", 1, 1000.0)
    older.summary.update(sample_tokens=500)  # made before the whole sample was timed
    fits = _run("pytorch", 1, 1000.0)
    fits.summary.update(sample_tokens=40, generation_timed_tokens=40, kv_cache_speedup_whole_sample=6.0)
    groups = group_runs([timed, older, fits])
    verdicts = {row[0]: (row[1], row[2]) for row in checks(groups)}
    assert verdicts["jax: KV-cache generation ≥ 5× no-cache (63 tokens within one block of 64)"] == ("6.0×", "yes")
    assert verdicts["jax: KV-cache generation ≥ 5× no-cache (all 500 tokens of a sample, block 64)"] == ("1.8×", "**no**")
    assert [what for what in verdicts if "of a sample" in what] == [
        "jax: KV-cache generation ≥ 5× no-cache (all 500 tokens of a sample, block 64)"]
    header, rows = summary_rows(groups)
    cells = {row[0]: row[header.index("KV speedup (one window · whole sample)")] for row in rows}
    assert cells == {"jax": "6.0× · 1.8× over 500", "tensorflow": "6.0×", "pytorch": "6.0×"}
