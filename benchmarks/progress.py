"""A progress line per run: redrawn in place on a terminal, plain log lines otherwise."""
import sys
import time


class Progress:
    def __init__(self, total: int, label: str, stream=sys.stderr, log_every: int = 50, start: int = 0):
        self.total, self.label, self.stream, self.first = total, label, stream, start
        self.tty = stream.isatty()
        self.log_every = log_every
        self.start = time.perf_counter()
        self._last_draw = 0.0

    def update(self, step: int, loss: float, tokens_per_s: float | None) -> None:
        done = step + 1
        now = time.perf_counter()
        if self.tty and now - self._last_draw < 0.1 and done < self.total:
            return
        if not self.tty and done % self.log_every and done != self.total:
            return
        self._last_draw = now
        elapsed = now - self.start
        eta = elapsed / max(done - self.first, 1) * (self.total - done)
        rate = f"{tokens_per_s:,.0f} tok/s" if tokens_per_s else "-- tok/s"
        if self.tty:
            width = 24
            filled = int(width * done / self.total)
            bar = "█" * filled + "·" * (width - filled)
            self.stream.write(f"\r{self.label} {bar} {done}/{self.total} loss {loss:.4f} {rate} "
                              f"ETA {eta:5.0f}s ")
            if done == self.total:
                self.stream.write("\n")
        else:
            self.stream.write(f"{self.label} step {done}/{self.total} loss {loss:.4f} {rate} ETA {eta:.0f}s\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\n" if self.tty else "") + f"{self.label} {text}\n")
        self.stream.flush()
