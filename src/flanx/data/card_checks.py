"""Checks of a task card's keys, each raising a `CardError` that names the card file and key.

`flanx.data.cards.load_card` calls these; they hold no state. Names that
plug in code are checked against their registries; `clusters:` against
`tasks/clusters.yaml`; a `local:` block is merged over the top-level keys
(`local_variant`) and may not change what tasks the card yields.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any

from flanx.data import clusters as clusters_lib
from flanx.data.sources import SOURCES
from flanx.data.templates import FewShotConfig, Template, TemplateError, TemplateFewShot
from flanx.eval import metrics as metrics_lib
from flanx.registry import Registry, suggest, with_hint

NAME = re.compile(r"^[a-z][a-z0-9_]*$")
KEYS = {"name", "description", "dataset", "group", "submixture", "vocabulary", "source", "splits",
        "fields", "label_field", "labels", "options", "options_field", "answer_field", "templates",
        "formats", "fewshot", "metrics", "postprocess", "on_error", "row_transform", "eval_only",
        "task_naming", "groups", "references_field", "metric_scale", "override", "clusters", "collection",
        "local", "mock", "options_style", "metadata"}
# What a `local:` block may not change: the tasks a card yields and where it belongs stay the same
# whichever data it reads.
NOT_LOCAL = {"name", "collection", "clusters", "group", "submixture", "templates", "formats", "task_naming",
             "eval_only", "override", "groups", "local", "mock", "vocabulary", "options_style", "metadata"}
OPTIONS_STYLES = ("fixed", "random")  # FLAN 2021's OPTIONS: block, or Flan 2022's drawn styles (zsopt)
METADATA_KEYS = ("task_name", "task_source")
SPLIT_KEYS = {"files", "name", "size", "take_every", "drop_every", "fields", "num_examples", "slice", "count"}


class CardError(ValueError):
    """A task card is malformed; the message names the card file and key."""


def err(where: str, key: str, msg: str) -> CardError:
    return CardError(f"task card {where}: {key}: {msg}")


def split_specs(raw: Any, where: str) -> dict[str, dict]:
    if not isinstance(raw, dict) or not raw:
        raise err(where, "splits", "expected a mapping split -> file pattern(s) or settings")
    out = {}
    for split, split_spec in raw.items():
        if isinstance(split_spec, (str, list)):
            split_spec = {"files": split_spec}
        if not isinstance(split_spec, dict):
            raise err(where, f"splits.{split}", "expected a path, a list of paths or a mapping")
        unknown = set(split_spec) - SPLIT_KEYS
        if unknown:
            raise err(where, f"splits.{split}", f"unknown key(s) {', '.join(sorted(unknown))}; "
                                                 f"known: {', '.join(sorted(SPLIT_KEYS))}")
        split_spec = dict(split_spec)
        if isinstance(split_spec.get("files"), str):
            split_spec["files"] = [split_spec["files"]]
        split_spec.setdefault("name", split)
        if "fields" in split_spec:
            split_spec["fields"] = fields_map(where, f"splits.{split}.fields", split_spec["fields"])
        for key in ("take_every", "drop_every"):
            every = split_spec.get(key)
            if key in split_spec and not (isinstance(every, list) and len(every) == 2 and every[0] > 0):
                raise err(where, f"splits.{split}.{key}", "expected [every_n, remainder], e.g. [20, 0]")
        n = split_spec.get("num_examples")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise err(where, f"splits.{split}.num_examples", f"expected a row count (an integer >= 0), got {n!r}")
        if split_spec.get("count", "data") not in ("data", "recorded"):
            raise err(where, f"splits.{split}.count", f"expected `recorded` (mixing rates use num_examples even "
                                                       f"when the data is here) or `data`, got {split_spec['count']!r}")
        if split_spec.get("count") == "recorded" and n is None:
            raise err(where, f"splits.{split}.count", "`count: recorded` needs `num_examples`")
        if "slice" in split_spec:
            cut = split_spec["slice"]
            if not (isinstance(cut, list) and len(cut) == 2
                    and all(v is None or (isinstance(v, int) and not isinstance(v, bool)) for v in cut)):
                raise err(where, f"splits.{split}.slice", f"expected [start, stop] (integers or null, negative "
                                                           f"counts from the end, e.g. [0, -200]), got {cut!r}")
        out[str(split)] = split_spec
    return out


def templates(raw: Any, where: str) -> list[Template]:
    if not isinstance(raw, list) or not raw:
        raise err(where, "templates", "expected a non-empty list of {input, target} mappings")
    out = []
    for i, t in enumerate(raw):
        if not isinstance(t, dict) or "input" not in t or "target" not in t:
            raise err(where, f"templates[{i}]", "expected a mapping with `input` and `target`")
        extra = set(t) - {"input", "target", "inverted", "fewshot"}
        if extra:
            raise err(where, f"templates[{i}]", f"unknown key(s) {', '.join(sorted(extra))}")
        try:
            out.append(Template(t["input"], t["target"], bool(t.get("inverted", False)),
                                where=f"{where}: templates[{i}]",
                                fewshot=template_fewshot(where, f"templates[{i}].fewshot", t.get("fewshot"))))
        except TemplateError as e:
            raise CardError(f"task card {e}") from None
    return out


def template_fewshot(where: str, key: str, raw: Any) -> TemplateFewShot | None:
    """A template's own few-shot layout: `{k, inputs_prefix, targets_prefix, x_y_delimiter,
    example_separator, prefix, input}`."""
    if raw is None:
        return None
    known = [f.name for f in dataclasses.fields(TemplateFewShot)]
    if not isinstance(raw, dict):
        raise err(where, key, f"expected a mapping with some of {', '.join(known)}")
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise err(where, key, f"unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}")
    for name, value in raw.items():
        if name == "k":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise err(where, f"{key}.k", f"expected a shot count >= 1, got {value!r}")
        elif not isinstance(value, str):
            raise err(where, f"{key}.{name}", f"expected a string, got {type(value).__name__}")
    return TemplateFewShot(**raw)


def metadata(where: str, raw: Any) -> dict[str, str]:
    """`metadata: {task_name, task_source}`: what the examples' `_task_name` / `_task_source` say."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or set(raw) - set(METADATA_KEYS) or \
            not all(isinstance(v, str) and v for v in raw.values()):
        raise err(where, "metadata", f"expected a mapping with {' and/or '.join(METADATA_KEYS)} (non-empty "
                                      f"strings), got {raw!r}")
    return dict(raw)


def choice(where: str, key: str, value: Any, allowed) -> Any:
    if value is not None and value not in allowed:
        raise err(where, key, f"{value!r} is not one of {', '.join(map(str, allowed))}")
    return value


def registered(where: str, key: str, value: Any, registry: Registry) -> Any:
    """`value` when it is a key of `registry`, else a CardError listing the registered names."""
    if value is not None and value not in registry:
        raise err(where, key, with_hint(f"{value!r} is not one of the registered {registry.kind}s: "
                                         f"{', '.join(registry.names())}{suggest(value, registry.names())}",
                                         registry.hint))
    return value


def check_source(where: str, source: dict | None, splits: dict[str, dict]) -> None:
    kind = source.get("type") if source else None
    if kind not in SOURCES:
        got = f"; got {kind!r}{suggest(kind, SOURCES.names())}" if kind is not None else ""
        raise err(where, "source.type", with_hint(f"expected one of {', '.join(SOURCES.names())}{got}", SOURCES.hint))
    reader = SOURCES[kind]
    for key, needed in getattr(reader, "needs", {}).items():
        if key not in source:
            raise err(where, f"source.{key}", f"a `{kind}` source needs `{key}`: {needed}")
    for split, split_spec in splits.items():
        if "slice" in split_spec and not getattr(reader, "reads_files", False):
            raise err(where, f"splits.{split}.slice", f"`slice` cuts the rows of files; a `{kind}` split says "
                                                       f"it in its name, e.g. `name: \"train[:-200]\"`")
    if getattr(reader, "reads_files", False):
        for split, split_spec in splits.items():
            if not split_spec.get("files"):
                raise err(where, f"splits.{split}", f"a `{kind}` source reads files: give a path or glob "
                                                     f"(`{split}: data/{split}.{kind}`) or `files:`")


def check_metrics(where: str, raw: dict, fields: dict, has_options: bool, fixed_options) -> tuple[str, ...]:
    metrics = raw.get("metrics") or ()
    if isinstance(metrics, str) or not isinstance(metrics, (list, tuple)):
        raise err(where, "metrics", "expected a list of metric names, e.g. [accuracy]")
    references_field = raw.get("references_field")
    if references_field is not None and references_field not in fields:
        raise err(where, "references_field", f"{references_field!r} is not in `fields`")
    for m in metrics:
        fn = metrics_lib.METRICS[registered(where, "metrics", m, metrics_lib.METRICS)]
        if metrics_lib.is_score_metric(fn) and not has_options:
            raise err(where, "metrics", f"{m} scores answer options: the card needs `options`, `labels` "
                                         f"or `options_field`")
        if metrics_lib.needs_options(fn) and not fixed_options:
            raise err(where, "metrics", f"{m} needs the card's fixed answer options (`labels` or `options`)")
        if references_field and getattr(fn, "single_reference", False):
            raise err(where, "metrics", f"{m} takes one reference per example; it cannot score "
                                         f"references_field {references_field!r}")
    return tuple(metrics)


def flag(where: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise err(where, key, f"expected true or false, got {value!r}")
    return value


def fields_map(where: str, key: str, raw: Any) -> dict:
    if not isinstance(raw, dict) or not raw:
        raise err(where, key, "expected a mapping template_field -> source column (or a list of columns)")
    return {str(k): [str(c) for c in v] if isinstance(v, list) else str(v) for k, v in raw.items()}


def local_variant(raw: dict, where: str) -> dict:
    """The card mapping with its `local:` keys in place of the top-level ones."""
    local = raw["local"]
    if not isinstance(local, dict) or not local:
        raise err(where, "local", "expected a mapping of the keys that differ when reading local files, "
                                   "e.g. {dataset: rte, source: {type: jsonl}, splits: {...}}")
    fixed = sorted(set(local) & NOT_LOCAL)
    if fixed:
        raise err(where, f"local.{fixed[0]}", "a local block cannot change the card's name, templates, "
                                               f"formats or membership ({', '.join(sorted(NOT_LOCAL))})")
    unknown = sorted(set(local) - KEYS)
    if unknown:
        raise err(where, f"local.{unknown[0]}", f"unknown key; known keys: {', '.join(sorted(KEYS - NOT_LOCAL))}")
    merged = {k: v for k, v in raw.items() if k != "local"}
    merged.update(local)
    if "source" in local and "dataset" not in local:
        merged.pop("dataset", None)
    return merged


def cluster_keys(where: str, raw: Any) -> tuple[str, ...]:
    if raw is None:
        return ()
    values = [raw] if isinstance(raw, str) else raw
    if not isinstance(values, list) or not values or not all(isinstance(v, str) for v in values):
        raise err(where, "clusters", f"expected a list of FLAN cluster keys, e.g. [entailment]; got {raw!r}")
    table = clusters_lib.cluster_table()
    for value in values:
        if value in table.clusters:
            continue
        if value in table.paper_clusters:
            keys = table.paper_clusters[value].code_keys
            raise err(where, "clusters", f"{value!r} is a paper cluster; cards name its code key(s): "
                                          f"{', '.join(keys)} (tasks/{clusters_lib.CLUSTERS_FILE})")
        raise err(where, "clusters", str(clusters_lib.unknown_cluster(value, table)))
    return tuple(values)


def mock_values(where: str, raw: Any) -> dict:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or not all(isinstance(v, list) and v for v in raw.values()):
        raise err(where, "mock", "expected a mapping source column -> non-empty list of values, cycled over "
                                  "the mock rows of the offline collection test")
    return {str(k): v for k, v in raw.items()}


def check_fewshot_layout(where: str, templates: list[Template], formats, fewshot: FewShotConfig) -> None:
    """A template must not repeat what the few-shot layout adds around every input ("Q: Q: ...")."""
    if not any(f.startswith("fs") for f in formats):
        return
    for i, t in enumerate(templates):
        cfg = t.fewshot_config(fewshot)
        head, tail = cfg.inputs_prefix.strip(), cfg.x_y_delimiter.strip()
        text = t.fewshot_template().input
        if head and text.lstrip().startswith(head):
            raise err(where, f"templates[{i}]", f"input starts with {head!r}, which few-shot formats put before "
                                                 f"every input (fewshot.inputs_prefix): it would read "
                                                 f"{head + ' ' + head!r}. Drop it from the template")
        if tail and text.rstrip().endswith(tail):
            raise err(where, f"templates[{i}]", f"input ends with {tail!r}, which few-shot formats put after "
                                                 f"every input (fewshot.x_y_delimiter). Drop it from the template")


def collection_name(where: str, value: Any) -> str | None:
    if value is not None and not (isinstance(value, str) and NAME.match(value)):
        raise err(where, "collection", f"{value!r} must be lowercase letters, digits and underscores")
    return value
