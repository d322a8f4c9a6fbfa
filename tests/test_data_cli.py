"""`flanx tasks ...` and `flanx mixtures ...` output, checked against the registry."""
from __future__ import annotations

import re

import pytest

from flanx import cli, paths
from flanx.data import card_files
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
    card = card_files.load_card_file(paths.tasks_dir() / "synth_chat_intent.yaml")[0]
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


def _demo_tasks_dir(tmp_path, monkeypatch):
    """tasks/ with collection `demo`: two TFDS cards (no data here) and one whose local files exist."""
    import json
    import shutil

    import yaml
    tasks_dir = tmp_path / "tasks"
    (tasks_dir / "demo").mkdir(parents=True)
    shutil.copy(paths.tasks_dir() / "clusters.yaml", tasks_dir / "clusters.yaml")
    templates = [{"input": f"t{i}: {{a}} / {{b}}{{options}}", "target": "{label}"} for i in range(10)]
    base = {"vocabulary": "byte", "fields": {"a": "sentence1", "b": "sentence2", "label": "label"},
            "labels": {0: "no", 1: "yes"}, "templates": templates}
    specs = {
        "demo_rte": {"clusters": ["entailment"], "source": {"type": "tfds", "name": "super_glue/rte:1.0.2"},
                     "splits": {"train": {"name": "train[:-200]", "num_examples": 2290},
                                "test": {"name": "validation"}},
                     "fields": {"a": "premise", "b": "hypothesis", "label": "label"}},
        "demo_mrpc": {"clusters": ["paraphrase"], "source": {"type": "tfds", "name": "glue/mrpc:2.0.0"},
                      "splits": {"train": {"name": "train[:-200]", "num_examples": 3468},
                                 "test": {"name": "validation"}},
                      "local": {"source": {"type": "jsonl"}, "splits": {"train": "mrpc/train.jsonl",
                                                                        "test": "mrpc/test.jsonl"}}},
    }
    for name, spec in specs.items():
        (tasks_dir / "demo" / f"{name}.yaml").write_text(yaml.safe_dump(dict(base, name=name, **spec), sort_keys=False))
    (tmp_path / "data" / "mrpc").mkdir(parents=True)
    for split in ("train", "test"):
        rows = [{"sentence1": f"{split} s{i}", "sentence2": f"s{i}'", "label": i % 2} for i in range(4)]
        (tmp_path / "data" / "mrpc" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setattr(paths, "tasks_dir", lambda: tasks_dir)
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path / "data"))
    monkeypatch.setenv(paths.TFDS_DIR_ENV, str(tmp_path / "no_tfds"))


def test_tasks_list_by_collection_and_cluster_and_the_source_in_use(tmp_path, monkeypatch, capsys):
    _demo_tasks_dir(tmp_path, monkeypatch)
    code, out, _ = run(capsys, "tasks", "list", "--collection", "demo", "--cards")
    lines = {line.split()[0]: line for line in out.splitlines()[1:] if line.startswith("demo_")}
    assert code == 0 and set(lines) == {"demo_rte", "demo_mrpc"} and "2 task cards" in out
    assert lines["demo_rte"].split()[1:4] == ["demo", "entailment", "10"]
    assert "train=2290, test" in lines["demo_rte"] and "tfds super_glue/rte:1.0.2; data not here" in lines["demo_rte"]
    assert "local files (jsonl, under FLANX_DATA_DIR); the card's tfds source is not used" in lines["demo_mrpc"]
    for cluster in ("nli", "entailment"):  # a paper cluster or its code key
        code, out, _ = run(capsys, "tasks", "list", "--collection", "demo", "--cluster", cluster)
        names = {line.split()[0] for line in out.splitlines()[1:] if line.startswith("demo_")}
        assert code == 0 and names and all(n.startswith("demo_rte_") for n in names)
        assert "demo_rte_template_0to9_fsopt_scoring" in names
    code, _, err = run(capsys, "tasks", "list", "--cluster", "misc")
    assert code == 1 and "no tasks match" in err
    code, _, err = run(capsys, "tasks", "list", "--cluster", "paraphrse")
    assert code == 2 and "unknown cluster 'paraphrse'; did you mean: paraphrase" in err
    code, _, err = run(capsys, "tasks", "list", "--collection", "flan2020")
    assert code == 1 and "no task cards in collection 'flan2020'; collections: demo" in err
    code, out, _ = run(capsys, "tasks", "show", "demo_mrpc_template_0to9_zsopt", "--split", "test", "-n", "1")
    assert code == 0 and "source: local files (jsonl" in out and "test s0" in out
