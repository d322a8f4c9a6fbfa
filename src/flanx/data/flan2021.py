"""The FLAN 2021 collection's mixtures and its held-out-cluster splits.

The cards of collection `flan2021` (`tasks/flan2021/*.yaml`, one per FLAN
2021 task name) say their FLAN cluster keys (`clusters:`); the clusters,
their paper names and FLAN's overlap rules are in `tasks/clusters.yaml`
(`flanx.data.clusters`). `register_mixtures()` registers

- `flan2021`: every card of the collection, rate `min(3000, n)` split evenly
  over the card's formats (n: training rows, or the card's recorded
  `num_examples` when the data is absent);
- `flan2021_minus_{cluster}` for every paper cluster and every code key (the
  training side of FLAN's held-out-cluster experiment): the same, without
  the held-out cluster's cards and without the cards FLAN's overlap rules
  remove (holding out reading comprehension also removes reading
  comprehension with commonsense; NLI and paraphrase remove each other);
- `flan2021_eval_{cluster}`: the held-out cards' zero-shot evaluation tasks,
  uncapped: rank classification (`..._zsopt_scoring`) for cards with answer
  options, generation (`..._zsnoopt`) otherwise.

`heldout_split(cluster)` returns the (train mixture, eval mixture, excluded
datasets) names a held-out-cluster study needs; `eval_tasks(cluster)` the
(task, split) pairs to evaluate.
"""
from __future__ import annotations

from typing import NamedTuple

from flanx.data import clusters as clusters_lib
from flanx.data import mixtures, tasks
from flanx.data.cards import TaskCard, task_specs

COLLECTION = clusters_lib.FLAN2021
CAP = 3000  # FLAN's mixing cap: rate = min(3000, n)
EVAL_SPLITS = ("test", "validation")  # FLAN's `test` is usually the dataset's labelled validation split


class HeldoutSplit(NamedTuple):
    train_mixture: str                  # flan2021_minus_{cluster}
    eval_mixture: str                   # flan2021_eval_{cluster}
    excluded_datasets: tuple[str, ...]  # cards FLAN's overlap rules remove: neither trained on nor evaluated


class ClusterCards(NamedTuple):
    held_out: list[str]
    excluded: list[str]
    train: list[str]


def collection_cards(collection: str = COLLECTION) -> list[TaskCard]:
    """The registered cards of a collection (default FLAN 2021), by name."""
    return sorted((c for c in tasks.CARDS.values() if c.collection == collection), key=lambda c: c.name)


def cluster_cards(cluster: str, cards: list[TaskCard] | None = None) -> ClusterCards:
    """Card names held out, removed by the overlap rules, and trained on when `cluster` is held out."""
    held_keys, removed_keys = clusters_lib.heldout_keys(cluster)
    held, excluded, train = [], [], []
    for card in collection_cards() if cards is None else cards:
        keys = set(card.clusters)
        (held if keys & set(held_keys) else excluded if keys & set(removed_keys) else train).append(card.name)
    return ClusterCards(held, excluded, train)


def eval_task(card: TaskCard) -> str:
    """A card's zero-shot evaluation task: rank classification over its options, else generation."""
    specs = {s.name: s for s in task_specs(card) if not s.per_template}
    n = len(card.templates)
    for name in (f"{card.name}_template_0to{n - 1}_zsopt_scoring", f"{card.name}_template_0to{n - 1}_zsnoopt",
                 f"{card.name}_template_0to{n - 1}_zsopt"):
        if name in specs:
            return name
    return next(s.name for s in specs.values() if s.fmt.startswith("zs"))


def eval_split(card: TaskCard) -> str:
    return next((s for s in EVAL_SPLITS if s in card.split_names), card.split_names[0])


def _describe(cluster: str) -> tuple[str, str]:
    table = clusters_lib.cluster_table()
    held, removed = clusters_lib.heldout_keys(cluster)
    label = table.paper_clusters[cluster].name if cluster in table.paper_clusters else cluster
    keys = ", ".join(held)
    also = f"; also removes {', '.join(removed)} (overlap)" if removed else ""
    return (f"FLAN 2021 without the {label} cluster ({keys}){also}; rate min({CAP}, n), all formats",
            f"zero-shot evaluation of FLAN 2021's {label} cluster ({keys}), uncapped")


def _missing_note(cards: list[TaskCard], collection: str) -> list[str]:
    if collection != COLLECTION:
        return []
    present = {c.name for c in cards}
    expected = clusters_lib.collection_tasks(COLLECTION)
    missing = [t for t in expected if t not in present]
    if not missing:
        return []
    return [f"collection {COLLECTION} lacks {len(missing)} of its {len(expected)} FLAN tasks (no card in "
            f"tasks/{COLLECTION}/): {', '.join(missing)}"]


def register_mixtures(collection: str = COLLECTION) -> list[str]:
    """Register `{collection}`, `{collection}_minus_*` and `{collection}_eval_*` (default: flan2021)
    over the collection's registered cards; nothing when it has none."""
    cards = collection_cards(collection)
    if not cards:
        return []
    by_name = {c.name: c for c in cards}
    rate = mixtures.ExamplesRate(CAP)
    notes = _missing_note(cards, collection)
    names = [mixtures.register_mixture(
        collection, [e for c in cards for e in mixtures.card_entries(c, rate)],
        f"all of collection {collection} ({len(cards)} cards); rate min({CAP}, n), all formats", notes)]
    for cluster in clusters_lib.cluster_table().names():
        split = cluster_cards(cluster, cards)
        if not split.held_out or not split.train:
            continue
        train_desc, eval_desc = _describe(cluster)
        excluded = [f"held out: {', '.join(split.held_out)}"]
        if split.excluded:
            excluded.append(f"removed by the overlap rules: {', '.join(split.excluded)}")
        names.append(mixtures.register_mixture(
            f"{collection}_minus_{cluster}",
            [e for n in split.train for e in mixtures.card_entries(by_name[n], rate)], train_desc, notes + excluded))
        names.append(mixtures.register_mixture(
            f"{collection}_eval_{cluster}",
            [(eval_task(by_name[n]), mixtures.ExamplesRate(None)) for n in split.held_out], eval_desc,
            ["evaluation splits: " + ", ".join(f"{n} {eval_split(by_name[n])}" for n in split.held_out)]))
    return names


def heldout_split(cluster: str, collection: str = COLLECTION) -> HeldoutSplit:
    """The mixture names of FLAN's held-out-cluster experiment for `cluster` (paper name or code key),
    after `flanx.data.register_all()`."""
    clusters_lib.code_keys(cluster)  # ClusterError for an unknown name, listing the known ones
    train, evaluation = f"{collection}_minus_{cluster}", f"{collection}_eval_{cluster}"
    for name in (train, evaluation):
        if name not in mixtures.MIXTURES:
            why = "call flanx.data.register_all() first" if not collection_cards(collection) else \
                f"collection {collection} has no cards for one side of it (tasks/{collection}/)"
            raise KeyError(f"mixture {name!r} is not registered: {why}")
    return HeldoutSplit(train, evaluation, tuple(cluster_cards(cluster, collection_cards(collection)).excluded))


def eval_tasks(cluster: str, collection: str = COLLECTION) -> list[tuple[str, str]]:
    """(task, split) for every held-out card of `cluster`: what `{collection}_eval_{cluster}` evaluates."""
    cards = collection_cards(collection)
    by_name = {c.name: c for c in cards}
    return [(eval_task(by_name[n]), eval_split(by_name[n])) for n in cluster_cards(cluster, cards).held_out]
