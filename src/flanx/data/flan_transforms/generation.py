"""Row transforms of the FLAN 2021 generation cards: summarization, structure to text, translation
and text formatting.

Each function prepares one raw record the way FLAN's preprocessor for that
dataset does before templating, and is registered under the FLAN task name
of the card that uses it (`row_transform: <name>`), except `translation`,
which every translation card shares:

- clean-ups and filters of summarization data (AESLC newlines and empty
  emails, CNN/DailyMail datelines, Gigaword `UNK`/`#` rows, SAMSum's
  `<file_photo>`-style tags);
- flattened nested features: the numbered reviews and arguments of the
  Opinion Abstracts sets, GEM's triples, concept sets and meaning
  representations, each GEM row's `references` (its target first, then
  GEM's other references; evaluation scores against the best one);
- a translation pair from a language-keyed record (`{"de": ..., "en": ...}`,
  TFDS's layout, or the same dict under `translation`): English source,
  other-language target, both language names;
- the text-formatting inputs derived from an English ParaCrawl sentence
  (lower-cased, punctuation removed, spaces removed).

The tfds source decodes top-level text to `str`, but nested features arrive
as numpy values: a `Sequence` of text is an array of `bytes`, a `Sequence` of
dicts is a dict of arrays. The helpers accept those as well as plain lists,
lists of dicts and `str` (hand-written rows, JSON files), and name the field
of anything malformed.
"""
from __future__ import annotations

import re
from typing import Any

from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError, text_value, text_values

# ----------------------------------------------------------------------------- value helpers


def _column(row: dict, field: str) -> Any:
    if field not in row:
        raise DataFormatError(f"missing field {field!r}; record has: {', '.join(sorted(map(str, row))) or 'nothing'}")
    return row[field]


def _sequence_values(value: Any, field: str, key: str = "value") -> list[str]:
    """The `key` texts of a TFDS `Sequence` of dicts: a dict of arrays (`{"value": [...]}`) or a list of dicts."""
    if isinstance(value, dict):
        if key not in value:
            raise DataFormatError(f"field {field!r}: no {key!r} in it (has {', '.join(map(str, value))})")
        return text_values(value[key], f"{field}.{key}")
    if isinstance(value, (list, tuple)) and all(isinstance(v, dict) for v in value):
        return [text_value(_column(v, key), f"{field}[].{key}") for v in value]
    raise DataFormatError(f"field {field!r}: expected a sequence of {{key, {key}}} records, got {type(value).__name__}")


def numbered(items: list[str]) -> str:
    """`1. first\\n2. second ...`, the numbered list the FLAN templates show."""
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, 1))


def _references(row: dict) -> list[str]:
    """A GEM row's `target` followed by its other `references`, each once."""
    target = text_value(_column(row, "target"), "target")
    refs = text_values(row.get("references", []), "references")
    return list(dict.fromkeys([target, *refs]))


# ----------------------------------------------------------------------------- summarization

@ROW_TRANSFORMS.register("aeslc")
def aeslc(row: dict) -> dict | None:
    """AESLC: `body` = the email with newlines as spaces, `subject` = the subject line without newlines;
    drops the rows whose email and subject are both empty."""
    body = text_value(_column(row, "email_body"), "email_body").replace("\n", " ")
    subject = text_value(_column(row, "subject_line"), "subject_line").replace("\n", "")
    if not (body + subject):
        return None
    return dict(row, body=body, subject=subject)


# The byline/dateline endings FLAN cuts an article after, in the order it tries them.
CNN_DATELINE_SEPARATORS = ("2013 . ", "2014 . ", "2012 . ", ") -- ")
CNN_DATELINE_MAX_CHARS = 400  # a separator further in belongs to the story, not to its dateline


@ROW_TRANSFORMS.register("cnn_dailymail")
def cnn_dailymail(row: dict) -> dict:
    """CNN/DailyMail: `text` = the article after its leading dateline or Daily Mail byline
    ("LONDON, England (CNN) -- ", "... PUBLISHED: ... 2013 . "), `highlights` on one line.

    FLAN 2021 keeps the text *before* the separator (the dateline alone, a
    bug); Flan 2022 keeps the text after it, as here. A separator that only
    occurs after the first `CNN_DATELINE_MAX_CHARS` characters is part of the
    story and left alone. Highlights lose the space before sentence periods
    and their line breaks, as Flan 2022 prints them.
    """
    text = text_value(_column(row, "article"), "article")
    for sep in CNN_DATELINE_SEPARATORS:
        cut = text.rfind(sep, 0, CNN_DATELINE_MAX_CHARS + len(sep))
        if cut >= 0:
            text = text[cut + len(sep):]
    highlights = text_value(_column(row, "highlights"), "highlights").replace(" .", ".").replace("\n", " ")
    return dict(row, text=text, highlights=highlights)


@ROW_TRANSFORMS.register("gigaword")
def gigaword(row: dict) -> dict | None:
    """Gigaword: drops the rows whose document or summary contains `UNK` or `#` (masked words, numbers)."""
    joined = text_value(_column(row, "document"), "document") + text_value(_column(row, "summary"), "summary")
    return None if "UNK" in joined or "#" in joined else row


_SAMSUM_TAG = re.compile(r"<[^<>\n]*>")


@ROW_TRANSFORMS.register("samsum")
def samsum(row: dict) -> dict | None:
    """SAMSum: CRLF line breaks become `\\n` and placeholder tags (`<file_photo>`, `<link>`) a space;
    drops a row whose dialogue or summary is empty (one train row has no dialogue).

    FLAN's pattern `<.*>` is greedy and also swallows the words between two
    tags on one line; flanx removes each tag on its own. FLAN keeps the empty row.
    """
    dialogue = text_value(_column(row, "dialogue"), "dialogue").replace("\r\n", "\n")
    if not dialogue.strip() or not text_value(_column(row, "summary"), "summary").strip():
        return None
    return dict(row, dialogue=_SAMSUM_TAG.sub(" ", dialogue))


@ROW_TRANSFORMS.register("opinion_abstracts_rotten_tomatoes")
def opinion_abstracts_rotten_tomatoes(row: dict) -> dict | None:
    """Rotten Tomatoes: `movie` (underscores as spaces), `first_review`, `numbered_reviews` (the first
    10 critics' reviews, numbered), `critic_consensus`. Drops a movie without reviews."""
    reviews = _sequence_values(_column(row, "_critics"), "_critics")
    if not reviews:
        return None
    return dict(row, movie=text_value(_column(row, "_movie_name"), "_movie_name").replace("_", " "),
                critic_consensus=text_value(_column(row, "_critic_consensus"), "_critic_consensus"),
                first_review=reviews[0], numbered_reviews=numbered(reviews[:10]))


@ROW_TRANSFORMS.register("opinion_abstracts_idebate")
def opinion_abstracts_idebate(row: dict) -> dict | None:
    """iDebate: `claim`, `debate_name`, `argument_sentences` (the first 10 sentences, numbered).
    Drops a claim without argument sentences."""
    sentences = _sequence_values(_column(row, "_argument_sentences"), "_argument_sentences")
    if not sentences:
        return None
    return dict(row, claim=text_value(_column(row, "_claim"), "_claim"),
                debate_name=text_value(_column(row, "_debate_name"), "_debate_name"),
                argument_sentences=numbered(sentences[:10]))


# ----------------------------------------------------------------------------- structure to text (GEM)

@ROW_TRANSFORMS.register("web_nlg_en")
def web_nlg_en(row: dict) -> dict:
    """WebNLG: `input_string` = the triples joined by `; `, underscores as spaces and ` | ` as `, `;
    `references` = target + GEM references."""
    triples = "; ".join(text_values(_column(row, "input"), "input"))
    return dict(row, input_string=triples.replace("_", " ").replace(" | ", ", "), references=_references(row))


@ROW_TRANSFORMS.register("common_gen")
def common_gen(row: dict) -> dict:
    """CommonGen: `concepts` joined by `, `, `concepts_newline` one per line; `references`."""
    concepts = text_values(_column(row, "concepts"), "concepts")
    return dict(row, concepts=", ".join(concepts), concepts_newline="\n".join(concepts),
                references=_references(row))


@ROW_TRANSFORMS.register("e2e_nlg")
def e2e_nlg(row: dict) -> dict:
    """E2E: the meaning representation `name[The Eagle], food[French]` reads `name = The Eagle, food = French`;
    `references`."""
    mr = text_value(_column(row, "meaning_representation"), "meaning_representation")
    return dict(row, meaning_representation=mr.replace("[", " = ").replace("]", ""), references=_references(row))


_DART_CELL = re.compile(r"\[(.*?)\]")


@ROW_TRANSFORMS.register("dart")
def dart(row: dict) -> dict:
    """DART: `tripleset` joined by `; ` without bracketed cells (`[TABLECONTEXT]`, `[TITLE]`),
    `tripleset_newline` one triple per line as given; `references`."""
    triples = text_values(_column(row, "tripleset"), "tripleset")
    return dict(row, tripleset=_DART_CELL.sub("", "; ".join(triples)), tripleset_newline="\n".join(triples),
                references=_references(row))


# ----------------------------------------------------------------------------- translation

LANGUAGE_NAMES = {"en": "English", "es": "Spanish", "fr": "French", "de": "German", "tr": "Turkish",
                  "cs": "Czech", "fi": "Finnish", "ro": "Romanian", "ru": "Russian", "da": "Danish"}


@ROW_TRANSFORMS.register("translation")
def translation(row: dict) -> dict:
    """A sentence pair keyed by language code (`{"en": ..., "de": ...}`, or that dict under `translation`):
    `sent1` English, `sent2` the other language, `lang1`/`lang2` their names (FLAN translates from English)."""
    pair = row["translation"] if isinstance(row.get("translation"), dict) else row
    codes = [k for k in pair if k in LANGUAGE_NAMES]
    other = [k for k in codes if k != "en"]
    if "en" not in codes or len(other) != 1:
        raise DataFormatError(f"expected an English sentence and one other language keyed by code "
                              f"({', '.join(sorted(LANGUAGE_NAMES))}); record has: {', '.join(map(str, pair))}")
    code = other[0]
    return dict(row, lang1=LANGUAGE_NAMES["en"], lang2=LANGUAGE_NAMES[code],
                sent1=text_value(pair["en"], "en"), sent2=text_value(pair[code], code))


# ----------------------------------------------------------------------------- text formatting (ParaCrawl en-da)

_PUNCTUATION = re.compile(r"[^\w\s]")


@ROW_TRANSFORMS.register("true_case")
def true_case(row: dict) -> dict | None:
    """`lower` = the English sentence lower-cased, `answer` = as written; drops sentences with no capitals."""
    text = text_value(_column(row, "en"), "en")
    lower = text.lower()
    return None if lower == text else dict(row, lower=lower, answer=text)


@ROW_TRANSFORMS.register("fix_punct")
def fix_punct(row: dict) -> dict | None:
    """`no_punct` = the English sentence without punctuation (anything not a letter, digit, `_` or space),
    `answer` = as written; drops sentences with no punctuation."""
    text = text_value(_column(row, "en"), "en")
    bare = _PUNCTUATION.sub("", text)
    return None if bare == text else dict(row, no_punct=bare, answer=text)


@ROW_TRANSFORMS.register("word_segment")
def word_segment(row: dict) -> dict:
    """`no_space` = the English sentence with its spaces removed, `answer` = as written."""
    text = text_value(_column(row, "en"), "en")
    return dict(row, no_space=text.replace(" ", ""), answer=text)
