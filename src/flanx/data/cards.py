"""Task cards: the declarative description of one dataset, and the tasks it yields.

A card (one YAML file in `tasks/`, or a dict from Python) says where the data
is (`source`, `splits`), how source columns map to template fields
(`fields`), the label-to-answer mapping (`labels`, `options`), the templates,
the formats, few-shot settings, metrics, postprocessing, the group (held_in /
held_out / target) and the Flan 2022 submixture. `load_card` validates a card
and names the file and key of any mistake; names that plug in code
(`source.type`, `row_transform`, `metrics`, `postprocess`, `vocabulary`) are
checked against their registries (`SOURCES`, `ROW_TRANSFORMS`, `METRICS`,
`POSTPROCESSORS`, `VOCABULARIES`), so a user's registered plug-in is valid
at once. `load_card_file` also requires `MIN_FLAN_TEMPLATES` templates of a
card with FLAN task names, and `load_card_files` / `check_collision` refuse
a second card of the same name from another file unless it says
`override: true`. `docs/tasks.md` documents every key. `task_specs(card)`
lists the seqio tasks a card yields, named as FLAN does:
`{card}_template_{i}_zero_shot`, `{card}_template_0to{N}_{fmt}`, plus
`{name}_scoring` rank-classification variants for tasks with options.
"""
from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any

import yaml

from flanx import paths
from flanx.data.sources import SOURCES
from flanx.data.templates import FORMATS, FewShotConfig, Template, TemplateError
from flanx.data.transforms import ROW_TRANSFORMS
from flanx.data.vocab import VOCABULARIES
from flanx.eval import metrics as metrics_lib
from flanx.registry import Registry, suggest, with_hint

SUBMIXTURES = ("flan", "t0", "niv2", "cot", "dialog")
MIN_FLAN_TEMPLATES = 8  # a card file with FLAN task names (task_naming: flan) needs this many templates
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
_KEYS = {"name", "description", "dataset", "group", "submixture", "vocabulary", "source", "splits",
         "fields", "label_field", "labels", "options", "options_field", "answer_field", "templates",
         "formats", "fewshot", "metrics", "postprocess", "on_error", "row_transform", "eval_only",
         "task_naming", "groups", "references_field", "metric_scale", "override"}


class CardError(ValueError):
    """A task card is malformed; the message names the card file and key."""


@dataclasses.dataclass(eq=False)
class TaskCard:
    name: str
    source: dict
    splits: dict[str, dict]
    fields: dict[str, str]
    templates: list[Template]
    formats: tuple[str, ...]
    description: str = ""
    dataset: str | None = None
    group: str = "held_in"
    submixture: str | None = None
    vocabulary: str = "t5_spm"
    label_field: str | None = None
    labels: dict[str, str] | None = None
    options: list[str] | None = None
    options_field: str | None = None
    answer_field: str | None = None
    fewshot: FewShotConfig = dataclasses.field(default_factory=FewShotConfig)
    metrics: tuple[str, ...] = ()
    postprocess: str = "strip"
    on_error: str = "raise"
    row_transform: str | None = None
    eval_only: bool = False
    task_naming: str = "flan"
    references_field: str | None = None
    metric_scale: int = 1
    override: bool = False
    path: str = "<python>"
    row_cache: dict = dataclasses.field(default_factory=dict, repr=False)
    skipped: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def has_options(self) -> bool:
        return bool(self.options or self.options_field)

    def row_options(self, row: dict) -> list[str] | None:
        return list(row[self.options_field]) if self.options_field else self.options

    @property
    def file(self) -> str:
        """The card's YAML file (or `<python>`), without the `(name)` that `path` may carry."""
        return self.path.rsplit(" (", 1)[0] if self.path.endswith(f" ({self.name})") else self.path


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One seqio task a card yields."""

    name: str
    card: str
    template_ids: tuple[int, ...]
    fmt: str
    scoring: bool = False
    per_template: bool = False  # `{card}_template_{i}_zero_shot`: one template, not for mixtures


def _err(where: str, key: str, msg: str) -> CardError:
    return CardError(f"task card {where}: {key}: {msg}")


def _split_specs(raw: Any, where: str) -> dict[str, dict]:
    if not isinstance(raw, dict) or not raw:
        raise _err(where, "splits", "expected a mapping split -> file pattern(s) or settings")
    out = {}
    for split, spec in raw.items():
        if isinstance(spec, (str, list)):
            spec = {"files": spec}
        if not isinstance(spec, dict):
            raise _err(where, f"splits.{split}", "expected a path, a list of paths or a mapping")
        unknown = set(spec) - {"files", "name", "size", "take_every", "drop_every", "fields"}
        if unknown:
            raise _err(where, f"splits.{split}", f"unknown key(s) {', '.join(sorted(unknown))}")
        spec = dict(spec)
        if isinstance(spec.get("files"), str):
            spec["files"] = [spec["files"]]
        spec.setdefault("name", split)
        if "fields" in spec:
            spec["fields"] = _fields(where, f"splits.{split}.fields", spec["fields"])
        for key in ("take_every", "drop_every"):
            if key in spec and not (isinstance(spec[key], list) and len(spec[key]) == 2 and spec[key][0] > 0):
                raise _err(where, f"splits.{split}.{key}", "expected [every_n, remainder], e.g. [20, 0]")
        out[str(split)] = spec
    return out


def _templates(raw: Any, where: str) -> list[Template]:
    if not isinstance(raw, list) or not raw:
        raise _err(where, "templates", "expected a non-empty list of {input, target} mappings")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or "input" not in t or "target" not in t:
            raise _err(where, f"templates[{i}]", "expected a mapping with `input` and `target`")
        extra = set(t) - {"input", "target", "inverted"}
        if extra:
            raise _err(where, f"templates[{i}]", f"unknown key(s) {', '.join(sorted(extra))}")
        try:
            out.append(Template(t["input"], t["target"], bool(t.get("inverted", False)),
                                where=f"{where}: templates[{i}]"))
        except TemplateError as e:
            raise CardError(f"task card {e}") from None
    return out


def _choice(where: str, key: str, value: Any, allowed) -> Any:
    if value is not None and value not in allowed:
        raise _err(where, key, f"{value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def _registered(where: str, key: str, value: Any, registry: Registry) -> Any:
    """`value` when it is a key of `registry`, else a CardError listing the registered names."""
    if value is not None and value not in registry:
        raise _err(where, key, with_hint(f"{value!r} is not one of the registered {registry.kind}s: "
                                         f"{', '.join(registry.names())}{suggest(value, registry.names())}",
                                         registry.hint))
    return value


def _check_source(where: str, source: dict | None, splits: dict[str, dict]) -> None:
    kind = source.get("type") if source else None
    if kind not in SOURCES:
        got = f"; got {kind!r}{suggest(kind, SOURCES.names())}" if kind is not None else ""
        raise _err(where, "source.type", with_hint(f"expected one of {', '.join(SOURCES.names())}{got}", SOURCES.hint))
    reader = SOURCES[kind]
    for key, needed in getattr(reader, "needs", {}).items():
        if key not in source:
            raise _err(where, f"source.{key}", f"a `{kind}` source needs `{key}`: {needed}")
    if getattr(reader, "reads_files", False):
        for split, spec in splits.items():
            if not spec.get("files"):
                raise _err(where, f"splits.{split}", f"a `{kind}` source reads files: give a path or glob "
                                                     f"(`{split}: data/{split}.{kind}`) or `files:`")


def _check_metrics(where: str, spec: dict, fields: dict, has_options: bool, fixed_options) -> tuple[str, ...]:
    metrics = spec.get("metrics") or ()
    if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
        raise _err(where, "metrics", "expected a list of metric names, e.g. [accuracy]")
    references_field = spec.get("references_field")
    if references_field is not None and references_field not in fields:
        raise _err(where, "references_field", f"{references_field!r} is not in `fields`")
    for m in metrics:
        fn = metrics_lib.METRICS[_registered(where, "metrics", m, metrics_lib.METRICS)]
        if metrics_lib.is_score_metric(fn) and not has_options:
            raise _err(where, "metrics", f"{m} scores answer options: the card needs `options`, `labels` "
                                         f"or `options_field`")
        if metrics_lib.needs_options(fn) and not fixed_options:
            raise _err(where, "metrics", f"{m} needs the card's fixed answer options (`labels` or `options`)")
        if references_field and getattr(fn, "single_reference", False):
            raise _err(where, "metrics", f"{m} takes one reference per example; it cannot score "
                                         f"references_field {references_field!r}")
    return tuple(metrics)


def _flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _err(where, key, f"expected true or false, got {value!r}")
    return value


def _fields(where: str, key: str, raw: Any) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise _err(where, key, "expected a mapping template_field -> source column (or a list of columns)")
    return {str(k): [str(c) for c in v] if isinstance(v, list) else str(v) for k, v in raw.items()}


def load_card(spec: dict, where: str = "<python>") -> TaskCard:
    """Validate one card mapping and build a TaskCard (`where` names it in errors)."""
    if not isinstance(spec, dict):
        raise CardError(f"task card {where}: expected a mapping, got {type(spec).__name__}")
    unknown = set(spec) - _KEYS
    if unknown:
        raise _err(where, ", ".join(sorted(unknown)), f"unknown key(s); known keys: {', '.join(sorted(_KEYS))}")
    for key in ("name", "source", "splits", "fields", "templates"):
        if key not in spec:
            raise _err(where, key, "required key is missing")
    name = spec["name"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise _err(where, "name", f"{name!r} must be lowercase letters, digits and underscores")
    where = f"{where} ({name})" if where != name else where
    source = dict(spec["source"]) if isinstance(spec["source"], dict) else None
    splits = _split_specs(spec["splits"], where)
    _check_source(where, source, splits)
    fields = _fields(where, "fields", spec["fields"])
    templates = _templates(spec["templates"], where)
    for i, t in enumerate(templates):
        missing = t.fields - set(fields)
        if missing:
            raise _err(where, f"templates[{i}]", f"uses field(s) {', '.join(sorted(missing))} not in `fields`")
    labels = spec.get("labels")
    for key in ("labels", "options"):
        values = spec.get(key)
        values = values.values() if isinstance(values, dict) else (values or [])
        if any(isinstance(v, bool) for v in values):
            raise _err(where, key, "YAML read an unquoted yes/no/true/false as a boolean; quote answer texts, "
                                   "e.g. \"yes\"")
    if labels is not None:
        if not isinstance(labels, dict) or not labels:
            raise _err(where, "labels", "expected a mapping raw label -> answer text")
        labels = {str(k): str(v) for k, v in labels.items()}
    label_field = spec.get("label_field", "label" if labels else None)
    if labels and label_field not in fields:
        raise _err(where, "label_field", f"{label_field!r} is not in `fields`")
    options = spec.get("options")
    if options is None and labels:
        options = list(dict.fromkeys(labels.values()))
    if options is not None and (not isinstance(options, list) or len(options) < 2):
        raise _err(where, "options", "expected a list of at least two answer options")
    options_field = spec.get("options_field")
    if options_field and options_field not in fields:
        raise _err(where, "options_field", f"{options_field!r} is not in `fields`")
    has_options = bool(options or options_field)
    answer_field = spec.get("answer_field", label_field)
    if has_options and answer_field not in fields:
        raise _err(where, "answer_field", "cards with options name the field holding the correct option")
    fs = dict(spec.get("fewshot") or {})
    has_pool = bool(fs.get("exemplars_field")) or fs.get("pool_split", "train") in splits
    formats = tuple(f for f in (FORMATS if has_options else ("zsnoopt", "fsnoopt")) if has_pool or f.startswith("zs"))
    formats = tuple(spec.get("formats") or formats)
    for fmt in formats:
        _choice(where, "formats", fmt, FORMATS)
        if fmt.endswith("opt") and not fmt.endswith("noopt") and not has_options:
            raise _err(where, "formats", f"{fmt} needs `options`, `labels` or `options_field`")
    try:
        fewshot = FewShotConfig(**fs)
    except TypeError as e:
        raise _err(where, "fewshot", f"{e}; keys: {', '.join(f.name for f in dataclasses.fields(FewShotConfig))}")
    except ValueError as e:
        raise _err(where, "fewshot", str(e)) from None
    for key in ("match_field", "exemplars_field", "prefix_field"):
        value = getattr(fewshot, key)
        if value and value not in fields:
            raise _err(where, f"fewshot.{key}", f"{value!r} is not in `fields`")
    if any(f.startswith("fs") for f in formats) and not fewshot.exemplars_field and fewshot.pool_split not in splits:
        raise _err(where, "fewshot.pool_split", f"{fewshot.pool_split!r} is not a split of this card")
    dataset = spec.get("dataset")
    metrics = _check_metrics(where, spec, fields, has_options, options)
    return TaskCard(
        name=name, source=source, splits=splits, fields=fields, templates=templates, formats=formats,
        description=str(spec.get("description", "")).strip(), dataset=dataset,
        group=str(spec.get("group", "held_in")),
        submixture=_choice(where, "submixture", spec.get("submixture"), SUBMIXTURES),
        vocabulary=_registered(where, "vocabulary", spec.get("vocabulary", "t5_spm"), VOCABULARIES),
        label_field=label_field, labels=labels, options=options, options_field=options_field,
        answer_field=answer_field if has_options else None, fewshot=fewshot, metrics=metrics,
        postprocess=_registered(where, "postprocess", spec.get("postprocess", "strip"), metrics_lib.POSTPROCESSORS),
        on_error=_choice(where, "on_error", spec.get("on_error", "raise"), ("raise", "skip")),
        row_transform=_registered(where, "row_transform", spec.get("row_transform"), ROW_TRANSFORMS),
        eval_only=bool(spec.get("eval_only", False)),
        task_naming=_choice(where, "task_naming", spec.get("task_naming", "flan"), ("flan", "plain")),
        references_field=spec.get("references_field"),
        metric_scale=_choice(where, "metric_scale", spec.get("metric_scale", 1), metrics_lib.SCALES),
        override=_flag(where, "override", spec.get("override", False)),
        path=where)


def expand_groups(spec: dict) -> list[dict]:
    """A card with `groups: [a, b]` becomes one card per group, `{group}` filled in its file patterns."""
    groups = spec.get("groups")
    if not groups:
        return [spec]
    out = []
    for group in groups:
        card = {k: v for k, v in spec.items() if k != "groups"}
        card["name"] = f"{spec['name']}_{group.lower()}"
        splits = {}
        for split, s in spec["splits"].items():
            s = {"files": s} if isinstance(s, (str, list)) else dict(s)
            files = [s["files"]] if isinstance(s["files"], str) else s["files"]
            s["files"] = [f.replace("{group}", group) for f in files]
            splits[split] = s
        card["splits"] = splits
        out.append(card)
    return out


def load_card_file(path: str | Path) -> list[TaskCard]:
    """All cards in one YAML file (one card, or one per group)."""
    path = Path(path)
    try:
        spec = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CardError(f"task card {path}: not valid YAML: {e}") from None
    except UnicodeDecodeError as e:
        raise CardError(f"task card {path}: byte at offset {e.start} is not valid UTF-8; save the card as "
                        f"UTF-8") from None
    except OSError as e:
        raise CardError(f"task card {path}: cannot read it ({e.strerror})") from None
    if not isinstance(spec, dict):
        raise CardError(f"task card {path}: expected a mapping at the top level")
    root = (spec.get("source") or {}).get("root") if isinstance(spec.get("source"), dict) else None
    if root:  # a relative root is relative to the card file
        root = Path(root).expanduser()
        spec["source"]["root"] = str(root if root.is_absolute() else path.parent / root)
    cards = [load_card(s, str(path)) for s in expand_groups(spec)]
    for card in cards:
        check_template_count(card)
    return cards


def check_template_count(card: TaskCard) -> None:
    """A card file with FLAN task names needs `MIN_FLAN_TEMPLATES` templates (a single one: `task_naming: plain`)."""
    n = len(card.templates)
    if card.task_naming == "flan" and n < MIN_FLAN_TEMPLATES:
        raise _err(card.path, "templates", f"{n} template(s), but a card with FLAN task names (task_naming: "
                                           f"flan, the default) needs at least {MIN_FLAN_TEMPLATES}, so that its "
                                           f"`_template_0to{{N}}` tasks vary the instruction as FLAN does. Add "
                                           f"templates, or set `task_naming: plain` for one task named "
                                           f"{card.name!r} that uses the first template")


def check_collision(existing: TaskCard | None, card: TaskCard) -> None:
    """A card may replace a same-named card from another file only when it says `override: true`."""
    if existing is None or existing.file == card.file or card.override:
        return
    raise _err(card.path, "name", f"{card.name!r} is already the name of task card {existing.file}; rename "
                                  f"this card, or set `override: true` in it to replace that card")


def load_card_files(files) -> dict[str, TaskCard]:
    """Name -> card for every card in `files`, in order; a later card replaces an earlier one only with
    `override: true` (see `check_collision`)."""
    cards: dict[str, TaskCard] = {}
    for path in files:
        for card in load_card_file(path):
            check_collision(cards.get(card.name), card)
            cards[card.name] = card
    return cards


def collection_card_files() -> list[Path]:
    """The YAML task cards shipped in `tasks/` (everything except mixtures.yaml)."""
    return sorted(p for p in paths.tasks_dir().glob("*.yaml") if p.name != "mixtures.yaml")


def task_specs(card: TaskCard) -> list[TaskSpec]:
    """The seqio tasks `card` yields, in a stable order."""
    if card.task_naming == "plain":
        fmt = card.formats[0]
        specs = [TaskSpec(card.name, card.name, (0,), fmt)]
    else:
        n = len(card.templates)
        zs_fmt = "zsopt" if card.has_options else "zsnoopt"
        specs = [TaskSpec(f"{card.name}_template_{i}_zero_shot", card.name, (i,), zs_fmt, per_template=True)
                 for i in range(n)]
        specs += [TaskSpec(f"{card.name}_template_0to{n - 1}_{fmt}", card.name, tuple(range(n)), fmt)
                  for fmt in card.formats]
    if card.has_options:
        # Rank classification needs a template whose answer is one of the options (not an inverted one).
        specs += [dataclasses.replace(s, name=f"{s.name}_scoring", scoring=True)
                  for s in list(specs) if s.fmt.endswith("opt") and not s.fmt.endswith("noopt")
                  and not all(card.templates[i].inverted for i in s.template_ids)]
    return specs
