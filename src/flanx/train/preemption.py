"""Save a checkpoint and stop cleanly on SIGTERM (preemption) or SIGINT (Ctrl-C).

Cluster schedulers (SLURM, preemptible TPU VMs, Kubernetes) send SIGTERM some
seconds before they kill a job, and a person stops a run with Ctrl-C.
`flanx.train.trainer.train` then finishes the step in flight (the trainer
keeps at most one step queued ahead of the device, so that is one step),
writes a checkpoint of it (unless that step was just saved), waits for the
write to commit and raises `Preempted`; `python -m flanx.train` exits with
status 128 + the signal number (143 for SIGTERM, 130 for SIGINT). Running
the same command again resumes from that step. A second Ctrl-C stops at
once, without saving.

- one process: a signal handler sets a flag that the loop reads after every
  step (Python runs the handler between steps, never inside XLA);
- several processes: JAX's preemption sync manager (part of
  `jax.distributed`, on by default) gets the SIGTERM notice on any host and
  picks one step at which every process saves
  (`jax.experimental.multihost_utils.reached_preemption_sync_point`), so the
  collective checkpoint write is entered by all processes at the same step.
  Ctrl-C there keeps Python's default (KeyboardInterrupt).
"""
from __future__ import annotations

import logging
import signal
import threading

import jax

logger = logging.getLogger("flanx")

EXIT_CODE = 128 + signal.SIGTERM
SIGNAL_NAMES = {signal.SIGTERM: "SIGTERM", signal.SIGINT: "SIGINT (Ctrl-C)"}


class Preempted(RuntimeError):
    """Training stopped on a signal after saving `step` to `checkpoint_dir`."""

    def __init__(self, step: int, checkpoint_dir: str, signum: int = signal.SIGTERM):
        self.step, self.checkpoint_dir, self.signum = step, checkpoint_dir, int(signum)
        what = "preempted (SIGTERM)" if signum == signal.SIGTERM else f"stopped by {SIGNAL_NAMES.get(signum, signum)}"
        super().__init__(f"{what} after step {step}: checkpoint of step {step} saved in {checkpoint_dir}; run the "
                         f"same command again to resume")

    @property
    def exit_code(self) -> int:
        """128 + the signal number, as a shell reports a process the signal ended."""
        return 128 + self.signum


class PreemptionWatch:
    """`reached(step)`: whether to save and stop after `step`; `close()` restores the handlers."""

    def __init__(self, enabled: bool = True):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._multi = jax.process_count() > 1
        self._enabled = enabled
        # Several processes: JAX's preemption service owns SIGTERM (see the module docstring).
        if enabled and not self._multi and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGTERM, signal.SIGINT):
                self._previous[signum] = signal.signal(signum, self._on_signal)

    def _on_signal(self, signum, frame) -> None:
        if self.signum is not None and signum == signal.SIGINT:
            self.close()
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, without saving
        if self.signum is None:
            again = "; Ctrl-C again stops at once without saving" if signum == signal.SIGINT else ""
            logger.warning("%s received: saving a checkpoint after the current step, then stopping%s",
                           SIGNAL_NAMES.get(signum, signum), again)
            self.signum = signum

    def reached(self, step: int) -> bool:
        if not self._enabled:
            return False
        if self._multi:
            from jax.experimental import multihost_utils
            try:
                if multihost_utils.reached_preemption_sync_point(step):
                    self.signum = signal.SIGTERM
                    return True
                return False
            except RuntimeError:  # preemption service off (jax_enable_preemption_service=False)
                return False
        return self.signum is not None

    def close(self) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
        self._previous = {}
