"""Third-party log noise off by default (`--verbose` shows it): the run's own lines stay readable."""
from __future__ import annotations

import logging
import os
import re
import sys
import tempfile
import warnings
from contextlib import contextmanager

# absl's C++ log lines ("I0000 00:00:... port.cc:153] oneDNN custom operations are on...") and the
# warning it prints before its first line; the letter is the severity: Info, Warning, Error, Fatal.
_NATIVE_LINE = re.compile(r"^([IWEF])\d{4} \S+\s+\d+ \S+:\d+\]")
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def quiet_third_party(verbose: bool) -> None:
    """Set before any framework is imported, and inherited by every subprocess; a user's own
    TF_CPP_MIN_LOG_LEVEL is kept."""
    if verbose:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's and XLA's INFO and WARNING lines
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    warnings.filterwarnings("ignore")  # the frameworks' deprecation and "this will change" warnings
    for name in ("absl", "jax", "tensorflow", "keras", "torch", "flax", "orbax"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _min_level() -> int:
    level = os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip()
    return int(level) if level.isdigit() else 0


def _below(line: str, level: int) -> bool:
    if line.startswith(_ABSL_PREAMBLE):
        return level > 1
    match = _NATIVE_LINE.match(line)
    return bool(match) and "IWEF".index(match.group(1)) < level


@contextmanager
def native_logs_filtered():
    """Around a framework's import: drop the C++ lines below TF_CPP_MIN_LOG_LEVEL.

    TensorFlow 2.21 logs through absl, which writes every line to stderr until it is initialised,
    whatever TF_CPP_MIN_LOG_LEVEL says: the oneDNN banner comes twice with each import. Those lines
    are written by C++ to file descriptor 2, so they are caught there and the rest passed on.
    """
    level = _min_level()
    if level == 0:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            lines = capture.read().decode("utf-8", errors="replace").splitlines(keepends=True)
            sys.stderr.write("".join(line for line in lines if not _below(line, level)))
            sys.stderr.flush()
