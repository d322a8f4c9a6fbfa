"""Sources: read a task card's rows from files, TFDS, Hugging Face or the synthetic generators.

`load_rows(card, split)` is the one entry point: it reads the raw records of
a split with the reader registered for the card's `source.type` (`SOURCES`),
applies the card's row transform (`flanx.data.transforms`), maps source
columns to template fields, maps labels to answer text, and returns a list of
plain dicts (cached on the card). Every raw record carries its origin
(`file:line`, `tfds:name/split[i]`, ...) so a malformed row, a missing or
null field, bytes that are not UTF-8, or an unknown label raises
`DataFormatError` naming file, line and field, or, when the card says
`on_error: skip`, is skipped and counted in one warning. A file that is in
the wrong format as a whole (a JSON list given to the `jsonl` reader) raises
`SourceFormatError` naming the source type to use, whatever `on_error` says.

Source types, one registered reader each (`flanx.data.source_files` holds the
file formats): `jsonl`, `json` (a JSON list, or an object holding the list
under `source.records_key`), `csv`, `tsv`, `lines` (one record per line
parsed with a regex of named groups: SST-2's `label text`, TREC's
`COARSE:fine question`), `bbh` (BIG-Bench Hard JSON plus its chain-of-thought
prompt file), `tfds`, `hf` and `synthetic`. Add one with `register_source`:

    from flanx.data.sources import register_source

    @register_source("parquet", files=True)   # split patterns are files; called once per file
    def read_parquet(path, card):
        import pyarrow.parquet as pq
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield f"{path}[{i}]", row
"""
from __future__ import annotations

import glob
import logging
import re
from pathlib import Path
from typing import Any, Callable, Iterator

from flanx import paths
from flanx.data import synthetic_rows
from flanx.data.transforms import ROW_TRANSFORMS, DataFormatError
from flanx.registry import Registry

logger = logging.getLogger("flanx")

Record = tuple[str, Any]  # (origin, raw fields dict, or a DataFormatError for a bad row)
SplitReader = Callable[[Any, dict], Iterator[Record]]

__all__ = ["SOURCES", "DataFormatError", "SourceFormatError", "ROW_TRANSFORMS", "register_source",
           "read_records", "prepare_row", "load_rows", "resolve_files", "data_available", "files_present"]


class SourceFormatError(DataFormatError):
    """A whole file is not in the card's format; skipping rows cannot help, so `on_error` does not apply."""


SOURCES: Registry[SplitReader] = Registry(
    "source type", hint="Register one with @flanx.data.sources.register_source('name', files=...)")


def register_source(name: str, *, files: bool, needs: dict[str, str] | None = None, override: bool = False,
                    available: Callable | None = None):
    """Decorator registering a reader for `source.type: name`.

    With `files=True` the reader is `fn(path, card)` and is called for each
    file the split's patterns match (`source.file_fields` columns are added
    to its records); otherwise it is `fn(card, split_spec)` and reads the
    whole split (`split_spec["name"]` is the upstream split name). Either
    yields `(origin, record_dict)`, or `(origin, DataFormatError(...))` for a
    bad row. `needs` maps required `source` keys to what they hold; cards
    missing one fail when loaded. `available(card)` says whether the data
    is there without reading it (default: the split files exist for file
    readers, always for others); see `data_available`.
    """
    def add(fn: Callable) -> Callable:
        if files:
            def split_reader(card, split_spec: dict) -> Iterator[Record]:
                for path in resolve_files(card, split_spec["files"]):
                    extra = _file_fields(card, path)
                    for origin, rec in fn(path, card):
                        yield origin, (rec if isinstance(rec, Exception) or not extra else dict(extra, **rec))
        else:
            def split_reader(card, split_spec: dict) -> Iterator[Record]:
                return fn(card, split_spec)
        split_reader.__name__ = split_reader.__qualname__ = getattr(fn, "__name__", name)
        split_reader.__doc__ = fn.__doc__
        split_reader.reads_files = files
        split_reader.needs = dict(needs or {})
        split_reader.reader = fn
        split_reader.available = available
        SOURCES.register(name, split_reader, override=override)
        return fn
    return add


# ----------------------------------------------------------------------------- files

def _root(card) -> Path | None:
    if card.dataset and card.dataset in paths.DATASETS:
        return paths.require_dataset(card.dataset)
    return paths.data_dir()


def _beside_card_hint(card, pattern: str) -> str:
    """A hint when `pattern` matches files next to the card file: relative paths start at
    FLANX_DATA_DIR unless `source.root` says otherwise."""
    folder = Path(card.file).parent
    if card.file == "<python>" or not glob.glob(str(folder / pattern)):
        return ""
    return (f". {pattern!r} is beside the card file {card.file}: add `root: .` to the card's `source:` "
            f"(paths relative to the card file)")


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
                try:
                    paths.data_dir(required=True)  # raises MissingDataError naming FLANX_DATA_DIR
                except paths.MissingDataError as e:
                    raise paths.MissingDataError(f"{e}{_beside_card_hint(card, pattern)}") from None
        full = str(Path(pattern) if base is None else base / pattern)
        matched = sorted(glob.glob(full))
        if not matched:
            raise paths.MissingDataError(
                f"task card {card.name!r}: no file matches {full!r}. Check the card's source paths, "
                f"or point {paths.DATA_DIR_ENV} at the folder holding the data{_beside_card_hint(card, pattern)}")
        files += [Path(m) for m in matched]
    return files


def files_present(card) -> bool:
    """True when every split's file patterns match a file (no error when they do not)."""
    if card.dataset and card.dataset in paths.DATASETS and not paths.dataset_available(card.dataset):
        return False
    src_root = card.source.get("root")
    base = Path(src_root) if src_root else paths.data_dir()
    for split_spec in card.splits.values():
        for pattern in split_spec.get("files") or ():
            full = Path(pattern) if Path(pattern).is_absolute() else (base / pattern if base else None)
            if full is None or not glob.glob(str(full)):
                return False
    return True


def data_available(card) -> bool:
    """Whether a card's data can be read here without downloading (files exist, TFDS data prepared, ...)."""
    reader = SOURCES.get(card.source["type"]) if card.source else None
    if reader is None:
        return False
    if getattr(reader, "available", None) is not None:
        return bool(reader.available(card))
    return files_present(card) if getattr(reader, "reads_files", False) else True


def _file_fields(card, path: Path) -> dict:
    pattern = card.source.get("file_fields")
    if not pattern:
        return {}
    m = re.fullmatch(pattern, path.name)
    if not m:
        raise DataFormatError(f"{path}: file name does not match source.file_fields {pattern!r} "
                              f"(task card {card.name!r})")
    return m.groupdict()


# ----------------------------------------------------------------------------- other sources

@register_source("synthetic", files=False, needs={"generator": f"one of {', '.join(synthetic_rows.GENERATORS)}"})
def read_synthetic(card, split_spec: dict) -> Iterator[Record]:
    """Rows of a built-in generator (`source.generator`, `source.seed`; the split's `size`)."""
    split, seed = split_spec["name"], int(card.source.get("seed", 0))
    rows = synthetic_rows.iter_rows(card.source["generator"], split, split_spec.get("size"), seed)
    for i, row in enumerate(rows):
        yield f"synthetic:{card.source['generator']}/{split}[{i}]", row


def read_records(card, split: str) -> Iterator[Record]:
    """Raw (origin, record) pairs of `split`, after the split's row selection."""
    if split not in card.splits:
        raise KeyError(f"task card {card.name!r} has no split {split!r}; splits: {', '.join(card.splits)}")
    split_spec = card.splits[split]
    records = SOURCES.check(card.source["type"], f"task card {card.path}: source.type")(card, split_spec)
    if split_spec.get("slice"):  # [start, stop] of the split's records, as Python slices them
        records = iter(list(records)[slice(*split_spec["slice"])])
    take, drop = split_spec.get("take_every"), split_spec.get("drop_every")
    for i, rec in enumerate(records):
        if take and i % take[0] != take[1]:
            continue
        if drop and i % drop[0] == drop[1]:
            continue
        yield rec


# ----------------------------------------------------------------------------- row preparation

def _crlf(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\r\n", "\n")
    if isinstance(value, list):
        return [_crlf(v) for v in value]
    return value


def _column(raw: dict, column: str, field: str) -> Any:
    if column not in raw:
        raise DataFormatError(f"missing field {column!r} (template field {field!r}); "
                              f"record has: {', '.join(sorted(map(str, raw))) or 'nothing'}")
    if raw[column] is None:
        raise DataFormatError(f"field {column!r} is null (template field {field!r})")
    return raw[column]


def prepare_row(card, split: str, raw: dict) -> dict | None:
    """Transform, map fields and labels; None when the row transform drops the row.

    Raises DataFormatError (without the origin). A field mapped to a list of
    columns (`references: [summary1, summary2]`) holds the list of their values.
    """
    if card.row_transform:
        try:
            raw = ROW_TRANSFORMS[card.row_transform](raw)
        except KeyError as e:
            raise DataFormatError(f"missing field {e.args[0]!r} needed by row_transform "
                                  f"{card.row_transform!r}") from None
        if raw is None:
            return None
        if not isinstance(raw, dict):
            raise TypeError(f"row transform {card.row_transform!r} returned {type(raw).__name__}; "
                            f"it must return a dict, or None to drop the row")
    mapping = dict(card.fields, **card.splits[split].get("fields", {}))
    row = {}
    for field, column in mapping.items():
        if isinstance(column, list):
            row[field] = [_crlf(_column(raw, c, field)) for c in column]
        else:
            row[field] = _crlf(_column(raw, column, field))
    if card.labels is not None and card.label_field:
        value = row[card.label_field]
        answers = [_label(card, v) for v in value] if isinstance(value, list) else _label(card, value)
        row[card.label_field] = answers
    return row


def _label(card, value: Any) -> str:
    raw_label = str(value).strip()
    if raw_label not in card.labels:
        raise DataFormatError(f"field {card.label_field!r}: unknown label {raw_label!r}; "
                              f"the card knows {', '.join(map(repr, card.labels))}")
    return card.labels[raw_label]


def load_rows(card, split: str, limit: int | None = None) -> list[dict]:
    """The prepared rows of `split` (cached on the card); `limit` reads only the first rows (uncached).

    A split that a card's local variant lacks (its `local:` block gives only some splits) is read
    from the main variant."""
    alternate = getattr(card, "alternate", None)
    if split not in card.splits and alternate is not None and split in alternate.splits:
        return load_rows(alternate, split, limit)
    cache = card.row_cache
    if split in cache:
        return cache[split] if limit is None else cache[split][:limit]
    rows, skipped, dropped, first = [], 0, 0, None
    records = read_records(card, split)
    while True:
        try:
            origin, rec = next(records)
        except StopIteration:
            break
        except SourceFormatError as e:
            raise SourceFormatError(f"{e} (task card {card.name!r})") from None
        if limit is not None and len(rows) >= limit:
            return rows
        try:
            if isinstance(rec, Exception):
                raise rec
            row = prepare_row(card, split, rec)
        except DataFormatError as e:
            msg = str(e) if str(e).startswith(origin.split(":")[0]) else f"{origin}: {e}"
            msg += f" (task card {card.name!r})"
            if card.on_error != "skip":
                raise DataFormatError(msg + ". Fix the row, or set `on_error: skip` in the card "
                                      "to skip and count bad rows") from None
            skipped += 1
            first = first or msg
            continue
        if row is None:
            dropped += 1
        else:
            rows.append(row)
    if skipped:
        logger.warning("task card %r, split %r: skipped %d malformed row(s), kept %d; first: %s",
                       card.name, split, skipped, len(rows), first)
    if dropped:
        logger.info("task card %r, split %r: row_transform %r dropped %d row(s), kept %d",
                    card.name, split, card.row_transform, dropped, len(rows))
    card.skipped[split] = skipped
    cache[split] = rows
    return rows
