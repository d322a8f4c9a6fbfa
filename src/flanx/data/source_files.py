"""File source types: `jsonl`, `json`, `csv`, `tsv`, `lines`, `bbh` (registered in `sources.SOURCES`).

Each reader is called once per file and yields `(origin, record)` with
origin `path:line`. Text is read as UTF-8: a line holding bytes that are not
UTF-8 becomes a row error naming the file, line and byte offset (skipped
under `on_error: skip`), never a raw `UnicodeDecodeError`. A file whose
overall shape does not fit the reader (a JSON list or one JSON document given
to `jsonl`, JSON Lines given to `json`) raises `SourceFormatError` naming the
source type that fits: skipping rows would drop them all.
"""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path
from typing import Iterator

from flanx.data.sources import DataFormatError, Record, SourceFormatError, register_source, resolve_files

_WS = re.compile(r"\s*")
_DECODER = json.JSONDecoder()


def _bad_utf8(path: Path, line: int, offset: int, byte: int) -> DataFormatError:
    return DataFormatError(f"{path}:{line}: byte 0x{byte:02x} at byte offset {offset} is not valid UTF-8; "
                           f"flanx reads text as UTF-8 (re-encode the file, e.g. `iconv -f latin1 -t utf-8`)")


def _lines(path: Path) -> Iterator[tuple[int, str | None, DataFormatError | None]]:
    """(line number, text, None), or (line number, text with surrogate escapes, error) for a non-UTF-8 line."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                yield n, raw.decode("utf-8"), None
            except UnicodeDecodeError as e:
                yield n, raw.decode("utf-8", "surrogateescape"), _bad_utf8(path, n, offset + e.start, raw[e.start])
            offset += len(raw)


def _whole_json(path: Path):
    """The file parsed as one JSON document, or None when it is not one."""
    try:
        return json.loads(path.read_bytes().decode("utf-8", "surrogateescape"))
    except ValueError:
        return None


def _use_json(path: Path, doc) -> SourceFormatError:
    if isinstance(doc, list):
        return SourceFormatError(f"{path}: this is a JSON list, not JSON Lines (one object per line): use "
                                 f"`type: json` in the card's source")
    keys = ", ".join(map(str, doc)) if isinstance(doc, dict) else type(doc).__name__
    return SourceFormatError(f"{path}: this is one JSON document, not JSON Lines (one object per line): use "
                             f"`type: json` with `records_key:` naming the key that holds the records "
                             f"(top-level keys: {keys})")


@register_source("jsonl", files=True)
def read_jsonl(path: Path, card) -> Iterator[Record]:
    """JSON Lines: one JSON object per line; blank lines are ignored."""
    first = True
    for n, line, bad in _lines(path):
        if not line.strip():
            continue
        if bad:
            yield f"{path}:{n}", bad
            first = False
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            doc = _whole_json(path) if first else None
            if isinstance(doc, (list, dict)):
                raise _use_json(path, doc) from None
            yield f"{path}:{n}", DataFormatError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})")
            first = False
            continue
        if first and isinstance(obj, list):
            raise _use_json(path, obj)
        first = False
        if not isinstance(obj, dict):
            yield f"{path}:{n}", DataFormatError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
            continue
        yield f"{path}:{n}", obj


def _skip_ws(text: str, pos: int) -> int:
    return _WS.match(text, pos).end()


def _expect(text: str, pos: int, chars: str, what: str) -> int:
    if text[pos:pos + 1] not in tuple(chars):
        raise json.JSONDecodeError(f"expected {what}", text, pos)
    return pos


def _array_items(text: str, pos: int, end: list[int]) -> Iterator[tuple[int, object]]:
    """(start position, value) of each element of the JSON array starting at text[pos] == '['; then
    `end` holds the position after the closing bracket."""
    pos = _skip_ws(text, pos + 1)
    while not text.startswith("]", pos):
        value, stop = _DECODER.raw_decode(text, pos)
        yield pos, value
        pos = _expect(text, _skip_ws(text, stop), ",]", "',' or ']' after a list element")
        if text[pos] == ",":
            pos = _skip_ws(text, pos + 1)
    end.append(pos + 1)


def _check_rest(text: str, pos: int, in_object: bool) -> None:
    """The rest of the document after the records: the enclosing object's other members, then nothing."""
    pos = _skip_ws(text, pos)
    while in_object and text.startswith(",", pos):
        _, pos = _DECODER.raw_decode(text, _skip_ws(text, pos + 1))
        pos = _skip_ws(text, _expect(text, _skip_ws(text, pos), ":", "':' after an object key") + 1)
        _, pos = _DECODER.raw_decode(text, pos)
        pos = _skip_ws(text, pos)
    if in_object:
        pos = _skip_ws(text, _expect(text, pos, "}", "'}' closing the object") + 1)
    if pos < len(text):
        raise json.JSONDecodeError("Extra data", text, pos)


def _value_of_key(path: Path, text: str, pos: int, key: str) -> int:
    """Position of the value of top-level `key` in the JSON object starting at text[pos] == '{'."""
    pos, seen = _skip_ws(text, pos + 1), []
    while not text.startswith("}", pos):
        name, end = _DECODER.raw_decode(text, pos)
        pos = _skip_ws(text, _expect(text, _skip_ws(text, end), ":", "':' after an object key") + 1)
        if name == key:
            return pos
        seen.append(str(name))
        _, end = _DECODER.raw_decode(text, pos)
        pos = _skip_ws(text, end)
        if text.startswith(",", pos):
            pos = _skip_ws(text, pos + 1)
    raise SourceFormatError(f"{path}: source.records_key {key!r} is not a key of the top-level object "
                            f"(keys: {', '.join(seen) or 'none'})")


def _has_escapes(value) -> bool:
    if isinstance(value, str):
        return any("\udc80" <= ch <= "\udcff" for ch in value)
    if isinstance(value, dict):
        return any(_has_escapes(k) or _has_escapes(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_escapes(v) for v in value)
    return False


def _json_records(path: Path, key: str | None) -> Iterator[Record]:
    """(origin `path:line`, record) for each element of the file's JSON list (or of its object's `key`)."""
    data = path.read_bytes()
    text = data.decode("utf-8", "surrogateescape")
    pos = _skip_ws(text, 0)
    try:
        if key is not None:
            if not text.startswith("{", pos):
                raise SourceFormatError(f"{path}: source.records_key is {key!r} but the file is not a JSON "
                                        f"object; drop records_key for a file holding a JSON list")
            pos = _value_of_key(path, text, pos, key)
        if not text.startswith("[", pos):
            raise _not_a_list(path, text, key)
        line, counted, end = 1, 0, []
        for i, (start, obj) in enumerate(_array_items(text, pos, end)):
            line, counted = line + text.count("\n", counted, start), start
            origin = f"{path}:{line}"
            bad = _raw_escape(text, start) if _has_escapes(obj) else None
            if bad is not None:
                offset = len(text[:bad].encode("utf-8", "surrogateescape"))
                yield origin, _bad_utf8(path, line + text.count("\n", start, bad), offset, data[offset])
            elif not isinstance(obj, dict):
                yield origin, DataFormatError(f"{origin}: record [{i}] is a {type(obj).__name__}, expected an object")
            else:
                yield origin, obj
        _check_rest(text, end[0], key is not None)
    except json.JSONDecodeError as e:
        hint = ". It looks like JSON Lines (one object per line): use `type: jsonl`" if e.msg == "Extra data" else ""
        raise SourceFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno}){hint}") from None


def _not_a_list(path: Path, text: str, key: str | None) -> SourceFormatError:
    if key is not None:
        return SourceFormatError(f"{path}: the value of records_key {key!r} is not a JSON list of records")
    doc = _whole_json(path)
    if isinstance(doc, dict):
        lists = [k for k, v in doc.items() if isinstance(v, list)]
        hint = f" (keys holding a list: {', '.join(lists)})" if lists else ""
        return SourceFormatError(f"{path}: a JSON object; name the key holding the list of records with "
                                 f"`records_key:` in the card's source{hint}")
    first = text.lstrip().split("\n", 1)[0]
    try:
        jsonl = doc is None and isinstance(json.loads(first), dict)
    except ValueError:
        jsonl = False
    if jsonl:
        return SourceFormatError(f"{path}: this is JSON Lines (one object per line), not a JSON list: use "
                                 f"`type: jsonl` in the card's source")
    return SourceFormatError(f"{path}: expected a JSON list of records (or an object holding one under "
                             f"`records_key`)")


def _raw_escape(text: str, start: int) -> int | None:
    """Position of the first undecodable byte (a surrogate escape) from `start`, if any."""
    return next((j for j in range(start, len(text)) if "\udc80" <= text[j] <= "\udcff"), None)


@register_source("json", files=True)
def read_json(path: Path, card) -> Iterator[Record]:
    """A JSON list of objects, or an object holding that list under `source.records_key`."""
    return _json_records(path, card.source.get("records_key"))


@register_source("csv", files=True)
def read_csv(path: Path, card) -> Iterator[Record]:
    """Comma-separated values with a header row (or `source.columns`); quoted cells may span lines."""
    return _read_delimited(path, ",", card.source.get("columns"))


@register_source("tsv", files=True)
def read_tsv(path: Path, card) -> Iterator[Record]:
    """Tab-separated values with a header row (or `source.columns`)."""
    return _read_delimited(path, "\t", card.source.get("columns"))


def _read_delimited(path: Path, delimiter: str, columns: list[str] | None) -> Iterator[Record]:
    bad_lines: dict[int, DataFormatError] = {}

    def texts():
        for n, line, bad in _lines(path):
            if bad:
                bad_lines[n] = bad
            yield line

    reader = csv.reader(texts(), delimiter=delimiter)
    header, start = columns, 1
    for row in reader:
        line, start = start, reader.line_num + 1
        bad = next((bad_lines.pop(n) for n in sorted(bad_lines) if n <= reader.line_num), None)
        if bad is not None:
            yield f"{path}:{line}", bad
            continue
        if header is None:
            header = row
            continue
        if not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            yield f"{path}:{line}", DataFormatError(
                f"{path}:{line}: expected {len(header)} columns ({', '.join(header)}), got {len(row)}")
            continue
        yield f"{path}:{line}", dict(zip(header, row))


@register_source("lines", files=True, needs={"pattern": "a regex with named groups"})
def read_lines(path: Path, card) -> Iterator[Record]:
    """One record per line: `source.pattern`'s named groups."""
    pattern = card.source["pattern"]
    regex = re.compile(pattern)
    for n, line, bad in _lines(path):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        if bad:
            yield f"{path}:{n}", bad
            continue
        m = regex.fullmatch(line)
        if not m:
            yield f"{path}:{n}", DataFormatError(
                f"{path}:{n}: line does not match the card's pattern {pattern!r}: {line[:60]!r}")
            continue
        yield f"{path}:{n}", m.groupdict()


def _split_cot_prompt(text: str) -> tuple[str, list[str]]:
    """BBH prompt file -> (task description, ["Q: ...\\nA: ...", ...])."""
    body = text.split("-----", 1)[1] if "-----" in text else text
    blocks = [b.strip() for b in re.split(r"\n\s*\n(?=Q: )", body.strip()) if b.strip()]
    description = blocks.pop(0) if blocks and not blocks[0].startswith("Q: ") else ""
    return description, blocks


@register_source("bbh", files=True)
def read_bbh(path: Path, card) -> Iterator[Record]:
    """BIG-Bench Hard: JSON `{"examples": [...]}` plus the task's CoT prompt (`source.cot_prompts` folder)."""
    prompts = card.source.get("cot_prompts")
    prompts_dir = resolve_files(card, [prompts])[0] if prompts else None
    description, exemplars = "", []
    if prompts_dir is not None:
        prompt_file = prompts_dir / f"{path.stem}.txt"
        if prompt_file.exists():
            description, exemplars = _split_cot_prompt(prompt_file.read_text(encoding="utf-8"))
    for origin, rec in _json_records(path, "examples"):
        yield origin, (rec if isinstance(rec, Exception) else
                       dict(rec, task=path.stem, cot_description=description, cot_exemplars=exemplars))
