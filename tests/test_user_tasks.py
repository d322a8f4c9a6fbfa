"""A user's own task cards and mixtures from files: FLANX_TASKS_PATH, MIXTURE_OR_TASK_MODULE, mixtures.yaml."""
from __future__ import annotations

import json
import re
import sys

import gin
import pytest
import seqio
import yaml

import flanx.data
from flanx import cli, entrypoints, gin_utils
from flanx.data import card_files, mixtures, render, tasks, user_tasks
from flanx.data.cards import CardError

ROWS = [{"instruction": "Summarize the chat.", "dialogue": f"Customer: order {i} is late.\nAgent: it ships today.",
         "summary": f"Order {i} ships today."} for i in range(12)]


def _card(name: str, **extra) -> dict:
    return {"name": name, "group": "target", "vocabulary": "byte", "task_naming": "plain",
            "source": {"type": "json", "root": "."},
            "splits": {"train": {"files": "chats.json", "drop_every": [4, 0]},
                       "test": {"files": "chats.json", "take_every": [4, 0]}},
            "fields": {"instruction": "instruction", "dialogue": "dialogue", "summary": "summary"},
            "metrics": ["rouge"], "templates": [{"input": "{instruction}\n\n{dialogue}", "target": "{summary}"}],
            **extra}


def _folder(tmp_path, name: str, mixture: dict | None = None):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "chats.json").write_text(json.dumps(ROWS))
    (folder / f"{name}.yaml").write_text(yaml.safe_dump(_card(name)))
    if mixture is not None:
        (folder / "mixtures.yaml").write_text(yaml.safe_dump({"mixtures": mixture}))
    return folder


pytestmark = pytest.mark.usefixtures("clean_gin")


def test_tasks_path_folder_reaches_tasks_and_mixtures_commands(tmp_path, monkeypatch, capsys):
    folder = _folder(tmp_path, "ut_chats", {"ut_chats_plus_intent": {
        "description": "my chats and the intent task", "cards": ["ut_chats", "synth_chat_intent"], "cap": None}})
    monkeypatch.setenv("FLANX_TASKS_PATH", str(folder))

    assert cli.main(["tasks", "list", "--card", "ut_chats"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].split() == ["ut_chats", "target", "-", "zsnoopt", "byte", "train"]
    assert cli.main(["tasks", "show", "ut_chats", "--split", "test", "-n", "1"]) == 0
    out = capsys.readouterr().out
    assert "split test: 3 examples" in out  # rows 0, 4, 8 of 12
    assert f"[inputs]\n{ROWS[0]['instruction']}\n\n{ROWS[0]['dialogue']}\n[targets]\n{ROWS[0]['summary']}" in out

    assert cli.main(["mixtures", "show", "ut_chats_plus_intent"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("ut_chats", "synth_"))}
    # No cap: rates are the training rows, 9 (12 minus every 4th) and 4,000 spread over 4 formats.
    assert rows["ut_chats"][1:3] == ["9", "9.0000"]
    assert rows["synth_chat_intent_template_0to7_zsopt"][1:3] == ["4000", "1000.0000"]
    assert seqio.get_mixture_or_task("ut_chats").get_dataset  # registered in seqio for the entry points
    assert render.count_examples(tasks.get_card("ut_chats"), "train") == 9


def test_tasks_path_lists_card_files_and_folders_and_names_a_missing_entry(tmp_path, monkeypatch):
    a, b = _folder(tmp_path, "ut_a"), _folder(tmp_path, "ut_b")
    (a / "notes.txt").write_text("not a card")
    monkeypatch.setenv("FLANX_TASKS_PATH", f"{a}:{b / 'ut_b.yaml'}:")
    assert user_tasks.user_card_files() == [a / "ut_a.yaml", b / "ut_b.yaml"]
    monkeypatch.setenv("FLANX_TASKS_PATH", f"{a}:{tmp_path / 'nope'}")
    with pytest.raises(user_tasks.TasksPathError, match=r"FLANX_TASKS_PATH entry '.*nope' does not exist"):
        user_tasks.user_card_files()
    monkeypatch.setenv("FLANX_TASKS_PATH", str(a / "notes.txt"))
    with pytest.raises(user_tasks.TasksPathError, match=r"notes.txt' is not a YAML task card"):
        flanx.data.register_all()


def test_user_card_named_like_a_collection_card_needs_override(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "chats.json").write_text(json.dumps(ROWS))
    (folder / "synth_chat_refund.yaml").write_text(yaml.safe_dump(_card("synth_chat_refund")))
    monkeypatch.setenv("FLANX_TASKS_PATH", str(folder))
    assert cli.main(["tasks", "list"]) == 1  # the error boundary: one message, exit 1
    assert re.search(r"'synth_chat_refund' is already the name of task card .*tasks/synth_chat_refund.yaml; "
                     r"rename this card, or set `override: true`", capsys.readouterr().err)
    with pytest.raises(CardError, match="already the name of task card"):
        flanx.data.register_all()
    assert tasks.get_card("synth_chat_refund").file.endswith("tasks/synth_chat_refund.yaml")
    (folder / "synth_chat_refund.yaml").write_text(yaml.safe_dump(_card("synth_chat_refund", override=True)))
    assert cli.main(["tasks", "list", "--card", "synth_chat_refund"]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[0] == "synth_chat_refund"  # the user's plain task


def test_user_mixture_mistakes_name_the_file_and_mixture(tmp_path, monkeypatch):
    folder = _folder(tmp_path, "ut_mix", {"ut_bad_mix": {"cards": ["ut_mix", "synth_chat_intnet"]}})
    monkeypatch.setenv("FLANX_TASKS_PATH", str(folder))
    with pytest.raises(CardError, match=rf"mixtures file {folder / 'mixtures.yaml'}: mixtures.ut_bad_mix: "
                                        r"unknown task card 'synth_chat_intnet'; did you mean: synth_chat_intent"):
        flanx.data.register_all()
    (folder / "mixtures.yaml").write_text(yaml.safe_dump({"mixtures": {"synth_multitask": {"cards": ["ut_mix"]}}}))
    with pytest.raises(CardError, match=r"mixtures.synth_multitask: 'synth_multitask' is already a mixture \(from "
                                        r"the flanx collection\); rename it, or set `override: true`"):
        flanx.data.register_all()
    (folder / "mixtures.yaml").write_text(yaml.safe_dump({"mixtures": {"ut_ok_mix": {"cards": ["ut_mix"],
                                                                                     "formats": ["zsnoopt"]}}}))
    flanx.data.register_all()
    assert [t for t, _ in mixtures.get_mixture("ut_ok_mix")] == ["ut_mix"]


def test_mixture_or_task_module_imports_a_module_or_registers_a_folder(tmp_path, monkeypatch):
    folder = _folder(tmp_path, "ut_module_cards", {"ut_module_mix": {"cards": ["ut_module_cards"]}})
    flanx.data.import_tasks(str(folder))
    assert "ut_module_cards" in seqio.TaskRegistry.names() and "ut_module_mix" in seqio.MixtureRegistry.names()

    package = tmp_path / "pkgs"
    package.mkdir()
    other = _folder(tmp_path, "ut_py_card")
    (package / "my_flan_tasks.py").write_text(f"import flanx.data\nflanx.data.register_task_card({str(other / 'ut_py_card.yaml')!r})\n")
    monkeypatch.syspath_prepend(str(package))
    flanx.data.import_tasks("my_flan_tasks")
    assert "ut_py_card" in seqio.TaskRegistry.names()
    with pytest.raises(user_tasks.TasksPathError, match=r"MIXTURE_OR_TASK_MODULE='my_flan_taks' is neither a card "
                                                        r"file or folder .* nor an importable Python module"):
        flanx.data.import_tasks("my_flan_taks")
    sys.modules.pop("my_flan_tasks", None)


@pytest.mark.parametrize("run_gin", ["runs/pretrain.gin", "runs/finetune.gin"])
def test_run_configs_bind_mixture_or_task_module(run_gin):
    """T5X's macro is bound in base/train.gin (strict gin refuses unused macros), recorded in the operative
    config, and eval.gin / infer.gin accept it too."""
    argv = ["--gin_file=models/tiny.gin", f"--gin_file={run_gin}", "--gin.MODEL_DIR='/tmp/never'",
            "--gin.MIXTURE_OR_TASK_NAME='ut_chats'", "--gin.INITIAL_CHECKPOINT_PATH='/tmp/none'",
            "--gin.TRAIN_STEPS=10", "--gin.MIXTURE_OR_TASK_MODULE='my_tasks/'"]
    files, bindings, _ = gin_utils.split_gin_args(argv)
    gin_utils.parse_gin(files, bindings, finalize=False)
    gin_utils.prepare_macros(read=entrypoints.DIRECT_MACROS["train"])
    run = gin_utils.evaluate("flanx.train")
    assert run.data.module == "my_tasks/"
    assert "MIXTURE_OR_TASK_MODULE = 'my_tasks/'" in gin.operative_config_str()
    for command in ("eval", "infer"):
        gin_utils.reset()
        required = ["CHECKPOINT_PATH = 'ckpt'", f"{command.upper()}_OUTPUT_DIR = 'out'", "MIXTURE_OR_TASK_NAME = 'x'"]
        gin_utils.parse_gin([f"runs/{command}.gin"], ["MIXTURE_OR_TASK_MODULE = 'my_tasks/'", *required],
                            finalize=False)
        gin_utils.prepare_macros(read=entrypoints.DIRECT_MACROS[command])
        assert gin_utils.resolved_macro("MIXTURE_OR_TASK_MODULE") == "my_tasks/"


def test_card_folder_files_default_to_the_data_dir_with_a_hint(tmp_path, monkeypatch):
    folder = _folder(tmp_path, "ut_rootless")
    spec = _card("ut_rootless")
    spec["source"] = {"type": "json"}
    (folder / "ut_rootless.yaml").write_text(yaml.safe_dump(spec))
    monkeypatch.delenv("FLANX_DATA_DIR", raising=False)
    card = card_files.load_card_file(folder / "ut_rootless.yaml")[0]
    with pytest.raises(FileNotFoundError, match=r"'chats.json' is beside the card file .*ut_rootless.yaml: add "
                                                r"`root: .` to the card's `source:`"):
        render.count_examples(card, "train")


def test_user_mixtures_file_takes_a_registered_mixture_kind(tmp_path, monkeypatch):
    """`kind: flan_collection` in a user's mixtures.yaml builds a Flan 2022-style mixture with its own weights;
    a misspelt kind or submixture key is refused naming the file and key."""
    folder = _folder(tmp_path, "ut_kind", {"ut_flan_cot_dialog": {
        "kind": "flan_collection", "submixtures": {"cot": {"weight": 2.0, "cap": 50}, "dialog": {"weight": 1.0}}}})
    monkeypatch.setenv("FLANX_TASKS_PATH", str(folder))
    flanx.data.register_all()
    parts = dict(mixtures.get_mixture("ut_flan_cot_dialog"))
    assert parts == pytest.approx({"ut_flan_cot_dialog_cot": 2 / 3, "ut_flan_cot_dialog_dialog": 1 / 3})
    assert mixtures.SOURCES["ut_flan_cot_dialog"] == str(folder / "mixtures.yaml")

    bad = _folder(tmp_path, "ut_kind_bad", {"ut_flan_bad": {"kind": "flan_colection", "cards": ["ut_kind_bad"]}})
    monkeypatch.setenv("FLANX_TASKS_PATH", str(bad))
    with pytest.raises(CardError, match=rf"mixtures file {bad / 'mixtures.yaml'}: mixtures.ut_flan_bad: kind "
                                        r"'flan_colection' is not a mixture kind; known: flan2022, flan_collection"):
        flanx.data.register_all()
    (bad / "mixtures.yaml").write_text(yaml.safe_dump({"mixtures": {"ut_flan_key": {
        "kind": "flan_collection", "submixtures": {"cot": {"weigth": 1.0}}}}}))
    with pytest.raises(CardError, match=rf"mixtures file {bad / 'mixtures.yaml'}: mixtures.ut_flan_key.submixtures"
                                        r".cot: unknown key\(s\) weigth"):
        flanx.data.register_all()
    (bad / "mixtures.yaml").write_text(yaml.safe_dump({"mixtures": {"ut_flan_key": {  # leave a valid file behind
        "kind": "flan_collection", "submixtures": {"cot": {"weight": 1.0}}}}}))
    flanx.data.register_all()
