"""Evaluation: metrics and postprocessors (`flanx.eval.metrics`) and the glue to seqio's Evaluator."""
