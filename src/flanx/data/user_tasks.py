"""A user's own task cards and mixtures, from files: `FLANX_TASKS_PATH` and `MIXTURE_OR_TASK_MODULE`.

`FLANX_TASKS_PATH` lists folders and/or card files, separated by `:` (`;` on
Windows), like PATH. A folder contributes every `*.yaml` / `*.yml` card in it
(not its subfolders) and its `mixtures.yaml`; a card file contributes itself
and the `mixtures.yaml` beside it. `flanx tasks|mixtures`, the entry points
(`python -m flanx.train|eval|infer`) and the study all read it, through
`flanx.data.register_all()`. User mixtures use the schema of the collection's
`tasks/mixtures.yaml` and may name the collection's cards and the user's.

A user card named like a card of the collection (or of another user file)
is an error unless it says `override: true` (`flanx.data.card_files.check_collision`).

`flanx.data.import_tasks(module_or_path)` serves T5X's `MIXTURE_OR_TASK_MODULE` macro:
a Python module to import (it registers tasks when imported), or a card file
/ folder (registered as a `FLANX_TASKS_PATH` entry would be, by
`register_entries` here).

This module imports neither seqio nor TensorFlow at import time (`flanx tasks
list` reads `user_card_files()` without them); registering does.
"""
from __future__ import annotations

import os
from pathlib import Path

TASKS_PATH_ENV = "FLANX_TASKS_PATH"
MIXTURES_FILE = "mixtures.yaml"
_CARD_SUFFIXES = (".yaml", ".yml")

# Entries (resolved paths) whose cards are registered in seqio, in registration order.
_REGISTERED: list[Path] = []


class TasksPathError(ValueError):
    """An entry of FLANX_TASKS_PATH or MIXTURE_OR_TASK_MODULE that does not exist or is not a card."""


def path_entries(value: str | None = None, source: str = TASKS_PATH_ENV) -> list[Path]:
    """The folders and card files listed in `value` (default: $FLANX_TASKS_PATH), resolved, in order."""
    if value is None:
        value = os.environ.get(TASKS_PATH_ENV, "")
    entries: list[Path] = []
    for raw in value.split(os.pathsep):
        if not raw.strip():
            continue
        path = Path(raw.strip()).expanduser()
        if not path.exists():
            raise TasksPathError(f"{source} entry {raw!r} does not exist (working directory {os.getcwd()}); "
                                 f"list folders of task cards and/or card files, separated by {os.pathsep!r}")
        if path.is_file() and path.suffix not in _CARD_SUFFIXES:
            raise TasksPathError(f"{source} entry {raw!r} is not a YAML task card (.yaml/.yml) or a folder of them")
        path = path.resolve()
        if path not in entries:
            entries.append(path)
    return entries


def entry_card_files(entries: list[Path]) -> list[Path]:
    """The card files of `entries`: a folder's `*.yaml`/`*.yml` (sorted; not mixtures.yaml), or the file itself."""
    files: list[Path] = []
    for entry in entries:
        if entry.is_dir():
            found = sorted(p for p in entry.iterdir() if p.suffix in _CARD_SUFFIXES and p.is_file()
                           and p.name != MIXTURES_FILE)
        else:
            found = [] if entry.name == MIXTURES_FILE else [entry]
        files += [p for p in found if p not in files]
    return files


def mixture_files(entries: list[Path]) -> list[Path]:
    """The `mixtures.yaml` of each folder entry, beside each card file entry, or listed itself."""
    files: list[Path] = []
    for entry in entries:
        candidate = entry / MIXTURES_FILE if entry.is_dir() else \
            entry if entry.name == MIXTURES_FILE else entry.parent / MIXTURES_FILE
        if candidate.is_file() and candidate not in files:
            files.append(candidate)
    return files


def user_card_files() -> list[Path]:
    """The card files named by $FLANX_TASKS_PATH (read without seqio by `flanx tasks`)."""
    return entry_card_files(path_entries())


def registered_mixture_files() -> list[Path]:
    """The user mixtures files of every entry registered so far (`register_entries`)."""
    return mixture_files(_REGISTERED)


def register_entries(entries: list[Path]) -> bool:
    """Register in seqio the cards of `entries` not registered yet; True when there were any.

    The caller refreshes the mixtures afterwards (`flanx.data.register_all` does).
    """
    from flanx.data import card_files, tasks  # noqa: PLC0415 - seqio/TensorFlow on first use

    new = [e for e in entries if e not in _REGISTERED]
    if not new:
        return False
    for path in entry_card_files(new):
        for card in card_files.load_card_file(path):
            tasks.register_card(card)
    _REGISTERED.extend(new)
    return True
