"""Row transforms of the FLAN 2021 classification cards (NLI, paraphrase, sentiment, coreference).

Each function prepares one TFDS dataset's raw row the way FLAN's preprocessor
does before templating, for what a card cannot say by field mapping and a
`labels` map: text clean-ups (IMDB, Yelp, QQP), a filter (SNLI's rows without
a gold label), a label derived from another column (Sentiment140's polarity),
a numeric target printed as an integer (STS-B) and per-row answer options
(Winogrande, DPR). Each is registered under the FLAN task name of the card
that uses it (`row_transform: <name>`).
"""
from __future__ import annotations

from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _index(row: dict, column: str, size: int) -> int:
    """`row[column]` as an index into a list of `size` items (a ClassLabel id)."""
    try:
        value = int(row[column])
    except (TypeError, ValueError):
        raise DataFormatError(f"field {column!r}: expected an integer class id, got {row[column]!r}") from None
    if not 0 <= value < size:
        raise DataFormatError(f"field {column!r}: class id {value} is outside 0..{size - 1}")
    return value


@ROW_TRANSFORMS.register("snli")
def snli(row: dict) -> dict | None:
    """SNLI: drop the rows without a gold label (TFDS label -1), keep entailment/neutral/contradiction."""
    return row if int(row["label"]) in (0, 1, 2) else None


@ROW_TRANSFORMS.register("sentiment140")
def sentiment140(row: dict) -> dict:
    """Sentiment140: `label` 1 (positive) for polarity 3 or 4, else 0 (negative).

    TFDS polarity is 0 (negative), 2 (neutral, test split only) or 4
    (positive); as in FLAN, neutral tweets count as negative.
    """
    return dict(row, label=int(int(row["polarity"]) in (3, 4)))


@ROW_TRANSFORMS.register("imdb_reviews")
def imdb_reviews(row: dict) -> dict:
    """IMDB: the HTML line breaks (`<br />`) in the review text become newlines."""
    return dict(row, text=_text(row["text"]).replace("<br />", "\n"))


@ROW_TRANSFORMS.register("yelp_polarity_reviews")
def yelp_polarity_reviews(row: dict) -> dict:
    r"""Yelp: undo the escaping in the review text (`\""` -> `"`, a literal `\n` -> a space)."""
    return dict(row, text=_text(row["text"]).replace('\\""', '"').replace("\\n", " "))


@ROW_TRANSFORMS.register("glue_qqp")
def glue_qqp(row: dict) -> dict:
    """QQP: a doubled double quote (`""`) in either question becomes an apostrophe."""
    return dict(row, question1=_text(row["question1"]).replace('""', "'"),
                question2=_text(row["question2"]).replace('""', "'"))


@ROW_TRANSFORMS.register("stsb")
def stsb(row: dict) -> dict:
    """STS-B: `score` = the 0-5 similarity label printed with no decimals (C rounding: 2.5 -> "2")."""
    try:
        value = float(row["label"])
    except (TypeError, ValueError):
        raise DataFormatError(f"field 'label': expected a number, got {row['label']!r}") from None
    return dict(row, score=f"{value:.0f}")


@ROW_TRANSFORMS.register("winogrande")
def winogrande(row: dict) -> dict:
    """Winogrande: `context` = the sentence before its `_` blank; `options` = each option followed by
    the text after the blank; `answer` = the option the label (0 = option1, 1 = option2) picks."""
    sentence = _text(row["sentence"])
    if "_" not in sentence:
        raise DataFormatError("field 'sentence': no '_' blank to fill")
    parts = sentence.split("_")
    context, rest = parts[0], parts[1]
    options = [_text(row["option1"]) + rest, _text(row["option2"]) + rest]
    return dict(row, context=context, options=options, answer=options[_index(row, "label", 2)])


@ROW_TRANSFORMS.register("definite_pronoun_resolution")
def definite_pronoun_resolution(row: dict) -> dict:
    """DPR: `options` = the candidate antecedents, `answer` = the one the label picks."""
    candidates = [_text(c) for c in row["candidates"]]
    if len(candidates) < 2:
        raise DataFormatError(f"field 'candidates': expected at least two candidates, got {candidates!r}")
    return dict(row, options=candidates, answer=candidates[_index(row, "label", len(candidates))])
