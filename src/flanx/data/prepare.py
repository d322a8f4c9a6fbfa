"""`flanx data prepare`: download and prepare a collection's TFDS / Hugging Face data, once, for offline use.

    flanx data prepare --collection flan2021 --data_dir DIR [--cards rte,cb] [--no_checksums]

For every card of the collection (its TFDS or HF source; a card's `local:`
files are not downloaded) and once per dataset: TFDS builders run
`download_and_prepare` into DIR (downloads in DIR/downloads, manual files in
DIR/downloads/manual); HF datasets are loaded and saved to DIR/hf/PATH[/NAME].
DIR/manifest.json records, per dataset: the cards using it, the builder and
version, the prepared splits and their sizes, each card split's rows (and the
card's recorded `num_examples`), the sha256 of every prepared file, and for
a failure the reason; a dataset that needs a manual download names the step.
Afterwards flanx reads DIR with downloads off: `export FLANX_TFDS_DIR=DIR`
(not needed when DIR is $FLANX_DATA_DIR/tfds). Exit status 1 when a dataset
failed. Already prepared datasets are not downloaded again.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import sys
from pathlib import Path

from flanx import paths
from flanx.data import card_files
from flanx.data import hub_sources

MANIFEST = "manifest.json"


@dataclasses.dataclass
class Entry:
    """One dataset of the manifest."""

    source: str                 # "tfds" or "hf"
    name: str                   # TFDS builder spec, or HF path[/name]
    cards: list[str]
    status: str = "pending"     # ok | failed | manual
    version: str | None = None
    splits: dict = dataclasses.field(default_factory=dict)       # prepared split -> rows
    card_splits: dict = dataclasses.field(default_factory=dict)  # card -> split -> {name, rows, recorded}
    files: dict = dataclasses.field(default_factory=dict)        # path relative to DIR -> sha256
    error: str | None = None
    manual_step: str | None = None


def _tfds():
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy; also the seam tests replace
    return tfds


def _datasets():
    import datasets  # noqa: PLC0415
    return datasets


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: Path, root: Path, enabled: bool) -> dict:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): (_sha256(p) if enabled else None) for p in files}


def _one_line(error: BaseException) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())}"[:600]


def _manual_step(builder, data_dir: Path) -> str:
    text = " ".join(str(builder.MANUAL_DOWNLOAD_INSTRUCTIONS).split())
    return (f"{builder.name} needs a manual download: put the files its instructions name in "
            f"{data_dir / 'downloads' / 'manual'} and run this command again. Instructions: {text[:500]}")


def prepare_tfds(entry: Entry, cards: list, data_dir: Path, checksums: bool) -> Entry:
    tfds = _tfds()
    try:
        builder = tfds.builder(entry.name, data_dir=str(data_dir), try_gcs=False)
    except Exception as e:  # noqa: BLE001 - unknown name/version: reported, the others go on
        entry.status, entry.error = "failed", _one_line(e)
        return entry
    entry.version = str(builder.version)
    manual = bool(getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None))
    if hub_sources.builder_dir(entry.name, data_dir) is None:
        try:
            builder.download_and_prepare(download_dir=str(data_dir / "downloads"))
        except Exception as e:  # noqa: BLE001 - network, checksums, manual files: report and go on
            entry.status, entry.error = ("manual" if manual else "failed"), _one_line(e)
            if manual:
                entry.manual_step = _manual_step(builder, data_dir)
            return entry
    entry.splits = {name: int(info.num_examples) for name, info in builder.info.splits.items()}
    for card in cards:
        entry.card_splits[card.name] = {
            split: {"name": split_spec["name"], "rows": int(builder.info.splits[split_spec["name"]].num_examples),
                    "recorded": split_spec.get("num_examples")}
            for split, split_spec in card.splits.items()}
    folder = hub_sources.builder_dir(entry.name, data_dir)
    entry.files = _checksums(folder, data_dir, checksums) if folder else {}
    entry.status = "ok"
    return entry


def prepare_hf(entry: Entry, cards: list, data_dir: Path, checksums: bool) -> Entry:
    card = cards[0]
    target = data_dir / "hf" / entry.name
    try:
        datasets = _datasets()
        if not target.is_dir():
            ds = datasets.load_dataset(card.source["path"], card.source.get("name"),
                                       cache_dir=str(data_dir / "hf_cache"))
            ds.save_to_disk(str(target))
        ds = datasets.load_from_disk(str(target))
    except Exception as e:  # noqa: BLE001
        entry.status, entry.error = "failed", _one_line(e)
        return entry
    entry.splits = {name: len(split) for name, split in ds.items()}

    def rows(split_name: str) -> int | None:
        split, cut = hub_sources.split_slice(split_name)
        return len(range(entry.splits[split])[cut]) if split in entry.splits else None
    for c in cards:
        entry.card_splits[c.name] = {split: {"name": split_spec["name"], "rows": rows(split_spec["name"]),
                                             "recorded": split_spec.get("num_examples")}
                                     for split, split_spec in c.splits.items()}
    entry.files = _checksums(target, data_dir, checksums)
    entry.status = "ok"
    return entry


def download_sources(collection: str, only: list[str] | None = None) -> dict[tuple[str, str], list]:
    """(source type, dataset) -> the collection's cards reading it (their TFDS/HF variant)."""
    files = card_files.collection_card_files(collection)
    if not files:
        raise SystemExit(f"flanx: no task cards in collection {collection!r} (tasks/{collection}/)")
    cards = card_files.load_card_files(files, use_local=False)
    unknown = sorted(set(only or ()) - set(cards))
    if unknown:
        raise SystemExit(f"flanx: collection {collection!r} has no card(s) {', '.join(unknown)}")
    groups: dict[tuple[str, str], list] = {}
    for card in cards.values():
        if only and card.name not in only:
            continue
        src = card.source
        if src["type"] == "tfds":
            groups.setdefault(("tfds", src["name"]), []).append(card)
        elif src["type"] == "hf" and src.get("path"):
            key = src["path"] + (f"/{src['name']}" if src.get("name") else "")
            groups.setdefault(("hf", key), []).append(card)
    return groups


def prepare(collection: str, data_dir: str | Path, only: list[str] | None = None, checksums: bool = True,
            out=None) -> list[Entry]:
    """Prepare every TFDS/HF dataset of `collection` under `data_dir`; write and return the manifest entries."""
    out = out or sys.stdout
    data_dir = Path(data_dir).expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for (kind, name), cards in sorted(download_sources(collection, only).items()):
        entry = Entry(kind, name, sorted(c.name for c in cards))
        print(f"[{len(entries) + 1}] {kind} {name} ({', '.join(entry.cards)}) ...", file=out, flush=True)
        prepare_one = prepare_tfds if kind == "tfds" else prepare_hf
        entries.append(prepare_one(entry, cards, data_dir, checksums))
    manifest = {"collection": collection, "data_dir": str(data_dir),
                "written": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "datasets": [dataclasses.asdict(e) for e in entries]}
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")
    report(entries, data_dir, out)
    return entries


def report(entries: list[Entry], data_dir: Path, out) -> None:
    ok = [e for e in entries if e.status == "ok"]
    print(f"\n{len(ok)} of {len(entries)} datasets prepared under {data_dir} (manifest: {data_dir / MANIFEST})",
          file=out)
    for e in entries:
        for card, splits in e.card_splits.items():
            for split, s in splits.items():
                if s["recorded"] is not None and s["rows"] is not None and s["recorded"] != s["rows"]:
                    print(f"  note: {card} {split} ({s['name']}) has {s['rows']} rows; the card records "
                          f"{s['recorded']}", file=out)
    for e in entries:
        if e.status == "manual":
            print(f"  MANUAL {e.name} ({', '.join(e.cards)}): {e.manual_step}", file=out)
        elif e.status == "failed":
            print(f"  FAILED {e.name} ({', '.join(e.cards)}): {e.error}", file=out)
    default = paths.data_dir()
    if default is None or data_dir != (default / "tfds").resolve():
        print(f"\nflanx reads this folder with downloads off once you `export {paths.TFDS_DIR_ENV}={data_dir}`",
              file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flanx data", description="Prepare a collection's data for offline use.")
    sub = parser.add_subparsers(dest="action", required=True)
    p = sub.add_parser("prepare", help="download and prepare every TFDS/HF dataset of a collection")
    p.add_argument("--collection", required=True, help="a folder under tasks/, e.g. flan2021")
    default = paths.tfds_data_dir() or (paths.data_dir() / "tfds" if paths.data_dir() else None)
    p.add_argument("--data_dir", required=default is None, default=default,
                   help=f"where to prepare the data (default ${paths.TFDS_DIR_ENV}, or $FLANX_DATA_DIR/tfds)")
    p.add_argument("--cards", help="only these cards (comma-separated)")
    p.add_argument("--no_checksums", action="store_true", help="skip the sha256 of prepared files")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    only = [c.strip() for c in args.cards.split(",") if c.strip()] if args.cards else None
    entries = prepare(args.collection, args.data_dir, only, checksums=not args.no_checksums)
    return 0 if all(e.status == "ok" for e in entries) else 1
