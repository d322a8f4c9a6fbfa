"""The progress convention for long work: one periodic line per N steps.

Every long loop in flanx (training, evaluation, data benchmarks, the study)
reports through `Progress`, which logs a line like

    [train] step 120/1000 (12.0%) loss=2.3140 lr=1.00e-03 tokens/s=4,210 eta=3m41s

with step, the caller's scalars, throughput and ETA. Lines go to the `flanx`
logger (stderr by default), so a run's log is greppable and a terminal stays
readable without a progress-bar dependency.
"""
from __future__ import annotations

import logging
import sys
import time

logger = logging.getLogger("flanx")


def setup_logging(level: int = logging.INFO, log_file: str | None = None) -> None:
    """Configure the `flanx` logger once: stderr, and optionally a per-process file."""
    if getattr(logger, "_flanx_configured", False) and log_file is None:
        return
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S")
    if not getattr(logger, "_flanx_configured", False):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(fmt)
        logger.addHandler(handler)
        logger.setLevel(level)
        logger.propagate = False
        logger._flanx_configured = True
    if log_file:
        fh = logging.FileHandler(log_file)
        fh.setFormatter(fmt)
        logger.addHandler(fh)


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
    `update(step, n_units, **scalars)` after each step; the first line after
    `warmup` steps excludes compilation from the throughput estimate.
    """

    def __init__(self, name: str, total: int | None, every: int = 10, unit: str = "tokens",
                 start_step: int = 0, emit=None, clock=time.perf_counter):
        self.name, self.total, self.every, self.unit = name, total, max(1, every), unit
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
        parts = [f"[{self.name}] step {step}"]
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
