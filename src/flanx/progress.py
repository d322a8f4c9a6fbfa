"""Logging set-up and the progress convention for long work: one periodic line per N steps.

`setup_logging()` gives the `flanx` logger its console handler;
`setup_process_logging(model_dir, process_id)` sends every record of one
process of a run to `MODEL_DIR/logs/process_{i}.log` and leaves INFO lines on
the console to process 0.

The training loop, evaluation and inference (over their examples) and the data
benchmark report through `Progress`; the study reports through the training and
evaluation runs it makes. (`flanx data prepare` prints a line per dataset and
`flanx cache` leaves progress to Beam's runner.) A line looks like

    [train] step 120/1000 (12.0%) loss=2.3140 lr=1.00e-03 tokens/s=4,210 eta=3m41s

with step, the caller's scalars, throughput since the previous line and ETA.
Lines go to the `flanx` logger (stderr by default), so a run's log is
greppable and a terminal stays readable without a progress-bar dependency.
"""
from __future__ import annotations

import logging
import os
import sys
import tempfile
import time

from flanx import io

logger = logging.getLogger("flanx")


class ConsoleHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record is emitted (tools and tests swap it), so a
    handler set up by one command never writes to a stream another has closed."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property always wins
        pass


def setup_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    """Configure the `flanx` logger once: stderr, and optionally a per-process file."""
    if getattr(logger, "_flanx_configured", False) and log_file is None:
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not getattr(logger, "_flanx_configured", False):
        handler = ConsoleHandler()
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
        logger._flanx_configured = True
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)


def process_log_path(model_dir: str, process_id: int) -> str:
    """`MODEL_DIR/logs/process_{i}.log`; for a remote MODEL_DIR a local file (FLANX_LOG_DIR or the temp dir)."""
    name = f"process_{process_id}.log"
    if io.is_remote(model_dir):
        local = os.environ.get("FLANX_LOG_DIR") or os.path.join(tempfile.gettempdir(), "flanx_logs")
        return os.path.join(local, name)
    return os.path.join(model_dir, "logs", name)


def setup_process_logging(model_dir: str, process_id: int, level: int = logging.INFO) -> str:
    """Log every record at `level`+ to this process's file; only process 0 shows INFO on the console.

    The file handler goes on the root logger and on the `flanx` logger when that one does not
    propagate (`setup_logging` configures it so); other processes' console handlers there drop to
    WARNING. With a remote MODEL_DIR the local file is copied to MODEL_DIR/logs/ at exit.
    Returns the local log file path.
    """
    setup_logging(level)  # the `flanx` console handler: progress lines reach the terminal, not only the file
    path = process_log_path(model_dir, process_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = logging.Formatter(f"%(asctime)s [p{process_id}] %(levelname)s %(name)s: %(message)s")
    file_handler = logging.FileHandler(path, mode="a")
    console = ConsoleHandler()  # library warnings still reach the console
    console.setLevel(logging.WARNING)
    for h in (file_handler, console):
        h.setFormatter(fmt)
        h._flanx_process_log = True
    root, flanx_logger = logging.getLogger(), logging.getLogger("flanx")
    for lg in [root] + ([flanx_logger] if not flanx_logger.propagate else []):
        for h in [h for h in lg.handlers if getattr(h, "_flanx_process_log", False)]:
            lg.removeHandler(h)
        if lg.level == logging.NOTSET or lg.level > level:
            lg.setLevel(level)
        if process_id != 0:
            for h in lg.handlers:
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    h.setLevel(max(h.level, logging.WARNING))
        lg.addHandler(file_handler)
    root.addHandler(console)
    if io.is_remote(model_dir):
        import atexit
        atexit.register(_upload_log, path, f"{model_dir.rstrip('/')}/logs/{os.path.basename(path)}")
    return path


def _upload_log(local: str, remote: str) -> None:
    try:
        with open(local) as src, io.open_output(remote) as dst:
            dst.write(src.read())
    except Exception as e:  # noqa: BLE001 - a failed log upload must not mask the run's own exit status
        logger.warning("could not copy %s to %s: %s", local, remote, e)


def format_duration(seconds: float) -> str:
    """`3h02m`, `3m41s`, `12s`."""
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    if h:
        return f"{h}h{m:02d}m"
    if m:
        return f"{m}m{s:02d}s"
    return f"{s}s"


def _fmt(value) -> str:
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4f}"
    return str(value)


class Progress:
    """Periodic progress lines with throughput and ETA.

    `total` is the number of steps (None when unknown), `every` how many steps
    between lines, `unit` what throughput counts (`tokens`, `examples`). Call
    `update(step, n_units, **scalars)` after each step; throughput and ETA are
    measured since the previous line, so only the first line includes compilation. For work
    counted in items (evaluation and inference examples), `advance(n)` adds `n`
    items and writes a line whenever the count passes a multiple of `every`
    (`what="examples"` names the count in the line).
    """

    def __init__(self, name: str, total: int | None, every: int = 10, unit: str = "tokens",
                 start_step: int = 0, emit=None, clock=time.perf_counter, what: str = "step"):
        self.name, self.total, self.every, self.unit = name, total, max(1, every), unit
        self.what, self._done = what, start_step
        self.start_step = start_step
        self._clock = clock
        self._emit = emit or logger.info
        self._t0 = clock()
        self._last_t, self._last_step, self._units = self._t0, start_step, 0.0
        self.lines: list[str] = []

    def update(self, step: int, n_units: float = 0.0, force: bool = False, **scalars) -> str | None:
        self._units += n_units
        if not force and (step - self.start_step) % self.every and step != self.total:
            return None
        now = self._clock()
        dt = max(now - self._last_t, 1e-9)
        rate = self._units / dt
        steps_per_s = (step - self._last_step) / dt
        parts = [f"[{self.name}] {self.what} {step}"]
        if self.total:
            parts[0] += f"/{self.total} ({100.0 * step / self.total:.1f}%)"
        parts += [f"{k}={_fmt(v)}" for k, v in scalars.items()]
        parts.append(f"{self.unit}/s={rate:,.0f}")
        if self.total and steps_per_s > 0:
            parts.append(f"eta={format_duration((self.total - step) / steps_per_s)}")
        line = " ".join(parts)
        self._emit(line)
        self.lines.append(line)
        self._last_t, self._last_step, self._units = now, step, 0.0
        return line

    def advance(self, n: int, **scalars) -> str | None:
        """Count `n` more items; a line when the count passes a multiple of `every`, and at `total`."""
        before, self._done = self._done, self._done + n
        crossed = before // self.every != self._done // self.every or bool(self.total and self._done >= self.total)
        return self.update(self._done, n, force=crossed, **scalars)
