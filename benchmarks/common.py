"""Shared pieces of flanx's benchmarks: timing, packed synthetic batches, worker
subprocesses, tables and result files.

Standard library and numpy only, so `benchmarks/mfu.py` can use it on a GPU
machine without TensorFlow, seqio, gin or torch.

- `time_repeats(fn, warmup, repeats)`: wall-clock seconds of `repeats` calls
  after `warmup` discarded ones (`fn` must block until its work is done).
- `packed_batch(...)`: a deterministic T5X-style packed batch (several
  segments per row, segment ids and positions), the shape seqio's
  `EncDecFeatureConverter(pack=True)` produces.
- `run_worker(module, args, timeout)`: run `python -m module --worker ...` in
  its own process (clean peak RSS, its own thread settings) and return the
  JSON it printed on a line starting with `RESULT `; a crash or a timeout
  comes back as `{"status": "failed", "reason": ...}`.
- `interleaved(specs, cases, warmup, repeats, ...)` with `serve(...)` on the
  worker side: several sides in their own processes, set up one after
  another, then timed call by call in alternation (fair on a noisy machine);
  `pin_cores(n)` / `side_cores(side)` / `baseline_side(side)` for the
  one-core (`*_1c`) sides.
- `table(rows, columns)`, `write_result(name, payload)`, `machine_info()`.
"""
from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = Path(os.environ.get("FLANX_BENCH_RESULTS", REPO / "benchmarks" / "results"))
RESULT_PREFIX = "RESULT "


# ----------------------------------------------------------------------------- timing


def time_repeats(fn: Callable[[], object], warmup: int = 1, repeats: int = 3) -> list[float]:
    """Seconds per call for `repeats` calls of `fn`, after `warmup` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def summarize(times: Sequence[float]) -> dict:
    """Median, min and max of a list of per-call seconds (the median is the reported number)."""
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "repeats": len(times), "times_s": [round(t, 6) for t in times]}


def peak_rss_mib() -> float:
    """This process's resident-set high-water mark in MiB (Linux reports ru_maxrss in KiB)."""
    scale = 1.0 / 1024 if sys.platform != "darwin" else 1.0 / (1024 * 1024)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


# ----------------------------------------------------------------------------- batches


def packed_batch(batch_size: int, inputs_length: int, targets_length: int, vocab_size: int,
                 seed: int = 0, input_range: tuple[int, int] = (48, 384),
                 target_range: tuple[int, int] = (8, 64)) -> dict[str, np.ndarray]:
    """A packed encoder-decoder batch of random tokens (int32 `[batch, length]` arrays).

    Each row takes examples with input lengths drawn from `input_range` and
    target lengths from `target_range` (clipped to the row) until the next one
    would not fit, then pads with 0. Every segment ends with EOS (1); the
    decoder input is the target shifted right within its segment, starting
    from 0; positions restart at 0 in each segment; segment ids count from 1.
    """
    if vocab_size < 4:
        raise ValueError(f"packed_batch: vocab_size={vocab_size} must be >= 4 (0 pad, 1 EOS)")
    rng = np.random.default_rng(seed)
    names = ("encoder_input_tokens", "encoder_segment_ids", "encoder_positions",
             "decoder_target_tokens", "decoder_input_tokens", "decoder_segment_ids",
             "decoder_positions")
    out = {n: np.zeros((batch_size, inputs_length if n.startswith("encoder") else targets_length),
                       np.int32) for n in names}
    for row in range(batch_size):
        used_in = used_tg = 0
        segment = 0
        while True:
            li = int(min(rng.integers(input_range[0], input_range[1] + 1), inputs_length))
            lt = int(min(rng.integers(target_range[0], target_range[1] + 1), targets_length))
            if segment and (used_in + li > inputs_length or used_tg + lt > targets_length):
                break
            li, lt = min(li, inputs_length - used_in), min(lt, targets_length - used_tg)
            segment += 1
            for prefix, start, n in (("encoder", used_in, li), ("decoder", used_tg, lt)):
                tokens = rng.integers(2, vocab_size, n).astype(np.int32)
                tokens[-1] = 1
                key = "encoder_input_tokens" if prefix == "encoder" else "decoder_target_tokens"
                out[key][row, start:start + n] = tokens
                out[f"{prefix}_segment_ids"][row, start:start + n] = segment
                out[f"{prefix}_positions"][row, start:start + n] = np.arange(n)
                if prefix == "decoder":
                    out["decoder_input_tokens"][row, start + 1:start + n] = tokens[:-1]
            used_in, used_tg = used_in + li, used_tg + lt
            if used_in >= inputs_length or used_tg >= targets_length:
                break
    out["decoder_loss_weights"] = (out["decoder_target_tokens"] > 0).astype(np.int32)
    return out


def save_batch(path: Path, batch: Mapping[str, np.ndarray]) -> Path:
    np.savez(path, **batch)
    return Path(path)


def load_batch(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def slot_tokens(batch: Mapping[str, np.ndarray]) -> int:
    """Token slots a step processes: batch * (inputs_length + targets_length), padding included."""
    enc, dec = batch["encoder_input_tokens"], batch["decoder_target_tokens"]
    return int(enc.size + dec.size)


# ----------------------------------------------------------------------------- workers


def pin_cores(n: int | None) -> None:
    """Restrict this process to `n` of its CPUs (the last ones); call before importing jax or torch."""
    if n:
        cpus = sorted(os.sched_getaffinity(0))
        os.sched_setaffinity(0, set(cpus[-n:]))


def side_cores(side: str) -> int | None:
    """Sides named `*_1c` run on one core (see `pin_cores`); others use the whole machine."""
    return 1 if side.endswith("_1c") else None


def baseline_side(side: str) -> str:
    """The transformers side a side is compared with: the one with the same cores and dtype."""
    return "torch_1c" if side.endswith("_1c") else "torch_bf16" if side.endswith("_bf16") else "torch"


def comparison_groups(sides: Sequence[str]) -> list[list[str]]:
    """Sides grouped with the transformers side they are compared with (`baseline_side`), in
    order: each group runs interleaved on its own, so only its workers are resident at once.

    Four t5_1_1_small training workers hold ~6 GB each; all alive together on a 24 GiB
    machine, the kernel evicts their code pages and the timings measure paging.
    """
    groups: dict[str, list[str]] = {}
    for side in sides:
        base = side if side in ("torch", "torch_1c", "torch_bf16") else baseline_side(side)
        groups.setdefault(base, []).append(side)
    return list(groups.values())


def _worker_env(env: Mapping[str, str] | None) -> dict:
    full = {**os.environ, **(env or {})}
    full["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(REPO), str(REPO / "src"), full.get("PYTHONPATH", "")) if p)
    return full


def emit(result: Mapping) -> None:
    """Print a worker's result for `run_worker` / `Worker.finish` to pick up."""
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def run_worker(module: str, args: Sequence[str], timeout: float, env: Mapping[str, str] | None = None) -> dict:
    """Run `python -m module --worker *args` from the repo root; its emitted JSON, or a failure."""
    cmd = [sys.executable, "-m", module, "--worker", *args]
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=_worker_env(env), capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": "failed", "reason": f"timed out after {timeout:.0f} s",
                "wall_s": time.perf_counter() - start}
    wall = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            result = json.loads(line[len(RESULT_PREFIX):])
            result.setdefault("status", "ok")
            result["wall_s"] = wall
            return result
    tail = (proc.stderr or proc.stdout).strip().splitlines()[-6:]
    return {"status": "failed", "reason": f"exit code {proc.returncode}: " + " | ".join(tail)[-600:],
            "wall_s": wall}


def serve(cases: Mapping[str, Callable[[], object]], info: Callable[[], Mapping]) -> None:
    """Worker side of `Worker`: time each case's first call, then run cases on request.

    Protocol on stdin/stdout: prints `READY {case: first-call seconds}`; then
    `run CASE` -> `TIME CASE seconds cpu_seconds` (wall clock, and this process's CPU
    time over all its threads); `done` -> `RESULT {info()}`.
    """
    first = {}
    for name, fn in cases.items():
        start = time.perf_counter()
        fn()
        first[name] = time.perf_counter() - start
    print("READY " + json.dumps(first), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[:1] == ["run"]:
            start, cpu = time.perf_counter(), time.process_time()
            cases[words[1]]()
            print(f"TIME {words[1]} {time.perf_counter() - start:.6f} {time.process_time() - cpu:.6f}",
                  flush=True)
        elif words[:1] == ["done"]:
            emit(info())
            return


class WorkerFailed(RuntimeError):
    pass


class Worker:
    """Parent side of `serve`: one benchmark side in its own process, driven step by step.

    Starting workers one after another keeps their set-up (compilation) apart;
    alternating `run` requests between live workers afterwards gives every
    side the same share of a noisy machine, so their ratio stays meaningful.
    """

    def __init__(self, module: str, args: Sequence[str], env: Mapping[str, str] | None = None):
        import tempfile

        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-m", module, "--worker", *args], cwd=REPO,
                                     env=_worker_env(env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr)
        self._buffer = b""
        self.first: dict = {}
        self.cpu_s: dict[str, list[float]] = {}

    def _line(self, prefix: str, timeout: float) -> str:
        import select

        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while True:
            while b"\n" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\n", 1)
                line = raw.decode(errors="replace")
                if line.startswith(prefix):
                    return line[len(prefix):]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise WorkerFailed(f"timed out after {timeout:.0f} s")
            ready, _, _ = select.select([fd], [], [], remaining)
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    self.proc.wait()
                    raise WorkerFailed(f"exit code {self.proc.returncode}: {self.error_tail()}")
                self._buffer += chunk

    def error_tail(self, lines: int = 6) -> str:
        self.stderr.seek(0)
        tail = [t for t in self.stderr.read().strip().splitlines() if t.strip()][-lines:]
        return " | ".join(tail)[-600:]

    def ready(self, timeout: float) -> dict:
        self.first = json.loads(self._line("READY ", timeout))
        return self.first

    def run(self, case: str, timeout: float) -> float:
        """Wall-clock seconds of one call of `case`; its CPU seconds go to `self.cpu_s[case]`."""
        self.proc.stdin.write(f"run {case}\n".encode())
        self.proc.stdin.flush()
        name, seconds, *cpu = self._line("TIME ", timeout).split()
        if cpu:
            self.cpu_s.setdefault(case, []).append(float(cpu[0]))
        return float(seconds)

    def finish(self, timeout: float = 60) -> dict:
        self.proc.stdin.write(b"done\n")
        self.proc.stdin.flush()
        result = json.loads(self._line(RESULT_PREFIX, timeout))
        self.proc.wait(timeout=timeout)
        return result

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def interleaved(specs: Mapping[str, tuple[str, Sequence[str]]], cases: Sequence[str], warmup: int,
                repeats: int, setup_timeout: Mapping[str, float] | float, run_timeout: float = 600,
                log: Callable[[str], None] = print) -> dict[str, dict]:
    """Start each side's worker in turn, then time `cases` alternating between sides.

    `specs`: side -> (module, worker args). Returns side -> {"status",
    "first": {case: s}, "cases": {case: summarize(...) + cpu_median_s}, **worker info} or
    {"status": "failed", "reason"} for a side that failed (the others go on).
    `cpu_median_s` is the worker's median CPU time per call: for a side pinned to one
    core it is the time the call would take on an idle core, so one-core ratios stay
    meaningful when other jobs share the machine.
    """
    workers, out = {}, {}
    for side, (module, args) in specs.items():
        limit = setup_timeout if isinstance(setup_timeout, (int, float)) else setup_timeout[side]
        start = time.perf_counter()
        worker = Worker(module, args)
        try:
            worker.ready(limit)
            workers[side] = worker
            out[side] = {"status": "ok", "setup_s": time.perf_counter() - start, "first": worker.first}
        except WorkerFailed as e:
            worker.kill()
            out[side] = {"status": "failed", "reason": f"set-up {e}"}
        log(f"  {side}: " + ("ready" if side in workers else out[side]["reason"]))
    times = {side: {case: [] for case in cases} for side in workers}
    try:
        for round_ in range(warmup + repeats):
            for case in cases:
                for side, worker in list(workers.items()):
                    try:
                        seconds = worker.run(case, run_timeout)
                    except WorkerFailed as e:
                        worker.kill()
                        del workers[side]
                        out[side] = {"status": "failed", "reason": f"{case}: {e}"}
                        continue
                    if round_ >= warmup:
                        times[side][case].append(seconds)
        for side, worker in workers.items():
            try:
                info = worker.finish()
            except WorkerFailed as e:
                info = {"finish_error": str(e)}
            out[side].update(info)
            out[side]["cases"] = {case: summarize(t) for case, t in times[side].items()}
            for case, cpu in worker.cpu_s.items():  # CPU time of the timed calls (warm-up excluded)
                if len(cpu) > warmup:
                    out[side]["cases"][case]["cpu_median_s"] = statistics.median(cpu[warmup:])
    finally:
        for worker in workers.values():
            worker.kill()
    return out


# ----------------------------------------------------------------------------- output


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 1:
            return f"{value:.2f}"
        return f"{value:.3g}"
    return str(value)


def table(rows: Sequence[Mapping], columns: Sequence[str], title: str | None = None) -> str:
    """A Markdown table of `rows` (dicts) over `columns`; missing values print as '-'."""
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = [] if title is None else [f"### {title}", ""]
    lines.append("| " + " | ".join(c.ljust(w) for c, w in zip(columns, widths)) + " |")
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(v.ljust(w) for v, w in zip(row, widths)) + " |" for row in cells]
    return "\n".join(lines)


def machine_info() -> dict:
    """Where a number was measured: host, CPUs, Python and library versions, git commit."""
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        info["cpu_model"] = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                                 if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        info["git_commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                            capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    for name in ("jax", "jaxlib", "flax", "optax", "torch", "transformers", "seqio", "tensorflow"):
        mod = sys.modules.get(name)
        if mod is not None:
            info[name] = getattr(mod, "__version__", "?")
    return info


def write_result(name: str, payload: Mapping, directory: Path | None = None) -> Path:
    """Write `payload` plus machine info to `<results>/<name>.json`; returns the path."""
    directory = Path(directory or RESULTS_DIR)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.json"
    path.write_text(json.dumps({"benchmark": name, "machine": machine_info(), **payload},
                               indent=2, sort_keys=True, default=str) + "\n")
    return path


def ratio(a, b):
    """a / b, or None when either is missing or b is zero."""
    if a is None or b in (None, 0):
        return None
    return a / b
