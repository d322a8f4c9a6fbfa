"""Helpers shared by flanx's tests: random parameter trees, exact comparisons of trees and batches, task
cards with a character budget, and flanx run in a fresh Python process (a driver script or
`python -m ...`) with the test run's settings.

Subprocesses inherit `os.environ`, which `conftest.py` gives the test run's one jax compilation cache,
so a train step compiled by one test (or process) is read back by the next.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np

# Environment variables through which flanx finds the other processes of a multi-process run; a test's
# subprocess must not pick them up from the machine that runs the tests (a SLURM job, a TPU VM).
PROCESS_DISCOVERY_PREFIXES = ("SLURM_", "TPU_", "FLANX_COORDINATOR_ADDRESS", "FLANX_NUM_PROCESSES",
                              "FLANX_PROCESS_ID")


# ----------------------------------------------------------------------------- parameter trees and batches

def random_params(config, seed: int = 0) -> dict:
    """Random float32 params with exactly the model's names and shapes (no init compile)."""
    from flanx import checkpoints as C

    rng = np.random.default_rng(seed)
    return C.unflatten({k: rng.normal(0, 0.5, size=s).astype(np.float32) for k, s in C.expected_shapes(config).items()})


def assert_same_tree(a, b) -> None:
    """Two parameter trees hold the same names, dtypes and values, exactly."""
    from flanx import checkpoints as C

    fa, fb = C.flatten(a), C.flatten(b)
    assert sorted(fa) == sorted(fb)
    for k in fa:
        assert np.asarray(fa[k]).dtype == np.asarray(fb[k]).dtype, k
        np.testing.assert_array_equal(np.asarray(fa[k]), np.asarray(fb[k]), err_msg=k)


def take(iterator, n: int) -> list:
    return [next(iterator) for _ in range(n)]


def assert_same_batches(a, b) -> None:
    """Two non-empty lists of batches (or examples: dicts of arrays) are equal, key by key."""
    assert len(a) == len(b) > 0
    for i, (x, y) in enumerate(zip(a, b)):
        assert x.keys() == y.keys()
        for k in x:
            np.testing.assert_array_equal(x[k], y[k], err_msg=f"item {i} {k}")


def chars_budget(card, max_input_tokens: int = 100_000):
    """`card` with a few-shot budget counted in characters: few-shot rendering without the SentencePiece
    model."""
    import dataclasses

    return dataclasses.replace(card, fewshot=dataclasses.replace(card.fewshot, budget_unit="chars",
                                                                 max_input_tokens=max_input_tokens))


# ----------------------------------------------------------------------------- fresh processes

def subprocess_env(drop: tuple[str, ...] = PROCESS_DISCOVERY_PREFIXES, **overrides: str) -> dict:
    """`os.environ` for a flanx subprocess on the CPU: without the variables starting with `drop`,
    quiet TensorFlow, plus `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.update(overrides)
    return env


def run_python(*args, env: dict | None = None, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """`python ARGS...` (this interpreter), output captured as text."""
    return subprocess.run([sys.executable, *map(str, args)], env=subprocess_env() if env is None else env,
                          capture_output=True, text=True, timeout=timeout, cwd=cwd)


def write_script(directory: Path, source: str, name: str = "driver.py") -> Path:
    path = Path(directory) / name
    path.write_text(source)
    return path


def start_python(*args, env: dict | None = None) -> subprocess.Popen:
    """`python ARGS...` started in the background, stdout and stderr as text pipes."""
    return subprocess.Popen([sys.executable, *map(str, args)], env=subprocess_env() if env is None else env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_all(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str, str]]:
    """(returncode, stdout, stderr) of each process; all are killed when one runs past `timeout`."""
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            results.append((p.returncode, out, err))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    return results


def result_line(stdout: str, tag: str = "RESULT") -> dict:
    """The JSON after `TAG ` on the last such line a driver script printed."""
    lines = [x for x in stdout.splitlines() if x.startswith(tag + " ")]
    assert lines, f"no {tag} line in the output:\n{stdout[-2000:]}"
    return json.loads(lines[-1][len(tag) + 1:])


def last_json_line(stdout: str) -> dict:
    """The JSON object a flanx command prints as its last line of output."""
    return json.loads(stdout.strip().splitlines()[-1])


_LOCK_HOLDER = """
import sys, time
from flanx.lock import DirLock
DirLock(sys.argv[1], heartbeat_s=float(sys.argv[2])).acquire()
print("LOCKED", flush=True)
time.sleep(120)
"""


def hold_lock_in_child(directory, heartbeat_s: float = 30.0) -> subprocess.Popen:
    """A live process holding `directory`'s lock, as a training run would; returns once it holds it.
    Kill it (and wait) when done."""
    proc = subprocess.Popen([sys.executable, "-c", _LOCK_HOLDER, str(directory), str(heartbeat_s)],
                            stdout=subprocess.PIPE, text=True, env=subprocess_env(PYTHONPATH=os.pathsep.join(sys.path)))
    assert proc.stdout.readline().strip() == "LOCKED"
    return proc


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
