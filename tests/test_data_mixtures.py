"""Mixing rates: examples-proportional with a cap, temperature, Flan 2022 submixtures, replay."""
from __future__ import annotations

import collections
import glob
import json
import os

import numpy as np
import pytest
import seqio

import flanx.data
from flanx.data import mixtures, pipeline, tasks

SIZES = {"mix_small": 100, "mix_mid": 600, "mix_big": 5000}


def _card(name, size, submixture="flan", group="mix_test", options=True):
    spec = {"name": name, "group": group, "submixture": submixture, "vocabulary": "byte",
            "source": {"type": "synthetic", "generator": "order_total"},
            "splits": {"train": {"size": size}, "validation": {"size": 5}},
            "fields": {"a": "price_a", "b": "price_b", "total": "total"},
            "templates": [{"input": f"{name}: {{a}}+{{b}}", "target": "{total}"}]}
    if options:
        spec["options"] = [str(i) for i in range(2, 19)]
        spec["answer_field"] = "total"
    return spec


@pytest.fixture(scope="module")
def mix_cards():
    flanx.data.register_all()
    for name, size in SIZES.items():
        flanx.data.register_task_card(_card(name, size), refresh_mixtures=False)
    flanx.data.register_task_card(_card("mix_dialog", 300, submixture="dialog", options=False), refresh_mixtures=False)
    yield
    for name in list(SIZES) + ["mix_dialog"]:
        tasks.unregister_card(name)


def test_examples_proportional_with_cap_and_temperature(mix_cards):
    name = mixtures.register_examples_mixture("mix_test_props", list(SIZES), cap=1000, temperature=2.0)
    table = {r["task"]: r for r in mixtures.mixture_table(name)}
    # Independently: 4 formats per card (options), rate = min(1000, n) ** (1/2) / 4.
    expected = {}
    for card, n in SIZES.items():
        for fmt in ("zsopt", "zsnoopt", "fsopt", "fsnoopt"):
            expected[f"{card}_template_0to0_{fmt}"] = min(1000, n) ** 0.5 / 4
    assert set(table) == set(expected)
    total = sum(expected.values())
    for task, rate in expected.items():
        assert table[task]["examples"] == SIZES[task.split("_template")[0]]
        assert table[task]["rate"] == pytest.approx(rate)
        assert table[task]["share"] == pytest.approx(rate / total)
        assert table[task]["examples_per_epoch"] == pytest.approx(rate / total * sum(SIZES.values()))
    # seqio's own rate arithmetic agrees.
    mix = seqio.get_mixture_or_task(name)
    assert {t.name: mix.get_rate(t) for t in mix.tasks} == pytest.approx(expected)
    # Without cap and temperature 1 the shares are plain example counts.
    plain = mixtures.register_examples_mixture("mix_test_plain", list(SIZES), cap=None, formats=["zsopt"])
    shares = {r["task"]: r["share"] for r in mixtures.mixture_table(plain)}
    assert shares["mix_big_template_0to0_zsopt"] == pytest.approx(5000 / 5700)


def test_flan2022_submixture_weights_renormalize_over_present_submixtures(mix_cards):
    name = mixtures.register_flan2022("mix_test_flan", "byte", group="mix_test", cap=1000)
    assert [m for m, _ in mixtures.get_mixture(name)] == ["mix_test_flan_flan", "mix_test_flan_dialog"]
    weights = dict(mixtures.get_mixture(name))
    assert weights["mix_test_flan_flan"] == pytest.approx(0.4 / 0.43)
    assert weights["mix_test_flan_dialog"] == pytest.approx(0.03 / 0.43)
    flan_rates = {f"{c}_template_0to0_{f}": min(1000, n) / 4 for c, n in SIZES.items()
                  for f in ("zsopt", "zsnoopt", "fsopt", "fsnoopt")}
    flan_total = sum(flan_rates.values())
    expected = {t: 0.4 / 0.43 * r / flan_total for t, r in flan_rates.items()}
    expected.update({f"mix_dialog_template_0to0_{f}": 0.03 / 0.43 / 2 for f in ("zsnoopt", "fsnoopt")})
    assert mixtures.flat_rates(name) == pytest.approx(expected)
    mix = seqio.get_mixture_or_task(name)
    assert {t.name: mix.get_rate(t) for t in mix.tasks} == pytest.approx(expected)
    shares = {r["task"]: r["share"] for r in mixtures.mixture_table(name)}
    assert sum(shares.values()) == pytest.approx(1.0)
    assert shares["mix_dialog_template_0to0_zsnoopt"] == pytest.approx(0.03 / 0.43 / 2)


def test_niv2_card_slots_into_the_collection_mixture():
    flanx.data.register_all()
    before = dict(mixtures.get_mixture("synth_multitask"))
    assert list(before) == ["synth_multitask_flan"] and before["synth_multitask_flan"] == pytest.approx(1.0)
    flanx.data.register_task_card(_card("mix_niv2", 200, submixture="niv2", group="held_in", options=False))
    try:
        after = dict(mixtures.get_mixture("synth_multitask"))
        assert after == pytest.approx({"synth_multitask_flan": 0.4 / 0.6, "synth_multitask_niv2": 0.2 / 0.6})
    finally:
        tasks.unregister_card("mix_niv2")
        mixtures.register_collection_mixtures()
    assert dict(mixtures.get_mixture("synth_multitask")) == pytest.approx(before)


def test_replay_mixture_rates_name_and_sampled_proportions(mix_cards):
    mixtures.register_examples_mixture("mix_test_props_src", ["mix_big"], formats=["zsnoopt"])
    name = mixtures.replay_mixture("mix_small_template_0to0_zsnoopt", "mix_test_props_src", 0.25)
    assert name == "mix_small_template_0to0_zsnoopt_replay_mix_test_props_src_r0.25"
    assert mixtures.replay_mixture("mix_small_template_0to0_zsnoopt", "mix_test_props_src", 0.25) == name
    assert mixtures.flat_rates(name) == pytest.approx({"mix_small_template_0to0_zsnoopt": 0.75,
                                                       "mix_big_template_0to0_zsnoopt": 0.25})
    it = pipeline.get_dataset(name, {"inputs": 32, "targets": 8}, batch_size=100, pack=False, seed=3)
    counts = collections.Counter()
    for _ in range(20):
        batch = next(it)
        first = batch["encoder_input_tokens"][:, 4]  # "mix_s..." vs "mix_b...": byte 4 differs
        counts.update({"small": int((first == ord("s") + 3).sum()), "big": int((first == ord("b") + 3).sum())})
    assert counts["small"] + counts["big"] == 2000
    assert abs(counts["big"] / 2000 - 0.25) < 0.04
    with pytest.raises(ValueError, match=r"ratio must be in \(0, 1\)"):
        mixtures.replay_mixture("mix_small_template_0to0_zsnoopt", "mix_test_props_src", 1.5)
    with pytest.raises(KeyError, match="did you mean"):
        mixtures.replay_mixture("mix_small_template_0to0_zsnopt", "mix_test_props_src", 0.5)


def test_dialog_and_single_task_mixtures_exist():
    flanx.data.register_all()
    assert [t for t, _ in mixtures.get_mixture("dialog_summarization")] == [
        "dialogsum_template_0to9_zsnoopt", "dialogsum_template_0to9_fsnoopt",
        "samsum_template_0to9_zsnoopt", "samsum_template_0to9_fsnoopt"]
    assert [t for t, _ in mixtures.get_mixture("synth_chat_summary_mix")] == [
        "synth_chat_summary_template_0to9_zsnoopt", "synth_chat_summary_template_0to9_fsnoopt"]
    held_in = {t for t in mixtures.flat_rates("synth_multitask")}
    assert {tasks.get_spec(t).card for t in held_in} == {"synth_chat_intent", "synth_chat_order_number",
                                                         "synth_chat_sentiment", "synth_order_total"}
    with pytest.raises(KeyError, match="did you mean: synth_multitask"):
        mixtures.get_mixture("synth_multitsk")


def _count_lines(pattern, every=None, drop=True):
    n = 0
    for path in sorted(glob.glob(pattern)):
        with open(path, encoding="utf-8") as f:
            n += sum(1 for line in f if line.strip())
    return n


@pytest.mark.needs_data
@pytest.mark.slow
def test_flan2022_heldin_shares_match_counts_from_the_files(data_root):
    flanx.data.register_all()
    d = str(data_root)
    counts = {  # training rows per card, counted here straight from the files
        # FLAN 2021 cards with local files: FLAN holds back the last 200 (CB: 50) training rows for validation
        "rte": _count_lines(f"{d}/classic_cls/rte/train.jsonl") - 200,
        "cb": _count_lines(f"{d}/classic_cls/cb/train.jsonl") - 50,
        "sst2": _count_lines(f"{d}/classic_cls/sst2/stsa.binary.train") - 200,
        "trec": _count_lines(f"{d}/classic_cls/trec/train.txt") - 200,
        "gsm8k_cot": _count_lines(f"{d}/gsm8k/train.jsonl"),
        "samsum": sum(1 for line in open(f"{d}/samsum/samsum.train.jsonl", encoding="utf-8")  # rows with a dialogue
                      if line.strip() and json.loads(line)["dialogue"].strip()),
    }
    t0_dir = f"{d}/t0_train_50k_per_template"
    groups = sorted({os.path.basename(p) for p in glob.glob(f"{t0_dir}/*.jsonl")})
    for card in [c for c in tasks.CARDS if c.startswith("t0_") and tasks.get_card(c).submixture == "t0"]:
        group = tasks.get_card(card).splits["train"]["files"][0].split("/")[-1][:-len("_*.jsonl")]
        rows = [json.loads(line) for g in groups if g.startswith(group + "_")
                for line in open(f"{t0_dir}/{g}", encoding="utf-8") if line.strip()]
        counts[card] = len(rows) - -(-len(rows) // 20)  # every 20th row is validation
    formats = {"rte": 4, "cb": 4, "sst2": 4, "trec": 4, "gsm8k_cot": 2, "samsum": 2}
    sub = {"rte": "flan", "cb": "flan", "sst2": "flan", "trec": "flan", "gsm8k_cot": "cot", "samsum": "flan"}
    for tsv in glob.glob(f"{d}/flan_cot/*_train.tsv"):  # FLAN's CoT files: direct (not GSM8K) and inverted cards
        dataset = os.path.basename(tsv)[:-len("_train.tsv")]
        for card in ([f"cot_{dataset}"] if dataset != "gsm8k" else []) + [f"cot_ii_{dataset}"]:
            counts[card], formats[card], sub[card] = _count_lines(tsv), 2, "cot"
    weights = {"flan": 0.4, "t0": 0.32, "cot": 0.05}  # niv2 and dialog have no held-in cards with data: renormalize
    per_card = {c: min(3000, n) / formats.get(c, 1) for c, n in counts.items()}
    totals = collections.Counter()
    for c, r in per_card.items():
        totals[sub.get(c, "t0")] += r * formats.get(c, 1)
    expected_card_share = {c: weights[sub.get(c, "t0")] / sum(weights.values()) * r * formats.get(c, 1)
                           / totals[sub.get(c, "t0")] for c, r in per_card.items()}
    table = mixtures.mixture_table("flan2022_heldin")
    got = collections.Counter()
    for row in table:
        card = tasks.get_spec(row["task"]).card
        got[card] += row["share"]
        assert row["examples"] == counts[card], card
    assert set(got) == set(expected_card_share)
    for card, share in expected_card_share.items():
        assert got[card] == pytest.approx(share, rel=1e-9), card
    assert "dialogsum" not in got  # the target task stays out of the held-in mixture
    assert "gsm8k" not in got  # answer-only GSM8K is not a FLAN 2021 dataset: in no submixture
    # AG News: the local files hold only its test split, so it has no training rows here.
    assert "ag_news_subset" not in got and "ag_news_subset" in tasks.CARDS
    assert np.isclose(sum(got.values()), 1.0)
