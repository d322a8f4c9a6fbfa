"""The Flan 2022 collection mixture (`flan2022`: FLAN-T5's training mixture), configured per submixture.

`tasks/mixtures.yaml` declares it with `kind: flan_collection`:

    flan2022:
      kind: flan_collection
      vocabulary: t5_spm
      group: held_in
      submixtures:
        flan: {weight: 0.4, cap: 30000, zero_shot: 0.5, options: 0.5}
        cot:  {weight: 0.05, cap: 100000, zero_shot: 0.5, options: 1.0, inversion: 0.3}
        ...

Per submixture: `weight` (its share of examples; the weights of the
submixtures with cards here are renormalized), `cap` (a task's rate is
`min(cap, n)`, n its training rows, per task and format, as FLAN caps each
task-template variant), `zero_shot` and `options` (the shares of FLAN's four
formats: zsopt = zero_shot * options, fsopt = (1 - zero_shot) * options, ...),
`inversion` (the cards whose templates are all inverted, e.g. `cot_ii_*`,
form a group weighted `inversion` against 1 for the direct cards: FLAN's
CoT-II and Dialog-II at 0.3), and `prefer_source` (use only the cards
reading that source type when there are any: P3 over the pre-rendered T0
sample). This is FLAN's nesting (flan/v2 mixtures.py, run_example.py):

    flan2022 -> {name}_{sub} (weight) -> {name}_{sub}_{fmt} (format share)
             -> tasks at min(cap, n), or with inversion:
             -> {name}_{sub}_{fmt}_direct (1) and {name}_{sub}_{fmt}_ii (inversion) -> tasks

A format's task is the card's Flan 2022 variant when it has one
(`flanx.data.variants`: random option styles, the 1,920-token few-shot
budget), else the card's own task; a card without options serves the
options formats with its no-options tasks (as FLAN's tasks without options
do). Every card of the group and vocabulary joins (data or not: prepare the
data first); a submixture without cards here (NIv2 without a checkout)
drops out with a note. Mistakes in the config raise `MixtureConfigError`
naming the file and key. `PLANS[name]` keeps what was registered for
`flanx mixtures show NAME --tree` (`flanx.data.mixture_tree`).
"""
from __future__ import annotations

import dataclasses
from numbers import Real

from flanx.data import mixtures, tasks
from flanx.data.cards import SUBMIXTURES, TaskCard, task_specs
from flanx.data.vocab import VOCABULARIES

KIND = "flan_collection"
FORMATS = ("zsopt", "fsopt", "zsnoopt", "fsnoopt")  # FLAN's order of the four components
MIXTURE_KEYS = {"kind", "description", "vocabulary", "group", "submixtures"}
SUBMIXTURE_KEYS = {"weight", "cap", "zero_shot", "options", "inversion", "prefer_source"}


class MixtureConfigError(ValueError):
    """A mixture in mixtures.yaml is malformed; the message names the file and key."""


@dataclasses.dataclass(frozen=True)
class Submixture:
    name: str
    weight: float
    cap: int | None
    zero_shot: float
    options: float
    inversion: float | None = None
    prefer_source: str | None = None

    def format_shares(self) -> dict[str, float]:
        zs, opt = self.zero_shot, self.options
        shares = {"zsopt": zs * opt, "fsopt": (1 - zs) * opt,
                  "zsnoopt": zs * (1 - opt), "fsnoopt": (1 - zs) * (1 - opt)}
        return {f: s for f, s in shares.items() if s > 0}


@dataclasses.dataclass(frozen=True)
class CollectionConfig:
    name: str
    description: str
    vocabulary: str
    group: str
    submixtures: tuple[Submixture, ...]
    where: str


def _number(where: str, key: str, value, low: float, high: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or value < low or (high is not None and value > high):
        span = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise MixtureConfigError(f"{where}: {key}: expected a number {span}, got {value!r}")
    return float(value)


def _check_mapping(where: str, value, known, expected: str) -> None:
    """`value` is a mapping with only `known` keys; else MixtureConfigError: `expected`, or the unknown keys."""
    if not isinstance(value, dict):
        raise MixtureConfigError(f"{where}: {expected}")
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise MixtureConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")


def parse_config(name: str, raw, where: str) -> CollectionConfig:
    """Validate one `kind: flan_collection` entry (`where` names the file and key, e.g.
    `tasks/mixtures.yaml: mixtures.flan2022`)."""
    _check_mapping(where, raw, MIXTURE_KEYS, f"expected a mapping, got {type(raw).__name__}")
    vocabulary = raw.get("vocabulary", "t5_spm")
    if vocabulary not in VOCABULARIES:
        raise MixtureConfigError(f"{where}.vocabulary: {vocabulary!r} is not one of {', '.join(VOCABULARIES.names())}")
    subs = raw.get("submixtures")
    if not isinstance(subs, dict) or not subs:
        raise MixtureConfigError(f"{where}.submixtures: expected a mapping submixture -> {{weight, cap, zero_shot, "
                                 f"options, inversion}} (submixtures: {', '.join(SUBMIXTURES)})")
    parsed = []
    for sub, settings in subs.items():
        at = f"{where}.submixtures.{sub}"
        if sub not in SUBMIXTURES:
            raise MixtureConfigError(f"{at}: unknown submixture {sub!r}; task cards name one of "
                                     f"{', '.join(SUBMIXTURES)}")
        _check_mapping(at, settings, SUBMIXTURE_KEYS, f"expected a mapping with {', '.join(sorted(SUBMIXTURE_KEYS))}")
        if "weight" not in settings:
            raise MixtureConfigError(f"{at}.weight: required (the submixture's share of examples)")
        cap = settings.get("cap")
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
            raise MixtureConfigError(f"{at}.cap: expected a positive number of examples per task (or null), "
                                     f"got {cap!r}")
        inversion = settings.get("inversion")
        prefer = settings.get("prefer_source")
        if prefer is not None and not isinstance(prefer, str):
            raise MixtureConfigError(f"{at}.prefer_source: expected a source type, e.g. p3; got {prefer!r}")
        parsed.append(Submixture(
            sub, _number(at, "weight", settings["weight"], 0.0), cap,
            _number(at, "zero_shot", settings.get("zero_shot", 0.5), 0.0, 1.0),
            _number(at, "options", settings.get("options", 0.5), 0.0, 1.0),
            None if inversion is None else _number(at, "inversion", inversion, 0.0), prefer))
    if not any(s.weight > 0 for s in parsed):
        raise MixtureConfigError(f"{where}.submixtures: every weight is 0")
    return CollectionConfig(name, str(raw.get("description", "")).strip(), vocabulary,
                            str(raw.get("group", "held_in")), tuple(parsed), where)


# ----------------------------------------------------------------------------- the plan

@dataclasses.dataclass
class Entry:
    """One task of a format component: the card, the component's format and the task (its own format)."""

    card: TaskCard
    fmt: str
    task: str
    inverted: bool


@dataclasses.dataclass
class SubmixturePlan:
    config: Submixture
    cards: list[TaskCard]
    entries: dict[str, list[Entry]]  # component format -> entries
    left_out: list[str]  # cards not used (e.g. the T0 sample when P3 is here)
    weight: float = 0.0  # renormalized over the submixtures with cards

    def shares(self) -> dict[str, float]:
        present = {f: s for f, s in self.config.format_shares().items() if self.entries.get(f)}
        total = sum(present.values())
        return {f: s / total for f, s in present.items()} if total else {}

    def group_weights(self, fmt: str) -> dict[bool, float]:
        """inverted? -> weight of that group in the component (1 and `inversion`, renormalized)."""
        kinds = {e.inverted for e in self.entries[fmt]}
        if self.config.inversion is None or len(kinds) < 2:
            return {k: 1.0 for k in kinds}
        return {False: 1.0 / (1.0 + self.config.inversion), True: self.config.inversion / (1.0 + self.config.inversion)}


@dataclasses.dataclass
class Plan:
    config: CollectionConfig
    submixtures: list[SubmixturePlan]
    notes: list[str]


PLANS: dict[str, Plan] = {}


def is_inversion_card(card: TaskCard) -> bool:
    """A card whose every template is inverted (FLAN's -II tasks: `cot_ii_*`, `wiki_dialog_ii`, `qrecc_ii`)."""
    return all(t.inverted for t in card.templates)


def format_task(card: TaskCard, fmt: str) -> str | None:
    """The card's task for format component `fmt`: its Flan 2022 variant, else its own task; a card without
    options serves the options formats with its no-options formats."""
    specs = [s for s in task_specs(card) if not s.scoring and not s.per_template]
    if fmt not in {s.fmt for s in specs} and not card.has_options:
        fmt = fmt.replace("opt", "noopt")
    found = [s for s in specs if s.fmt == fmt]
    found.sort(key=lambda s: not s.variant)  # the Flan 2022 variant first
    return found[0].name if found else None


def _choose_cards(sub: Submixture, cards: list[TaskCard]) -> tuple[list[TaskCard], list[str]]:
    if sub.prefer_source and any(c.source.get("type") == sub.prefer_source for c in cards):
        kept = [c for c in cards if c.source.get("type") == sub.prefer_source]
        return kept, sorted(c.name for c in cards if c not in kept)
    return cards, []


def plan(config: CollectionConfig) -> Plan:
    """Which task of which card serves which format component of which submixture."""
    selected = [c for c in tasks.CARDS.values() if c.vocabulary == config.vocabulary and c.group == config.group
                and not c.eval_only and c.submixture]
    subs, notes = [], []
    for sub in config.submixtures:
        cards, left_out = _choose_cards(sub, sorted((c for c in selected if c.submixture == sub.name),
                                                    key=lambda c: c.name))
        entries = {}
        for fmt in sub.format_shares():
            found = [Entry(c, fmt, t, is_inversion_card(c)) for c in cards for t in [format_task(c, fmt)] if t]
            if found:
                entries[fmt] = found
        subs.append(SubmixturePlan(sub, cards, entries, left_out))
        if left_out:
            notes.append(f"{sub.name}: cards reading {sub.prefer_source} are here, so {len(left_out)} other card(s) "
                         f"are left out: {', '.join(left_out)}")
    present = [s for s in subs if s.entries and s.config.weight > 0]
    total = sum(s.config.weight for s in present)
    for s in present:
        s.weight = s.config.weight / total
    for s in subs:
        if not s.entries and s.config.weight > 0:
            notes.append(f"{s.config.name}: no {config.group} task cards with vocabulary {config.vocabulary} here; its "
                         f"weight {s.config.weight:g} is spread over the others (see docs/tasks.md for its data)")
    return Plan(config, subs, notes)


def register(config: CollectionConfig) -> str | None:
    """Register the nested seqio mixtures of `config`; None when no submixture has cards here."""
    p = plan(config)
    top = []
    for s in p.submixtures:
        if not s.weight:
            continue
        components = []
        for fmt, share in s.shares().items():
            name = f"{config.name}_{s.config.name}_{fmt}"
            groups = s.group_weights(fmt)
            rate = mixtures.ExamplesRate(s.config.cap)
            if len(groups) == 1:
                mixtures.register_mixture(name, [(e.task, rate) for e in s.entries[fmt]],
                                          f"{fmt} of the {s.config.name!r} submixture of {config.name}")
            else:
                parts = []
                for inverted, weight in groups.items():
                    part = f"{name}_{'ii' if inverted else 'direct'}"
                    members = [(e.task, rate) for e in s.entries[fmt] if e.inverted == inverted]
                    kind = "inverted" if inverted else "direct"
                    mixtures.register_mixture(part, members, f"{kind} {fmt} tasks of {s.config.name!r}")
                    parts.append((part, weight))
                mixtures.register_mixture(name, parts, f"{fmt} of the {s.config.name!r} submixture of {config.name}")
            components.append((name, share))
        mixtures.register_mixture(f"{config.name}_{s.config.name}", components,
                                  f"the {s.config.name!r} submixture of {config.name}")
        top.append((f"{config.name}_{s.config.name}", s.weight))
    if not top:
        PLANS.pop(config.name, None)
        return None
    PLANS[config.name] = p
    return mixtures.register_mixture(config.name, top, config.description, p.notes)


@mixtures.MIXTURE_KINDS.register(KIND)
def register_from_config(name: str, raw, where: str) -> list[str]:
    """Parse and register one mixtures.yaml entry; [] when no card is here for it."""
    registered = register(parse_config(name, raw, where))
    return [registered] if registered else []
