"""The harness CLI under generated arguments: every outcome is a clean exit, never a traceback."""
import dataclasses
import io
from contextlib import redirect_stderr, redirect_stdout

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from benchmarks import run
from common.config import GPTConfig, TrainConfig

TEXT = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x2FF), max_size=12)
NUMBER = st.one_of(st.integers(-3, 300).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str), TEXT)
FIELDS = [f.name for config in (GPTConfig, TrainConfig) for f in dataclasses.fields(config)]
# Values a user may type for any field: negative, zero, huge, non-finite, past float range, not numbers.
VALUE = st.one_of(
    st.integers(-3, 300).map(str),
    st.integers(-10**30, 10**30).map(str),
    st.integers(0, 40).map(lambda k: str(10**k)),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
    st.sampled_from(["nan", "inf", "-inf", "1e400", "-1e400", "1e-400", "0", "-0", "0.0", "1e3", "true", "off",
                     "float32", "bfloat16", "", " ", "0x10", "1_000", "½"]),
    TEXT,
)
OPTIONS = st.one_of(
    st.tuples(st.just("--framework"), st.sampled_from(["pytorch", "torch", "jax", "flax", "tf", "keras", "all", "mxnet", ""])),
    st.tuples(st.just("--preset"), st.sampled_from(["tiny", "cpu-baby", "auto", "shakespeare-char", "huge"])),
    st.tuples(st.just("--device"), st.sampled_from(["cpu", "gpu", "tpu", "auto", "npu"])),
    st.tuples(st.just("--dtype"), st.sampled_from(["float32", "bfloat16", "float16"])),
    st.tuples(st.sampled_from(["--max-iters", "--seed", "--num-samples", "--sample-tokens", "--top-k",
                               "--top-p", "--temperature", "--vocab-size", "--checkpoint-every", "--repeat",
                               "--replicas"]), NUMBER),
    st.tuples(st.just("--set"), st.builds(lambda f, v: f"{f}={v}", st.sampled_from(FIELDS + ["nope"]), NUMBER)),
    st.tuples(st.just("--set"), TEXT),
    st.tuples(st.just("--tokenizer"), st.sampled_from(["char", "bpe", "word"])),
    st.tuples(st.just("--dataset"), st.sampled_from(["tinyshakespeare", "shakespeare-plays", "/no/such.txt",
                                                     "/no/such.csv", "/dev/null"])),
    st.tuples(st.just("--prompt"), TEXT),
    st.tuples(st.just("--resume"), st.sampled_from(["/no/such/run", "."])),
    st.tuples(st.sampled_from(["--compile", "--no-compile", "--profile", "--force", "--bogus"])),
    st.tuples(TEXT),
)


class ReachedTraining(Exception):
    """Raised in place of building a model: every check before training has passed."""


@pytest.fixture
def harness(monkeypatch, tmp_path):
    def stop(*args, **kwargs):
        raise ReachedTraining
    monkeypatch.setattr(run, "run_folder", stop)  # everything is resolved and checked before it
    monkeypatch.setattr(run, "_run_many", stop)  # `all` / --repeat: subprocesses would train
    monkeypatch.setattr(run, "has_accelerator", lambda framework, device: device in ("gpu", "tpu"))
    return tmp_path


@pytest.mark.slow
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(options=st.lists(OPTIONS, max_size=6))
def test_generated_arguments_never_escape_as_tracebacks(harness, options, shakespeare_path):
    argv = [part for option in options for part in option] + ["--out", str(harness / "runs"), "--force"]
    try:
        status, err = _main(argv)
    except SystemExit as e:  # only --help exits from inside argparse
        event("help")
        assert e.code == 0, argv
        return
    if status is not None:
        _assert_one_line_refusal(argv, status, err)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(settings_=st.lists(st.tuples(st.sampled_from(FIELDS), VALUE), min_size=1, max_size=3))
def test_generated_config_values_are_refused_in_one_line_or_reach_training(harness, settings_, shakespeare_path):
    """--set FIELD=VALUE for every field of GPTConfig and TrainConfig, checked without training."""
    argv = ["--framework", "pytorch", "--preset", "tiny", "--out", str(harness / "runs"), "--force"]
    argv += [part for field, value in settings_ for part in ("--set", f"{field}={value}")]
    status, err = _main(argv)
    if status is not None:
        _assert_one_line_refusal(argv, status, err)


def _main(argv: list[str]) -> tuple[int | None, str]:
    """run.main's exit status and stderr; None where it got as far as training (the fixture stops it)."""
    err = io.StringIO()
    try:
        with redirect_stderr(err), redirect_stdout(io.StringIO()):
            status = run.main(argv)
    except ReachedTraining:
        event("reached training")
        return None, err.getvalue()
    event(f"exit {status}")
    return status, err.getvalue()


def _assert_one_line_refusal(argv: list[str], status: int, err: str) -> None:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), (argv, err)
