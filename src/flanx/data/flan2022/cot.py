"""Chain-of-thought data of the Flan 2022 CoT submixture: the TSV source, answer extraction, metric.

FLAN's nine CoT training sets (AQuA, CREAK, ECQA, e-SNLI, GSM8K, QASC, QED,
Sen-Making, StrategyQA) ship as `{dataset}_train.tsv` files with no header
and three tab-separated columns: question, answer, rationale. Newlines
inside the question and the rationale are written as a literal backslash-n;
options, when a dataset has them, are part of the question ("Options:\\n-
yes\\n- no" or "(A) ..."). Registered here:

- source type `flan_cot_tsv` (a file reader): one record per line with
  `question`, `answer`, `rationale` (literal `\\n` turned into newlines);
  a line without exactly three columns, or with an empty cell, is a row
  error naming the file, line and column.
- postprocessor `cot_answer`: the final answer of a chain of thought: the
  text after the last answer marker ("answer is", "Answer:", "final
  answer"), without surrounding punctuation, "(C)" unwrapped to "C". It
  applies to targets too, since a CoT target ends with its answer.
- metric `cot_exact_match`: exact match of the extracted answers (numbers
  compared by value, so "1,000" equals "1000").
"""
from __future__ import annotations

import glob
import logging
import re
from pathlib import Path
from typing import Iterator, Sequence

from flanx import paths
from flanx.data.group_lists import GROUP_LISTS
from flanx.data.sources import DataFormatError, Record, register_source
from flanx.eval.metrics import METRICS, POSTPROCESSORS, references

logger = logging.getLogger("flanx")

COLUMNS = ("question", "answer", "rationale")
TASK_CAP = 100_000  # FLAN's examples cap per CoT task (flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES)

# dataset -> (file in FLANX_DATA_DIR/flan_cot, FLAN's task name, answer form). FLAN calls the two
# lower-quality "stream of consciousness" sets stream_*; flanx names every card cot_{dataset}.
DATASETS = {
    "aqua": ("aqua_train.tsv", "stream_aqua", "a letter in parentheses, e.g. (C)"),
    "creak": ("creak_train.tsv", "cot_creak", "yes | no"),
    "ecqa": ("ecqa_train.tsv", "cot_ecqa", "the text of one of the inline options"),
    "esnli": ("esnli_train.tsv", "cot_esnli", "an NLI answer: yes | no | it is not possible to tell"),
    "gsm8k": ("gsm8k_train.tsv", "cot_gsm8k", "a number"),
    "qasc": ("qasc_train.tsv", "cot_qasc", "a letter in parentheses, e.g. (D)"),
    "qed": ("qed_train.tsv", "stream_qed", "a span of the passage"),
    "sensemaking": ("sensemaking_train.tsv", "cot_sensemaking", "Sentence A | Sentence B"),
    "strategyqa": ("strategyqa_train.tsv", "cot_strategyqa", "yes | no"),
}


@register_source("flan_cot_tsv", files=True)
def read_cot_tsv(path: Path, card) -> Iterator[Record]:
    """FLAN CoT TSV: `question<TAB>answer<TAB>rationale` per line, literal `\\n` for newlines."""
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            origin = f"{path}:{n}"
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as e:
                yield origin, DataFormatError(f"{origin}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not "
                                              f"valid UTF-8; flanx reads the CoT files as UTF-8")
                continue
            if not line.strip():
                continue
            cells = line.split("\t")
            if len(cells) != len(COLUMNS):
                yield origin, DataFormatError(
                    f"{origin}: expected 3 tab-separated columns (question, answer, rationale), got {len(cells)}")
                continue
            empty = [name for name, cell in zip(COLUMNS, cells) if not cell.strip()]
            if empty:
                yield origin, DataFormatError(f"{origin}: column {empty[0]!r} is empty")
                continue
            question, answer, rationale = cells
            yield origin, {"question": question.replace("\\n", "\n").strip(), "answer": answer.strip(),
                           "rationale": rationale.replace("\\n", "\n").strip()}


# ----------------------------------------------------------------------------- answer extraction

# Markers after which a chain of thought states its answer; the answer is the text after the marker
# that ends last in the text.
ANSWER_MARKERS = ("answer is", "final answer:", "final answer", "answer:")
_EDGE = " \t\n.,?:;!"
_WRAPPED = re.compile(r"^\(([A-Za-z0-9]{1,3})\)$")
_NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def extract_answer(text) -> str:
    """The answer a chain of thought ends with (see the module docstring); idempotent."""
    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    lower = text.lower()
    ends = [at + len(m) for m in ANSWER_MARKERS for at in [lower.rfind(m)] if at >= 0]
    if ends:
        text = text[max(ends):]
    text = text.strip(_EDGE)
    m = _WRAPPED.match(text)
    return m.group(1) if m else text


@POSTPROCESSORS.register("cot_answer")
def cot_answer(text, example=None, is_target=False) -> str:
    """The final answer of a chain of thought (prediction or target), e.g. "... So the answer is (C)." -> "C"."""
    return extract_answer(text)


def _same_answer(reference: str, prediction: str) -> bool:
    reference, prediction = extract_answer(reference), extract_answer(prediction)
    if _NUMBER.fullmatch(reference) and _NUMBER.fullmatch(prediction):
        return float(reference.replace(",", "")) == float(prediction.replace(",", ""))
    return reference == prediction


@METRICS.register("cot_exact_match")
def cot_exact_match(targets: Sequence, predictions: Sequence[str]) -> dict[str, float]:
    """Fraction of chains of thought whose extracted answer equals the reference's extracted answer."""
    if len(targets) != len(predictions):
        raise ValueError(f"metric got {len(targets)} targets but {len(predictions)} model outputs")
    if not targets:
        return {"cot_exact_match": float("nan")}
    hits = sum(any(_same_answer(r, p) for r in references(t)) for t, p in zip(targets, predictions))
    return {"cot_exact_match": hits / len(targets)}


def _split_files_here(raw_card: dict, group: str) -> bool:
    source = raw_card.get("source") if isinstance(raw_card.get("source"), dict) else {}
    root = Path(source["root"]) if source.get("root") else paths.data_dir()
    for split in (raw_card.get("splits") or {}).values():
        files = split if isinstance(split, (str, list)) else split.get("files", [])
        for pattern in [files] if isinstance(files, str) else files:
            full = Path(pattern.replace("{group}", group))
            full = full if full.is_absolute() or root is None else root / full
            if not glob.glob(str(full)):
                return False
    return True


@GROUP_LISTS.register("flan_cot")
def flan_cot_groups(raw_card: dict, groups: dict) -> list[dict]:
    """`groups: {list: flan_cot, exclude: [...], task_name_suffix: _ii}`: the CoT datasets (`DATASETS`) whose
    files are here, each card's examples named as FLAN names the task (`stream_aqua`, `cot_creak_ii`, ...).

    FLAN's CoT files are not all public in every copy (e-SNLI and QED are often
    missing), so a card exists for each dataset whose TSV you have.
    """
    exclude = set(groups.get("exclude") or ())
    unknown = exclude - set(DATASETS)
    if unknown:
        raise ValueError(f"task card {raw_card.get('name')!r}: groups.exclude: unknown CoT dataset "
                         f"{sorted(unknown)[0]!r}; known: {', '.join(DATASETS)}")
    names = [d for d in DATASETS if d not in exclude]
    here = [d for d in names if _split_files_here(raw_card, d)]
    if len(here) < len(names):
        logger.info("task card %r: no file for CoT dataset(s) %s; their cards are left out", raw_card.get("name"),
                    ", ".join(d for d in names if d not in here))
    suffix = str(groups.get("task_name_suffix", ""))
    return [{"group": d, "set": {"metadata": {"task_name": DATASETS[d][1] + suffix}}} for d in here]
