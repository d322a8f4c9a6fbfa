"""Render a task's examples: pick a template, apply the format, add few-shot exemplars.

Plain Python, no TensorFlow: `render_examples(card, spec, split)` returns the
list of `{"inputs_pretokenized", "targets_pretokenized"}` dicts the seqio task
serves. Rank-classification variants add `idx` [example, option] and
`is_correct`, one dict per option (a row's `answer_field` may list several
correct options); a card with `references_field` adds `references`, the
row's reference answers for evaluation (templates see the first).
Everything is deterministic: the template of example i of a `0toN` task, its
option style (a card with `options_style: random`, in `zsopt`) and its
few-shot exemplars come from a random generator seeded by (task name, split,
i), so the same task renders the same text on every machine and every run;
the shuffle seed only orders examples. Evaluation splits never use inverted
templates (their targets are not the task's answers). A few-shot example
left without exemplars is dropped when the layout says `drop_empty`.
`_flan2022` task variants render through `flanx.data.variants.view`.
"""
from __future__ import annotations

import functools
import random
import zlib
from typing import Callable

from flanx.data import option_styles, sources, variants
from flanx.data.cards import TaskCard, TaskSpec
from flanx.data.templates import assemble_fewshot, is_fewshot, is_opt, render_exemplar

TRAIN_SPLITS = ("train",)
PREVIEW_POOL = 64


def _rng(spec: TaskSpec, split: str, index: int) -> random.Random:
    return random.Random(zlib.crc32(f"{spec.name}|{split}|{index}".encode()))


def usable_templates(card: TaskCard, spec: TaskSpec, split: str) -> list[int]:
    """Template ids a task may use on `split` (no inverted ones for evaluation or scoring)."""
    ids = list(spec.template_ids)
    if spec.card != card.name or max(ids) >= len(card.templates):
        raise KeyError(f"task {spec.name!r} was made by an earlier version of task card {card.name!r} "
                       f"({len(card.templates)} templates now, from {card.path}); use the card's current task "
                       f"names (`flanx tasks list --card {card.name}`)")
    if split not in TRAIN_SPLITS or spec.scoring:
        direct = [i for i in ids if not card.templates[i].inverted]
        ids = direct or ids
    return ids


def _answers(card: TaskCard, row: dict) -> list[str]:
    """The correct option(s) of a row: its `answer_field` holds one answer or a list of them."""
    value = row[card.answer_field]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _references(card: TaskCard, row: dict) -> list[str]:
    value = row[card.references_field]
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def text_row(card: TaskCard, row: dict) -> dict:
    """The row as templates see it: a list of answers or references renders as its first item."""
    multi = [f for f in (card.answer_field, card.references_field)
             if f and f != card.options_field and isinstance(row.get(f), (list, tuple))]
    if not multi:
        return row
    out = dict(row)
    for f in multi:
        if not row[f]:
            raise sources.DataFormatError(f"field {f!r} is an empty list (task card {card.name!r})")
        out[f] = row[f][0]
    return out


def _memo(length_fn: Callable[[str], int]) -> Callable[[str], int]:
    return functools.lru_cache(maxsize=200_000)(length_fn)


def _fewshot_pool(card: TaskCard, limit: int | None) -> tuple[list[dict], dict]:
    pool = sources.load_rows(card, card.fewshot.pool_split, limit)
    by_value: dict = {}
    if card.fewshot.match_field:
        for j, row in enumerate(pool):
            by_value.setdefault(row[card.fewshot.match_field], []).append(j)
    return pool, by_value


def _fewshot(card, split, index, row, template, with_options, rng, pool, by_value, length_fn) -> tuple[str, int]:
    """The few-shot input of one example and how many exemplars it kept: exemplars from the pool (or the
    row), rendered with the template's few-shot layout, within the budget."""
    cfg = template.fewshot_config(card.fewshot)
    shot_template = template.fewshot_template()
    options = card.row_options(row)
    inp = shot_template.render(row, options, with_options)[0]
    # Lengths are sums over pieces (memoized), so a pool row is measured once, not once per use.
    layout = length_fn(cfg.inputs_prefix) + length_fn(cfg.x_y_delimiter) + length_fn(cfg.targets_prefix)
    final_len = layout + shot_template.rendered_length(row, options, with_options, length_fn)[0]
    prefix = (str(row.get(cfg.prefix_field, "")) if cfg.prefix_field else "") + template.fewshot_prefix(row)
    if cfg.exemplars_field:  # exemplars carried by the row: text (BBH's CoT prompts) or rows (NIv2's examples)
        examples = [ex if isinstance(ex, str) else text_row(card, dict(row, **ex))
                    for ex in list(row[cfg.exemplars_field])[:cfg.k]]
    else:
        candidates = by_value.get(row[cfg.match_field], []) if cfg.match_field else range(len(pool))
        # Draw one spare so the example itself can be left out of its own exemplars (O(k), not O(pool)).
        exclude = index if split == cfg.pool_split else -1
        picked = [j for j in rng.sample(candidates, min(cfg.k + 1, len(candidates))) if j != exclude][:cfg.k]
        examples = [text_row(card, pool[j]) for j in picked]
    shots, lens = [], []
    for ex in examples:
        if isinstance(ex, str):
            shots.append(ex)
            lens.append(length_fn(ex))
            continue
        ex_options = card.row_options(ex)
        shots.append(render_exemplar(*shot_template.render(ex, ex_options, with_options), cfg))
        lens.append(layout + sum(shot_template.rendered_length(ex, ex_options, with_options, length_fn)))
    return assemble_fewshot(inp, shots, cfg, length_fn, prefix, lengths=(final_len, lens))


def _styled(card: TaskCard, row: dict, style: option_styles.OptionStyle, options: list[str]) -> dict:
    """The row with its answer as the drawn option style names it (a label such as `(B).`, or unchanged)."""
    if not card.answer_field or card.answer_field not in row:
        return row
    return dict(row, **{card.answer_field: style.answer(str(row[card.answer_field]), options)})


def render_examples(card: TaskCard, spec: TaskSpec, split: str,
                    length_fn: Callable[[str], int] | None = None, limit: int | None = None) -> list[dict]:
    """All examples of `spec` on `split` (cached on the card per task and split).

    `limit` renders a preview from the first `limit` rows only (few-shot
    exemplars then come from the first `PREVIEW_POOL` rows of the pool), uncached.
    Each example carries the metadata features (`flanx.data.variants.metadata`).
    """
    card = variants.view(card, spec.variant)
    key = ("rendered", spec.name, split)
    if key in card.row_cache:
        return card.row_cache[key]
    rows = sources.load_rows(card, split, limit)
    template_ids = usable_templates(card, spec, split)
    fewshot = is_fewshot(spec.fmt)
    if fewshot:
        if card.fewshot.budget_unit == "chars":
            length_fn = len
        elif length_fn is None:
            from flanx.data import vocab  # noqa: PLC0415
            length_fn = vocab.length_fn(card.vocabulary)
        length_fn = _memo(length_fn)
        pool_limit = None if limit is None else max(limit, PREVIEW_POOL)
        pool, by_value = ([], {}) if card.fewshot.exemplars_field else _fewshot_pool(card, pool_limit)
    random_options = is_opt(spec.fmt) and not fewshot and card.options_style == "random"
    out: list[dict] = []
    for i, full_row in enumerate(rows):
        row = text_row(card, full_row)
        rng = _rng(spec, split, i)
        tid = template_ids[rng.randrange(len(template_ids))] if len(template_ids) > 1 else template_ids[0]
        template = card.templates[tid]
        options = card.row_options(row)
        with_options = is_opt(spec.fmt) and not template.inverted
        style = option_styles.draw(rng) if random_options and with_options and options else None
        if style is not None:
            row = _styled(card, row, style, options)
            inp, tgt = template.render(row, options, with_options, style.render(options))
        else:
            inp, tgt = template.render(row, options, with_options)
        if fewshot:
            inp, kept = _fewshot(card, split, i, row, template, with_options, rng, pool, by_value, length_fn)
            if not kept and template.fewshot_config(card.fewshot).drop_empty:
                continue  # Flan 2022 drops examples left without an exemplar
        meta = variants.metadata(card, spec, tid)
        if not spec.scoring:
            ex = {"inputs_pretokenized": inp, "targets_pretokenized": tgt, **meta}
            if card.references_field and not template.inverted:
                ex["references"] = _references(card, full_row)
            out.append(ex)
            continue
        answers = _answers(card, full_row)
        wrong = [a for a in answers if a not in options]
        if wrong:
            raise sources.DataFormatError(
                f"task card {card.name!r}, split {split!r}, row {i}: answer {wrong[0]!r} (field "
                f"{card.answer_field!r}) is not one of the options {options}")
        targets = style.candidates(options) if style is not None else options
        for j, option in enumerate(options):
            out.append({"inputs_pretokenized": inp, "targets_pretokenized": targets[j],
                        "idx": [i, j], "is_correct": option in answers, **meta})
    if limit is None:
        card.row_cache[key] = out
    return out


def count_examples(card: TaskCard, split: str = "train") -> int:
    """Rows in a card's split (what examples-proportional mixing counts)."""
    return len(sources.load_rows(card, split))


def num_examples(card: TaskCard, split: str = "train") -> tuple[int, str]:
    """(rows in a split, "data" or "recorded"): counted when the data is here (TFDS: from its metadata,
    before row filters, as FLAN counts), else the split's recorded `num_examples`; always the recorded
    count with `count: recorded` (FLAN's count after its filters, or to spare reading the data). Cached."""
    if split not in card.splits and card.alternate is not None and split in card.alternate.splits:
        return num_examples(card.alternate, split)  # a split the local files do not give
    key = ("num_examples", split)
    if key not in card.row_cache:
        recorded = card.splits[split].get("num_examples") if split in card.splits else None
        if recorded is not None and card.splits[split].get("count") == "recorded":
            card.row_cache[key] = (int(recorded), "recorded")  # e.g. FLAN's count after its filters
        elif sources.data_available(card):
            if card.source["type"] == "tfds":
                from flanx.data import hub_sources  # noqa: PLC0415
                card.row_cache[key] = (hub_sources.split_size(card, split), "data")
            else:
                card.row_cache[key] = (count_examples(card, split), "data")
        elif recorded is not None:
            card.row_cache[key] = (int(recorded), "recorded")
        else:  # raises MissingDataError naming the data
            card.row_cache[key] = (count_examples(card, split), "data")
    return card.row_cache[key]
