"""Save a checkpoint and stop cleanly when the job is preempted (SIGTERM).

Cluster schedulers (SLURM, preemptible TPU VMs, Kubernetes) send SIGTERM some
seconds before they kill a job. `flanx.train.trainer.train` then finishes the
step in flight, writes a checkpoint of it (unless that step was just saved),
waits for the write to commit and raises `Preempted`; `python -m flanx.train`
exits with status 143 (128 + SIGTERM). Running the same command again resumes
from that step.

- one process: a SIGTERM handler sets a flag that the loop reads after every
  step (Python runs the handler between steps, never inside XLA);
- several processes: JAX's preemption sync manager (part of
  `jax.distributed`, on by default) gets the notice on any host and picks one
  step at which every process saves
  (`jax.experimental.multihost_utils.reached_preemption_sync_point`), so the
  collective checkpoint write is entered by all processes at the same step.
"""
from __future__ import annotations

import logging
import signal
import threading

import jax

logger = logging.getLogger("flanx")

EXIT_CODE = 128 + signal.SIGTERM


class Preempted(RuntimeError):
    """Training stopped on a preemption notice after saving `step` to `checkpoint_dir`."""

    def __init__(self, step: int, checkpoint_dir: str):
        self.step, self.checkpoint_dir = step, checkpoint_dir
        super().__init__(f"preempted (SIGTERM) after step {step}: checkpoint of step {step} saved in "
                         f"{checkpoint_dir}; run the same command again to resume")


class PreemptionWatch:
    """`reached(step)`: whether to save and stop after `step`; `close()` restores the handler."""

    def __init__(self, enabled: bool = True):
        self._requested = False
        self._previous = None
        self._multi = jax.process_count() > 1
        self._enabled = enabled
        if enabled and not self._multi and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        if not self._requested:
            logger.warning("SIGTERM received: saving a checkpoint after the current step, then stopping")
        self._requested = True

    def reached(self, step: int) -> bool:
        if not self._enabled:
            return False
        if self._multi:
            from jax.experimental import multihost_utils
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:  # preemption service off (jax_enable_preemption_service=False)
                return False
        return self._requested

    def close(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None
