"""Task cards: the declarative description of one dataset, and the tasks it yields.

A card (a mapping from a YAML file or from Python) says where the data
is (`source`, `splits`), how source columns map to template fields
(`fields`), the label-to-answer mapping (`labels`, `options`), the templates,
the formats, few-shot settings, metrics, postprocessing, the group (held_in /
held_out / target) and the Flan 2022 submixture. `load_card` validates a card
and names the file and key of any mistake; names that plug in code
(`source.type`, `row_transform`, `metrics`, `postprocess`, `vocabulary`) are
checked against their registries (`SOURCES`, `ROW_TRANSFORMS`, `METRICS`,
`POSTPROCESSORS`, `VOCABULARIES`), so a user's registered plug-in is valid
at once. Reading card files (groups, collections, name collisions) is
`flanx.data.card_files`. `docs/tasks.md` documents every key. `task_specs(card)`
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
from flanx.data import card_checks as checks
from flanx.data import variants
from flanx.data.card_checks import KEYS, NAME, CardError, err
from flanx.data.sources import data_available
from flanx.data.templates import FORMATS, FewShotConfig, Template
from flanx.data.transforms import ROW_TRANSFORMS
from flanx.data.vocab import VOCABULARIES
from flanx.eval import metrics as metrics_lib

SUBMIXTURES = ("flan", "t0", "niv2", "cot", "dialog")


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


def load_card(raw: dict, where: str = "<python>", use_local: bool | None = None) -> TaskCard:
    """Validate one card mapping and build a TaskCard (`where` names it in errors).

    A card with a `local:` block is validated both ways; the local variant is
    returned when `use_local` is true, or when it is None and the local
    files exist (`sources.data_available`); `card.alternate` is the other one.
    """
    if not isinstance(raw, dict):
        raise CardError(f"task card {where}: expected a mapping, got {type(raw).__name__}")
    unknown = set(raw) - KEYS
    if unknown:
        raise err(where, ", ".join(sorted(unknown)), f"unknown key(s); known keys: {', '.join(sorted(KEYS))}")
    for key in ("name", "source", "splits", "fields", "templates"):
        if key not in raw:
            raise err(where, key, "required key is missing")
    name = raw["name"]
    if not isinstance(name, str) or not NAME.match(name):
        raise err(where, "name", f"{name!r} must be lowercase letters, digits and underscores")
    where = f"{where} ({name})" if where != name else where
    main = _build(raw, where)
    if raw.get("local") is None:
        return main
    local = _build(checks.local_variant(raw, where), f"{where}: local", formats=main.formats)
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


def _build(raw: dict, where: str, formats: tuple[str, ...] | None = None) -> TaskCard:
    """One variant of a card; a local variant gets the main variant's `formats` (its few-shot pool may
    then be a split that only the main source has)."""
    inherited = formats
    name = raw["name"]
    source = dict(raw["source"]) if isinstance(raw["source"], dict) else None
    splits = checks.split_specs(raw["splits"], where)
    checks.check_source(where, source, splits)
    fields = checks.fields_map(where, "fields", raw["fields"])
    templates = checks.templates(raw["templates"], where)
    for i, t in enumerate(templates):
        missing = t.fields - set(fields)
        if missing:
            raise err(where, f"templates[{i}]", f"uses field(s) {', '.join(sorted(missing))} not in `fields`")
    labels = raw.get("labels")
    for key in ("labels", "options"):
        values = raw.get(key)
        values = values.values() if isinstance(values, dict) else (values or [])
        if any(isinstance(v, bool) for v in values):
            raise err(where, key, "YAML read an unquoted yes/no/true/false as a boolean; quote answer texts, "
                                   "e.g. \"yes\"")
    if labels is not None:
        if not isinstance(labels, dict) or not labels:
            raise err(where, "labels", "expected a mapping raw label -> answer text")
        labels = {str(k): str(v) for k, v in labels.items()}
    label_field = raw.get("label_field", "label" if labels else None)
    if labels and label_field not in fields:
        raise err(where, "label_field", f"{label_field!r} is not in `fields`")
    options = raw.get("options")
    if options is None and labels:
        options = list(dict.fromkeys(labels.values()))
    if options is not None and (not isinstance(options, list) or len(options) < 2):
        raise err(where, "options", "expected a list of at least two answer options")
    options_field = raw.get("options_field")
    if options_field and options_field not in fields:
        raise err(where, "options_field", f"{options_field!r} is not in `fields`")
    has_options = bool(options or options_field)
    answer_field = raw.get("answer_field", label_field)
    if has_options and answer_field not in fields:
        raise err(where, "answer_field", "cards with options name the field holding the correct option")
    fs = dict(raw.get("fewshot") or {})
    has_pool = bool(fs.get("exemplars_field")) or fs.get("pool_split", "train") in splits
    formats = tuple(f for f in (FORMATS if has_options else ("zsnoopt", "fsnoopt")) if has_pool or f.startswith("zs"))
    formats = tuple(inherited or raw.get("formats") or formats)
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
    dataset = raw.get("dataset")
    metrics = checks.check_metrics(where, raw, fields, has_options, options)
    return TaskCard(
        name=name, source=source, splits=splits, fields=fields, templates=templates, formats=formats,
        description=str(raw.get("description", "")).strip(), dataset=dataset,
        group=str(raw.get("group", "held_in")),
        submixture=checks.choice(where, "submixture", raw.get("submixture"), SUBMIXTURES),
        vocabulary=checks.registered(where, "vocabulary", raw.get("vocabulary", "t5_spm"), VOCABULARIES),
        label_field=label_field, labels=labels, options=options, options_field=options_field,
        answer_field=answer_field if has_options else None, fewshot=fewshot, metrics=metrics,
        postprocess=checks.registered(where, "postprocess", raw.get("postprocess", "strip"),
                                      metrics_lib.POSTPROCESSORS),
        on_error=checks.choice(where, "on_error", raw.get("on_error", "raise"), ("raise", "skip")),
        row_transform=checks.registered(where, "row_transform", raw.get("row_transform"), ROW_TRANSFORMS),
        eval_only=bool(raw.get("eval_only", False)),
        task_naming=checks.choice(where, "task_naming", raw.get("task_naming", "flan"), ("flan", "plain")),
        references_field=raw.get("references_field"),
        metric_scale=checks.choice(where, "metric_scale", raw.get("metric_scale", 1), metrics_lib.SCALES),
        override=checks.flag(where, "override", raw.get("override", False)),
        clusters=checks.cluster_keys(where, raw.get("clusters")),
        collection=checks.collection_name(where, raw.get("collection")),
        mock=checks.mock_values(where, raw.get("mock")),
        options_style=checks.choice(where, "options_style", raw.get("options_style", "fixed"), checks.OPTIONS_STYLES),
        metadata=checks.metadata(where, raw.get("metadata")),
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
