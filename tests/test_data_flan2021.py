"""FLAN's clusters and the held-out-cluster mixtures, on a small stand-in collection (no data, no model)."""
from __future__ import annotations

import pytest
import seqio

import flanx.data
from flanx import cli
from flanx.data import clusters, flan2021, mixtures, tasks

# FLAN's overlap rules (flan/task_splits.py): holding out a key also removes these keys from training.
FLAN_OVERLAPS = {"reading_comprehension": {"read_comp_and_common_sense"},
                 "common_sense": {"read_comp_and_common_sense"},
                 "read_comp_and_common_sense": {"reading_comprehension", "common_sense"},
                 "paraphrase": {"entailment"}, "entailment": {"paraphrase"}}
# Training tasks left when a paper cluster is held out (FLAN 2021's 69 tasks, after the overlap rules).
FLAN_TRAIN_TASKS = {"nli": 55, "commonsense": 63, "sentiment": 65, "paraphrase": 55, "closed_book_qa": 65,
                    "struct_to_text": 65, "translation": 61, "reading_comprehension": 61,
                    "reading_comprehension_with_commonsense": 57, "coreference": 66, "misc": 60, "summarization": 58}


def test_clusters_yaml_has_flans_keys_paper_clusters_and_overlap_rules():
    table = clusters.cluster_table()
    assert len(table.clusters) == 17 and len(table.paper_clusters) == 12
    assert [c.index for c in table.clusters.values()] == list(range(17))
    assert list(table.clusters)[:3] == ["summarization", "structure_to_text", "reading_comprehension"]
    names = clusters.collection_tasks("flan2021")
    assert len(names) == len(set(names)) == 69
    for key, cluster in table.clusters.items():
        assert set(cluster.also_removes) == FLAN_OVERLAPS.get(key, set()), key
        assert cluster.description and table.paper_clusters[cluster.paper_cluster]
    for paper, n_train in FLAN_TRAIN_TASKS.items():
        held, removed = clusters.heldout_keys(paper)
        gone = sum(len(table.clusters[k].tasks) for k in held + removed)
        assert 69 - gone == n_train, paper
    assert clusters.code_keys("nli") == ("entailment",) and clusters.code_keys("entailment") == ("entailment",)
    assert len(clusters.code_keys("misc")) == 6
    with pytest.raises(clusters.ClusterError, match=r"unknown cluster 'entailmnt'; did you mean: entailment"):
        clusters.code_keys("entailmnt")


# A stand-in collection: (cluster key, recorded train rows, answer options?)
DEMO = {"d_rte": ("entailment", 2290, True), "d_cb": ("entailment", 200, True), "d_mrpc": ("paraphrase", 3468, True),
        "d_squad": ("reading_comprehension", 30000, False), "d_record": ("read_comp_and_common_sense", 30000, True),
        "d_copa": ("common_sense", 350, True), "d_wic": ("word_disambiguation", 5228, True),
        "d_trec": ("question_classification", 5252, True), "d_gigaword": ("summarization", 30000, False)}


def _demo_card(name, key, n, options):
    card = {"name": name, "collection": "demo2021", "clusters": [key], "group": "held_in", "submixture": "flan",
            "source": {"type": "tfds", "name": "glue/wnli:2.0.0"},  # never read: no data is prepared here
            "splits": {"train": {"name": "train", "num_examples": n}, "test": {"name": "validation"}},
            "fields": {"a": "sentence1", "label": "label"},
            "templates": [{"input": f"t{i}: {{a}}{{options}}", "target": "{label}"} for i in range(10)]}
    if options:
        card["labels"] = {0: "no", 1: "yes"}
    return card


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    flanx.data.register_all()
    mp = pytest.MonkeyPatch()
    mp.setenv("FLANX_TFDS_DIR", str(tmp_path_factory.mktemp("no_tfds_data")))
    for name, (key, n, options) in DEMO.items():
        tasks.register_card(tasks.load_card(_demo_card(name, key, n, options)))
    names = flan2021.register_mixtures("demo2021")
    yield names
    for name in DEMO:
        tasks.unregister_card(name)
    mp.undo()


def _expected_rates(card_names):
    """min(3000, n) per card, split evenly over its formats (4 with options, 2 without)."""
    out = {}
    for name in card_names:
        _, n, options = DEMO[name]
        formats = ("zsopt", "zsnoopt", "fsopt", "fsnoopt") if options else ("zsnoopt", "fsnoopt")
        out.update({f"{name}_template_0to9_{f}": min(3000, n) / len(formats) for f in formats})
    return out


def test_heldout_mixtures_apply_flans_overlap_rules_with_recorded_counts(demo):
    everything = set(DEMO)
    cases = {  # held-out name -> cards left for training, computed by hand from DEMO and the rules
        "nli": everything - {"d_rte", "d_cb", "d_mrpc"},
        "entailment": everything - {"d_rte", "d_cb", "d_mrpc"},
        "paraphrase": everything - {"d_rte", "d_cb", "d_mrpc"},
        "reading_comprehension": everything - {"d_squad", "d_record"},
        "commonsense": everything - {"d_copa", "d_record"},
        "reading_comprehension_with_commonsense": everything - {"d_record", "d_squad", "d_copa"},
        "read_comp_and_common_sense": everything - {"d_record", "d_squad", "d_copa"},
        "misc": everything - {"d_wic", "d_trec"},
        "summarization": everything - {"d_gigaword"},
    }
    for cluster, train in cases.items():
        name = f"demo2021_minus_{cluster}"
        assert mixtures.flat_rates(name) == pytest.approx(_expected_rates(train)), cluster
        table = mixtures.mixture_table(name)
        assert {r["counted_from"] for r in table} == {"recorded"}  # no data here: the cards' counts
        assert sum(r["share"] for r in table) == pytest.approx(1.0)
        mix = seqio.get_mixture_or_task(name)
        assert {t.name: mix.get_rate(t) for t in mix.tasks} == pytest.approx(_expected_rates(train))
    # Clusters with no card in the demo collection get no mixture; the full one has every card.
    assert "demo2021_minus_translation" not in mixtures.MIXTURES
    assert mixtures.flat_rates("demo2021") == pytest.approx(_expected_rates(DEMO))
    assert sum(mixtures.flat_rates("demo2021").values()) == sum(min(3000, n) for _, n, _ in DEMO.values())


def test_eval_suites_score_option_tasks_and_generate_the_rest(demo):
    assert [t for t, _ in mixtures.get_mixture("demo2021_eval_nli")] == [
        "d_cb_template_0to9_zsopt_scoring", "d_rte_template_0to9_zsopt_scoring"]
    assert [t for t, _ in mixtures.get_mixture("demo2021_eval_reading_comprehension")] == [
        "d_squad_template_0to9_zsnoopt"]
    rates = dict(mixtures.get_mixture("demo2021_eval_nli"))
    assert all(r.cap is None for r in rates.values())  # uncapped
    assert flan2021.eval_tasks("nli", "demo2021") == [("d_cb_template_0to9_zsopt_scoring", "test"),
                                                      ("d_rte_template_0to9_zsopt_scoring", "test")]
    split = flan2021.heldout_split("nli", "demo2021")
    assert split == ("demo2021_minus_nli", "demo2021_eval_nli", ("d_mrpc",))
    train, evaluation, excluded = flan2021.heldout_split("commonsense", "demo2021")
    assert excluded == ("d_record",) and evaluation == "demo2021_eval_commonsense"
    with pytest.raises(clusters.ClusterError, match="did you mean: nli"):
        flan2021.heldout_split("nlii", "demo2021")
    with pytest.raises(KeyError, match="demo2021_minus_translation.*not registered"):
        flan2021.heldout_split("translation", "demo2021")


def test_mixtures_show_prints_recorded_rates_without_data(demo, capsys):
    code = cli.main(["mixtures", "show", "demo2021_minus_nli"])
    out = capsys.readouterr().out
    assert code == 0 and "removed by the overlap rules: d_mrpc" in out and "held out: d_cb, d_rte" in out
    expected = _expected_rates(set(DEMO) - {"d_rte", "d_cb", "d_mrpc"})
    total = sum(expected.values())
    printed = {}
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] in expected:
            printed[parts[0]] = (int(parts[1]), float(parts[2]), float(parts[3].rstrip("%")) / 100, parts[-1])
    assert set(printed) == set(expected)
    for task, (n, rate, share, origin) in printed.items():
        assert n == DEMO[task.split("_template")[0]][1] and origin == "recorded"
        assert rate == pytest.approx(expected[task], abs=1e-4)
        assert share == pytest.approx(expected[task] / total, abs=5e-5)


def _cards_of(mixture: str) -> set[str]:
    """The cards of a mixture's tasks, without computing rates (no data needed)."""
    out = set()
    for member, _ in mixtures.get_mixture(mixture):
        out |= _cards_of(member) if member in mixtures.MIXTURES else {tasks.get_spec(member).card}
    return out


def test_flan2022_heldin_and_synth_multitask_take_tfds_cards_only_when_prepared(demo):
    flanx.data.register_all()
    held_in = _cards_of("flan2022_heldin")
    # The demo cards are held_in/flan/t5_spm TFDS cards without prepared data: left out, and said so.
    mixtures.register_collection_mixtures()
    assert not held_in & set(DEMO)
    assert not _cards_of("flan2022_heldin") & set(DEMO)
    note = " ".join(mixtures.NOTES["flan2022_heldin"])
    assert "whose data is not prepared" in note and all(name in note for name in DEMO)
    synth = _cards_of("synth_multitask")
    assert synth == {"synth_chat_intent", "synth_chat_order_number", "synth_chat_sentiment", "synth_order_total"}
    # Once a card's TFDS data is prepared it joins the flan submixture.
    reader = mixtures.sources.SOURCES["tfds"]
    mp = pytest.MonkeyPatch()
    mp.setattr(reader, "available", lambda card: card.name == "d_rte")
    try:
        mixtures.register_collection_mixtures()
        assert _cards_of("flan2022_heldin") & set(DEMO) == {"d_rte"}
        assert "d_rte" not in " ".join(mixtures.NOTES["flan2022_heldin"])
    finally:
        mp.undo()
        mixtures.register_collection_mixtures()
    assert not _cards_of("flan2022_heldin") & set(DEMO)
