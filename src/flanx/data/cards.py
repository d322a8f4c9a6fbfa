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
`{name}_scoring` rank-classification variants for tasks with options, and
for a card in a Flan 2022 submixture the `{..._fmt}_flan2022` variants of
formats that Flan 2022 renders differently (`flanx.data.variants`).

Cards in a folder under `tasks/` belong to the collection of that name
(`tasks/flan2021/rte.yaml`: collection `flan2021`) and may say which FLAN
clusters they belong to (`clusters:`, checked against `tasks/clusters.yaml`).
A card with a `local:` block describes the same dataset twice: the
top-level keys (e.g. a TFDS source) and, overriding some of them, files under
FLANX_DATA_DIR; `load_card` picks the local variant when its files exist
(`card.variant`, the other one in `card.alternate`). A local block may give
only some of the splits (AG News: only its test file); the others are read
from the main source. Splits may record their row counts (`num_examples`),
which mixtures use when the data is absent.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from flanx import paths
from flanx.data import card_checks as checks
from flanx.data import variants
from flanx.data.card_checks import KEYS, NAME, CardError, err
from flanx.data.group_lists import GROUP_LISTS
from flanx.data.sources import data_available
from flanx.data.templates import FORMATS, FewShotConfig, Template
from flanx.data.transforms import ROW_TRANSFORMS
from flanx.data.vocab import VOCABULARIES
from flanx.eval import metrics as metrics_lib

SUBMIXTURES = ("flan", "t0", "niv2", "cot", "dialog")
MIN_FLAN_TEMPLATES = 8  # a card file with FLAN task names (task_naming: flan) needs this many templates


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
    clusters: tuple[str, ...] = ()
    collection: str | None = None
    mock: dict = dataclasses.field(default_factory=dict, repr=False)
    options_style: str = "fixed"  # "random": Flan 2022's drawn option styles in zsopt
    metadata: dict = dataclasses.field(default_factory=dict)  # task_name / task_source of the examples
    variant: str = "main"  # "local" when the card reads its `local:` files
    alternate: "TaskCard | None" = dataclasses.field(default=None, repr=False)  # the other variant
    path: str = "<python>"
    row_cache: dict = dataclasses.field(default_factory=dict, repr=False)
    skipped: dict = dataclasses.field(default_factory=dict, repr=False)

    @property
    def has_options(self) -> bool:
        return bool(self.options or self.options_field)

    def row_options(self, row: dict) -> list[str] | None:
        return list(row[self.options_field]) if self.options_field else self.options

    @property
    def split_names(self) -> tuple[str, ...]:
        """Every split the card serves: its own, then those its other variant reads (a `local:` block may
        give only some splits; the rest come from the main source)."""
        other = tuple(s for s in (self.alternate.splits if self.alternate else ()) if s not in self.splits)
        return tuple(self.splits) + other

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
    variant: str = ""  # "flan2022": the format as Flan 2022 renders it (`flanx.data.variants`)


def load_card(spec: dict, where: str = "<python>", use_local: bool | None = None) -> TaskCard:
    """Validate one card mapping and build a TaskCard (`where` names it in errors).

    A card with a `local:` block is validated both ways; the local variant is
    returned when `use_local` is true, or when it is None and the local
    files exist (`sources.data_available`); `card.alternate` is the other one.
    """
    if not isinstance(spec, dict):
        raise CardError(f"task card {where}: expected a mapping, got {type(spec).__name__}")
    unknown = set(spec) - KEYS
    if unknown:
        raise err(where, ", ".join(sorted(unknown)), f"unknown key(s); known keys: {', '.join(sorted(KEYS))}")
    for key in ("name", "source", "splits", "fields", "templates"):
        if key not in spec:
            raise err(where, key, "required key is missing")
    name = spec["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise err(where, "name", f"{name!r} must be lowercase letters, digits and underscores")
    where = f"{where} ({name})" if where != name else where
    main = _build(spec, where)
    if spec.get("local") is None:
        return main
    local = _build(checks.local_spec(spec, where), f"{where}: local", formats=main.formats)
    local = dataclasses.replace(local, variant="local", path=main.path, templates=main.templates)
    extra = [s for s in local.splits if s not in main.splits]
    if extra:
        raise err(where, "local.splits", f"names split(s) {', '.join(extra)}, but the card has "
                                          f"{', '.join(main.splits)}; a local block reads the card's splits, or "
                                          f"some of them (the others, e.g. train, stay with the main source)")
    main.alternate, local.alternate = local, main
    if use_local is None:
        use_local = data_available(local)
    return local if use_local else main


def _build(spec: dict, where: str, formats: tuple[str, ...] | None = None) -> TaskCard:
    """One variant of a card; a local variant gets the main variant's `formats` (its few-shot pool may
    then be a split that only the main source has)."""
    inherited = formats
    name = spec["name"]
    source = dict(spec["source"]) if isinstance(spec["source"], dict) else None
    splits = checks.split_specs(spec["splits"], where)
    checks.check_source(where, source, splits)
    fields = checks.fields_map(where, "fields", spec["fields"])
    templates = checks.templates(spec["templates"], where)
    for i, t in enumerate(templates):
        missing = t.fields - set(fields)
        if missing:
            raise err(where, f"templates[{i}]", f"uses field(s) {', '.join(sorted(missing))} not in `fields`")
    labels = spec.get("labels")
    for key in ("labels", "options"):
        values = spec.get(key)
        values = values.values() if isinstance(values, dict) else (values or [])
        if any(isinstance(v, bool) for v in values):
            raise err(where, key, "YAML read an unquoted yes/no/true/false as a boolean; quote answer texts, "
                                   "e.g. \"yes\"")
    if labels is not None:
        if not isinstance(labels, dict) or not labels:
            raise err(where, "labels", "expected a mapping raw label -> answer text")
        labels = {str(k): str(v) for k, v in labels.items()}
    label_field = spec.get("label_field", "label" if labels else None)
    if labels and label_field not in fields:
        raise err(where, "label_field", f"{label_field!r} is not in `fields`")
    options = spec.get("options")
    if options is None and labels:
        options = list(dict.fromkeys(labels.values()))
    if options is not None and (not isinstance(options, list) or len(options) < 2):
        raise err(where, "options", "expected a list of at least two answer options")
    options_field = spec.get("options_field")
    if options_field and options_field not in fields:
        raise err(where, "options_field", f"{options_field!r} is not in `fields`")
    has_options = bool(options or options_field)
    answer_field = spec.get("answer_field", label_field)
    if has_options and answer_field not in fields:
        raise err(where, "answer_field", "cards with options name the field holding the correct option")
    fs = dict(spec.get("fewshot") or {})
    has_pool = bool(fs.get("exemplars_field")) or fs.get("pool_split", "train") in splits
    formats = tuple(f for f in (FORMATS if has_options else ("zsnoopt", "fsnoopt")) if has_pool or f.startswith("zs"))
    formats = tuple(inherited or spec.get("formats") or formats)
    for fmt in formats:
        checks.choice(where, "formats", fmt, FORMATS)
        if fmt.endswith("opt") and not fmt.endswith("noopt") and not has_options:
            raise err(where, "formats", f"{fmt} needs `options`, `labels` or `options_field`")
    try:
        fewshot = FewShotConfig(**fs)
    except TypeError as e:
        raise err(where, "fewshot", f"{e}; keys: {', '.join(f.name for f in dataclasses.fields(FewShotConfig))}")
    except ValueError as e:
        raise err(where, "fewshot", str(e)) from None
    for key in ("match_field", "exemplars_field", "prefix_field"):
        value = getattr(fewshot, key)
        if value and value not in fields:
            raise err(where, f"fewshot.{key}", f"{value!r} is not in `fields`")
    checks.check_fewshot_layout(where, templates, formats, fewshot)
    if any(f.startswith("fs") for f in formats) and not fewshot.exemplars_field and fewshot.pool_split not in splits \
            and not inherited:
        raise err(where, "fewshot.pool_split", f"{fewshot.pool_split!r} is not a split of this card")
    dataset = spec.get("dataset")
    metrics = checks.check_metrics(where, spec, fields, has_options, options)
    return TaskCard(
        name=name, source=source, splits=splits, fields=fields, templates=templates, formats=formats,
        description=str(spec.get("description", "")).strip(), dataset=dataset,
        group=str(spec.get("group", "held_in")),
        submixture=checks.choice(where, "submixture", spec.get("submixture"), SUBMIXTURES),
        vocabulary=checks.registered(where, "vocabulary", spec.get("vocabulary", "t5_spm"), VOCABULARIES),
        label_field=label_field, labels=labels, options=options, options_field=options_field,
        answer_field=answer_field if has_options else None, fewshot=fewshot, metrics=metrics,
        postprocess=checks.registered(where, "postprocess", spec.get("postprocess", "strip"),
                                      metrics_lib.POSTPROCESSORS),
        on_error=checks.choice(where, "on_error", spec.get("on_error", "raise"), ("raise", "skip")),
        row_transform=checks.registered(where, "row_transform", spec.get("row_transform"), ROW_TRANSFORMS),
        eval_only=bool(spec.get("eval_only", False)),
        task_naming=checks.choice(where, "task_naming", spec.get("task_naming", "flan"), ("flan", "plain")),
        references_field=spec.get("references_field"),
        metric_scale=checks.choice(where, "metric_scale", spec.get("metric_scale", 1), metrics_lib.SCALES),
        override=checks.flag(where, "override", spec.get("override", False)),
        clusters=checks.cluster_keys(where, spec.get("clusters")),
        collection=checks.collection_name(where, spec.get("collection")),
        mock=checks.mock_values(where, spec.get("mock")),
        options_style=checks.choice(where, "options_style", spec.get("options_style", "fixed"), checks.OPTIONS_STYLES),
        metadata=checks.metadata(where, spec.get("metadata")),
        path=where)


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
        specs += [TaskSpec(variants.variant_name(f"{card.name}_template_0to{n - 1}_{fmt}", variants.FLAN2022),
                           card.name, tuple(range(n)), fmt, variant=variants.FLAN2022)
                  for fmt in variants.differing_formats(card)]
    if card.has_options:
        # Rank classification needs a template whose answer is one of the options (not an inverted one).
        specs += [dataclasses.replace(s, name=f"{s.name}_scoring", scoring=True)
                  for s in list(specs) if s.fmt.endswith("opt") and not s.fmt.endswith("noopt")
                  and not s.variant and not all(card.templates[i].inverted for i in s.template_ids)]
    return specs


# ----------------------------------------------------------------------------- card files and collections

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


def _group_entries(spec: dict) -> list[dict]:
    groups = spec["groups"]
    if isinstance(groups, dict):  # listed from the data by a registered function
        lister = GROUP_LISTS.check(groups.get("list"), f"task card {spec.get('name')!r}: groups.list")
        groups = lister(spec, groups)
    return [g if isinstance(g, dict) else {"group": str(g)} for g in groups]


def expand_groups(spec: dict) -> list[dict]:
    """A card with `groups: [a, b]` (or `groups: {list: NAME}`, see `flanx.data.group_lists`) becomes one
    card per group, `{group}` filled in its split file patterns, its `source` values and its `local:` block."""
    groups = spec.get("groups")
    if not groups:
        return [spec]
    out = []
    for entry in _group_entries(spec):
        group = entry["group"]
        card = {k: v for k, v in spec.items() if k != "groups"}
        card["name"] = f"{spec['name']}_{entry.get('suffix', group.lower())}"
        splits = {}
        for split, s in spec["splits"].items():
            s = {"files": s} if isinstance(s, (str, list)) else dict(s)
            if "files" in s:
                files = [s["files"]] if isinstance(s["files"], str) else s["files"]
                s["files"] = [f.replace("{group}", group) for f in files]
            splits[split] = s
        card["splits"] = splits
        if isinstance(spec.get("source"), dict):
            card["source"] = _fill(spec["source"], group)
        if type(spec.get("local")) is dict:
            card["local"] = _fill(spec["local"], group)
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


def _relative_root(spec: dict, path: Path) -> None:
    """A relative `source.root` (also in a `local:` block) is relative to the card file."""
    for holder in (spec, spec.get("local") if isinstance(spec.get("local"), dict) else None):
        source = holder.get("source") if holder else None
        root = source.get("root") if isinstance(source, dict) else None
        if root:
            root = Path(root).expanduser()
            holder["source"] = dict(source, root=str(root if root.is_absolute() else path.parent / root))


def load_card_file(path: str | Path, use_local: bool | None = None) -> list[TaskCard]:
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
    _relative_root(spec, path)
    folder = collection_of(path)
    if folder is not None:
        if spec.get("collection", folder) != folder:
            raise CardError(f"task card {path}: collection: {spec['collection']!r}, but the card sits in the "
                            f"folder of collection {folder!r}; drop the key or move the file")
        spec["collection"] = folder
    cards = [load_card(s, str(path), use_local) for s in expand_groups(spec)]
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
