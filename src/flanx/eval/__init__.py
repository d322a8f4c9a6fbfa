"""Evaluation: metrics and postprocessors (`flanx.eval.metrics`) and the glue to seqio's Evaluator."""

from flanx.eval import edit_metrics  # noqa: E402,F401 - registers edit_distance in metrics.METRICS
