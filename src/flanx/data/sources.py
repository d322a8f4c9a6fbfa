"""Sources: read a task card's rows from files, TFDS, Hugging Face or the synthetic generators.

`load_rows(card, split)` is the one entry point: it reads the raw records of
a split, applies the card's built-in row transform, maps source columns to
template fields, maps labels to answer text, and returns a list of plain
dicts (cached on the card). Every raw record carries its origin (`file:line`,
`tfds:name/split[i]`, ...) so a malformed row, a missing field or an unknown
label raises `DataFormatError` naming file, line and field, or, when the card
says `on_error: skip`, is skipped and counted in one warning.

Source types (`source.type` in a card): `jsonl`, `csv`, `tsv`, `lines`
(one record per line parsed with a regex of named groups: SST-2's
`label text`, TREC's `COARSE:fine question`), `bbh` (BIG-Bench Hard JSON plus
its chain-of-thought prompt file), `tfds`, `hf` and `synthetic`.
"""
from __future__ import annotations

import csv
import glob
import json
import logging
import re
from pathlib import Path
from typing import Any, Iterator

from flanx import paths
from flanx.data import synthetic

logger = logging.getLogger("flanx")

Record = tuple[str, dict]  # (origin, raw fields)


class DataFormatError(ValueError):
    """A source row is malformed, lacks a field, or has a label the card does not know."""


# ----------------------------------------------------------------------------- files

def _root(card) -> Path | None:
    if card.dataset and card.dataset in paths.DATASETS:
        return paths.require_dataset(card.dataset)
    return paths.data_dir()


def resolve_files(card, patterns: list[str]) -> list[Path]:
    """Files matching the split's patterns (absolute, `source.root`-relative or FLANX_DATA_DIR-relative)."""
    src_root = card.source.get("root")
    files: list[Path] = []
    for pattern in patterns:
        if Path(pattern).is_absolute():
            base = None
        elif src_root:
            base = Path(src_root)
        else:
            base = _root(card)
            if base is None:
                paths.data_dir(required=True)  # raises MissingDataError naming FLANX_DATA_DIR
        full = str(Path(pattern) if base is None else base / pattern)
        matched = sorted(glob.glob(full))
        if not matched:
            raise paths.MissingDataError(
                f"task card {card.name!r}: no file matches {full!r}. Check the card's source paths, "
                f"or point {paths.DATA_DIR_ENV} at the folder holding the data")
        files += [Path(m) for m in matched]
    return files


def _file_fields(card, path: Path) -> dict:
    pattern = card.source.get("file_fields")
    if not pattern:
        return {}
    m = re.fullmatch(pattern, path.name)
    if not m:
        raise DataFormatError(f"{path}: file name does not match source.file_fields {pattern!r} "
                              f"(task card {card.name!r})")
    return m.groupdict()


def _read_jsonl(path: Path) -> Iterator[Record]:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield f"{path}:{n}", DataFormatError(f"{path}:{n}: not valid JSON ({e.msg} at column {e.colno})")
                continue
            if not isinstance(obj, dict):
                yield f"{path}:{n}", DataFormatError(f"{path}:{n}: expected a JSON object, got {type(obj).__name__}")
                continue
            yield f"{path}:{n}", obj


def _read_delimited(path: Path, delimiter: str, columns: list[str] | None) -> Iterator[Record]:
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        header = columns
        start = 1
        for row in reader:
            line, start = start, reader.line_num + 1
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


def _read_lines(path: Path, pattern: str) -> Iterator[Record]:
    regex = re.compile(pattern)
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\r\n")
            if not line.strip():
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


def _read_bbh(path: Path, prompts_dir: Path | None) -> Iterator[Record]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        examples = data["examples"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        yield f"{path}", DataFormatError(f"{path}: expected JSON {{\"examples\": [...]}} ({e})")
        return
    description, exemplars = "", []
    if prompts_dir is not None:
        prompt_file = prompts_dir / f"{path.stem}.txt"
        if prompt_file.exists():
            description, exemplars = _split_cot_prompt(prompt_file.read_text(encoding="utf-8"))
    for i, ex in enumerate(examples):
        origin = f"{path}:examples[{i}]"
        if not isinstance(ex, dict):
            yield origin, DataFormatError(f"{origin}: expected an object with input and target")
            continue
        yield origin, dict(ex, task=path.stem, cot_description=description, cot_exemplars=exemplars)


def _read_file_split(card, spec: dict) -> Iterator[Record]:
    kind = card.source["type"]
    for path in resolve_files(card, spec["files"]):
        extra = _file_fields(card, path)
        if kind == "jsonl":
            records = _read_jsonl(path)
        elif kind in ("csv", "tsv"):
            records = _read_delimited(path, "," if kind == "csv" else "\t", card.source.get("columns"))
        elif kind == "lines":
            records = _read_lines(path, card.source["pattern"])
        else:  # bbh
            prompts = card.source.get("cot_prompts")
            prompts_dir = resolve_files(card, [prompts])[0] if prompts else None
            records = _read_bbh(path, prompts_dir)
        for origin, rec in records:
            yield origin, (rec if isinstance(rec, Exception) or not extra else dict(extra, **rec))


# ----------------------------------------------------------------------------- other sources

def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if hasattr(value, "item") and getattr(value, "shape", None) == ():
        return _decode(value.item())
    return value


def _read_tfds(card, spec: dict) -> Iterator[Record]:
    import tensorflow_datasets as tfds  # noqa: PLC0415 - optional, heavy
    name = card.source["name"]
    ds = tfds.load(name, split=spec["name"], data_dir=card.source.get("data_dir"),
                   download=card.source.get("download", False))
    for i, ex in enumerate(tfds.as_numpy(ds)):
        yield f"tfds:{name}/{spec['name']}[{i}]", {k: _decode(v) for k, v in ex.items()}


def _read_hf(card, spec: dict) -> Iterator[Record]:
    dataset = card.source.get("dataset")
    label = card.source.get("path", "in-memory")
    if dataset is None:
        import datasets  # noqa: PLC0415 - optional, imported only for hf sources
        dataset = datasets.load_dataset(card.source["path"], card.source.get("name"), split=spec["name"])
    else:  # an in-memory mapping {split: rows}, e.g. a datasets.DatasetDict
        dataset = dataset[spec["name"]]
    for i, ex in enumerate(dataset):
        yield f"hf:{label}/{spec['name']}[{i}]", dict(ex)


def _read_synthetic(card, spec: dict, split: str) -> Iterator[Record]:
    rows = synthetic.iter_rows(card.source["generator"], spec.get("name", split), spec.get("size"),
                               int(card.source.get("seed", 0)))
    for i, row in enumerate(rows):
        yield f"synthetic:{card.source['generator']}/{split}[{i}]", row


def read_records(card, split: str) -> Iterator[Record]:
    """Raw (origin, record) pairs of `split`, after the split's row selection."""
    if split not in card.splits:
        raise KeyError(f"task card {card.name!r} has no split {split!r}; splits: {', '.join(card.splits)}")
    spec = card.splits[split]
    kind = card.source["type"]
    if kind == "tfds":
        records = _read_tfds(card, spec)
    elif kind == "hf":
        records = _read_hf(card, spec)
    elif kind == "synthetic":
        records = _read_synthetic(card, spec, split)
    else:
        records = _read_file_split(card, spec)
    take, drop = spec.get("take_every"), spec.get("drop_every")
    for i, rec in enumerate(records):
        if take and i % take[0] != take[1]:
            continue
        if drop and i % drop[0] == drop[1]:
            continue
        yield rec


# ----------------------------------------------------------------------------- row preparation

def _gsm8k(row: dict) -> dict:
    answer = row["answer"]
    if "####" not in answer:
        raise DataFormatError("field 'answer': no '####' before the final answer")
    rationale, final = answer.rsplit("####", 1)
    rationale = re.sub(r"<<[^>]*>>", "", rationale).strip()
    return dict(row, rationale=rationale, final_answer=final.strip().replace(",", ""))


def _t0(row: dict) -> dict:
    completion = row["completion"]
    return dict(row, completion=completion.replace("<|endoftext|>", "").strip(), prompt=row["prompt"].strip())


def _mmlu(row: dict) -> dict:
    choices = [row[f"choice{i}"] for i in range(4)]
    try:
        answer = choices[int(row["answer"])]
    except (ValueError, IndexError):
        raise DataFormatError(f"field 'answer': expected 0-3, got {row['answer']!r}") from None
    return dict(row, choices=choices, answer_text=answer,
                subject_name=str(row.get("subject", "")).replace("_", " "))


ROW_TRANSFORMS = {"gsm8k": _gsm8k, "t0": _t0, "mmlu": _mmlu}


def _crlf(value: Any) -> Any:
    return value.replace("\r\n", "\n") if isinstance(value, str) else value


def prepare_row(card, split: str, raw: dict) -> dict:
    """Transform, map fields and labels; raises DataFormatError (without the origin)."""
    if card.row_transform:
        try:
            raw = ROW_TRANSFORMS[card.row_transform](raw)
        except KeyError as e:
            raise DataFormatError(f"missing field {e.args[0]!r} needed by row_transform "
                                  f"{card.row_transform!r}") from None
    mapping = dict(card.fields, **card.splits[split].get("fields", {}))
    row = {}
    for field, column in mapping.items():
        value = raw.get(column)
        if value is None:
            raise DataFormatError(f"missing field {column!r} (template field {field!r}); "
                                  f"record has: {', '.join(sorted(map(str, raw))) or 'nothing'}")
        row[field] = _crlf(value)
    if card.labels is not None and card.label_field:
        raw_label = str(row[card.label_field]).strip()
        if raw_label not in card.labels:
            raise DataFormatError(f"field {card.label_field!r}: unknown label {raw_label!r}; "
                                  f"the card knows {', '.join(map(repr, card.labels))}")
        row[card.label_field] = card.labels[raw_label]
    return row


def load_rows(card, split: str, limit: int | None = None) -> list[dict]:
    """The prepared rows of `split` (cached on the card); `limit` reads only the first rows (uncached)."""
    cache = card.row_cache
    if split in cache:
        return cache[split] if limit is None else cache[split][:limit]
    rows, skipped, first = [], 0, None
    for origin, rec in read_records(card, split):
        if limit is not None and len(rows) >= limit:
            return rows
        try:
            if isinstance(rec, Exception):
                raise rec
            rows.append(prepare_row(card, split, rec))
        except DataFormatError as e:
            msg = str(e) if str(e).startswith(origin.split(":")[0]) else f"{origin}: {e}"
            msg += f" (task card {card.name!r})"
            if card.on_error != "skip":
                raise DataFormatError(msg + ". Fix the row, or set `on_error: skip` in the card "
                                      "to skip and count bad rows") from None
            skipped += 1
            first = first or msg
    if skipped:
        logger.warning("task card %r, split %r: skipped %d malformed row(s), kept %d; first: %s",
                       card.name, split, skipped, len(rows), first)
    card.skipped[split] = skipped
    cache[split] = rows
    return rows
