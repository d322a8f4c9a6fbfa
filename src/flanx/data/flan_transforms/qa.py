"""Row transforms of the FLAN 2021 question-answering cards.

Reading comprehension (SQuAD v1/v2, OpenBookQA), closed-book QA (TriviaQA,
Natural Questions, ARC), commonsense (COPA, HellaSwag, PIQA, StoryCloze),
reading comprehension with commonsense (ReCoRD, CosmosQA) and
conversational QA (QuAC, CoQA). Each transform does what FLAN's preprocessor
for that dataset does, on one raw TFDS record:

- builds per-row answer `options` and the correct `answer` from a label index
  (OpenBookQA, ARC, COPA, HellaSwag, PIQA, StoryCloze's 1-based label, CosmosQA);
- keeps every reference answer in `answers` (SQuAD, TriviaQA, NQ, ReCoRD);
- flattens nested features (SQuAD's `answers.text`, QuAC's `orig_answer.text`,
  CoQA's question and answer lists into numbered lines, ReCoRD's
  `@placeholder` query, whose right-hand text completes every option);
- applies FLAN's filters by returning None (ARC keeps 4-choice questions,
  HellaSwag keeps rows labelled 0-3).

The tfds source decodes top-level text to `str`, but nested features arrive
as numpy values: a `Sequence` of text is an array of `bytes`, a `Sequence`
of dicts or a `FeaturesDict` is a dict of arrays or bytes. The helpers
accept those as well as plain lists and `str` (hand-written rows, other
sources), and name the field of anything malformed.
"""
from __future__ import annotations

import re
from typing import Any

from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError, text_value, text_values


# ----------------------------------------------------------------------------- value helpers

def _index(value: Any, field: str) -> int:
    """An integer label: `int`, a numpy integer or 0-d array, or a string of digits."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise DataFormatError(f"field {field!r}: expected an integer label, got {value!r}")
    return value


def _flag(value: Any, field: str) -> bool:
    """A boolean feature: `bool`, a numpy bool or 0-d array, 0/1, or 'True'/'False'."""
    if getattr(value, "shape", None) == () and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, str) and value in ("True", "False"):
        return value == "True"
    if isinstance(value, (bool, int)) and value in (0, 1):
        return bool(value)
    raise DataFormatError(f"field {field!r}: expected true or false, got {value!r}")


def _nested(row: dict, *path: str) -> Any:
    """`row[a][b]` of a nested TFDS feature, or a flattened `a/b` or `a.b` column.

    A missing key raises KeyError('a.b'), which the source reports as the
    missing field the transform needs.
    """
    value: Any = row
    for key in path:
        if not isinstance(value, dict) or key not in value:
            break
        value = value[key]
    else:
        return value
    for sep in ("/", "."):
        if sep.join(path) in row:
            return row[sep.join(path)]
    raise KeyError(".".join(path))


def _pick(options: list[str], index: int, field: str, base: int = 0) -> str:
    """`options[index - base]`, or a DataFormatError naming the label field and the options' count."""
    if not 0 <= index - base < len(options):
        raise DataFormatError(f"field {field!r}: label {index} does not name one of the row's {len(options)} "
                              f"options (labels count from {base})")
    return options[index - base]


def _nonempty(values: list[str], field: str) -> list[str]:
    if not values:
        raise DataFormatError(f"field {field!r}: no reference answer in this row")
    return values


# ----------------------------------------------------------------------------- reading comprehension

@ROW_TRANSFORMS.register("squad_v1")
def squad_v1(row: dict) -> dict:
    """SQuAD v1.1: `answer` = the first of `answers.text` (training target), `answers` = all of them
    (evaluation references); `title` with underscores as spaces."""
    answers = _nonempty(text_values(_nested(row, "answers", "text"), "answers.text"), "answers.text")
    return dict(row, title=text_value(row["title"], "title").replace("_", " "), answer=answers[0], answers=answers)


@ROW_TRANSFORMS.register("squad_v2")
def squad_v2(row: dict) -> dict:
    """SQuAD v2.0: as v1.1, except that an unanswerable question (`is_impossible`) has the single answer
    'unanswerable'."""
    if _flag(row["is_impossible"], "is_impossible"):
        answers = ["unanswerable"]
    else:
        answers = _nonempty(text_values(_nested(row, "answers", "text"), "answers.text"), "answers.text")
    return dict(row, title=text_value(row["title"], "title").replace("_", " "), answer=answers[0], answers=answers)


@ROW_TRANSFORMS.register("openbookqa")
def openbookqa(row: dict) -> dict:
    """OpenBookQA: `question` = the stem, `fact` = the supporting fact, `options` = choices A-D,
    `answer` = the choice `answerKey` (0-3) names."""
    options = [text_value(_nested(row, "question", f"choice_{c}"), f"question.choice_{c}") for c in "ABCD"]
    answer = _pick(options, _index(row["answerKey"], "answerKey"), "answerKey")
    return dict(row, question=text_value(_nested(row, "question", "stem"), "question.stem"),
                fact=text_value(row["fact1"], "fact1"), options=options, answer=answer)


# ----------------------------------------------------------------------------- closed-book QA

@ROW_TRANSFORMS.register("trivia_qa")
def trivia_qa(row: dict) -> dict:
    """TriviaQA (closed book): `answer` = the normalized answer value, `answers` = its normalized aliases
    (the value alone when a row lists none). The evidence documents are not used."""
    answer = text_value(_nested(row, "answer", "normalized_value"), "answer.normalized_value")
    aliases = text_values(_nested(row, "answer", "normalized_aliases"), "answer.normalized_aliases")
    return dict(row, answer=answer, answers=aliases or [answer])


@ROW_TRANSFORMS.register("natural_questions")
def natural_questions(row: dict) -> dict:
    """Natural Questions (open): the question gets a '?', `answer` = the first answer, `answers` = all."""
    answers = _nonempty(text_values(row["answer"], "answer"), "answer")
    return dict(row, question=text_value(row["question"], "question") + "?", answer=answers[0], answers=answers)


@ROW_TRANSFORMS.register("arc")
def arc(row: dict) -> dict | None:
    """ARC (easy and challenge): `options` = `choices.text`, `answer` = the choice `answerKey` names.
    Keeps only questions with exactly four choices, as FLAN does."""
    options = text_values(_nested(row, "choices", "text"), "choices.text")
    if len(options) != 4:
        return None
    return dict(row, options=options, answer=_pick(options, _index(row["answerKey"], "answerKey"), "answerKey"))


# ----------------------------------------------------------------------------- commonsense

def _two_choices(row: dict, first: str, second: str) -> tuple[list[str], str]:
    options = [text_value(row[first], first), text_value(row[second], second)]
    return options, _pick(options, _index(row["label"], "label"), "label")


@ROW_TRANSFORMS.register("copa")
def copa(row: dict) -> dict:
    """COPA: `options` = [choice1, choice2], `answer` = the labelled one; `question` stays 'cause' or
    'effect'."""
    options, answer = _two_choices(row, "choice1", "choice2")
    return dict(row, question=text_value(row["question"], "question"), options=options, answer=answer)


@ROW_TRANSFORMS.register("piqa")
def piqa(row: dict) -> dict:
    """PIQA: `options` = [sol1, sol2], `answer` = the labelled solution."""
    options, answer = _two_choices(row, "sol1", "sol2")
    return dict(row, options=options, answer=answer)


_HEADER_MARK = re.compile(r"\[header\]\s", re.ASCII)
_STEP_MARK = re.compile(r"\[.*?\]\s", re.ASCII)


@ROW_TRANSFORMS.register("hellaswag")
def hellaswag(row: dict) -> dict | None:
    """HellaSwag: WikiHow's bracketed markers cleaned (`[header] ` dropped, other `[...] ` become line
    breaks in the context and are dropped from the endings); `options` = the endings, `answer` = the
    labelled one. Rows without a label 0-3 (the unlabelled test split) are dropped."""
    label = _index(row["label"], "label")
    if label not in (0, 1, 2, 3):
        return None
    context = _STEP_MARK.sub("\n", _HEADER_MARK.sub("", text_value(row["context"], "context")))
    options = [_STEP_MARK.sub("", e) for e in text_values(row["endings"], "endings")]
    return dict(row, context=context, options=options, answer=_pick(options, label, "label"))


@ROW_TRANSFORMS.register("story_cloze")
def story_cloze(row: dict) -> dict:
    """StoryCloze: `options` = the two candidate endings, `answer` = the right one; the TFDS label
    counts from 1."""
    options = text_values(row["endings"], "endings")
    return dict(row, options=options, answer=_pick(options, _index(row["label"], "label"), "label", base=1))


# ----------------------------------------------------------------------------- reading comprehension + commonsense

@ROW_TRANSFORMS.register("record")
def record(row: dict) -> dict:
    """ReCoRD: the query's text after `@placeholder` is appended to every candidate entity (`options`)
    and to every correct one (`answers`; `answer` = the first), `query` keeps the text before it, and
    `passage` loses its `@highlight` summary lines."""
    query = text_value(row["query"], "query")
    if "@placeholder" not in query:
        raise DataFormatError("field 'query': no '@placeholder' marks the entity to fill in")
    pieces = query.split("@placeholder")
    before, after = pieces[0].strip(), pieces[1]
    options = [e + after for e in text_values(row["entities"], "entities")]
    answers = [a + after for a in _nonempty(text_values(row["answers"], "answers"), "answers")]
    passage = text_value(row["passage"], "passage").split("\n@highlight")[0]
    return dict(row, passage=passage, query=before, options=options, answers=answers, answer=answers[0])


@ROW_TRANSFORMS.register("cosmos_qa")
def cosmos_qa(row: dict) -> dict:
    """CosmosQA: `options` = answer0-answer3, `answer` = the labelled one."""
    options = [text_value(row[f"answer{i}"], f"answer{i}") for i in range(4)]
    return dict(row, options=options, answer=_pick(options, _index(row["label"], "label"), "label"))


# ----------------------------------------------------------------------------- conversational QA

@ROW_TRANSFORMS.register("quac")
def quac(row: dict) -> dict:
    """QuAC: `answer` = the original answer's text (`orig_answer.text`; 'CANNOTANSWER' is kept, as in
    FLAN 2021)."""
    return dict(row, answer=text_value(_nested(row, "orig_answer", "text"), "orig_answer.text"))


def _numbered(items: list[str]) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


@ROW_TRANSFORMS.register("coqa")
def coqa(row: dict) -> dict:
    """CoQA, one example per story: `text` = the story, `numbered_questions` / `numbered_answers` = the
    conversation's questions and free-form answers as numbered lines ('1. ...\\n2. ...')."""
    questions = text_values(row["questions"], "questions")
    answers = text_values(_nested(row, "answers", "input_text"), "answers.input_text")
    return dict(row, text=text_value(row["story"], "story"), numbered_questions=_numbered(questions),
                numbered_answers=_numbered(answers))
