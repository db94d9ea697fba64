"""Scalars in TensorBoard's event-file format, written without TensorFlow or PyTorch.

tensorboard's own EventFileWriter opens its file through `tf.io.gfile`, which imports TensorFlow
when it is installed; its RecordWriter and protobuf messages do not. Every framework's run thus
writes the same file the same way, and `tensorboard --logdir runs/` overlays their curves.
"""
from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.record_writer import RecordWriter


class ScalarWriter:
    def __init__(self, log_dir: Path, start_step: int = 0):
        path = Path(log_dir) / f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        for n in itertools.count(1):  # TensorBoard reads the files in name order: a later one sorts after
            if not path.exists():
                break
            path = path.with_name(f"{path.name.split('.~')[0]}.~{n}")
        self.file = open(path, "wb")
        self.records = RecordWriter(self.file)
        self._write(Event(file_version="brain.Event:2"))
        if start_step:
            # A resumed run: TensorBoard drops what an earlier file logged from this step on.
            self._write(Event(step=start_step, session_log=SessionLog(status=SessionLog.START)))

    def scalars(self, step: int, values: dict[str, float]) -> None:
        summary = Summary(value=[Summary.Value(tag=tag, simple_value=value) for tag, value in values.items()])
        self._write(Event(step=step, summary=summary))

    def _write(self, event: Event) -> None:
        event.wall_time = time.time()
        self.records.write(event.SerializeToString())

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()
