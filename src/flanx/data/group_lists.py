"""Group lists: functions that list a task card's groups from data (`groups: {list: NAME, ...}`).

A card with `groups: [a, b]` expands to one card per group
(`flanx.data.card_files.expand_groups`). When the groups depend on the data a
user has (the tasks of a natural-instructions checkout, the P3 subtasks on
disk), the card says `groups: {list: NAME, ...options}` and the function
registered here as NAME returns them, given the card's mapping as read and
its `groups` mapping:

    from flanx.data.group_lists import GROUP_LISTS

    @GROUP_LISTS.register("my_tasks")
    def my_tasks(raw_card: dict, groups: dict) -> list:
        return ["a", {"group": "b.1", "suffix": "b_1", "set": {"splits": {"train": {"num_examples": 10}}}}]

Each group is a name, or a mapping: `group` (filled in for `{group}` in the
card's split files, `source` values and `local:` block), `suffix` (the card
is named `{name}_{suffix}`; default the lowercased group) and `set` (card keys
merged into that card, mappings key by key). An empty list yields no cards.
Stdlib only, so card loading and the sources that register lists share it.
"""
from __future__ import annotations

from typing import Callable

from flanx.registry import Registry

GroupList = Callable[[dict, dict], list]

GROUP_LISTS: Registry[GroupList] = Registry(
    "group list", hint="Register one with @flanx.data.group_lists.GROUP_LISTS.register('name')")
