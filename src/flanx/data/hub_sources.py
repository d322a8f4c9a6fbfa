"""TFDS and Hugging Face sources: where their data lives, whether it is there, and reading it.

A `tfds` card (`source.name: "super_glue/rte:1.0.2"`) reads prepared TFDS
data from `source.data_dir`, else `flanx.paths.tfds_data_dir()`
(`$FLANX_TFDS_DIR`, or `$FLANX_DATA_DIR/tfds`), with downloads off unless the
card says `download: true`; `flanx data prepare` fills that folder. Data that
is not prepared raises `MissingDataError` naming the folder and the command.
`prepared(card)` checks for TFDS's `dataset_info.json` without importing
TFDS; `split_size(card, split)` reads a split's size (slices included) from
TFDS's metadata; `check_builder(name)` constructs the builder offline (no
download, no GCS) so an unknown name or version fails when the card is
registered. Records are decoded to plain Python: text to `str`, sequences to
lists, nested features to dicts.

An `hf` card reads `source.dataset` (an in-memory mapping of splits), else
the copy `flanx data prepare` saved under `<tfds dir>/hf/<path>[/<name>]`,
else `datasets.load_dataset(path, name)`.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path
from typing import Any, Iterator

from flanx import paths
from flanx.data.sources import DataFormatError, Record, register_source


def _decode(value: Any) -> Any:
    """A TFDS numpy value as plain Python (bytes -> str, arrays -> lists, dicts recursively)."""
    if isinstance(value, bytes):
        return value.decode("utf-8")
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_decode(v) for v in value]
    if hasattr(value, "to_list"):  # ragged tensors
        return _decode(value.to_list())
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return _decode(value.tolist())
    return value


# ----------------------------------------------------------------------------- TFDS

def split_name(spec: str) -> tuple[str, str | None, str | None]:
    """("super_glue", "rte", "1.0.2") for "super_glue/rte:1.0.2"; config and version may be None."""
    name, _, version = spec.partition(":")
    base, _, config = name.partition("/")
    return base, config or None, version or None


def data_dir_of(card) -> Path:
    """The TFDS data folder a card reads (its `source.data_dir`, flanx's TFDS folder, or TFDS's default)."""
    explicit = card.source.get("data_dir") or paths.tfds_data_dir()
    if explicit:
        return Path(explicit).expanduser()
    return Path(os.environ.get("TFDS_DATA_DIR", "~/tensorflow_datasets")).expanduser()


def builder_dir(name: str, data_dir: Path) -> Path | None:
    """Where TFDS keeps a prepared builder (`data_dir/name/config/version`), or None when absent."""
    base, config, version = split_name(name)
    folder = data_dir / base / config if config else data_dir / base
    if version:
        return folder / version if (folder / version / "dataset_info.json").is_file() else None
    found = sorted((p for p in folder.glob("*") if (p / "dataset_info.json").is_file()),
                   key=lambda p: [int(x) if x.isdigit() else 0 for x in p.name.split(".")])
    return found[-1] if found else None


def prepared(card) -> bool:
    return builder_dir(card.source["name"], data_dir_of(card)) is not None


def split_size(card, split: str) -> int:
    """Rows of a split string (e.g. `train[:-200]`) per TFDS's metadata of the prepared data."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy, only when data is there
    builder = tfds.builder(card.source["name"], data_dir=str(data_dir_of(card)), try_gcs=False)
    return int(builder.info.splits[card.splits[split]["name"]].num_examples)


@functools.lru_cache(maxsize=None)
def check_builder(name: str) -> str | None:
    """None when `name` constructs as a TFDS builder offline, else the reason it does not."""
    import tensorflow_datasets as tfds  # noqa: PLC0415
    try:
        tfds.builder(name, try_gcs=False)
    except Exception as e:  # noqa: BLE001 - TFDS raises several types for unknown names/versions
        return " ".join(str(e).split())[:400] or type(e).__name__
    return None


def not_prepared(card) -> paths.MissingDataError:
    folder = data_dir_of(card)
    return paths.MissingDataError(
        f"task card {card.name!r}: TFDS dataset {card.source['name']!r} is not prepared under {folder}. "
        f"Run `flanx data prepare --collection {card.collection or 'COLLECTION'} --data_dir {folder}` on a "
        f"machine with network (or copy a prepared folder there), or point {paths.TFDS_DIR_ENV} at it")


@register_source("tfds", files=False, needs={"name": "the TFDS builder name, e.g. super_glue/rte:1.0.2"},
                 available=prepared)
def read_tfds(card, split_spec: dict) -> Iterator[Record]:
    """A TFDS split (`source.name`, `data_dir`, `download`)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415 - optional, heavy
    name = card.source["name"]
    try:
        ds = tfds.load(name, split=split_spec["name"], data_dir=str(data_dir_of(card)),
                       download=card.source.get("download", False), try_gcs=False)
    except (AssertionError, FileNotFoundError) as e:  # TFDS: "could not find data in ..."
        raise not_prepared(card) from e
    for i, ex in enumerate(tfds.as_numpy(ds)):
        origin = f"tfds:{name}/{split_spec['name']}[{i}]"
        try:
            yield origin, _decode(ex)
        except UnicodeDecodeError as e:
            yield origin, DataFormatError(f"{origin}: a text feature is not valid UTF-8 ({e.reason} at byte {e.start})")


# ----------------------------------------------------------------------------- Hugging Face

_SPLIT_SLICE = re.compile(r"(?P<split>[\w.-]+)(?:\[(?P<start>-?\d*):(?P<stop>-?\d*)\])?")


def split_slice(name: str) -> tuple[str, slice]:
    """("train", slice(None, -200)) for "train[:-200]": a saved dataset's split and the rows to keep."""
    m = _SPLIT_SLICE.fullmatch(name.strip())
    if not m:
        raise DataFormatError(f"split {name!r}: flanx reads a saved Hugging Face split as NAME or NAME[start:stop]")
    start, stop = (int(v) if v else None for v in m.group("start", "stop"))
    return m.group("split"), slice(start, stop)


def hf_saved_dir(card) -> Path | None:
    """Where `flanx data prepare` saves an `hf` card's dataset, or None without a TFDS folder."""
    root = paths.tfds_data_dir()
    if root is None or "path" not in card.source:
        return None
    parts = [card.source["path"]] + ([card.source["name"]] if card.source.get("name") else [])
    return Path(root) / "hf" / "/".join(parts)


def hf_available(card) -> bool:
    saved = hf_saved_dir(card)
    return card.source.get("dataset") is not None or (saved is not None and saved.is_dir())


@register_source("hf", files=False, available=hf_available)
def read_hf(card, split_spec: dict) -> Iterator[Record]:
    """A Hugging Face `datasets` split (`source.path`/`name`), or an in-memory `source.dataset` mapping."""
    dataset = card.source.get("dataset")
    label = card.source.get("path", "in-memory")
    if dataset is None:
        import datasets  # noqa: PLC0415 - optional, imported only for hf sources
        saved = hf_saved_dir(card)
        if saved is not None and saved.is_dir():
            split, rows = split_slice(split_spec["name"])
            full = datasets.load_from_disk(str(saved))[split]
            dataset = (full[i] for i in range(len(full))[rows])
        else:
            dataset = datasets.load_dataset(card.source["path"], card.source.get("name"), split=split_spec["name"])
    else:  # an in-memory mapping {split: rows}, e.g. a datasets.DatasetDict
        dataset = dataset[split_spec["name"]]
    for i, ex in enumerate(dataset):
        yield f"hf:{label}/{split_spec['name']}[{i}]", dict(ex)
