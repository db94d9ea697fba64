"""Exact resume after a real SIGKILL, during training and during a checkpoint write."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

FRAMEWORKS = [pytest.param("pytorch", marks=pytest.mark.pytorch), pytest.param("jax", marks=pytest.mark.jax),
              pytest.param("tensorflow", marks=pytest.mark.tensorflow)]
ARGS = ["--preset", "tiny", "--device", "cpu", "--max-iters", "60", "--checkpoint-every", "20",
        "--sample-tokens", "16", "--num-samples", "1"]

# Loaded into the child through PYTHONPATH: every checkpoint file write pauses once its temporary
# file is complete, so the test can kill the process in the middle of a checkpoint.
SLOW_WRITES = """
import os, time, safetensors.numpy as st
_save = st.save_file
def save_file(tensors, filename, metadata=None):
    _save(tensors, filename, metadata=metadata)
    if os.environ.get("SLOW_CHECKPOINTS") and "checkpoints" in str(filename):
        time.sleep(float(os.environ["SLOW_CHECKPOINTS"]))
st.save_file = save_file
"""


def _losses(folder):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if r["type"] == "train"}


def _start(framework, out, env=None):
    return subprocess.Popen([sys.executable, "-m", "benchmarks.run", "--framework", framework, *ARGS,
                             "--out", str(out)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, **(env or {})})


def _wait_for(predicate, process, timeout=300):
    deadline = time.time() + timeout
    while not predicate():
        assert process.poll() is None, process.stderr.read()
        assert time.time() < deadline, "timed out waiting for the run"
        time.sleep(0.02)


def _resume(folder):
    result = subprocess.run([sys.executable, "-m", "benchmarks.run", "--resume", str(folder),
                             "--sample-tokens", "16", "--num-samples", "1"], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, shakespeare_path):
    out = tmp_path_factory.mktemp("whole")
    runs = {}

    def run(framework):
        if framework not in runs:
            process = _start(framework, out)
            assert process.wait(timeout=600) == 0, process.stderr.read()
            runs[framework] = _losses(out / framework)
        return runs[framework]
    return run


@pytest.mark.slow
@pytest.mark.parametrize("framework", FRAMEWORKS)
def test_resume_after_sigkill_in_training_matches_an_uninterrupted_run(framework, uninterrupted, tmp_path):
    expected = uninterrupted(framework)
    process = _start(framework, tmp_path)
    folder = tmp_path / framework
    metrics = folder / "metrics.jsonl"
    _wait_for(lambda: metrics.exists() and '"step": 45' in metrics.read_text(), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (folder / "checkpoints" / "latest").read_text() == "step_0000040"
    _resume(folder)
    resumed = _losses(folder)
    assert sorted(resumed) == list(range(60))
    for step, loss in expected.items():
        assert abs(resumed[step] - loss) <= 1e-5, step


# The write itself (temporary files, then a rename, then `latest`) is common/checkpoint.py in every
# framework, and what a framework restores from an older checkpoint is what the test above restores:
# one framework shows that a write cut short costs only the steps since the previous checkpoint.
@pytest.mark.slow
@pytest.mark.pytorch
def test_resume_after_sigkill_during_a_checkpoint_write(uninterrupted, tmp_path):
    framework = "pytorch"
    expected = uninterrupted(framework)
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(SLOW_WRITES)
    process = _start(framework, tmp_path / "runs", env={"PYTHONPATH": str(hook), "SLOW_CHECKPOINTS": "3"})
    folder = tmp_path / "runs" / framework
    # The step-40 checkpoint's temporary model file exists: the kill lands inside that write.
    _wait_for(lambda: any((folder / "checkpoints").glob("step_0000040/.model.safetensors.*")), process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (folder / "checkpoints" / "latest").read_text() == "step_0000020"
    _resume(folder)
    resumed = _losses(folder)
    assert sorted(resumed) == list(range(60))
    for step, loss in expected.items():
        assert abs(resumed[step] - loss) <= 1e-5, step
