"""Evaluation results broken down by the examples' metadata: per template, and per format.

Every flanx example carries `_template_idx` and `_template_type` (`zs_opt`,
`zs_noopt`, `fs_opt`, `fs_noopt`; `flanx.data.variants`). `RecordingLogger`
is a seqio Logger that keeps, per evaluated task, the examples' metadata,
the postprocessed targets and the model's predictions or scores; then
`breakdown(records)` recomputes each task's metrics on the examples of each
template (`by_template`: task -> template index -> metrics and example
count, for tasks that mix templates) and averages each metric over the tasks
of each format (`by_template_type`: type -> metric -> mean over tasks, plus
`tasks`, the number of tasks). Metrics of a template subset use the task's
own seqio metric functions, so they mean what the task's metrics mean.
"""
from __future__ import annotations

import collections
from typing import Any

import seqio
import tensorflow_datasets as tfds


class RecordingLogger(seqio.Logger):
    """Keeps what seqio hands its loggers (`records[task] = {...}`); writes nothing."""

    def __init__(self, records: dict, output_dir: str | None = None):
        super().__init__(output_dir)
        self.records = records

    def __call__(self, task_name, step, metrics, dataset, inferences, targets) -> None:
        examples = [ex[1] if isinstance(ex, tuple) else ex for ex in tfds.as_numpy(dataset)]
        meta = {k: [_plain(ex.get(k)) for ex in examples] for k in ("_template_idx", "_template_type")}
        self.records[task_name] = {"meta": meta, "targets": list(targets) if targets is not None else None,
                                   "inferences": dict(inferences or {}),
                                   "metrics": {k: float(getattr(v, "value", v)) for k, v in metrics.items()}}


def _plain(value: Any):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def _subset_metrics(task: seqio.Task, record: dict, keep: list[int]) -> dict[str, float]:
    targets = [record["targets"][i] for i in keep]
    out: dict[str, float] = {}
    for kind, fns in (("prediction", task.predict_metric_fns), ("score", task.score_metric_fns)):
        values = record["inferences"].get(kind)
        if values is None:
            continue
        model_output = [values[i] for i in keep]
        for fn in fns:
            for k, v in fn(targets, model_output).items():
                out[k] = float(getattr(v, "value", v))
    return out


def breakdown(records: dict[str, dict]) -> dict:
    """{"by_template": {task: {idx: {metric: value, "examples": n}}}, "by_template_type": {type: {metric:
    mean over tasks, "tasks": n}}} from `RecordingLogger` records."""
    by_template: dict[str, dict] = {}
    per_type: dict[str, list[dict]] = collections.defaultdict(list)
    for name, record in records.items():
        types = {t for t in record["meta"]["_template_type"] if t}
        if len(types) == 1:
            per_type[types.pop()].append(record["metrics"])
        idx = record["meta"]["_template_idx"]
        if record["targets"] is None or len({i for i in idx if i is not None}) < 2:
            continue
        task = seqio.get_mixture_or_task(name)
        groups: dict[int, list[int]] = collections.defaultdict(list)
        for pos, i in enumerate(idx):
            groups[int(i)].append(pos)
        by_template[name] = {i: dict(_subset_metrics(task, record, keep), examples=len(keep))
                             for i, keep in sorted(groups.items())}
    by_type = {}
    for kind, rows in sorted(per_type.items()):
        names = sorted({k for r in rows for k in r})
        by_type[kind] = {k: sum(r[k] for r in rows if k in r) / sum(k in r for r in rows) for k in names}
        by_type[kind]["tasks"] = len(rows)
    return {"by_template": by_template, "by_template_type": by_type}
