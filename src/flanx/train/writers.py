"""Where a run's numbers go: `MODEL_DIR/metrics.jsonl` and TensorBoard event files.

`MetricsWriter.write(step, kind, values)` appends one JSON line
(`{"step": 120, "kind": "train", "loss": 2.31, ...}`) and the same scalars to
TensorBoard (tensorboardX, no TensorFlow) under `MODEL_DIR/tb/<kind>`.
Nested eval results `{task: {metric: value}}` become `task/metric` tags.
Only process 0 writes; other processes get a writer that does nothing.
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


class MetricsWriter:
    def __init__(self, model_dir: str | None, tensorboard: bool = True):
        self.enabled = model_dir is not None and jax.process_index() == 0
        self.path = os.path.join(model_dir, "metrics.jsonl") if model_dir else None
        self._tb = {}
        self._use_tb = tensorboard
        self._model_dir = model_dir
        self._remote_lines = None
        if self.enabled and io.is_remote(model_dir):
            self._remote_lines = (io.read_output(self.path) or "").splitlines(keepends=True)
        elif self.enabled:
            os.makedirs(model_dir, exist_ok=True)

    def _board(self, kind: str):
        if kind not in self._tb:
            from tensorboardX import SummaryWriter
            self._tb[kind] = SummaryWriter(os.path.join(self._model_dir, "tb", kind))
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
    """The records of `MODEL_DIR/metrics.jsonl` (optionally one kind), in file order."""
    text = io.read_output(os.path.join(model_dir, "metrics.jsonl"))
    if text is None:
        return []
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [r for r in rows if kind is None or r.get("kind") == kind]
