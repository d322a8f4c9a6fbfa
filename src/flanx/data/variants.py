"""Flan 2022 renderings of a card: the `_flan2022` task variants and the examples' metadata.

Flan 2022 renders a dataset differently from FLAN 2021 in two formats:

- zero-shot with options (`zsopt`): a randomized option style per example
  (`flanx.data.option_styles`) instead of the fixed `OPTIONS:` block;
- few-shot (`fsopt`, `fsnoopt`): exemplars within a budget of 1,920 tokens
  (FLAN's `FEW_SHOT_MAX_LEN`) and examples left with no exemplar dropped.

A card says how it renders: `options_style: random` is Flan 2022's zsopt,
`fewshot.drop_empty: true` marks its few-shot as Flan 2022's (the card then
sets its own budget; the Flan 2022 cards say 1,920). A card that belongs to
a Flan 2022 submixture (`submixture:` set, FLAN task names) but renders a
format otherwise also yields that format's Flan 2022 variant,
`{card}_template_0to{N}_{fmt}_flan2022` (training only, no scoring variant):
the FLAN 2021 cards keep their FLAN 2021 tasks for the FLAN 2021 mixtures and
evaluation, and the `flan2022` mixture uses the variants.
`view(card, variant)` is the card as the variant renders it (same rows).

Every rendered example carries FLAN's metadata features (`metadata`):
`_task_name` (the card's `metadata.task_name`, default its name),
`_task_source` (`metadata.task_source`, default by submixture: Flan2021, P3,
NIv2, CoT, Dialog), `_template_type` (`zs_opt`, `zs_noopt`, `fs_opt`,
`fs_noopt`: what the input really shows, so NIv2, CoT and dialog are
`*_noopt` where FLAN's dumps say `*_opt`) and `_template_idx` (the
template's index in the card). seqio passes them through tasks and drops
them before the model (the feature converter keeps only model features).
Stdlib only.
"""
from __future__ import annotations

import dataclasses

FLAN2022 = "flan2022"
FEWSHOT_MAX_TOKENS = 1920  # FLAN's FEW_SHOT_MAX_LEN (flan/v2/constants.py)
TASK_SOURCES = {"flan": "Flan2021", "t0": "P3", "niv2": "NIv2", "cot": "CoT", "dialog": "Dialog"}
TEMPLATE_TYPES = {"zsopt": "zs_opt", "zsnoopt": "zs_noopt", "fsopt": "fs_opt", "fsnoopt": "fs_noopt"}
METADATA_FEATURES = ("_task_name", "_task_source", "_template_type", "_template_idx")


def flan2022_fewshot(cfg):
    """A few-shot config as Flan 2022 budgets it: 1,920 tokens, examples without exemplars dropped."""
    return dataclasses.replace(cfg, max_input_tokens=FEWSHOT_MAX_TOKENS, budget_unit="tokens", drop_empty=True)


def differing_formats(card) -> list[str]:
    """The card's formats that Flan 2022 renders differently from the card (none for a card outside a
    Flan 2022 submixture)."""
    if not card.submixture or card.task_naming != "flan":
        return []
    out = []
    if "zsopt" in card.formats and card.options_style != "random":
        out.append("zsopt")
    if not card.fewshot.drop_empty:  # a card that drops exemplar-less rows lays out Flan 2022's few-shot itself
        out += [f for f in card.formats if f.startswith("fs")]
    return out


def variant_name(base_task: str, variant: str) -> str:
    return f"{base_task}_{variant}"


def view(card, variant: str):
    """`card` as `variant` renders it (the card itself for ""); it shares the card's rows and caches."""
    if not variant:
        return card
    if variant != FLAN2022:
        raise ValueError(f"unknown task variant {variant!r}; flanx has {FLAN2022!r}")
    key = ("variant", variant)
    if key not in card.row_cache:
        card.row_cache[key] = dataclasses.replace(card, options_style="random",
                                                  fewshot=flan2022_fewshot(card.fewshot))
    return card.row_cache[key]


def task_name(card) -> str:
    return card.metadata.get("task_name", card.name)


def task_source(card) -> str:
    return card.metadata.get("task_source") or TASK_SOURCES.get(card.submixture or "", card.collection or "flanx")


def metadata(card, spec, template_idx: int) -> dict:
    """The metadata features of one example of task `spec`."""
    return {"_task_name": task_name(card), "_task_source": task_source(card),
            "_template_type": TEMPLATE_TYPES[spec.fmt], "_template_idx": int(template_idx)}
