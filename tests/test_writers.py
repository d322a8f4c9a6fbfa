"""Training metrics files: metrics.jsonl and TensorBoard events that `tensorboard` itself reads."""
from __future__ import annotations

from flanx.train.writers import MetricsWriter, read_metrics


def test_tensorboard_reads_the_event_files(tmp_path):
    # tensorboard is in the test extras (`pip install -e '.[test]'`), so the event files can be viewed.
    from tensorboard.backend.event_processing import event_accumulator
    writer = MetricsWriter(str(tmp_path))
    for step, loss in ((10, 2.5), (20, 1.75)):
        writer.write(step, "train", {"loss": loss, "accuracy": 0.5})
    writer.write(20, "eval", {"my_task": {"rouge1": 0.25}})
    writer.close()
    assert [r["loss"] for r in read_metrics(str(tmp_path), "train")] == [2.5, 1.75]
    train = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "train"))
    train.Reload()
    assert [(e.step, e.value) for e in train.Scalars("loss")] == [(10, 2.5), (20, 1.75)]
    evals = event_accumulator.EventAccumulator(str(tmp_path / "tb" / "eval"))
    evals.Reload()
    (tag,) = [t for t in evals.Tags()["scalars"] if "rouge1" in t]
    assert [(e.step, e.value) for e in evals.Scalars(tag)] == [(20, 0.25)]
