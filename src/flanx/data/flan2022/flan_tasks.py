"""The two tasks Flan 2022 adds to the FLAN 2021 submixture: LAMBADA and UnifiedQA's science questions.

Row transforms (FLAN's preprocessors in flan/v2/task_configs.py and preprocessors.py):

- `lambada`: TFDS `lambada:1.0.0` passages (its `train` split is LAMBADA's
  development file): `answer` is the passage's last word (split at spaces),
  `sentence` the passage before it.
- `unified_qa_science_inst`: TFDS `unified_qa/ai2_science_middle:1.0.0` rows
  (`input` = a question and its options `(A) .. (B) .. (C) .. (D) ..`, with
  literal `\\n` for newlines; `output` = the answer): `question`, `options`
  (the four option texts) and `answer`. Rows without exactly four options are
  dropped, as FLAN does.

The cards are `tasks/flan2022/lambada.yaml` and `unified_qa_science_inst.yaml`.
"""
from __future__ import annotations

from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError

MARKERS = ("(A)", "(B)", "(C)", "(D)")


def _text(row: dict, key: str) -> str:
    value = row[key]
    value = value.decode("utf-8") if isinstance(value, bytes) else value
    if not isinstance(value, str):
        raise DataFormatError(f"field {key!r}: expected text, got {type(value).__name__}")
    return value


@ROW_TRANSFORMS.register("lambada")
def lambada(row: dict) -> dict | None:
    """`sentence` = the passage without its last word, `answer` = that word; None for an empty passage."""
    passage = _text(row, "passage").strip()
    if not passage:
        return None
    answer = passage.split(" ")[-1]
    return dict(row, sentence=passage[:len(passage) - len(answer)].rstrip(), answer=answer)


@ROW_TRANSFORMS.register("unified_qa_science_inst")
def unified_qa_science_inst(row: dict) -> dict | None:
    """`question`, the four `options` and the `answer` of a UnifiedQA science row; None unless it has
    options (A) to (D) and no (E)."""
    text = _text(row, "input").replace("\\n", "\n")
    if "(D)" not in text or "(E)" in text:
        return None
    question, found, rest = text.partition("(A)")
    options = []
    for marker in MARKERS[1:]:
        head, found_next, rest = rest.partition(marker)
        found = found and found_next
        options.append(head.strip())
    options.append(rest.strip())
    if not found or not all(options):
        raise DataFormatError(f"field 'input': expected options (A) to (D) in order, got {text[:120]!r}")
    answer = _text(row, "output").replace("\\n", "\n").strip()
    return dict(row, question=question.strip(), options=options, answer=answer)
