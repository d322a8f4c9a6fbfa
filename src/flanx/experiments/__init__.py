"""Experiments built on flanx: the single- vs multi-task forgetting study and its reports."""
