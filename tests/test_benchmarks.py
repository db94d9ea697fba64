"""The harness end to end on the tiny preset: run folders, metrics, report, and clear errors."""
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest

from common.backend import FRAMEWORKS, backend_module, is_installed
from tests.conftest import REPO


def _run(*args, env=None, timeout=600):
    """The harness in a subprocess; env adds to this one's environment, a None value removes a variable."""
    env = {k: v for k, v in {**os.environ, **(env or {})}.items() if v is not None}
    return subprocess.run([sys.executable, "-m", "benchmarks.run", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def pytorch_run(tmp_path_factory, shakespeare_path):
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("runs")
    result = _run("--framework", "torch", "--preset", "tiny", "--device", "cpu", "--out", str(out),
                  "--sample-tokens", "300", "--num-samples", "2")
    assert result.returncode == 0, result.stderr
    return out / "pytorch", result


@pytest.mark.pytorch
def test_run_folder_has_every_file(pytorch_run):
    folder, _ = pytorch_run
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "env.json", "metrics.jsonl", "samples.txt", "summary.json",
            "model.safetensors", "checkpoints"} <= names
    latest = folder / "checkpoints" / (folder / "checkpoints" / "latest").read_text()
    assert latest.name == "step_0000200"
    assert {p.name for p in latest.iterdir()} == {"model.safetensors", "optimizer.safetensors"}
    assert len(list((folder / "checkpoints").glob("step_*"))) == 2  # older ones pruned
    env = json.loads((folder / "env.json").read_text())
    assert env["framework"] == "pytorch" and env["device"] == "cpu" and "torch" in env["versions"]
    from common.flops import cpu_native_bf16, cpu_vector_isa
    assert env["cpu_isa"] == cpu_vector_isa() and env["cpu_bf16"] == cpu_native_bf16()
    if platform.libc_ver()[0] == "glibc":
        assert env["host_malloc"] == "glibc mallopt mmap_max=0 trim_threshold=1073741824 top_pad=67108864"
    assert env["settings"]["decode_compile"] == "eager"  # what else it ran under: Backend.settings
    config = json.loads((folder / "config.json").read_text())
    assert config["model"]["vocab_size"] == 65 and config["train"]["max_iters"] == 200


@pytest.mark.pytorch
def test_tiny_run_learns_well_below_the_unigram_entropy(pytorch_run, shakespeare_path):
    folder, _ = pytorch_run
    summary = json.loads((folder / "summary.json").read_text())
    text = shakespeare_path.read_text()
    counts = Counter(text[int(len(text) * 0.9):])
    total = sum(counts.values())
    unigram_entropy = -sum(c / total * math.log(c / total) for c in counts.values())  # ≈ 3.3 nats
    assert summary["final_val_loss"] < unigram_entropy - 0.5
    assert summary["final_val_bpc"] == pytest.approx(summary["final_val_loss"] / math.log(2), rel=1e-9)
    for key in ("tokens_per_s", "median_step_ms", "p10_step_ms", "p90_step_ms", "mfu", "peak_rss_bytes",
                "generation_tokens_per_s", "kv_cache_speedup", "kv_cache_speedup_whole_sample",
                "time_to_first_step_s"):
        assert summary[key] > 0, key
    # Generation is timed over the window after the one-token prompt and over the whole sample.
    assert (summary["generation_timed_tokens"], summary["sample_tokens"]) == (31, 300)
    assert summary["p10_step_ms"] <= summary["median_step_ms"] <= summary["p90_step_ms"]
    assert set(summary["quality"]) == {"word_validity", "char4_jsd", "distinct_2", "copy_rate",
                                       "speaker_line_share"}


@pytest.mark.pytorch
def test_metrics_are_written_for_every_step_and_eval(pytorch_run):
    folder, _ = pytorch_run
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in records if r["type"] == "train"]
    evals = [r for r in records if r["type"] == "eval"]
    assert [r["step"] for r in train] == list(range(200))
    assert [r["step"] for r in evals] == [0, 50, 100, 150, 200]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.0
    assert all(r["step_time"] > 0 for r in train)


@pytest.mark.pytorch
def test_checkpoint_of_a_run_reloads_with_its_val_loss(pytorch_run):
    from common.backend import load_backend
    from common.checkpoint import load_checkpoint
    from common.config import TrainConfig
    from common.data import eval_batches, prepare
    folder, _ = pytorch_run
    params, info = load_checkpoint(folder / "model.safetensors")
    summary = json.loads((folder / "summary.json").read_text())
    config = json.loads((folder / "config.json").read_text())
    train = TrainConfig(**config["train"])
    backend = load_backend("pytorch")(info["config"], train, params, device="cpu")
    data = prepare()
    batches = eval_batches(data.val, train.batch_size, info["config"].block_size, train.seed, train.eval_iters)
    loss = sum(backend.eval_loss(x, y) for x, y in batches) / len(batches)
    assert info["step"] == 200 and loss == pytest.approx(summary["final_val_loss"], abs=1e-5)


@pytest.mark.pytorch
def test_whole_split_val_loss_is_the_mean_over_every_validation_target(pytorch_run):
    import torch
    from common.checkpoint import load_checkpoint
    from common.data import prepare
    from pytorch_impl.model import GPT, load_canonical
    folder, _ = pytorch_run
    params, info = load_checkpoint(folder / "model.safetensors")
    summary = json.loads((folder / "summary.json").read_text())
    model = GPT(info["config"])
    load_canonical(model, params)
    model.eval()
    T = info["config"].block_size
    val = np.asarray(prepare().val, dtype=np.int64)
    n = (len(val) - 1) // T
    x, y = torch.from_numpy(val[:n * T].reshape(n, T)), torch.from_numpy(val[1:n * T + 1].reshape(n, T))
    with torch.no_grad():  # one pass over all windows, summed per target: no batching, no padding
        logits, _ = model(x)
        total = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1),
                                                  reduction="sum").item()
    assert summary["whole_val_loss"] == pytest.approx(total / (n * T), abs=1e-5)
    assert abs(summary["whole_val_loss"] - summary["final_val_loss"]) < 0.1  # the sample estimates it


@pytest.mark.pytorch
def test_existing_run_folder_is_refused_without_force(pytorch_run):
    folder, _ = pytorch_run
    result = _run("--framework", "pytorch", "--preset", "tiny", "--out", str(folder.parent), "--max-iters", "2")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {folder} already holds a run: pass --resume {folder} to continue it, --force to overwrite "
        f"it, or choose another --out."]


@pytest.mark.parametrize("args, message", [
    (["--framework", "mxnet"], "unknown framework 'mxnet'"),
    (["--framework", "torch", "--preset", "huge"], "unknown preset 'huge'"),
    (["--framework", "torch", "--preset", "tiny", "--set", "n_embd=30", "--set", "n_head=4"], "divisible"),
    (["--framework", "torch", "--preset", "tiny", "--set", "block_size=200000"], "block_size"),
    (["--framework", "torch", "--preset", "tiny", "--dataset", "/no/such/file.txt"], "/no/such/file.txt"),
    (["--framework", "torch", "--preset", "tiny", "--prompt", "héllo€"], "€"),
    (["--framework", "torch", "--preset", "tiny", "--set", "nlayer=3"], "unknown config field 'nlayer'"),
    # Before any subprocess starts: one line, not one per framework and seed.
    (["--framework", "all", "--repeat", "2", "--preset", "tiny", "--set", "lr=fast"], "lr"),
    (["--framework", "all", "--preset", "tiny", "--rounds", "0"], "--rounds and --sample-tokens must be at least 1"),
    (["--framework", "torch", "--device", "npu"], "invalid choice: 'npu'"),
    (["--framework", "torch", "--preset", "tiny", "--max-iters", "ten"], "invalid int value: 'ten'"),
    (["--resume", "/no/such/run"], "is not a run folder"),
    # Values that cannot work are refused before anything runs, the field named.
    (["--framework", "torch", "--preset", "tiny", "--set", "lr=nan"], "lr must be a finite number, got nan"),
    (["--framework", "all", "--preset", "tiny", "--set", "weight_decay=inf"], "weight_decay must be a finite"),
    (["--framework", "torch", "--preset", "tiny", "--set", "block_size=100000000"], "block_size 100000000 is larger"),
    (["--framework", "torch", "--preset", "tiny", "--set", "n_embd=65536", "--set", "n_head=1"], "GiB to train"),
])
def test_bad_arguments_get_one_clear_line(args, message, tmp_path, shakespeare_path):
    result = _run(*args, "--out", str(tmp_path), "--max-iters", "1")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"\xff\xfe caf\xe9", "UTF-8"),
])
def test_bad_corpus_files_get_one_clear_line(content, message, tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    result = _run("--framework", "torch", "--preset", "tiny", "--dataset", str(corpus), "--out", str(tmp_path / "r"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_corrupt_plays_csv_gets_one_clear_line(tmp_path):
    csv = tmp_path / "Shakespeare_data.csv"
    csv.write_text("Dataline,Play\n1,Hamlet\n")
    result = _run("--framework", "torch", "--preset", "tiny", "--dataset", str(csv), "--out", str(tmp_path / "r"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "column" in lines[0].lower(), result.stderr


def _copy_run(pytorch_run, tmp_path):
    """The module's run, to resume: with shorter samples than it made, which take most of a resume."""
    import shutil
    folder = tmp_path / "pytorch"
    shutil.copytree(pytorch_run[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "sample_tokens": 16, "num_samples": 1}))
    return folder


def _records(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.pytorch
def test_resume_finishes_a_run_killed_after_its_last_training_step(pytorch_run, tmp_path):
    """Killed between the final checkpoint and summary.json: the resume evaluates, samples, summarises."""
    folder = _copy_run(pytorch_run, tmp_path)
    expected = json.loads((folder / "summary.json").read_text())
    for written_last in ("summary.json", "samples.txt", "model.safetensors"):
        (folder / written_last).unlink()
    result = _run("--resume", str(folder))
    assert result.returncode == 0, result.stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["final_val_loss"] == pytest.approx(expected["final_val_loss"], abs=1e-5)
    assert summary["whole_val_loss"] == pytest.approx(expected["whole_val_loss"], abs=1e-5)
    # The step times are those the training process logged, not of a process that trained nothing.
    for key in ("median_step_ms", "p10_step_ms", "p90_step_ms", "tokens_per_s", "time_to_first_step_s"):
        assert summary[key] == expected[key], key
    assert [r["step"] for r in _records(folder) if r["type"] == "eval"] == [0, 50, 100, 150, 200]
    assert summary["sample_tokens"] == 16 and len((folder / "samples.txt").read_text()) > 16


@pytest.mark.pytorch
def test_resume_falls_back_past_a_truncated_newest_checkpoint(pytorch_run, tmp_path):
    folder = _copy_run(pytorch_run, tmp_path)
    expected = {r["step"]: r["loss"] for r in _records(folder) if r["type"] == "train"}
    newest = folder / "checkpoints" / "step_0000200" / "model.safetensors"
    newest.write_bytes(newest.read_bytes()[:1000])
    result = _run("--resume", str(folder))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and warnings[0].startswith("[pytorch] warning: skipped unreadable checkpoint(s) "
                                                         "step_0000200 (checkpoint ")
    assert "corrupt or truncated" in warnings[0] and warnings[0].endswith("resuming from step 150.")
    resumed = {r["step"]: r["loss"] for r in _records(folder) if r["type"] == "train"}
    assert sorted(resumed) == list(range(200))
    for step in range(150, 200):  # replayed from the step-150 checkpoint, which was kept
        assert abs(resumed[step] - expected[step]) <= 1e-5, step
    assert sorted(p.name for p in (folder / "checkpoints").glob("step_*")) == ["step_0000150", "step_0000200"]
    assert json.loads((folder / "summary.json").read_text())["max_iters"] == 200


@pytest.mark.pytorch
def test_no_readable_checkpoint_refuses_to_resume_and_keeps_the_run(pytorch_run, tmp_path):
    folder = _copy_run(pytorch_run, tmp_path)
    for step_folder in (folder / "checkpoints").glob("step_*"):
        (step_folder / "optimizer.safetensors").write_bytes(b"not a checkpoint")
    before = (folder / "metrics.jsonl").read_text()
    result = _run("--resume", str(folder))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: no checkpoint in ") and "step_0000200 (" in lines[0] and "step_0000150 (" in lines[0]
    assert (folder / "metrics.jsonl").read_text() == before  # nothing written so far is lost


@pytest.mark.pytorch
def test_event_file_holds_the_curves_for_tensorboard(pytorch_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    folder, _ = pytorch_run
    events = EventAccumulator(str(folder))
    events.Reload()
    assert set(events.Tags()["scalars"]) == {"train/loss", "train/lr", "train/step_ms", "eval/train_loss",
                                             "eval/val_loss"}
    records = _records(folder)
    train = [r for r in records if r["type"] == "train"]
    loss = events.Scalars("train/loss")
    assert [e.step for e in loss] == list(range(200))
    assert [e.value for e in loss] == pytest.approx([r["loss"] for r in train], rel=1e-6)  # float32 in the file
    assert [e.value for e in events.Scalars("train/lr")] == pytest.approx([r["lr"] for r in train], rel=1e-6)
    val = events.Scalars("eval/val_loss")
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in val] == [
        (r["step"], r["val_loss"]) for r in records if r["type"] == "eval"]


def test_resumed_event_file_tells_tensorboard_to_drop_the_replayed_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from benchmarks.tensorboard import ScalarWriter
    first = ScalarWriter(tmp_path)
    for step in range(10):
        first.scalars(step, {"train/loss": 1.0})
    first.close()
    resumed = ScalarWriter(tmp_path, start_step=6)  # a resume from the step-6 checkpoint
    for step in range(6, 12):
        resumed.scalars(step, {"train/loss": 2.0})
    resumed.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(s, 1.0) for s in range(6)] + [
        (s, 2.0) for s in range(6, 12)]


@pytest.mark.pytorch
def test_non_finite_loss_stops_with_the_last_good_checkpoint(tmp_path, shakespeare_path):
    result = _run("--framework", "torch", "--preset", "tiny", "--max-iters", "200", "--checkpoint-every", "5",
                  "--set", "lr=30", "--set", "min_lr=30", "--set", "warmup_iters=0", "--set", "grad_clip=0",
                  "--out", str(tmp_path))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "loss" in lines[-1] and "--resume" in lines[-1], result.stderr
    from common.checkpoint import load_training_state
    state = load_training_state(tmp_path / "pytorch")
    assert state.step > 0 and all(np.isfinite(v).all() for v in state.params.values())


def test_missing_framework_is_one_clear_line(monkeypatch, capsys):
    from benchmarks import run
    monkeypatch.setattr(run, "is_installed", lambda framework: False)
    monkeypatch.setattr("common.backend.missing_modules", lambda framework: ["jax"])
    assert run.main(["--framework", "jax", "--preset", "tiny"]) == 2
    assert capsys.readouterr().err.strip() == 'error: jax is not installed (missing jax): pip install -e ".[jax]".'


@pytest.mark.slow
def test_all_frameworks_side_by_side_with_one_crashing(tmp_path, shakespeare_path):
    """`all` runs each installed framework in its own subprocess; one crashing loses nothing else."""
    installed = [f for f in FRAMEWORKS if is_installed(f)]
    if len(installed) < 2:
        pytest.skip("needs at least two frameworks installed")
    crashing = installed[-1]
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(
        "import importlib.abc, os, sys\n"
        "class _Crash(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == os.environ['CRASH_MODULE']:\n"
        "            raise RuntimeError('injected crash')\n"
        "sys.meta_path.insert(0, _Crash())\n")
    out = tmp_path / "runs"
    result = _run("--framework", "all", "--preset", "tiny", "--max-iters", "30", "--sample-tokens", "60",
                  "--num-samples", "1", "--out", str(out),
                  env={"PYTHONPATH": str(hook), "CRASH_MODULE": backend_module(crashing),
                       "TF_CPP_MIN_LOG_LEVEL": None})  # tests/conftest.py sets it: the harness must, itself
    assert result.returncode == 1  # not everything finished
    # Every line is the harness' own, or the injected crash's traceback: no framework banners.
    ours = re.compile(r"^(\[(pytorch|tensorflow|jax|keras-jax)\] |report: |note: |Traceback |  |RuntimeError: injected)")
    assert [line for line in result.stderr.splitlines() if not ours.match(line)] == [], result.stderr
    survivors = [f for f in installed if f != crashing]
    for framework in survivors:
        assert (out / framework / "summary.json").exists(), framework
    assert not (out / crashing / "summary.json").exists()
    assert f"{crashing} (seed 1337): failed" in (out / "problems.txt").read_text()
    report = (out / "report.md").read_text()
    for framework in survivors:
        assert f"| {framework} | cpu |" in report
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 3 and "src=\"http" not in page


@pytest.mark.pytorch
def test_profile_writes_the_framework_trace(tmp_path, shakespeare_path):
    result = _run("--framework", "torch", "--preset", "tiny", "--max-iters", "20", "--profile", "--out", str(tmp_path),
                  "--sample-tokens", "8", "--num-samples", "1")
    assert result.returncode == 0, result.stderr
    traces = list((tmp_path / "pytorch" / "profile").glob("*.pt.trace.json"))
    assert len(traces) == 1 and '"traceEvents"' in traces[0].read_text()


@pytest.mark.parametrize("framework, replicas, device, user_flags, expected", [
    ("jax", 2, "cpu", "", "--xla_force_host_platform_device_count=2 "
                          "--xla_cpu_enable_concurrency_optimized_scheduler=false"),
    ("all", 4, "auto", "--xla_cpu_enable_concurrency_optimized_scheduler=true",
     "--xla_cpu_enable_concurrency_optimized_scheduler=true --xla_force_host_platform_device_count=4"),
    ("jax", 2, "cpu", "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=8"),
    ("jax", 1, "cpu", "", ""),
    ("jax", 2, "gpu", "", ""),
    ("pytorch", 2, "cpu", "", ""),
])
def test_jax_host_devices_for_cpu_replicas_keep_the_users_flags(framework, replicas, device, user_flags,
                                                                 expected, monkeypatch):
    from benchmarks.run import _host_devices_for_jax
    monkeypatch.setenv("XLA_FLAGS", user_flags)
    _host_devices_for_jax(framework, replicas, device)
    assert os.environ["XLA_FLAGS"] == expected


def test_torchrun_processes_get_the_whole_cpus_peak(monkeypatch, tmp_path):
    """Each DDP process has its share of the threads: a peak measured inside one would be a fraction.
    The launcher measures it and puts it in the run's config.json, which every worker reads."""
    from benchmarks import run
    from benchmarks.run_config import RunConfig
    from common.config import get_preset
    seen = []
    monkeypatch.setattr(run.subprocess, "run", lambda command, cwd, env: seen.append(command) or
                        subprocess.CompletedProcess(command, 0))
    monkeypatch.setattr(run, "cpu_peak_flops", lambda: 123e9)
    config = RunConfig("pytorch", "tiny", "tinyshakespeare", "tinyshakespeare", "char", None, "cpu", 2,
                       *get_preset("tiny"))
    assert run._torchrun(tmp_path, config, verbose=False) == 0
    assert RunConfig.load(tmp_path).cpu_peak_flops == 123e9
    assert seen[0][-2:] == ["--run-dir", str(tmp_path)] and "--nproc_per_node=2" in seen[0]
    config.cpu_peak_flops = 456e9  # a parent's figure, shared by a whole comparison
    config.save(tmp_path)
    run._torchrun(tmp_path, config, verbose=False)
    assert RunConfig.load(tmp_path).cpu_peak_flops == 456e9


def test_out_naming_a_file_is_one_clear_line(tmp_path):
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    result = _run("--framework", "torch", "--preset", "tiny", "--out", str(file))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --out {file} is a file: name a folder (it is made if it does not exist)."]
    assert file.read_text() == "mine"


@pytest.mark.parametrize("level, kept", [
    ("2", ["E0000 00:00:1.5  7 a.cc:3] an error", "our own line"]),
    ("0", ["WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
           "I0000 00:00:1.5  7 port.cc:153] oneDNN custom operations are on.", "W0000 00:00:1.5  7 a.cc:2] careful",
           "E0000 00:00:1.5  7 a.cc:3] an error", "our own line"]),
])
def test_native_log_lines_below_the_level_are_dropped(level, kept, monkeypatch, capfd):
    """What TensorFlow's absl prints on import, written where C++ writes it, to file descriptor 2."""
    from benchmarks.quiet import native_logs_filtered
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", level)
    with native_logs_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
                    b"I0000 00:00:1.5  7 port.cc:153] oneDNN custom operations are on.\n"
                    b"W0000 00:00:1.5  7 a.cc:2] careful\nE0000 00:00:1.5  7 a.cc:3] an error\nour own line\n")
    assert capfd.readouterr().err.splitlines() == kept


@pytest.mark.parametrize("verbose, users_level, level", [(False, None, "2"), (False, "0", "0"), (True, None, None)])
def test_third_party_logs_are_off_unless_verbose(verbose, users_level, level, monkeypatch):
    from benchmarks.quiet import quiet_third_party
    if users_level is None:
        monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    else:
        monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", users_level)  # a user's own choice is kept
    monkeypatch.delenv("GRPC_VERBOSITY", raising=False)
    quiet_third_party(verbose)
    assert os.environ.get("TF_CPP_MIN_LOG_LEVEL") == level


def test_all_writes_each_runs_config_and_children_read_only_their_folder(monkeypatch, tmp_path, shakespeare_path):
    """The parent resolves every run; a child is told nothing but its folder."""
    from benchmarks import run
    from benchmarks.run_config import RunConfig
    children = []
    monkeypatch.setattr(run, "run_child", lambda module, *args: children.append([module, *args]) or
                        subprocess.CompletedProcess(args, 0))
    monkeypatch.setattr(run, "is_installed", lambda framework: framework != "keras-jax")
    monkeypatch.setattr(run, "missing_modules", lambda framework: ["keras"])
    monkeypatch.setattr(run, "cpu_peak_flops", lambda: 321e9)
    argv = ["--framework", "all", "--preset", "tiny", "--repeat", "2", "--rounds", "2", "--set", "seed=7",
            "--no-report", "--out", str(tmp_path)]
    assert run.main(argv) == 0
    # The frameworks take turns: every one runs a seed in a round before any runs again.
    order = [(r, seed, fw) for r in (1, 2) for seed in (7, 8) for fw in ("pytorch", "tensorflow", "jax")]
    folders = [tmp_path / f"{fw}-seed{seed}-round{r}" for r, seed, fw in order]
    assert children == [["benchmarks.run", "--run-dir", str(f)] for f in folders]
    configs = [RunConfig.load(f) for f in folders]
    assert [(c.round, c.train.seed, c.framework) for c in configs] == order
    assert {c.compiled_decode for c in configs} == {True}  # a comparison times eager PyTorch's decode compiled too
    assert {c.cpu_peak_flops for c in configs} == {321e9}
    assert {c.command for c in configs} == {" ".join(["python -m benchmarks.run", *argv])}
    assert (tmp_path / "problems.txt").read_text() == "keras-jax: not installed (missing keras), skipped\n"


# --- --init-from: a run that starts from a Hugging Face GPT-2 folder ---------------------------------

@pytest.fixture(scope="module")
def gpt2_run(tmp_path_factory):
    """A tiny random GPT-2 folder (tests/test_hf_gpt2.py) trained 4 steps by PyTorch on a small text file,
    with its block cropped from 48 to 32 positions."""
    pytest.importorskip("torch")
    pytest.importorskip("transformers", reason="the tests build their GPT-2 with transformers")
    from tests.test_hf_gpt2 import save_gpt2_folder, tiny_bpe, tiny_gpt2
    root = tmp_path_factory.mktemp("gpt2")
    tokenizer = tiny_bpe()
    hf_model = tiny_gpt2(tokenizer)
    folder = save_gpt2_folder(hf_model, tokenizer, root / "tiny-gpt2")
    corpus = root / "fox.txt"
    corpus.write_text("the quick brown fox jumps over the lazy dog\nthe dog sleeps; the fox runs.\n" * 150)
    env = {"NANOGPT_DATA_DIR": str(root / "data")}
    result = _run("--framework", "torch", "--preset", "tiny", "--device", "cpu", "--init-from", str(folder),
                  "--dataset", str(corpus), "--out", str(root / "runs"), "--max-iters", "4", "--set", "block_size=32",
                  "--set", "eval_iters=2", "--sample-tokens", "8", "--num-samples", "1", env=env)
    assert result.returncode == 0, result.stderr
    return root / "runs" / "pytorch", folder, hf_model, corpus, env


@pytest.mark.pytorch
def test_init_from_starts_at_the_gpt2_weights_on_its_own_tokens(gpt2_run, monkeypatch):
    import torch
    from torch.nn import functional as F
    from common.data import eval_batches, prepare
    from common.hf_gpt2 import load_gpt2
    run, folder, hf_model, corpus, env = gpt2_run
    config = json.loads((run / "config.json").read_text())
    assert config["init_from"] == str(folder.resolve()) and config["tokenizer"] == "gpt2"
    assert config["model"] == {"vocab_size": 289, "block_size": 32, "n_layer": 2, "n_head": 4, "n_embd": 32,
                               "dropout": 0.0, "bias": True, "gelu_approximate": True, "layer_norm_eps": 1e-5}
    assert config["train"]["lr"] == 3e-3 and config["train"]["max_iters"] == 4  # the preset's, as --set left it
    # The first evaluation is the Hugging Face model's own loss on the same batches.
    monkeypatch.setenv("NANOGPT_DATA_DIR", env["NANOGPT_DATA_DIR"])
    data = prepare(str(corpus), load_gpt2(folder).tokenizer)
    train = config["train"]
    first = next(r for r in _records(run) if r["type"] == "eval")
    assert first["step"] == 0
    for split, tokens in (("train", data.train), ("val", data.val)):
        batches = eval_batches(tokens, train["batch_size"], 32, train["seed"], train["eval_iters"])
        with torch.no_grad():
            losses = [F.cross_entropy(hf_model(torch.as_tensor(x, dtype=torch.long)).logits.flatten(0, 1),
                                      torch.as_tensor(y, dtype=torch.long).flatten()).item() for x, y in batches]
        assert abs(first[f"{split}_loss"] - np.mean(losses)) <= 1e-4, split
    assert json.loads((run / "summary.json").read_text())["max_iters"] == 4


@pytest.mark.pytorch
def test_init_from_run_resumes_from_its_config(gpt2_run, tmp_path):
    import shutil
    run, _, _, _, env = gpt2_run
    expected = json.loads((run / "summary.json").read_text())
    run = shutil.copytree(run, tmp_path / "pytorch")
    (run / "summary.json").unlink()
    result = _run("--resume", str(run), env=env)
    assert result.returncode == 0, result.stderr
    assert json.loads((run / "summary.json").read_text())["final_val_loss"] == pytest.approx(
        expected["final_val_loss"], abs=1e-5)


@pytest.mark.parametrize("args, message", [
    (["--set", "n_layer=3"], "--set n_layer cannot change a model started from"),
    (["--set", "gelu_approximate=false"], "--set gelu_approximate cannot change"),
    (["--set", "block_size=64"], "block_size 64 is longer than the 48 positions of"),
    (["--tokenizer", "bpe"], "--init-from trains with the model's own tokenizer"),
])
def test_init_from_shape_changes_are_one_line(gpt2_run, tmp_path, args, message):
    _, folder, _, corpus, env = gpt2_run
    result = _run("--framework", "torch", "--preset", "tiny", "--init-from", str(folder), "--dataset", str(corpus),
                  "--out", str(tmp_path), *args, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


@pytest.mark.parametrize("name, message", [
    ("gpt2", "cannot fetch 'gpt2' from the Hugging Face Hub and it is not in its cache"),
    ("./no/such/folder", "neither a folder nor a Hugging Face model id"),
    ("EMPTY", "no config.json in"),
])
def test_init_from_bad_names_and_folders_are_one_line(tmp_path, name, message):
    if name == "EMPTY":
        name = str(tmp_path / "empty")
        (tmp_path / "empty").mkdir()
    result = _run("--framework", "torch", "--preset", "tiny", "--init-from", name, "--out", str(tmp_path / "r"),
                  env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_CACHE": None})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and message in lines[0], result.stderr


def test_all_with_init_from_starts_every_run_from_the_folder(gpt2_run, monkeypatch, tmp_path):
    from benchmarks import run
    from benchmarks.run_config import RunConfig
    _, folder, _, corpus, env = gpt2_run
    monkeypatch.setenv("NANOGPT_DATA_DIR", env["NANOGPT_DATA_DIR"])
    monkeypatch.setattr(run, "run_child", lambda module, *args: subprocess.CompletedProcess(args, 0))
    monkeypatch.setattr(run, "cpu_peak_flops", lambda: 321e9)
    assert run.main(["--framework", "all", "--preset", "tiny", "--init-from", str(folder), "--dataset", str(corpus),
                     "--set", "block_size=40", "--set", "dropout=0.1", "--no-report", "--out", str(tmp_path)]) == 0
    configs = [RunConfig.load(tmp_path / fw) for fw in FRAMEWORKS if is_installed(fw)]
    assert configs and {c.init_from for c in configs} == {str(folder.resolve())}
    assert {(c.tokenizer, c.model.vocab_size, c.model.block_size, c.model.dropout, c.model.gelu_approximate)
            for c in configs} == {("gpt2", 289, 40, 0.1, True)}


def test_a_step_draws_all_its_micro_batches_and_counts_their_tokens():
    from dataclasses import replace

    from benchmarks.loop import step_batch, tokens_per_step_of
    from common.config import get_preset
    from common.data import get_batch
    model, train = get_preset("tiny")
    tokens = np.arange(5000, dtype=np.uint16) % 65
    # grad_accum 1: the batch every run drew before micro-batches existed (resumed runs rely on it)
    for got, want in zip(step_batch(tokens, train, 32, 7), get_batch(tokens, 16, 32, train.seed, 7)):
        assert np.array_equal(got, want)
    accumulating = replace(train, grad_accum=4)
    x, y = step_batch(tokens, accumulating, 32, 7)
    assert x.shape == y.shape == (64, 32) and np.array_equal(x, get_batch(tokens, 64, 32, train.seed, 7)[0])
    assert tokens_per_step_of(accumulating, model) == 4 * tokens_per_step_of(train, model) == 4 * 16 * 32


def test_init_from_takes_the_presets_block_size_unless_set(gpt2_run, monkeypatch, tmp_path):
    """A preset's block_size is a training setting: a folder with more positions is cropped to it."""
    from benchmarks import run
    from benchmarks.run_config import RunConfig
    _, folder, _, corpus, env = gpt2_run
    monkeypatch.setenv("NANOGPT_DATA_DIR", env["NANOGPT_DATA_DIR"])
    monkeypatch.setattr(run, "run_child", lambda module, *args: subprocess.CompletedProcess(args, 0))
    monkeypatch.setattr(run, "cpu_peak_flops", lambda: 321e9)
    for args, block_size in (([], 32), (["--set", "block_size=48"], 48)):  # tiny's 32; the folder has 48
        out = tmp_path / str(block_size)
        assert run.main(["--framework", "all", "--preset", "tiny", "--init-from", str(folder), "--dataset",
                         str(corpus), *args, "--no-report", "--out", str(out)]) == 0
        configs = [RunConfig.load(out / fw) for fw in FRAMEWORKS if is_installed(fw)]
        assert configs and {c.model.block_size for c in configs} == {block_size}


@pytest.mark.slow
def test_finetune_preset_from_a_gpt2_folder_in_every_framework(gpt2_run, tmp_path):
    """The issue's fine-tune command on the tiny GPT-2 folder: every installed framework starts from the
    same weights (the same first evaluation), its validation loss falls over 10 updates of 32
    accumulated one-row micro-batches, and the report compares the runs as it does pretraining runs."""
    _, folder, _, corpus, env = gpt2_run
    out = tmp_path / "finetune"
    result = _run("--framework", "all", "--init-from", str(folder), "--preset", "finetune-shakespeare",
                  "--max-iters", "10", "--dataset", str(corpus), "--device", "cpu", "--set", "eval_iters=2",
                  "--sample-tokens", "8", "--num-samples", "1", "--out", str(out), env=env)
    assert result.returncode == 0, result.stderr
    installed = [fw for fw in FRAMEWORKS if is_installed(fw)]
    first_losses = []
    for framework in installed:
        evals = [r for r in _records(out / framework) if r["type"] == "eval"]
        assert [r["step"] for r in evals] == [0, 5, 10], framework
        assert evals[-1]["val_loss"] < evals[0]["val_loss"], framework
        first_losses.append(evals[0]["val_loss"])
        config = json.loads((out / framework / "config.json").read_text())
        train, model = config["train"], config["model"]
        assert (train["grad_accum"], train["batch_size"], model["block_size"]) == (32, 1, 48)  # 48: the folder's
    assert max(first_losses) - min(first_losses) <= 1e-4
    report = (out / "report.md").read_text()
    assert all(f"| {framework} | cpu |" in report for framework in installed)
