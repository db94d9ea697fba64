"""python -m benchmarks.sweep: the ladder's points, each in a process of its own, then a table and a plot."""
import json
import re
from pathlib import Path

import pytest

from benchmarks import sweep
from common.params import num_params


@pytest.mark.pytorch
def test_two_sizes_write_their_points_table_and_plot(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a tuning variable each point records as it ran under
    out = tmp_path / "sweep"
    assert sweep.main(["--framework", "pytorch", "--sizes", "tiny,cpu-baby", "--steps", "2", "--warmup", "0",
                       "--out", str(out)]) == 0, capsys.readouterr().err
    points = [json.loads(line) for line in (out / "points.jsonl").read_text().splitlines()]
    assert [(p["size"], p["block_size"], p["batch_size"]) for p in points] == [("tiny", 32, 32), ("cpu-baby", 64, 16)]
    for p in points:
        assert p["params"] == num_params(sweep.SIZES[p["size"]])
        assert p["tokens_per_s"] == pytest.approx(p["batch_size"] * p["block_size"] / (p["step_ms"] / 1e3))
        assert 0 < p["mfu"] < 1 and p["first_step_s"] > 0 and p["peak_memory_bytes"] > 2**20
        assert p["settings"]["OMP_NUM_THREADS"] == "2" and p["settings"]["decode_compile"] == "eager"
    report = (out / "report.md").read_text()
    row = next(line for line in report.splitlines() if line.startswith("| pytorch | float32 |"))
    assert len(re.findall(r"\d[\d,]* \(\d+\.\d%\)", row)) == 2, report
    assert "tiny (" in report and "cpu-baby (810k) T=64 B=16" in report and "![" in report
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    spec = json.loads((out / sweep.SET_FILE).read_text())
    assert spec["command"].startswith("python -m benchmarks.sweep --framework pytorch") and spec["cpu_peak_flops"] > 0
    (out / "report.md").unlink()
    assert sweep.main(["--report", str(out)]) == 0 and (out / "report.md").read_text() == report


def _kept_set(results, name, date, cpu, tokens_per_s, ladder="size"):
    folder = results / name
    folder.mkdir(parents=True)
    spec = {"command": "python -m benchmarks.sweep", "date": date, "device": "cpu", "cpu_peak_flops": 1e11,
            "host": {"cpu": cpu, "cpu_isa": "AVX2", "cpu_bf16": [], "cpu_count": 2}}
    (folder / sweep.SET_FILE).write_text(json.dumps(spec))
    points = [{"ladder": ladder, "size": size, "framework": "jax", "dtype": "float32", "device": "cpu", "block_size": 32,
               "batch_size": 32, "params": num_params(sweep.SIZES[size]), "tokens_per_s": tokens_per_s, "mfu": 0.1}
              for size in ("tiny", "cpu-baby")]
    (folder / "points.jsonl").write_text("".join(json.dumps(p) + "\n" for p in points))


def test_benchmarks_page_plots_the_newest_sweep_of_each_machine(tmp_path):
    results = tmp_path / "results"
    _kept_set(results, "old-epyc", "2026-11-01T10:00:00", "AMD EPYC", 1000.0)
    _kept_set(results, "new-epyc", "2026-12-01T10:00:00", "AMD EPYC", 2000.0)
    _kept_set(results, "xeon", "2026-11-15T10:00:00", "Intel Xeon", 3000.0)
    _kept_set(results, "newest-epyc-contexts", "2026-12-02T10:00:00", "AMD EPYC", 4000.0, ladder="context")
    lines, figures = sweep.benchmarks_section(results, Path("figures"))
    headings = [line for line in lines if line.startswith("## ")]
    assert headings == ["## Training speed against model size: AMD EPYC (AVX2, 2 cores), native bfloat16: none",
                        "## Training speed against model size: Intel Xeon (AVX2, 2 cores), native bfloat16: none"]
    # per machine the newest set with a size ladder: a newer one of other ladders does not hide it
    assert "[new-epyc](results/new-epyc/report.md)" in "\n".join(lines)
    assert "old-epyc" not in "\n".join(lines) and "contexts" not in "\n".join(lines)
    assert sorted(figures) == [Path("figures/sweep-0.png"), Path("figures/sweep-1.png")]
    assert all(png[:8] == b"\x89PNG\r\n\x1a\n" for png in figures.values())


def test_every_point_of_a_ladder_at_every_dtype_and_framework():
    args = sweep.parse_args(["--framework", "jax,torch", "--ladder", "size,context,batch", "--sizes", "tiny,gpt2",
                             "--dtype", "float32,bfloat16"])
    points = sweep.plan(args) if all(map(sweep.is_installed, ("jax", "pytorch"))) else pytest.skip("needs jax and torch")
    ladders = {ladder: [p for p in points if p.ladder == ladder] for ladder in ("size", "context", "batch")}
    assert len(ladders["size"]) == 2 * 2 * 2 and len(ladders["context"]) == 5 * 2 * 2 and len(ladders["batch"]) == 6 * 2 * 2
    assert {p.block_size * p.batch_size for p in ladders["size"] + ladders["context"]} == {sweep.TOKENS_PER_STEP}
    assert [p.batch_size for p in ladders["batch"][::4]] == list(sweep.BATCHES)
    gpt2 = next(p for p in points if p.size == "gpt2").model
    assert (gpt2.n_layer, gpt2.n_embd, gpt2.vocab_size, gpt2.block_size) == (12, 768, 50257, 256)
    assert 123e6 < num_params(gpt2) < 125e6


@pytest.mark.parametrize("args, message", [
    (["--ladder", "width"], "--ladder takes a comma-separated list of size, context, batch; got 'width'"),
    (["--sizes", "gpt5"], "--sizes takes a comma-separated list of tiny, cpu-baby"),
    (["--dtype", "float16"], "--dtype takes a comma-separated list of float32, bfloat16"),
    (["--framework", "mxnet"], "unknown framework 'mxnet'"),
    (["--steps", "0"], "--steps must be at least 1"),
    (["--steps", "x"], "argument --steps: invalid int value"),
    (["--report", "no/such/sweep"], "no/such/sweep holds no sweep.json and points.jsonl"),
])
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, capsys):
    assert sweep.main([*args, "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "out").exists()
