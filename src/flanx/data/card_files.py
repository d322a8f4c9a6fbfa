"""Task card files: YAML cards read from disk, one card per group, collections and name collisions.

`load_card_file(path)` reads one YAML file into `TaskCard`s (`flanx.data.cards.load_card` validates
each): a card with `groups:` becomes one card per group (`expand_groups`; `groups: {list: NAME}` asks a
registered lister, `flanx.data.group_lists`), a relative `source.root` is relative to the file, a card in
a folder under `tasks/` belongs to that folder's collection, and a card with FLAN task names needs
`MIN_FLAN_TEMPLATES` templates. `load_card_files` / `check_collision` refuse a second card of the same
name from another file unless it says `override: true`. `collection_card_files()` lists the cards
shipped in `tasks/`.
"""
from __future__ import annotations

from pathlib import Path

import yaml

from flanx import paths
from flanx.data.card_checks import CardError, err
from flanx.data.cards import TaskCard, load_card
from flanx.data.group_lists import GROUP_LISTS

MIN_FLAN_TEMPLATES = 8  # a card file with FLAN task names (task_naming: flan) needs this many templates

NOT_CARDS = ("mixtures.yaml", "clusters.yaml")  # the other YAML files in tasks/


def _fill(value, group: str):
    """`value` with `{group}` filled in its strings (nested in lists and mappings)."""
    if isinstance(value, str):
        return value.replace("{group}", group)
    if type(value) is list:  # plain containers only: a source may hold an in-memory dataset
        return [_fill(v, group) for v in value]
    if type(value) is dict:
        return {k: _fill(v, group) for k, v in value.items()}
    return value


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if type(value) is dict and type(out.get(key)) is dict else value
    return out


def _group_entries(raw: dict) -> list[dict]:
    groups = raw["groups"]
    if isinstance(groups, dict):  # listed from the data by a registered function
        lister = GROUP_LISTS.check(groups.get("list"), f"task card {raw.get('name')!r}: groups.list")
        groups = lister(raw, groups)
    return [g if isinstance(g, dict) else {"group": str(g)} for g in groups]


def expand_groups(raw: dict) -> list[dict]:
    """A card with `groups: [a, b]` (or `groups: {list: NAME}`, see `flanx.data.group_lists`) becomes one
    card per group, `{group}` filled in its split file patterns, its `source` values and its `local:` block."""
    groups = raw.get("groups")
    if not groups:
        return [raw]
    out = []
    for entry in _group_entries(raw):
        group = entry["group"]
        card = {k: v for k, v in raw.items() if k != "groups"}
        card["name"] = f"{raw['name']}_{entry.get('suffix', group.lower())}"
        splits = {}
        for split, s in raw["splits"].items():
            s = {"files": s} if isinstance(s, (str, list)) else dict(s)
            if "files" in s:
                files = [s["files"]] if isinstance(s["files"], str) else s["files"]
                s["files"] = [f.replace("{group}", group) for f in files]
            splits[split] = s
        card["splits"] = splits
        if isinstance(raw.get("source"), dict):
            card["source"] = _fill(raw["source"], group)
        if type(raw.get("local")) is dict:
            card["local"] = _fill(raw["local"], group)
        out.append(_merge(card, entry.get("set", {})))
    return out


def collection_of(path: str | Path) -> str | None:
    """The collection of a card file: its folder's name when it sits in a folder directly under `tasks/`."""
    path = Path(path).resolve()
    try:
        tasks = paths.tasks_dir().resolve()
    except FileNotFoundError:
        return None
    return path.parent.name if path.parent.parent == tasks else None


def _relative_root(raw: dict, path: Path) -> None:
    """A relative `source.root` (also in a `local:` block) is relative to the card file."""
    for holder in (raw, raw.get("local") if isinstance(raw.get("local"), dict) else None):
        source = holder.get("source") if holder else None
        root = source.get("root") if isinstance(source, dict) else None
        if root:
            root = Path(root).expanduser()
            holder["source"] = dict(source, root=str(root if root.is_absolute() else path.parent / root))


def load_card_file(path: str | Path, use_local: bool | None = None) -> list[TaskCard]:
    """All cards in one YAML file (one card, or one per group)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CardError(f"task card {path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise CardError(f"task card {path}: byte at offset {e.start} is not valid UTF-8; save the card as "
                        f"UTF-8") from None
    except OSError as e:
        raise CardError(f"task card {path}: cannot read it ({e.strerror})") from None
    if not isinstance(raw, dict):
        raise CardError(f"task card {path}: expected a mapping at the top level")
    _relative_root(raw, path)
    folder = collection_of(path)
    if folder is not None:
        if raw.get("collection", folder) != folder:
            raise CardError(f"task card {path}: collection: {raw['collection']!r}, but the card sits in the "
                            f"folder of collection {folder!r}; drop the key or move the file")
        raw["collection"] = folder
    cards = [load_card(s, str(path), use_local) for s in expand_groups(raw)]
    for card in cards:
        check_template_count(card)
    return cards


def check_template_count(card: TaskCard) -> None:
    """A card file with FLAN task names needs `MIN_FLAN_TEMPLATES` templates (a single one: `task_naming: plain`)."""
    n = len(card.templates)
    if card.task_naming == "flan" and n < MIN_FLAN_TEMPLATES:
        raise err(card.path, "templates", f"{n} template(s), but a card with FLAN task names (task_naming: "
                                          f"flan, the default) needs at least {MIN_FLAN_TEMPLATES}, so that its "
                                          f"`_template_0to{{N}}` tasks vary the instruction as FLAN does. Add "
                                          f"templates, or set `task_naming: plain` for one task named "
                                          f"{card.name!r} that uses the first template")


def check_collision(existing: TaskCard | None, card: TaskCard) -> None:
    """A card may replace a same-named card from another file only when it says `override: true`."""
    if existing is None or existing.file == card.file or card.override:
        return
    if card.collection and not existing.collection:
        raise err(card.path, "name", f"{card.name!r} is already the name of the top-level task card "
                                     f"{existing.file}. A collection card that supersedes a top-level card "
                                     f"replaces it: delete {Path(existing.file).name} (its files can become "
                                     f"this card's `local:` block), or rename one of them")
    raise err(card.path, "name", f"{card.name!r} is already the name of task card {existing.file}; rename "
                                 f"this card, or set `override: true` in it to replace that card")


def load_card_files(files, use_local: bool | None = None) -> dict[str, TaskCard]:
    """Name -> card for every card in `files`, in order; a later card replaces an earlier one only with
    `override: true` (see `check_collision`)."""
    cards: dict[str, TaskCard] = {}
    for path in files:
        for card in load_card_file(path, use_local):
            check_collision(cards.get(card.name), card)
            cards[card.name] = card
    return cards


def collection_card_files(collection: str | None = None) -> list[Path]:
    """The YAML task cards shipped in `tasks/`: top-level ones, then each collection folder's
    (only `collection`'s when given)."""
    root = paths.tasks_dir()
    top = sorted(p for p in root.glob("*.yaml") if p.name not in NOT_CARDS)
    nested = sorted(p for p in root.glob("*/*.yaml"))
    if collection is not None:
        return [p for p in nested if p.parent.name == collection]
    return top + nested
