"""FLAN's recorded row counts of the Super-Natural Instructions v2 tasks.

`tasks/flan2022/niv2_counts.tsv` (beside the NIv2 card) holds FLAN's rows per
task, from flan/v2/constants_niv2.py (`NATINST_META_DATA[task]['number_examples']`),
keyed as FLAN keys them: the task name cut at its first '.'
(`task074_squad1` for `task074_squad1.1_question_generation`). The NIv2 cards
use them as their training-row counts, so mixing rates need no task file.
"""
from __future__ import annotations

import functools

from flanx import paths

COUNTS_FILE = "niv2_counts.tsv"


@functools.lru_cache(maxsize=1)
def recorded_counts() -> dict[str, int]:
    """Task (cut at its first '.') -> FLAN's row count."""
    path = paths.tasks_dir() / "flan2022" / COUNTS_FILE
    counts = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line and not line.startswith("#"):
            task, _, rows = line.partition("\t")
            if not rows.strip().isdigit():
                raise ValueError(f"{path}:{n}: expected task<TAB>rows, got {line!r}")
            counts[task] = int(rows)
    return counts


def recorded_count(task: str) -> int | None:
    """FLAN's row count of an NIv2 task, or None for a task FLAN did not record."""
    return recorded_counts().get(task.split(".", 1)[0])
