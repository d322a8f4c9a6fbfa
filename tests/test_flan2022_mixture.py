"""The Flan 2022 collection mixture (`kind: flan_collection`, `flanx.data.flan2022_mixture`): FLAN's
weights, caps, format shares and inversion rate as seqio computes them, the P3-over-sample preference,
config mistakes named by file and key, and `flanx mixtures show flan2022 --tree` without any data."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
import seqio

import flanx.data
from flanx.data import flan2022_mixture, mixture_tree, mixtures, tasks
from flanx.data.flan2022_mixture import MixtureConfigError, parse_config

GROUP = "f22test"
SIZES = {"f22_opt": 5000, "f22_plain": 400, "f22_t0_synth": 300, "f22_t0_hf": 50, "f22_cot": 900, "f22_cot_ii": 700}
# FLAN's defaults (flan/v2 run_example.py, mixtures.py): weight, cap per task and format, zero-shot, options
FLAN = {"flan": (0.4, 30000), "t0": (0.32, 20000), "niv2": (0.2, 5000), "cot": (0.05, 100000), "dialog": (0.03, 200000)}


def _card(name, submixture, options=True, inverted=False, hf=False):
    size = SIZES[name]
    spec = {"name": name, "group": GROUP, "submixture": submixture, "vocabulary": "byte",
            "source": {"type": "synthetic", "generator": "order_total"},
            "splits": {"train": {"size": size}, "validation": {"size": 4}},
            "fields": {"a": "price_a", "b": "price_b", "total": "total"},
            "templates": [{"input": f"{name} {{a}}+{{b}}", "target": "{total}", "inverted": inverted}] * 8}
    if hf:
        rows = [{"price_a": "1", "price_b": "2", "total": "3"}] * size
        spec.update(source={"type": "hf", "dataset": {"train": rows, "validation": rows[:4]}},
                    splits={"train": {"name": "train"}, "validation": {"name": "validation"}})
    if options:
        spec.update(options=[str(i) for i in range(2, 19)], answer_field="total")
    return spec


CONFIG = {"kind": "flan_collection", "vocabulary": "byte", "group": GROUP, "description": "test",
          "submixtures": {"flan": {"weight": 0.4, "cap": 1000, "zero_shot": 0.5, "options": 0.5},
                          "t0": {"weight": 0.32, "cap": 20000, "zero_shot": 0.5, "options": 0.5,
                                 "prefer_source": "synthetic"},
                          "niv2": {"weight": 0.2, "cap": 5000, "zero_shot": 0.5, "options": 1.0},
                          "cot": {"weight": 0.05, "cap": 100000, "zero_shot": 0.5, "options": 1.0, "inversion": 0.3}}}


@pytest.fixture(scope="module")
def collection():
    flanx.data.register_all()
    specs = [_card("f22_opt", "flan"), _card("f22_plain", "flan", options=False),
             _card("f22_t0_synth", "t0", options=False), _card("f22_t0_hf", "t0", options=False, hf=True),
             _card("f22_cot", "cot", options=False), _card("f22_cot_ii", "cot", options=False, inverted=True)]
    for spec in specs:
        flanx.data.register_task_card(spec, refresh_mixtures=False)
    name = flan2022_mixture.register(parse_config("f22_mix", CONFIG, "test.yaml: mixtures.f22_mix"))
    yield name
    for spec in specs:
        tasks.unregister_card(spec["name"])


def test_rates_follow_flans_rules_and_seqio_agrees(collection):
    # Independently: weights renormalized over flan, t0, cot (no niv2 cards); FLAN's four formats 1:1:1:1 for
    # flan/t0 (cards without options serve zsopt/fsopt with their no-options tasks), 1:1 for cot; inside a
    # format, rate min(cap, n) per task; cot's inverted card weighs 0.3 against 1 for the direct one.
    w = {"flan": 0.4 / 0.77, "t0": 0.32 / 0.77, "cot": 0.05 / 0.77}
    expected = {}

    def add(task, share):
        expected[task] = expected.get(task, 0.0) + share

    flan_rates = {"f22_opt": min(1000, 5000), "f22_plain": min(1000, 400)}
    for fmt in ("zsopt", "fsopt", "zsnoopt", "fsnoopt"):
        for card, rate in flan_rates.items():
            own = fmt if card == "f22_opt" else fmt.replace("opt", "noopt").replace("nonoopt", "noopt")
            task = f"{card}_template_0to7_{own}" + ("_flan2022" if own != "zsnoopt" else "")
            add(task, w["flan"] * 0.25 * rate / sum(flan_rates.values()))
    for fmt in ("zsnoopt", "fsnoopt"):  # only the synthetic t0 card: prefer_source leaves the hf card out
        add(f"f22_t0_synth_template_0to7_{fmt}" + ("_flan2022" if fmt == "fsnoopt" else ""), w["t0"] * 0.5)
        add(f"f22_cot_template_0to7_{fmt}" + ("_flan2022" if fmt == "fsnoopt" else ""), w["cot"] * 0.5 / 1.3)
        add(f"f22_cot_ii_template_0to7_{fmt}" + ("_flan2022" if fmt == "fsnoopt" else ""), w["cot"] * 0.5 * 0.3 / 1.3)
    got = mixtures.flat_rates(collection)
    assert got == pytest.approx(expected)
    mix = seqio.get_mixture_or_task(collection)
    assert {t.name: mix.get_rate(t) for t in mix.tasks} == pytest.approx(expected)
    assert dict(mixtures.get_mixture(collection)) == pytest.approx({f"f22_mix_{s}": v for s, v in w.items()})
    plan = flan2022_mixture.PLANS[collection]
    assert plan.submixtures[1].left_out == ["f22_t0_hf"]
    assert any(n.startswith("niv2: no f22test task cards") for n in plan.notes)
    assert any("f22_t0_hf" in n for n in mixtures.NOTES[collection])


def test_tree_lists_submixtures_cards_and_formats_with_shares(collection):
    lines = mixture_tree.tree_lines(collection)
    text = "\n".join(lines)
    assert re.search(r"^flan  weight 0\.4 \(here 0\.5195\)  cap 1,000  formats zsopt 0\.25 fsopt 0\.25 "
                     r"zsnoopt 0\.25 fsnoopt 0\.25  2 cards$", text, re.M)
    assert re.search(r"^cot  weight 0\.05 .* inversion 0\.3 \(inverted cards 23\.1%\)  2 cards$", text, re.M)
    assert re.search(r"^niv2  weight 0\.2 \(here 0\.0000\).*0 cards$", text, re.M)
    # the card lines' shares add up to 100%, and each card's formats add up to the card
    cards = [(float(m.group(2)), i) for i, line in enumerate(lines)
             for m in [re.match(r"^  (\S+)  n [\d,]+ (?:data|recorded)  rate [\d,]+  share ([\d.]+)%", line)] if m]
    assert sum(s for s, _ in cards) == pytest.approx(100.0, abs=0.01)
    for share, i in cards:
        formats = []
        for line in lines[i + 1:]:
            m = re.match(r"^    \S+ +\S+ +share ([\d.]+)%$", line)
            if not m:
                break
            formats.append(float(m.group(1)))
        assert sum(formats) == pytest.approx(share, abs=0.01)
    assert "f22_opt  n 5,000 data  rate 1,000" in text and "f22_cot_ii  n 700 data  rate 700" in text
    assert "inverted" in next(line for line in lines if line.startswith("  f22_cot_ii"))


def test_the_registered_flan2022_mixture_has_flans_weights_and_caps():
    flanx.data.register_all()
    plan = flan2022_mixture.PLANS["flan2022"]
    assert {s.config.name: (s.config.weight, s.config.cap) for s in plan.submixtures} == FLAN
    shares = {s.config.name: s.config.format_shares() for s in plan.submixtures}
    assert shares["flan"] == shares["t0"] == {"zsopt": 0.25, "fsopt": 0.25, "zsnoopt": 0.25, "fsnoopt": 0.25}
    assert shares["niv2"] == shares["cot"] == shares["dialog"] == {"zsopt": 0.5, "fsopt": 0.5}
    assert {s.config.name: s.config.inversion for s in plan.submixtures} == \
        {"flan": None, "t0": None, "niv2": None, "cot": 0.3, "dialog": 0.3}
    flan = next(s for s in plan.submixtures if s.config.name == "flan")
    # FLAN's 71: the 69 FLAN 2021 tasks, LAMBADA and UnifiedQA's science questions
    assert {c.name for c in flan.cards} >= {"rte", "natural_questions", "samsum", "lambada", "unified_qa_science_inst"}
    assert len(flan.cards) == 71
    dialog = next(s for s in plan.submixtures if s.config.name == "dialog")
    assert {e.task for e in dialog.entries["zsopt"] if e.inverted} == \
        {"wiki_dialog_ii_template_0to9_zsnoopt", "qrecc_ii_template_0to9_zsnoopt"}
    rates = mixtures.flat_rates("flan2022")
    for sub in plan.submixtures:  # no task's rate inside its format exceeds the submixture's cap
        for fmt, entries in sub.entries.items():
            assert all(mixture_tree._rate(sub, e) <= sub.config.cap for e in entries)  # noqa: SLF001
    assert sum(rates.values()) == pytest.approx(1.0)


@pytest.mark.parametrize("change,key,message", [
    ({"submixtures": {"cot": {"weight": 0.05, "inversion": "x"}}}, "submixtures.cot: inversion",
     "expected a number >= 0, got 'x'"),
    ({"submixtures": {"flan": {"weight": 0.4, "zero_shot": 1.5}}}, "submixtures.flan: zero_shot", "in [0, 1]"),
    ({"submixtures": {"flan": {"weight": 0.4, "cap": -3}}}, "submixtures.flan.cap", "positive number"),
    ({"submixtures": {"flna": {"weight": 0.4}}}, "submixtures.flna", "unknown submixture 'flna'"),
    ({"submixtures": {"flan": {"cap": 10}}}, "submixtures.flan.weight", "required"),
    ({"submixtures": {"flan": {"weight": 0.4, "cpa": 10}}}, "submixtures.flan", "unknown key(s) cpa"),
    ({"submixtures": {"flan": {"weight": 0}}}, "submixtures", "every weight is 0"),
    ({"vocabulary": "bytes"}, "vocabulary", "'bytes' is not one of"),
    ({"weights": {}}, "mixtures.m", "unknown key(s) weights"),
])
def test_config_mistakes_name_the_file_and_key(change, key, message):
    raw = dict(CONFIG, **change)
    with pytest.raises(MixtureConfigError) as e:
        parse_config("m", raw, "tasks/mixtures.yaml: mixtures.m")
    msg = str(e.value)
    assert msg.startswith("tasks/mixtures.yaml: mixtures.m") and key in msg and message in msg


def test_a_bad_entry_is_not_skipped_when_registering():
    with pytest.raises(MixtureConfigError, match="mixtures.bad.submixtures.cot: unknown key"):
        mixtures.MIXTURE_KINDS["flan_collection"]("bad", dict(CONFIG, submixtures={"cot": {"weight": 1, "x": 1}}),
                                                 "mixtures.yaml: mixtures.bad")


@pytest.mark.slow
def test_tree_without_any_data(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANX_")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), FLANX_TFDS_DIR=str(tmp_path / "tfds"))
    proc = subprocess.run([sys.executable, "-m", "flanx.cli", "mixtures", "show", "flan2022", "--tree"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    for sub, (weight, cap) in FLAN.items():
        assert re.search(rf"^{sub}  weight {weight:g} \(here [\d.]+\)  cap {cap:,} ", out, re.M), sub
    assert re.search(r"^niv2 .*0 cards\n  no task cards here: NIv2 needs", out, re.M)
    assert "FLAN recorded 1,654 tasks (5,163,933 rows" in out
    counted = re.findall(r"^  \S+  n [\d,]+ (data|recorded)", out, re.M)
    assert counted and set(counted) == {"recorded"}  # nothing is here to count
    assert re.search(r"^  wiki_dialog  n 11,264,000 recorded  rate 200,000  share", out, re.M)  # capped at 200k
    assert re.search(r"^  qrecc  n 10,170 recorded", out, re.M)
