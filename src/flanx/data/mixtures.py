"""Mixtures: examples-proportional rates with a cap, temperature, Flan 2022 submixtures, replay.

The rate rule (T5 / FLAN): a task with n training examples gets
`rate = min(cap, n) ** (1 / temperature)`, split evenly over a dataset's
template formats. Flan 2022 mixes submixtures with fixed weights (flan 0.4,
t0 0.32, niv2 0.2, cot 0.05, dialog 0.03); inside a submixture tasks are
examples-proportional. A submixture with no task cards drops out and the
weights of the others renormalize, so a card with `submixture: niv2` slots
in when a user adds one. seqio computes a nested task's rate as
`weight(sub) * rate(task) / total_rate(sub)`; `mixture_table` does the same
arithmetic in Python for `flanx mixtures show` and the tests.

Mixture definitions live in `tasks/mixtures.yaml` and in a user's own
`mixtures.yaml` files (`register_user_mixtures`, same schema; found through
`FLANX_TASKS_PATH` / MIXTURE_OR_TASK_MODULE by `flanx.data.user_tasks`);
every card also gets a single-task mixture `{card}_mix` over its formats. `replay_mixture(target,
replay, ratio)` registers "target plus replay of a multi-task mixture" for
the forgetting study. A task's n is its training rows when the data is here,
else the card's recorded `num_examples`, so rates are known without data. A
Flan 2022-style mixture (`kind: flan2022`) takes a TFDS or Hugging Face card
only when its data is prepared (`flanx data prepare`): it never names data
that a run would have to download; `NOTES[name]` lists the cards it left
out. The FLAN 2021 collection's mixtures live in `flanx.data.flan2021`.
"""
from __future__ import annotations

import dataclasses

import seqio
import yaml

from flanx import paths
from flanx.data import render, sources, tasks
from flanx.data.cards import SUBMIXTURES, TaskCard, task_specs
from flanx.registry import Registry

FLAN2022_WEIGHTS = {"flan": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03}


@dataclasses.dataclass(frozen=True)
class ExamplesRate:
    """`share * min(cap, n) ** (1 / temperature)`, n = the task's training examples."""

    cap: int | None = 3000
    temperature: float = 1.0
    share: float = 1.0

    def value(self, n: int) -> float:
        capped = n if self.cap is None else min(self.cap, n)
        return self.share * capped ** (1.0 / self.temperature)

    def __call__(self, task) -> float:  # seqio calls rates with the Task
        return self.value(num_train_examples(task.name))


# `kind:` of a mixtures.yaml entry -> fn(name, entry, where) -> registered mixture names; `where` names the
# file and key for errors. flanx.data.flan2022_mixture registers `flan_collection`.
MIXTURE_KINDS: Registry = Registry("mixture kind", hint="Register one with "
                                   "@flanx.data.mixtures.MIXTURE_KINDS.register('name')")

# name -> [(task or mixture name, float weight or ExamplesRate)]
MIXTURES: dict[str, list[tuple[str, float | ExamplesRate]]] = {}
DESCRIPTIONS: dict[str, str] = {}
NOTES: dict[str, list[str]] = {}  # name -> lines `flanx mixtures show` prints (cards left out, ...)
DOWNLOADED_SOURCES = ("tfds", "hf")  # source types whose data a user prepares (downloads) first


def num_train_examples(task_name: str) -> int:
    return train_examples(task_name)[0]


def train_examples(task_name: str) -> tuple[int, str]:
    """(training rows of a task's card, "data" when counted or "recorded" from the card)."""
    spec = tasks.get_spec(task_name)
    return render.num_examples(tasks.get_card(spec.card), "train")


def needs_preparing(card: TaskCard) -> bool:
    """True for a TFDS/HF card whose data is not prepared here (it would need a download), also when
    only its training split is missing (a local variant with evaluation files only reads train from it)."""
    if "train" not in card.splits and card.alternate is not None:
        return needs_preparing(card.alternate)
    in_memory = card.source.get("dataset") is not None
    return card.source["type"] in DOWNLOADED_SOURCES and not in_memory and not sources.data_available(card)


def register_mixture(name: str, entries: list[tuple[str, float | ExamplesRate]], description: str = "",
                     notes: list[str] | None = None) -> str:
    """Register (or replace) a seqio mixture and remember its structure."""
    if not entries:
        raise ValueError(f"mixture {name!r} has no tasks")
    seqio.MixtureRegistry.remove(name)
    seqio.MixtureRegistry.add(name, list(entries))
    MIXTURES[name] = list(entries)
    DESCRIPTIONS[name] = description
    NOTES[name] = list(notes or [])
    return name


def card_entries(card: TaskCard, rate: ExamplesRate, formats=None) -> list[tuple[str, ExamplesRate]]:
    """A card's training tasks (one per format) with the rate split evenly over them.

    `formats` may name formats (`zsopt`, ...) or `zs` / `fs`: the card's own
    zero-/few-shot format, with options when the card has them.
    """
    specs = [s for s in task_specs(card) if not s.scoring and not s.per_template and not s.variant]
    if formats:
        opt = "opt" if card.has_options else "noopt"
        wanted = {f"{f}{opt}" if f in ("zs", "fs") else f for f in formats}
        specs = [s for s in specs if s.fmt in wanted]
    if not specs:
        raise ValueError(f"task card {card.name!r} has none of the formats {formats}")
    share = rate.share / len(specs)
    return [(s.name, dataclasses.replace(rate, share=share)) for s in specs]


def register_examples_mixture(name: str, card_names: list[str], cap: int | None = 3000,
                              temperature: float = 1.0, formats=None, description: str = "") -> str:
    """An examples-proportional mixture over all (or `formats`) training tasks of the given cards."""
    rate = ExamplesRate(cap, temperature)
    entries = [e for c in card_names for e in card_entries(tasks.get_card(c), rate, formats)]
    return register_mixture(name, entries, description)


def _select(vocabulary: str, group: str) -> list[TaskCard]:
    return [c for c in tasks.CARDS.values()
            if c.vocabulary == vocabulary and c.group == group and not c.eval_only]


def _left_out_note(cards: list[TaskCard]) -> list[str]:
    if not cards:
        return []
    names = sorted(c.name for c in cards)
    return [f"left out {len(names)} TFDS/HF card(s) whose data is not prepared (`flanx data prepare`): "
            f"{', '.join(names)}"]


def register_flan2022(name: str, vocabulary: str, group: str = "held_in", cap: int | None = 3000,
                      temperature: float = 1.0, weights: dict | None = None, description: str = "",
                      formats=None) -> str:
    """A Flan 2022-style nested mixture over the cards of `group` using `vocabulary` (optionally only `formats`)."""
    weights = dict(weights or FLAN2022_WEIGHTS)
    rate = ExamplesRate(cap, temperature)
    selected = [c for c in _select(vocabulary, group) if c.submixture]
    left_out = [c for c in selected if needs_preparing(c)]
    top = []
    for sub in SUBMIXTURES:
        cards = [c for c in selected if c.submixture == sub and c not in left_out]
        if not cards or not weights.get(sub):
            continue
        entries = [e for c in sorted(cards, key=lambda c: c.name) for e in card_entries(c, rate, formats)]
        register_mixture(f"{name}_{sub}", entries, f"the {sub!r} submixture of {name}")
        top.append((f"{name}_{sub}", float(weights[sub])))
    if not top:
        raise ValueError(f"mixture {name!r}: no {group} task cards with vocabulary {vocabulary!r}")
    total = sum(w for _, w in top)
    return register_mixture(name, [(n, w / total) for n, w in top], description, _left_out_note(left_out))


def replay_mixture(target: str, replay: str, ratio: float) -> str:
    """Register `{target}_replay_{replay}_r{ratio}`: a `ratio` share of examples from `replay`.

    `target` is a task or mixture (e.g. `dialogsum_template_0to9_zsnoopt`), `replay`
    a mixture (e.g. `flan2022_heldin`); with ratio 0.25, one example in four
    comes from the replay mixture. Idempotent; returns the mixture name.
    """
    if not 0.0 < ratio < 1.0:
        raise ValueError(f"replay ratio must be in (0, 1), got {ratio}")
    for name in (target, replay):
        if name not in seqio.TaskRegistry.names() and name not in seqio.MixtureRegistry.names():
            raise tasks.unknown_name("task or mixture", name, list(tasks.SPECS) + list(MIXTURES))
    name = f"{target}_replay_{replay}_r{ratio:g}"
    if name in MIXTURES:
        return name
    return register_mixture(name, [(target, 1.0 - ratio), (replay, float(ratio))],
                            f"{target} plus replay of {replay} ({ratio:g} of examples)")


def register_collection_mixtures() -> list[str]:
    """The mixtures in `tasks/mixtures.yaml` plus `{card}_mix` for every card, then the user's
    `mixtures.yaml` files (`flanx.data.user_tasks`: FLANX_TASKS_PATH, MIXTURE_OR_TASK_MODULE)."""
    from flanx.data import user_tasks  # noqa: PLC0415

    config = yaml.safe_load((paths.tasks_dir() / "mixtures.yaml").read_text(encoding="utf-8")) or {}
    weights = config.get("submixture_weights", FLAN2022_WEIGHTS)
    names = []
    for card in sorted(tasks.CARDS.values(), key=lambda c: c.name):
        if card.task_naming == "flan":
            names.append(register_mixture(f"{card.name}_mix", card_entries(card, ExamplesRate(None)),
                                          f"all formats of {card.name}"))
    for name, m in (config.get("mixtures") or {}).items():
        rate = dict(cap=m.get("cap", 3000), temperature=float(m.get("temperature", 1.0)))
        desc = str(m.get("description", "")).strip()
        if m.get("kind") in MIXTURE_KINDS:  # e.g. flan_collection: FLAN-T5's mixture (flanx.data.flan2022_mixture)
            names += MIXTURE_KINDS[m["kind"]](name, m, f"{paths.tasks_dir() / 'mixtures.yaml'}: mixtures.{name}")
        elif m.get("kind") == "flan2022":
            try:
                names.append(register_flan2022(name, m["vocabulary"], m.get("group", "held_in"),
                                               weights=weights, description=desc, formats=m.get("formats"),
                                               **rate))
            except ValueError:
                continue  # no cards for it (e.g. a trimmed collection)
        else:
            present = [c for c in m["cards"] if c in tasks.CARDS]
            if present:
                names.append(register_examples_mixture(name, present, formats=m.get("formats"),
                                                       description=desc, **rate))
    for path in user_tasks.registered_mixture_files():
        names += register_user_mixtures(path, weights)
    return names


_MIXTURE_KEYS = {"description", "kind", "cards", "vocabulary", "group", "formats", "cap", "temperature", "override"}


def register_user_mixtures(path, weights: dict | None = None) -> list[str]:
    """Register the mixtures of a user's `mixtures.yaml` (the schema of `tasks/mixtures.yaml`).

    Unlike the collection's file, every card named must be registered, and a
    name already registered from elsewhere needs `override: true`; errors name
    the file and the mixture.
    """
    from flanx.data.cards import CardError  # noqa: PLC0415

    def err(where: str, msg: str) -> CardError:
        return CardError(f"mixtures file {path}: {where}: {msg}")

    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise CardError(f"mixtures file {path}: not valid YAML: {e}") from None
    if not isinstance(config, dict) or not isinstance(config.get("mixtures") or {}, dict):
        raise err("mixtures", "expected `mixtures:` mapping a mixture name to its settings")
    weights = dict(config.get("submixture_weights") or weights or FLAN2022_WEIGHTS)
    names = []
    for name, m in (config.get("mixtures") or {}).items():
        where = f"mixtures.{name}"
        if not isinstance(m, dict):
            raise err(where, "expected a mapping with `cards: [...]` (or `kind: flan2022`)")
        unknown = set(m) - _MIXTURE_KEYS
        if unknown:
            raise err(where, f"unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_MIXTURE_KEYS))}")
        owner = SOURCES.get(name)
        if name in MIXTURES and owner != str(path) and not m.get("override"):
            raise err(where, f"{name!r} is already a mixture (from {owner or 'the flanx collection'}); rename it, "
                             f"or set `override: true` in it to replace that mixture")
        rate = dict(cap=m.get("cap", 3000), temperature=float(m.get("temperature", 1.0)))
        desc = str(m.get("description", "")).strip()
        try:
            if m.get("kind") == "flan2022":
                names.append(register_flan2022(name, m.get("vocabulary", "t5_spm"), m.get("group", "held_in"),
                                               weights=weights, description=desc, formats=m.get("formats"), **rate))
            else:
                cards = m.get("cards")
                if not isinstance(cards, list) or not cards:
                    raise ValueError("expected `cards: [card, ...]`, a list of task card names")
                for c in cards:
                    tasks.get_card(c)  # KeyError with close matches
                names.append(register_examples_mixture(name, cards, formats=m.get("formats"),
                                                       description=desc, **rate))
        except (KeyError, ValueError) as e:
            raise err(where, str(e).strip("'\"")) from None
        SOURCES[name] = str(path)
    return names


# mixture name -> the user mixtures file that defined it (collection mixtures are not listed)
SOURCES: dict[str, str] = {}


def get_mixture(name: str) -> list[tuple[str, float | ExamplesRate]]:
    if name not in MIXTURES:
        raise tasks.unknown_name("mixture", name, MIXTURES)
    return MIXTURES[name]


def flat_rates(name: str) -> dict[str, float]:
    """Task -> effective rate, flattening submixtures exactly as seqio does."""
    out: dict[str, float] = {}
    for member, rate in get_mixture(name):
        if member in MIXTURES:
            sub = flat_rates(member)
            total = sum(sub.values())
            for t, r in sub.items():
                out[t] = out.get(t, 0.0) + float(rate) * r / total
        else:
            value = rate.value(num_train_examples(member)) if isinstance(rate, ExamplesRate) else float(rate)
            out[member] = out.get(member, 0.0) + value
    return out


def mixture_table(name: str) -> list[dict]:
    """Per task: training examples n, rate, share of drawn examples, examples per mixture epoch.

    A mixture epoch is as many draws as the tasks have training examples in
    total (each card's rows counted once); `epochs` says how many passes over
    its own data a task makes in that many draws.
    """
    rates = flat_rates(name)
    total_rate = sum(rates.values())
    counted = {t: train_examples(t) for t in rates}
    counts = {t: n for t, (n, _) in counted.items()}
    cards = {tasks.get_spec(t).card: counts[t] for t in rates}
    epoch = sum(cards.values())
    rows = []
    for t in sorted(rates, key=lambda t: -rates[t]):
        share = rates[t] / total_rate
        rows.append({"task": t, "examples": counts[t], "counted_from": counted[t][1], "rate": rates[t],
                     "share": share, "examples_per_epoch": share * epoch,
                     "epochs": share * epoch / counts[t] if counts[t] else 0.0})
    return rows

