"""Exact resume after a real SIGKILL or a SIGTERM (preemption), and checkpoints that die
mid-write are never used."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from helpers import result_line, run_python, start_python, subprocess_env, write_script

from flanx.train.writers import read_metrics

DRIVER = textwrap.dedent("""
    import json, sys, time
    from flanx.models import get_config
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.synthetic import SyntheticBatches

    model_dir, steps, delay = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])

    class SlowBatches(SyntheticBatches):
        def __next__(self):
            time.sleep(delay)
            return super().__next__()

    cfg = TrainConfig(train_steps=steps, batch_size=4, log_every=1, checkpoint_period=4, model_dir=model_dir,
                      optimizer=OptimizerConfig(learning_rate=0.01, schedule="rsqrt", warmup_steps=3))
    model = get_config("tiny", dropout_rate=0.1)  # dropout on: the RNG must resume too
    from flanx.train.preemption import EXIT_CODE, Preempted
    try:
        res = trainer.train(cfg, model, lambda shard: SlowBatches(shard, 16, 8, vocab_size=32))
    except Preempted as e:
        print("PREEMPTED " + json.dumps({"step": e.step}), flush=True)
        sys.exit(EXIT_CODE)
    print("RESULT " + json.dumps({"resumed_from": res.resumed_from, "step": res.step}))
""")


def _run(script, model_dir, steps, delay=0.0):
    out = run_python(script, model_dir, steps, delay)
    assert out.returncode == 0, out.stderr[-3000:]
    return result_line(out.stdout)


def _losses(model_dir):
    """step -> loss; a step logged twice (before the kill and after resuming) keeps the later value."""
    return {r["step"]: r["loss"] for r in read_metrics(str(model_dir), "train")}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted 20-step run: step -> loss. The schedule does not depend on the run's length, so its
    first N steps are those of an N-step run."""
    root = tmp_path_factory.mktemp("reference")
    assert _run(write_script(root, DRIVER), root / "run", 20)["resumed_from"] is None
    return _losses(root / "run")


@pytest.mark.slow
def test_sigkilled_run_resumes_to_identical_losses(tmp_path, reference):
    script = write_script(tmp_path, DRIVER)
    steps = 20
    victim = tmp_path / "victim"
    proc = subprocess.Popen([sys.executable, str(script), str(victim), str(steps), "0.25"],
                            env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and max(_losses(victim) or [0]) < 11:
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = max(_losses(victim))
    assert 11 <= killed_at < steps, killed_at

    resumed = _run(script, victim, steps)
    assert resumed["step"] == steps
    assert resumed["resumed_from"] in (4, 8), resumed  # a committed checkpoint before the kill
    ref, got = reference, _losses(victim)
    assert sorted(ref) == sorted(got) == list(range(1, steps + 1))
    diffs = [abs(ref[s] - got[s]) for s in range(resumed["resumed_from"] + 1, steps + 1)]
    assert max(diffs) <= 1e-6, diffs
    # Losses really depend on the resumed state: they keep changing step to step.
    assert len({round(got[s], 4) for s in range(resumed["resumed_from"] + 1, steps + 1)}) > 5


@pytest.mark.slow
def test_sigterm_saves_the_current_step_and_resumes_exactly(tmp_path, reference):
    """A preemption notice (SIGTERM) between checkpoint periods: the step in flight is saved,
    the run exits with 143, and rerunning resumes from exactly that step."""
    script = write_script(tmp_path, DRIVER)
    steps = 14
    victim = tmp_path / "victim"
    proc = start_python(script, victim, steps, 0.25)
    deadline = time.time() + 240
    while time.time() < deadline and max(_losses(victim) or [0]) < 5:
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    stopped = result_line(out, "PREEMPTED")["step"]
    assert 5 <= stopped < steps
    saved = sorted(int(d) for d in os.listdir(victim / "checkpoints") if d.isdigit())
    assert saved[-1] == stopped, saved  # the step in flight, not only the periodic ones (4, 8, ...)

    resumed = _run(script, victim, steps)
    assert resumed == {"resumed_from": stopped, "step": steps}
    ref, got = reference, _losses(victim)
    diffs = [abs(ref[s] - got[s]) for s in range(stopped + 1, steps + 1)]
    assert max(diffs) <= 1e-6, diffs


FAST_DATA_DRIVER = textwrap.dedent("""
    import json, sys, time
    from flanx.models import get_config
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.preemption import Preempted
    from flanx.train.synthetic import SyntheticBatches

    model_dir, steps, drawn_file = sys.argv[1], int(sys.argv[2]), sys.argv[3]

    class CountedBatches(SyntheticBatches):  # instant data: the host can run far ahead of the device
        def __next__(self):
            batch = super().__next__()
            with open(drawn_file, "a") as f:
                f.write(f"{self.position} {time.time()}\\n")
            return batch

    # Checkpoints and log lines (which wait for the device) only at the end: nothing paces the host.
    cfg = TrainConfig(train_steps=steps, batch_size=64, log_every=100000, checkpoint_period=100000,
                      model_dir=model_dir, optimizer=OptimizerConfig(learning_rate=0.01))
    model = get_config("tiny", d_ff=512)  # a step of the device takes far longer than the host's batch
    try:
        res = trainer.train(cfg, model, lambda shard: CountedBatches(shard, 256, 64, vocab_size=256))
    except Preempted as e:
        print("STOPPED " + json.dumps({"step": e.step}), flush=True)
        sys.exit(e.exit_code)
    print("RESULT " + json.dumps({"resumed_from": res.resumed_from, "step": res.step}), flush=True)
""")


def _drawn(path) -> list[tuple[int, float]]:
    """(batch number, time drawn) of every batch the driver has drawn so far."""
    lines = path.read_text().splitlines() if path.exists() else []
    return [(int(n), float(t)) for n, t in (line.split() for line in lines if line.count(" ") == 1)]


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_the_step_in_flight_and_exits_promptly(tmp_path, signum, code):
    """With instant data the host could queue thousands of steps; a signal must still be answered after
    the step in flight (saved, exit 128+signal within seconds), and Ctrl-C must save too."""
    script = write_script(tmp_path, FAST_DATA_DRIVER)
    victim, drawn = tmp_path / "victim", tmp_path / "drawn.txt"
    proc = start_python(script, victim, 5000, drawn)
    deadline = time.time() + 240
    while time.time() < deadline and len(_drawn(drawn)) < 3:  # compiled and training
        assert proc.poll() is None, proc.stderr.read()[-3000:]
        time.sleep(0.05)
    time.sleep(3.0)  # long enough for an unpaced host to queue a backlog of steps
    draws = _drawn(drawn)
    at_signal = draws[-1][0]
    # After compilation the host draws a batch per step of the device (it waits for the step before).
    step_time = max(b - a for (_, a), (_, b) in zip(draws[1:], draws[2:])) if len(draws) > 2 else 1.0
    sent = time.time()
    os.kill(proc.pid, signum)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"no exit within 60 s of the signal (batches drawn at the signal: {at_signal})")
    took = time.time() - sent
    assert proc.returncode == code, err[-3000:]
    stopped = result_line(out, "STOPPED")["step"]
    # The host draws the next batch while the device runs the step in flight: at most 2 steps past the signal.
    assert at_signal - 2 <= stopped <= at_signal + 2, (at_signal, stopped)
    # Two steps, the save and the exit; not a backlog of queued steps.
    assert took < 2 * step_time + 10, (took, step_time)
    assert sorted(int(d) for d in os.listdir(victim / "checkpoints") if d.isdigit()) == [stopped]
    if signum == signal.SIGTERM:
        return  # resuming after SIGTERM is checked exactly above
    resumed = run_python(script, victim, stopped + 2, tmp_path / "drawn2.txt")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert result_line(resumed.stdout) == {"resumed_from": stopped, "step": stopped + 2}


KILL_DURING_SAVE = textwrap.dedent("""
    import os, signal, sys
    import jax, jax.numpy as jnp
    from flanx.train.checkpointing import Checkpointer
    from flanx.train.step import TrainState

    def state(step, n):
        return TrainState(step=jnp.asarray(step, jnp.int32), params={"w": jnp.full((n,), float(step))},
                          opt_state={"m": jnp.full((3,), 7.0)}, rng=jax.random.PRNGKey(step))

    ckpt = Checkpointer(sys.argv[1], async_save=True)
    ckpt.save(state(1, 1000), {"position": 1})
    ckpt.wait()
    ckpt.save(state(2, 5_000_000), {"position": 2})  # asynchronous: returns before the commit
    os.kill(os.getpid(), signal.SIGKILL)
""")


@pytest.mark.slow
def test_checkpoint_being_written_at_death_is_never_complete(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"
    proc = run_python(write_script(tmp_path, KILL_DURING_SAVE), ckpt_dir, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    leftovers = [p.name for p in ckpt_dir.iterdir() if p.name.startswith("2")]
    assert leftovers and all("tmp" in name for name in leftovers), leftovers  # died before the commit

    import jax
    import jax.numpy as jnp

    from flanx.checkpoints import native
    from flanx.train.checkpointing import Checkpointer
    from flanx.train.step import TrainState

    ckpt = Checkpointer(str(ckpt_dir))
    assert ckpt.latest_step() == 1 and ckpt.all_steps() == [1]
    abstract = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32),
                          params={"w": jax.ShapeDtypeStruct((1000,), jnp.float32)},
                          opt_state={"m": jax.ShapeDtypeStruct((3,), jnp.float32)},
                          rng=jax.ShapeDtypeStruct((2,), jnp.uint32))
    state, data, meta = ckpt.restore(1, abstract)
    assert int(state.step) == 1 and data == {"position": 1} and meta["step"] == 1
    np.testing.assert_array_equal(np.asarray(state.params["w"]), np.ones(1000, np.float32))
    np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(jax.random.PRNGKey(1)))
    ckpt.close()
    # The uncommitted directory is gone and readers of the params item see step 1 only.
    assert not [p for p in ckpt_dir.iterdir() if "tmp" in p.name]
    assert native.resolve(ckpt_dir)[1] == 1
