"""Which checkpoint read errors mean damaged files, and how to report them (step, item, file).

A restore can fail because the files are damaged (an item directory missing, an
array file truncated, a JSON item cut short) or for reasons that say nothing
about the files (the run asks for other shapes, the storage is unreachable,
memory ran out). Only the first kind may make a reader fall back to an older
step: `is_damage(exc)` tells them apart, `DamagedStep` reports one. The
trainer (`flanx.train.checkpointing`) and `flanx.checkpoints.load_params`
(native format) use the same rule; neither ever deletes a damaged step.
"""
from __future__ import annotations

import json
import re

from flanx.checkpoints.tree import CheckpointError

_DAMAGE_MARKERS = ("OUT_OF_RANGE", "DATA_LOSS", "NOT_FOUND", "FAILED_PRECONDITION", "INVALID_ARGUMENT",
                   "Error reading", "Error opening", "not found", "No such file", "truncat", "Truncat", "corrupt",
                   "Unterminated", "Expecting", "decode", "Decode", "Invalid", "invalid")
_NOT_DAMAGE_MARKERS = ("not compatible with the stored shape", "RESOURCE_EXHAUSTED", "UNAVAILABLE",
                       "DEADLINE_EXCEEDED", "PERMISSION_DENIED", "Permission denied", "out of memory")


class DamagedStep(CheckpointError):
    """A checkpoint step whose item cannot be read: `step`, `item`, `file`, `reason`."""

    def __init__(self, step: int, item: str, file: str, reason: str):
        self.step, self.item, self.file, self.reason = step, item, file, reason
        super().__init__(f"checkpoint step {step} is damaged: item {item} ({file}): {reason}")


def chain_text(exc: BaseException) -> str:
    parts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        parts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    return "\n".join(parts)


def is_damage(exc: BaseException) -> bool:
    """Whether a restore error means the files are damaged (missing, truncated, unparsable), not that
    the run differs from the checkpoint or the storage is unavailable."""
    text = chain_text(exc)
    if any(m in text for m in _NOT_DAMAGE_MARKERS):
        return False
    if isinstance(exc, (KeyError, FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError)):
        return True
    return any(m in text for m in _DAMAGE_MARKERS)


def first_line(exc: BaseException) -> str:
    cause = exc
    while cause.__cause__ is not None or (cause.__context__ is not None and "See full TensorStore" in str(cause)):
        cause = cause.__cause__ or cause.__context__
    return f"{type(cause).__name__}: {str(cause).strip().splitlines()[0] if str(cause).strip() else ''}"[:400]


def file_in(text: str, default: str) -> str:
    m = re.search(r'(?:local file|file) "([^"]+)"', text) or re.search(r"'(/[^']+)'", text)
    return m.group(1) if m else default
