"""`flanx tasks ...` and `flanx mixtures ...` output, checked against the registry."""
from __future__ import annotations

import re

import pytest

from flanx import cli, paths
from flanx.data import cards as cards_lib
from flanx.data import mixtures, render


def run(capsys, *argv):
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_tasks_list_by_group(capsys):
    code, out, _ = run(capsys, "tasks", "list", "--group", "held_out")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:] if line.strip() and not line[0].isdigit()]
    assert "synth_chat_refund_template_0to7_zsopt" in names and "mmlu_template_0to7_fsopt_scoring" in names
    assert not any(n.startswith(("rte_", "dialogsum_", "synth_chat_intent")) for n in names)
    assert all(line.split()[1] == "held_out" for line in out.splitlines()[1:] if line.strip() and "_" in line.split()[0])
    code, _, err = run(capsys, "tasks", "list", "--group", "nope")
    assert code == 1 and "groups:" in err and "held_in" in err


def test_tasks_show_renders_with_token_counts(capsys):
    code, out, _ = run(capsys, "tasks", "show", "synth_chat_intent_template_0to7_zsopt", "-n", "2", "--split", "validation")
    assert code == 0
    # The CLI reads the card files directly; render the same task from a freshly loaded card.
    card = cards_lib.load_card_file(paths.tasks_dir() / "synth_chat_intent.yaml")[0]
    spec = [s for s in cards_lib.task_specs(card) if s.name == "synth_chat_intent_template_0to7_zsopt"][0]
    expected = render.render_examples(card, spec, "validation")[:2]
    blocks = out.split("--- example ")[1:]
    assert len(blocks) == 2 and "split validation: 200 examples; format zsopt" in out
    for block, ex in zip(blocks, expected):
        n_in, n_tgt = map(int, re.search(r"inputs (\d+) tokens, targets (\d+) tokens", block).groups())
        assert n_in == len(ex["inputs_pretokenized"].encode()) + 1 and n_tgt == len(ex["targets_pretokenized"].encode()) + 1
        assert f"[inputs]\n{ex['inputs_pretokenized']}\n[targets]\n{ex['targets_pretokenized']}" in block


def test_unknown_task_lists_close_matches(capsys):
    code, _, err = run(capsys, "tasks", "show", "synth_chat_intnet_template_0to7_zsopt")
    assert code == 2 and "did you mean: synth_chat_intent_template_0to7_zsopt" in err.lower()


def test_mixtures_show_prints_the_rate_rule_shares(capsys):
    code, out, _ = run(capsys, "mixtures", "show", "synth_multitask")
    assert code == 0 and "submixture synth_multitask_flan: weight 1.0000" in out
    rows = {r["task"]: r for r in mixtures.mixture_table("synth_multitask")}
    printed = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in rows:
            printed[parts[0]] = (int(parts[1]), float(parts[3].rstrip("%")) / 100, float(parts[4]))
    assert set(printed) == set(rows) and len(rows) == 4
    # Independently: 4 cards x 4000 rows, cap 3000 for all, one zero-shot format each -> equal shares.
    assert {t.rsplit("_", 1)[1] for t in printed} == {"zsopt", "zsnoopt"}
    assert [t for t in printed if t.endswith("zsopt")] == [t for t in printed if "intent" in t or "sentiment" in t]
    for task, (n, share, per_epoch) in printed.items():
        assert n == 4000 and share == pytest.approx(0.25, abs=5e-5) and per_epoch == pytest.approx(4000, abs=0.5)
    code, _, err = run(capsys, "mixtures", "show", "synth_multitsk")
    assert code == 2 and "synth_multitask" in err
    code, out, _ = run(capsys, "mixtures", "list")
    assert code == 0 and "flan2022_heldin" in out and "dialog_summarization" in out
