"""Where a run's numbers go: `MODEL_DIR/metrics.jsonl` and TensorBoard event files.

`MetricsWriter.write(step, kind, values)` appends one JSON line
(`{"step": 120, "kind": "train", "loss": 2.31, ...}`) and the same scalars to
TensorBoard (tensorboardX, no TensorFlow) under `MODEL_DIR/tb/<kind>`.
Nested eval results `{task: {metric: value}}` become `task/metric` tags.
Only process 0 writes; other processes get a writer that does nothing.
One record per step across resumes: `MetricsWriter(model_dir, start_step=S)`
(the trainer passes the step it continues from) drops the rows a killed run
wrote beyond S and starts TensorBoard with `purge_step=S + 1`, which hides
those events; `read_metrics` keeps the last record of each (kind, step).
A `gs://` MODEL_DIR works too: object stores cannot append, so there the
writer keeps the file's lines and rewrites it at each write (metrics files
are small).
"""
from __future__ import annotations

import json
import math
import os
from typing import Mapping

import jax

from flanx import io


def flatten_scalars(values: Mapping, prefix: str = "") -> dict[str, float]:
    out = {}
    for k, v in values.items():
        name = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten_scalars(v, name + "/"))
        else:
            try:
                out[name] = float(v)
            except (TypeError, ValueError):
                continue
    return out


def _json_safe(v):
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    try:
        f = float(v)
    except (TypeError, ValueError):
        return v
    if isinstance(v, (bool, int)) or (hasattr(v, "dtype") and "int" in str(v.dtype)):
        return int(v)
    return f if math.isfinite(f) else str(f)


def _step_of(line: str) -> int | None:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return None


class MetricsWriter:
    def __init__(self, model_dir: str | None, tensorboard: bool = True, start_step: int | None = None):
        self.enabled = model_dir is not None and jax.process_index() == 0
        self.path = os.path.join(model_dir, "metrics.jsonl") if model_dir else None
        self._tb = {}
        self._use_tb = tensorboard
        self._model_dir = model_dir
        self._remote_lines = None
        self._purge_step = None if start_step is None else int(start_step) + 1
        if self.enabled and io.is_remote(model_dir):
            self._remote_lines = (io.read_output(self.path) or "").splitlines(keepends=True)
        elif self.enabled:
            os.makedirs(model_dir, exist_ok=True)
        if self.enabled and start_step is not None:
            self._drop_rows_after(int(start_step))

    def _drop_rows_after(self, step: int) -> None:
        """Remove records of steps beyond `step` (written by a run that died before checkpointing them)."""
        lines = self._remote_lines if self._remote_lines is not None else \
            (io.read_output(self.path) or "").splitlines(keepends=True)
        # A line cut short by a kill has no step and goes too.
        kept = [line for line in lines if line.strip() and _step_of(line) is not None and _step_of(line) <= step]
        if len(kept) == len([line for line in lines if line.strip()]):
            return
        if self._remote_lines is not None:
            self._remote_lines = kept
            with io.open_output(self.path, "w") as f:
                f.write("".join(kept))
            return
        tmp = f"{self.path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("".join(kept))
        os.replace(tmp, self.path)  # a crash here leaves the old file, never half of one

    def _board(self, kind: str):
        if kind not in self._tb:
            from tensorboardX import SummaryWriter
            self._tb[kind] = SummaryWriter(os.path.join(self._model_dir, "tb", kind), purge_step=self._purge_step)
        return self._tb[kind]

    def write(self, step: int, kind: str, values: Mapping) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, **_json_safe(dict(values))}
        line = json.dumps(record) + "\n"
        if self._remote_lines is None:
            with open(self.path, "a") as f:
                f.write(line)
        else:
            self._remote_lines.append(line)
            with io.open_output(self.path, "w") as f:
                f.write("".join(self._remote_lines))
        if self._use_tb:
            board = self._board(kind)
            for tag, v in flatten_scalars(values).items():
                board.add_scalar(tag, v, int(step))
            board.flush()

    def close(self) -> None:
        for board in self._tb.values():
            board.close()
        self._tb = {}


def read_metrics(model_dir: str, kind: str | None = None) -> list[dict]:
    """The records of `MODEL_DIR/metrics.jsonl` (optionally one kind) in file order, one per (kind, step):
    a step written twice (a resumed run re-ran it) keeps its last record, at that record's place."""
    text = io.read_output(os.path.join(model_dir, "metrics.jsonl"))
    if text is None:
        return []
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    rows = [r for r in rows if kind is None or r.get("kind") == kind]
    last = {(r.get("kind"), r.get("step")): i for i, r in enumerate(rows)}
    return [r for i, r in enumerate(rows) if last[(r.get("kind"), r.get("step"))] == i]
