"""benchmarks/harness.py: the child runner, the host capture, noise and a process's own peak memory."""
import json
import subprocess
import sys
import time

import pytest

from benchmarks import harness
from benchmarks.harness import Noise, NoiseMark, host_info, machine_name
from tests.conftest import REPO

_PARENT = """
import subprocess, sys
import numpy as np
big = np.ones(400 * 2**20 // 8)  # 400 MiB, touched
code = ("import json, resource; from benchmarks.harness import peak_rss_bytes; "
        "print(json.dumps([peak_rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024]))")
print(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="VmHWM is Linux's")
def test_a_childs_peak_memory_is_its_own_not_its_parents():
    out = subprocess.run([sys.executable, "-c", _PARENT], cwd=REPO, capture_output=True, text=True, check=True)
    own, inherited = json.loads(out.stdout.strip().splitlines()[-1])
    assert own < 200 * 2**20
    assert inherited > 400 * 2**20  # what getrusage reported: the parent's peak, carried across exec


def test_no_benchmark_reads_ru_maxrss_but_the_harness():
    readers = [p.name for p in (REPO / "benchmarks").glob("*.py") if "ru_maxrss" in p.read_text()]
    assert readers == ["harness.py"]


def test_noise_between_two_marks_is_steal_and_other_processes_share():
    # 2 CPUs at 100 ticks a second over 10 s: 2000 ticks; 1200 busy, of which this process 5 s (500 ticks).
    start = NoiseMark(0.0, (10_000, 100, 50_000), own_cpu_s=1.0)
    end = NoiseMark(10.0, (11_200, 200, 52_000), own_cpu_s=6.0)
    if harness.os.sysconf("SC_CLK_TCK") != 100:
        pytest.skip("the arithmetic above is written for 100 ticks a second")
    noise = Noise.between(start, end)
    assert noise.steal_frac == pytest.approx(100 / 2000)
    assert noise.others_cpu_frac == pytest.approx((1200 - 500) / 2000)
    assert Noise.between(start, NoiseMark(1.0, None, 1.0)).steal_frac is None


def test_host_capture_has_the_commit_and_the_machine():
    host = host_info()
    assert {"cpu", "cpu_isa", "cpu_bf16", "cpu_count", "versions", "git_commit", "date", "python"} <= set(host)
    assert host["versions"]["numpy"]
    assert machine_name({"cpu": "AMD EPYC", "cpu_isa": "AVX2", "cpu_count": 2}) == "AMD EPYC (AVX2, 2 cores)"


def test_a_childs_result_and_failure_lines():
    done = harness.run_child("platform", capture=True)
    assert done.returncode == 0 and done.stdout.strip() == harness.platform.platform()
    ok = subprocess.CompletedProcess([], 0, stdout='progress\n{"step_ms": 1.5}\n', stderr="")
    assert harness.child_result(ok) == {"step_ms": 1.5}
    failed = subprocess.CompletedProcess([], 2, stdout="", stderr="warming up\nerror: --size huge is unknown.\n")
    assert harness.child_failure(failed) == "error: --size huge is unknown."
    assert harness.child_failure(subprocess.CompletedProcess([], 3, "", "")) == "exit code 3, no output"


def test_busy_processes_spin_while_the_block_runs_and_stop_after():
    import psutil
    with harness.busy_processes(2) as spinners:
        processes = [psutil.Process(p.pid) for p in spinners]
        time.sleep(1.0)
        # Each spins as long as it is given a core: even sharing 2 cores with a busy test run, over 0.1 s each.
        assert [p.cpu_times().user > 0.1 for p in processes] == [True, True]
    assert all(p.returncode is not None for p in spinners)
