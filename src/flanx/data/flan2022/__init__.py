"""The Flan 2022 collection's sources beyond FLAN 2021: NIv2, P3 (T0-SF), chain of thought, dialog.

Importing this package registers, through flanx's registries:

| module | source types | row transforms | postprocessors / metrics |
|---|---|---|---|
| `niv2` (+ `niv2_counts`) | `niv2` (natural-instructions checkout), `niv2_tfds` (TFDS natural_instructions) | | |
| `p3` (+ `t0_sf_data`) | `p3` (in memory, P3 checkout, or Hugging Face) | `p3` | `take_first_line`, `take_first_word` |
| `cot` | `flan_cot_tsv` | | `cot_answer` / `cot_exact_match` |
| `dialog` | `jsonl_gz` | `wiki_dialog`, `qrecc` | |
| `flan_tasks` | | `lambada`, `unified_qa_science_inst` | |

The task cards that use them are in `tasks/flan2022/`; docs/tasks.md ("The
Flan 2022 collection: sources") says where each dataset goes.
"""
from __future__ import annotations

from flanx.data.flan2022 import cot, dialog, flan_tasks, niv2, p3  # noqa: F401 - registration
