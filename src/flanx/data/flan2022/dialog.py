"""Dialog data of Flan 2022's `dialog` submixture: WikiDialog and QReCC as next-turn prediction.

Both sets are information-seeking conversations between a user and a
system. Each row becomes one example: the conversation so far and the
system's next turn. As in FLAN, the cut point is an odd turn index among
the first 40 turns, drawn per row (here from a hash of the row's id, so the
same row always gives the same example).

- WikiDialog (OQ), Dai et al. 2022: TFDS `wiki_dialog/OQ:1.0.0`, or its
  files `data_train.jsonl-000NN-of-00099.gz` / `data_validation.jsonl.gz`
  (JSON Lines, gzip) read with source type `jsonl_gz`. Fields: pid, title,
  passage, sentences, utterances, author_num. The first utterance (the
  system naming the topic) is dropped, so the turns start with the user.
  Row transform `wiki_dialog`.
- QReCC, Anantha et al. 2021: TFDS `q_re_cc:1.0.0` (context, question,
  answer, conversation_id, turn_id, ...), or its files `qrecc_train.json` /
  `qrecc_test.json` (a JSON list with Context, Question, Rewrite, Answer,
  Conversation_no, Turn_no, ...; source type `json`). `context` holds the
  earlier question/answer turns; the target is one of those answers, not
  the row's own answer. Rows with `turn_id` <= 6 are dropped, as FLAN does.
  Row transform `qrecc`.

Both transforms add `turns` (the conversation before the target, a list),
`dialog` (those turns as a transcript, one "User: ..." / "Assistant: ..."
line each), `next_turn` (the target) and `num_turns`. Rows with fewer than
two turns are dropped.
"""
from __future__ import annotations

import gzip
import json
import zlib
from pathlib import Path
from typing import Iterator

from flanx.data.sources import DataFormatError, Record, register_source
from flanx.data.transforms import ROW_TRANSFORMS

TASK_CAP = 200_000  # FLAN's examples cap per dialog task (flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES)
MAX_CONTEXT_PAIRS = 20  # the cut point is among the first 2 * 20 turns
QRECC_MIN_TURN = 7  # FLAN keeps QReCC rows with turn_id > 6
SPEAKERS = ("User", "Assistant")


@register_source("jsonl_gz", files=True)
def read_jsonl_gz(path: Path, card) -> Iterator[Record]:
    """JSON Lines, gzip-compressed when the file name ends in `.gz` (WikiDialog's shards)."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                origin = f"{path}:{n}"
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield origin, DataFormatError(f"{origin}: byte at column {e.start + 1} is not valid UTF-8")
                    continue
                except json.JSONDecodeError as e:
                    yield origin, DataFormatError(f"{origin}: not valid JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(obj, dict):
                    yield origin, DataFormatError(f"{origin}: expected a JSON object, got {type(obj).__name__}")
                    continue
                yield origin, obj
    except gzip.BadGzipFile:
        raise DataFormatError(f"{path}: not a gzip file; name it without `.gz` if it is plain JSON Lines") from None


def _texts(value, field: str) -> list[str]:
    """A list of strings from a JSON list or a TFDS sequence (numpy array of bytes)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
        raise DataFormatError(f"field {field!r}: expected a list of strings, got {type(value).__name__}")
    out = []
    for v in value:
        if isinstance(v, bytes):
            v = v.decode("utf-8")
        if not isinstance(v, str):
            raise DataFormatError(f"field {field!r}: expected a list of strings, got an item of type "
                                  f"{type(v).__name__}")
        out.append(v)
    return out


def _scalar(value):
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if hasattr(value, "item") else value


def transcript(turns: list[str]) -> str:
    """Turns as lines "User: ..." / "Assistant: ...", starting with the user."""
    return "\n".join(f"{SPEAKERS[i % 2]}: {t.strip()}" for i, t in enumerate(turns))


def next_turn_example(row: dict, turns: list[str], key: str) -> dict | None:
    """The row with the conversation cut before an odd (system) turn drawn from `key`; None if too short."""
    pairs = min(len(turns) // 2, MAX_CONTEXT_PAIRS)
    if pairs < 1:
        return None
    idx = 2 * (zlib.crc32(key.encode("utf-8")) % pairs) + 1
    context = turns[:idx]
    return dict(row, turns=context, dialog=transcript(context), next_turn=turns[idx].strip(), num_turns=len(context))


@ROW_TRANSFORMS.register("wiki_dialog")
def wiki_dialog(row: dict) -> dict | None:
    """WikiDialog: drop the topic utterance, cut before a system turn (see the module docstring)."""
    utterances = _texts(row["utterances"], "utterances")
    key = f"wiki_dialog|{_scalar(row.get('pid', ''))}|{_scalar(row.get('title', ''))}|{len(utterances)}"
    return next_turn_example(row, utterances[1:], key)


@ROW_TRANSFORMS.register("qrecc")
def qrecc(row: dict) -> dict | None:
    """QReCC (TFDS or the raw JSON): keep turn 7 on, cut `context` before one of its answers."""
    context = row["context"] if "context" in row else row["Context"]
    turn = _scalar(row["turn_id"] if "turn_id" in row else row["Turn_no"])
    conversation = _scalar(row.get("conversation_id", row.get("Conversation_no", "")))
    try:
        turn = int(turn)
    except (TypeError, ValueError):
        raise DataFormatError(f"field 'turn_id': expected an integer, got {turn!r}") from None
    if turn < QRECC_MIN_TURN:
        return None
    return next_turn_example(row, _texts(context, "context"), f"qrecc|{conversation}|{turn}")
