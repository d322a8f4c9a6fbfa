"""Row transforms: named Python functions for what a task card cannot say by field mapping.

A card names one with `row_transform: NAME`; it runs on every raw record
before the card's `fields` mapping. A transform takes the record (a dict of
source columns) and returns

- a dict: the record to map (usually `dict(row, new_field=...)`), which may
  carry per-row answer options (a list, named by the card's `options_field`),
  several correct answers (a list in the card's `answer_field`, for rank
  classification) or several reference answers (a list in the card's
  `references_field`, for evaluation);
- None: drop the row (a filter). Dropped rows are counted, not reported as errors.

A transform raises `DataFormatError` (or lets a `KeyError` for a missing
column escape) for a malformed row; the message gets the row's file and line,
and `on_error: skip` skips it. Register your own with one decorator:

    from flanx.data.transforms import ROW_TRANSFORMS

    @ROW_TRANSFORMS.register("boolq")
    def boolq(row):
        return dict(row, answer="yes" if row["answer"] else "no")

This module is stdlib only (no TensorFlow), so cards validate quickly.
"""
from __future__ import annotations

import inspect
import re
from typing import Any, Callable, Optional

from flanx.registry import Registry

RowTransform = Callable[[dict], Optional[dict]]


class DataFormatError(ValueError):
    """A source row is malformed, lacks a field, or has a label the card does not know."""


def _check_transform(name: str, fn) -> None:
    if not callable(fn):
        raise TypeError(f"row transform {name!r} must be callable, got {type(fn).__name__}")
    try:
        inspect.signature(fn).bind({})
    except TypeError:
        raise TypeError(f"row transform {name!r} must take one argument (the row dict) and return a "
                        f"dict, or None to drop the row") from None
    except ValueError:  # builtins without a signature: accept
        pass


ROW_TRANSFORMS: Registry[RowTransform] = Registry(
    "row transform", validator=_check_transform,
    hint="Register one with @flanx.data.transforms.ROW_TRANSFORMS.register('name') (see docs/tasks.md)")


# Value helpers for transforms of TFDS rows (bytes, numpy scalars and arrays), shared by flanx.data.flan_transforms.

def text_value(value: Any, field: str) -> str:
    """A text value: `str`, UTF-8 `bytes`, or a 0-d numpy value holding either."""
    if isinstance(value, str):
        return str(value)
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError as e:
            raise DataFormatError(f"field {field!r}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        return text_value(value.item(), field)
    if value is None:
        raise DataFormatError(f"field {field!r} is null")
    raise DataFormatError(f"field {field!r}: expected text, got {type(value).__name__}")


def text_values(value: Any, field: str) -> list[str]:
    """A list of texts from a list, tuple or 1-d numpy array of `str`/`bytes`."""
    if value is None:
        raise DataFormatError(f"field {field!r} is null")
    if isinstance(value, (str, bytes, dict)) or getattr(value, "ndim", 1) != 1 or not hasattr(value, "__iter__"):
        raise DataFormatError(f"field {field!r}: expected a list of texts, got {type(value).__name__}")
    return [text_value(v, field) for v in value]


@ROW_TRANSFORMS.register("gsm8k")
def gsm8k(row: dict) -> dict:
    """GSM8K: `answer` = worked solution + `#### N` -> `rationale` (calculator notes removed), `final_answer`."""
    answer = row["answer"]
    if "####" not in answer:
        raise DataFormatError("field 'answer': no '####' before the final answer")
    rationale, final = answer.rsplit("####", 1)
    rationale = re.sub(r"<<[^>]*>>", "", rationale).strip()
    return dict(row, rationale=rationale, final_answer=final.strip().replace(",", ""))


@ROW_TRANSFORMS.register("t0")
def t0(row: dict) -> dict:
    """T0 / P3 pre-rendered prompts: strip the prompt and the completion's `<|endoftext|>`."""
    completion = row["completion"]
    return dict(row, completion=completion.replace("<|endoftext|>", "").strip(), prompt=row["prompt"].strip())


@ROW_TRANSFORMS.register("mmlu")
def mmlu(row: dict) -> dict:
    """MMLU CSV: `choice0..3` -> per-row options `choices`, `answer` (0-3) -> `answer_text`."""
    choices = [row[f"choice{i}"] for i in range(4)]
    try:
        answer = choices[int(row["answer"])]
    except (ValueError, IndexError):
        raise DataFormatError(f"field 'answer': expected 0-3, got {row['answer']!r}") from None
    return dict(row, choices=choices, answer_text=answer,
                subject_name=str(row.get("subject", "")).replace("_", " "))

# BIG-Bench Hard tasks whose answer is one of two fixed words (the letter-option tasks list theirs in the input).
BBH_LABELS = {"boolean_expressions": ["True", "False"], "causal_judgement": ["Yes", "No"],
              "formal_fallacies": ["valid", "invalid"], "navigate": ["Yes", "No"],
              "sports_understanding": ["yes", "no"], "web_of_lies": ["Yes", "No"]}
_BBH_LETTER = re.compile(r"^\(([A-Z])\)", re.MULTILINE)


@ROW_TRANSFORMS.register("bbh_choices")
def bbh_choices(row: dict) -> dict | None:
    """BBH rows with a closed answer set -> per-row options `choices`: the `(A)`, `(B)`, ... the input
    lists, or the task's two labels. Free-form tasks (arithmetic, sorting, Dyck) and the few rows whose
    answer is not among the options are dropped."""
    letters = _BBH_LETTER.findall(str(row["input"]))
    choices = [f"({letter})" for letter in letters] if letters else BBH_LABELS.get(str(row.get("task")))
    if not choices or row["target"] not in choices:
        return None
    return dict(row, choices=choices)
