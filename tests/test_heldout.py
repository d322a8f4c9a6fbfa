"""FLAN's held-out-cluster experiment (`flanx study heldout-cluster`): its config, its errors, and a run
end to end on TFDS mock rows with a tiny model (CLI, files, report numbers, resume)."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import result_line, run_python, subprocess_env, write_script

from flanx import paths
from flanx.data.clusters import ClusterError
from flanx.experiments import cli as study_cli
from flanx.experiments import heldout
from flanx.experiments.heldout import HeldoutConfig

TESTS = Path(__file__).resolve().parent
HELDOUT_GINS = sorted((paths.configs_dir() / "experiments").glob("heldout_*.gin"))


@pytest.mark.parametrize("gin_file", HELDOUT_GINS, ids=lambda p: p.name)
def test_heldout_configs_build_a_heldout_config(gin_file, clean_gin):
    cfg = study_cli.load_study_config([str(gin_file)], [], "HeldoutConfig")
    assert isinstance(cfg, HeldoutConfig) and cfg.cluster == "nli" and cfg.steps > 0
    assert cfg.model_config().vocab_size == 32128  # the FLAN 2021 cards use the T5 vocabulary
    other = study_cli.load_study_config([str(gin_file)], ["flanx.HeldoutConfig.cluster = 'commonsense'"],
                                        "HeldoutConfig")
    assert other.cluster == "commonsense"


def test_heldout_config_is_strict(clean_gin):
    with pytest.raises(ValueError, match=r"named 'step'; did you mean: steps\b"):
        study_cli.load_study_config(["experiments/heldout_nli.gin"], ["flanx.HeldoutConfig.step = 3"],
                                    "HeldoutConfig")
    with pytest.raises(ValueError, match="distinct seeds"):
        HeldoutConfig(seeds=(0, 0))
    with pytest.raises(ValueError, match="base_steps >= 1"):
        HeldoutConfig(base_mixture="flan2021", base_steps=0)
    assert study_cli.seeds_binding("2", "HeldoutConfig") == "flanx.HeldoutConfig.seeds = (0, 1)"


def test_unknown_cluster_names_close_matches():
    with pytest.raises(ClusterError, match=r"unknown cluster 'nlii'; did you mean: nli\?"):
        heldout.plan(HeldoutConfig(cluster="nlii"))


def test_datasets_off_their_side_are_refused_with_the_side_named():
    with pytest.raises(ValueError, match=r"train_datasets: 'rte' is not on the training side of held-out "
                                         r"cluster 'nli'.*Cards there: .*\btrec\b"):
        heldout.plan(HeldoutConfig(cluster="nli", train_datasets=("rte",)))
    # paraphrase overlaps NLI: FLAN removes it from training when NLI is held out
    with pytest.raises(ValueError, match="'glue_qqp' is not on the training side"):
        heldout.plan(HeldoutConfig(cluster="nli", train_datasets=("glue_qqp",)))
    with pytest.raises(ValueError, match=r"eval_datasets: 'rtee' is not on the held-out cluster 'nli'; "
                                         r"close matches: rte"):
        heldout.plan(HeldoutConfig(cluster="nli", eval_datasets=("rtee",)))


def test_a_cluster_without_readable_data_is_refused():
    # ANLI has no local files and no prepared TFDS data here: nothing of the chosen cluster to evaluate
    with pytest.raises(ValueError, match=r"held-out cluster 'nli' has no evaluable data: none of anli_r1, .*"
                                         r"flanx data prepare"):
        heldout.plan(HeldoutConfig(cluster="nli", eval_datasets=("anli_r1",), only_available_data=True))


def test_plan_follows_flans_split_and_restricts_the_mixture_with_flans_rates():
    from flanx.data import flan2021, mixtures

    full = heldout.plan(HeldoutConfig(cluster="nli"))
    assert full.train_mixture == "flan2021_minus_nli" and not full.dropped
    assert dict(flan2021.eval_tasks("nli")) == full.eval_tasks
    assert set(full.excluded) == {"glue_mrpc", "glue_qqp", "paws_wiki", "stsb"}
    small = heldout.plan(HeldoutConfig(cluster="nli", train_datasets=("trec", "cola"), eval_datasets=("cb",),
                                       eval_split_overrides={"cb": "validation"}))
    assert small.train_datasets == ("cola", "trec") and small.eval_tasks == {"cb_template_0to9_zsopt_scoring":
                                                                             "validation"}
    rates = mixtures.flat_rates(small.train_mixture)
    assert {t.split("_template")[0] for t in rates} == {"cola", "trec"}
    for card in ("cola", "trec"):  # min(3000, n) per card, split over its formats; the same as flan2021_minus_nli
        mine = {t: r for t, r in rates.items() if t.startswith(card + "_template")}
        n = mixtures.num_train_examples(next(iter(mine)))
        assert sum(mine.values()) == pytest.approx(min(3000, n))
        assert mine == {t: r for t, r in mixtures.flat_rates("flan2021_minus_nli").items() if t in mine}


@pytest.mark.needs_data
def test_small_config_trains_on_the_local_cards_and_evaluates_rte_and_cb(data_root, clean_gin):
    cfg = study_cli.load_study_config(["experiments/heldout_nli_small.gin"], [], "HeldoutConfig")
    p = heldout.plan(cfg)
    assert p.train_datasets == ("samsum", "sst2", "trec")   # the training side's cards with local train files
    assert p.eval_tasks == {"cb_template_0to9_zsopt_scoring": "test", "rte_template_0to9_zsopt_scoring": "test"}
    assert p.dropped["ag_news_subset"] == "no training data here"  # AG News: a test file only
    assert p.dropped["anli_r1"] == "no test data here"


@pytest.mark.needs_data
def test_majority_baseline_counts_the_labelled_dev_files(data_root):
    from flanx.experiments.evaluation import EvalSuite
    from flanx.predict import DecodeConfig

    suite = EvalSuite({"rte_template_0to9_zsopt_scoring": "test", "cb_template_0to9_zsopt_scoring": "test"},
                      {"inputs": 256, "targets": 16}, DecodeConfig())
    for task, folder in (("rte_template_0to9_zsopt_scoring", "rte"), ("cb_template_0to9_zsopt_scoring", "cb")):
        labels = [json.loads(line)["label"] for line in (data_root / "classic_cls" / folder / "val.jsonl").open()]
        assert suite.majority(task) == pytest.approx(max(labels.count(x) for x in set(labels)) / len(labels))


# ----------------------------------------------------------------------------- end to end on mock rows

DRIVER = r"""
import json, os, sys
sys.path.insert(0, sys.argv[1])
import sentencepiece as spm
import tensorflow_datasets as tfds
from test_flan2021_collection import MOCK_ROWS, _text, mock_dataset

out = sys.argv[2]
# A small SentencePiece model stands in for the T5 vocabulary (absent without data): 250 pieces + 100 extra ids.
corpus = os.path.join(out, "corpus.txt")
with open(corpus, "w") as f:
    f.write("\n".join(_text(c, i) for c in ("premise", "hypothesis", "question", "sentence", "yes no maybe")
                      for i in range(200)))
spm.SentencePieceTrainer.train(input=corpus, model_prefix=os.path.join(out, "spm"), vocab_size=250,
                               hard_vocab_limit=False, pad_id=0, eos_id=1, unk_id=2, bos_id=-1)
os.environ["FLANX_SPM_PATH"] = os.path.join(out, "spm.model")

import flanx.data
from flanx.data import tasks
from flanx.experiments import cli

flanx.data.register_all()
builders = {c.source["name"].rsplit(":", 1)[0]: c for c in map(tasks.get_card, ("rte", "cb", "trec", "sst2"))}


def as_dataset(builder, *args, **kwargs):  # each builder serves mock rows of its card
    config = builder.builder_config.name if builder.builder_config else None
    return mock_dataset(builder, builders.get(f"{builder.name}/{config}") or builders[builder.name])


argv = ["heldout-cluster", "--gin_file=experiments/heldout_nli_small.gin", "--out_dir", os.path.join(out, "study"),
        "--seeds", "0,1", "--gin.flanx.T5Config.vocab_size=384", "--gin.flanx.HeldoutConfig.only_available_data=False",
        "--gin.flanx.HeldoutConfig.train_datasets=('trec', 'sst2')",
        "--gin.flanx.HeldoutConfig.eval_datasets=('rte', 'cb')",
        "--gin.flanx.HeldoutConfig.steps=3", "--gin.flanx.HeldoutConfig.batch_size=4",
        "--gin.flanx.HeldoutConfig.task_feature_lengths={'inputs': 128, 'targets': 16}",
        "--gin.flanx.HeldoutConfig.bootstrap_samples=200"]
with tfds.testing.mock_data(num_examples=MOCK_ROWS, as_dataset_fn=as_dataset):
    first = cli.main(argv)
    evals = os.path.join(out, "study", "evals")
    stamps = {os.path.relpath(os.path.join(r, p), evals): os.stat(os.path.join(r, p)).st_mtime_ns
              for r, _, fs in os.walk(evals) for p in fs}
    second = cli.main(argv)   # resumes: every stage is done
print("RESULT " + json.dumps({"rc": [first, second], "stamps": stamps}))
"""


@pytest.fixture(scope="module")
def mock_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("heldout")
    env = subprocess_env()
    env.pop(paths.DATA_DIR_ENV, None)  # the cards read TFDS (mocked), not local files
    proc = run_python(write_script(out, DRIVER), TESTS, out, env=env, timeout=600, cwd=TESTS.parent)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out / "study", result_line(proc.stdout), proc.stdout + proc.stderr


def _cell(text: str) -> tuple[float, float | None]:
    m = re.match(r"^(-?\d+\.\d{4})(?: ± (-?\d+\.\d{4}))? \[", text)
    assert m, text
    return float(m.group(1)), (float(m.group(2)) if m.group(2) else None)


@pytest.mark.slow
def test_heldout_cluster_runs_end_to_end_and_resumes(mock_run):
    study, result, log = mock_run
    assert result["rc"] == [0, 0]
    evals = {p.relative_to(study / "evals").as_posix(): json.loads(p.read_text())
             for p in sorted((study / "evals").glob("*/seed*.json"))}
    # the base is evaluated once; instruction tuning runs once per seed, for the configured steps
    assert sorted(evals) == ["base/seed0.json", "instruction_tuned/seed0.json", "instruction_tuned/seed1.json"]
    for seed in (0, 1):
        body = evals[f"instruction_tuned/seed{seed}.json"]
        assert body["steps"] == 3 and body["train_loss"][-1][0] == 3 and body["arm"] == "instruction_tuned"
    tasks = ["cb_template_0to9_zsopt_scoring", "rte_template_0to9_zsopt_scoring"]
    assert all(sorted(b["tasks"]) == tasks for b in evals.values())
    assert all(b["tasks"][t]["split"] == "test" for b in evals.values() for t in tasks)
    for name in ("report.md", "results.json", "per_task_scores.png", "invocations.json", "study_config.json"):
        assert (study / name).is_file(), name
    # resuming skipped every finished stage and rewrote no evaluation file
    assert log.count("already evaluated, skipping") == 2
    assert {p: os.stat(study / "evals" / p).st_mtime_ns for p in evals} == result["stamps"]
    assert len(json.loads((study / "invocations.json").read_text())) == 2
    assert not (study / "runs" / "base").exists()  # a fresh-weights base is not trained

    # every number of the report, recomputed from the evaluation files
    md = (study / "report.md").read_text()
    assert md.startswith("# Held-out-cluster experiment: heldout_nli_small")
    assert "trec" in md and "sst2" in md and "glue_qqp" in md  # what trained, what the overlap rules removed
    majority = re.search(r"Majority-class baseline .*?: `cb_template_0to9_zsopt_scoring` (\d\.\d{4}), "
                         r"`rte_template_0to9_zsopt_scoring` (\d\.\d{4})\.", md)
    assert majority and all(0.3 < float(v) <= 1.0 for v in majority.groups())
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in md.splitlines()
            if line.startswith("| ") and "_scoring" in line]
    seen = set()
    for task, group, metric, _chance, n, variant, value in rows:
        per_seed = [np.mean(b["tasks"][task]["per_example"][metric]) for k, b in evals.items()
                    if k.startswith(variant + "/")]
        assert int(n) == len(evals["base/seed0.json"]["tasks"][task]["per_example"][metric]) == 12
        mean, std = _cell(value)
        assert mean == pytest.approx(np.mean(per_seed), abs=6e-5)
        if len(per_seed) > 1:
            assert std == pytest.approx(np.std(per_seed, ddof=1), abs=6e-5)
        seen.add((task, variant))
    assert seen == {(t, v) for t in tasks for v in ("base", "instruction_tuned")}
    section = md.split("## Summary", 1)[1].split("\n## ", 1)[0]
    summary = {r[0]: r for r in ([c.strip() for c in line.strip("|").split("|")] for line in section.splitlines()
                                 if line.startswith("| base |") or line.startswith("| instruction_tuned |"))}
    assert sorted(summary) == ["base", "instruction_tuned"]
    for variant, row in summary.items():
        per_task = [[np.mean(b["tasks"][t]["per_example"]["rank_accuracy"]) for t in tasks]
                    for k, b in evals.items() if k.startswith(variant + "/")]
        assert _cell(row[3])[0] == pytest.approx(np.mean(per_task), abs=6e-5)   # held_out_mean
    base_mean = np.mean([np.mean(evals["base/seed0.json"]["tasks"][t]["per_example"]["rank_accuracy"])
                         for t in tasks])
    tuned_mean, tuned_forgetting = _cell(summary["instruction_tuned"][3])[0], _cell(summary["instruction_tuned"][4])[0]
    assert tuned_forgetting == pytest.approx(base_mean - tuned_mean, abs=2e-4)  # forgetting = base - tuned
