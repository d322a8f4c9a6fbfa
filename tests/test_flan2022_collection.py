"""`flan2022`, FLAN-T5's training mixture, end to end and cheaply: every task in it renders (mock TFDS rows
for the FLAN 2021 and dialog cards, an NIv2 checkout and a P3 checkout written here in their real layouts,
the real CoT files and T0 sample), and a tiny T5 (T5 vocabulary, tiny dimensions) trains a few steps on
it. No task reads more than a few rows; the training run trims the FLAN 2021 cards to a handful."""
from __future__ import annotations

import collections
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import flanx.data
from flanx import paths
from flanx.data import flan2022_mixture, mixtures, render, tasks, variants
from flanx.data.flan2022 import niv2, p3
from test_flan2021_collection import mock_tfds, words  # noqa: E402 - mock rows for any TFDS builder
from test_flan2022_niv2 import task_doc, write_checkout

TESTS = Path(__file__).resolve().parent
ROWS = 12
NIV2_TASKS = {"task001_quoref_question_generation": task_doc(instances=6),
              "task1346_glue_cola_grammatical_correctness_classification": task_doc(instances=5, positives=0)}
P3_ROWS = {
    "adversarial_qa_dbert_based_on": [{"inputs_pretokenized": f"Passage {i}.\nQuestion: who?",
                                       "targets_pretokenized": f"person {i}"} for i in range(6)],
    "qasc_is_correct_1": [{"inputs_pretokenized": f"Fact {i}. Is plant {i} green?", "answer_choices": ["Yes", "No"],
                           "targets_pretokenized": "No" if i % 2 else "Yes"} for i in range(6)],
}
SOURCES = {"flan": "Flan2021", "t0": "P3", "niv2": "NIv2", "cot": "CoT", "dialog": "Dialog"}


def write_p3(root: Path, rows: dict) -> Path:
    """A P3 checkout in its real layout: data/<subtask>/info.train.json and TFRecord shards."""
    import tensorflow as tf  # noqa: PLC0415
    for subtask, records in rows.items():
        folder = root / "data" / subtask
        folder.mkdir(parents=True)
        features = {k: {"dtype": "string", "shape": []} for k in ("inputs_pretokenized", "targets_pretokenized")}
        if "answer_choices" in records[0]:
            features["answer_choices"] = {"dtype": "string", "shape": [None]}
        (folder / "info.train.json").write_text(json.dumps({"num_shards": 1, "features": features}))
        with tf.io.TFRecordWriter(str(folder / "train.tfrecord-00000-of-00001")) as w:
            for r in records:
                feats = {k: tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()] if isinstance(v, str)
                                                                           else [c.encode() for c in v]))
                         for k, v in r.items()}
                w.write(tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString())
    return root


@pytest.fixture(scope="module")
def full_collection(tmp_path_factory):
    """The collection with NIv2 and P3 cards from checkouts written here (removed again afterwards)."""
    root = tmp_path_factory.mktemp("flan2022_sources")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(niv2.CHECKOUT_ENV, str(write_checkout(root / "natural-instructions", NIV2_TASKS)))
        mp.setenv(p3.CHECKOUT_ENV, str(write_p3(root / "P3", P3_ROWS)))
        flanx.data.register_all()
        before = set(tasks.CARDS)
        for card_file in ("niv2.yaml", "t0_sf.yaml"):
            flanx.data.register_task_card(paths.tasks_dir() / "flan2022" / card_file)
        added = sorted(set(tasks.CARDS) - before)
        try:
            yield added
        finally:
            for name in added:
                tasks.unregister_card(name)
            mixtures.register_collection_mixtures()


def _tasks_by_card() -> dict[str, list[str]]:
    out = collections.defaultdict(list)
    for task in mixtures.flat_rates("flan2022"):
        out[tasks.get_spec(task).card].append(task)
    return out


def _reads_real_files(card) -> bool:
    return card.submixture == "cot" or (card.submixture == "t0" and card.source.get("type") == "jsonl")


def _check(card, task: str, length_fn=words) -> int:
    spec = tasks.get_spec(task)
    examples = render.render_examples(card, spec, "train", length_fn, limit=ROWS)  # `limit`: nothing cached
    assert examples, f"{task}: no examples"
    for ex in examples:
        assert ex["inputs_pretokenized"].strip() and ex["targets_pretokenized"].strip(), (task, ex)
        assert ex["_template_type"] == variants.TEMPLATE_TYPES[spec.fmt]
        assert ex["_task_source"] == SOURCES[card.submixture] and ex["_task_name"]
        assert ex["_template_idx"] in spec.template_ids
    return len(examples)


@pytest.mark.slow
def test_every_task_renders_on_mock_rows(full_collection):
    plan = flan2022_mixture.PLANS["flan2022"]
    assert {s.config.name: s.weight for s in plan.submixtures} == pytest.approx(  # all five present: FLAN's
        {"flan": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05, "dialog": 0.03})
    t0 = next(s for s in plan.submixtures if s.config.name == "t0")
    assert {c.name for c in t0.cards} == {"p3_adversarial_qa_dbert_based_on", "p3_qasc_is_correct_1"}
    assert len(t0.left_out) == 21  # the pre-rendered sample steps aside for P3
    niv2_names = {c.name for s in plan.submixtures if s.config.name == "niv2" for c in s.cards}
    assert niv2_names == {"niv2_task001_quoref_question_generation",
                          "niv2_task1346_glue_cola_grammatical_correctness_classification"}
    assert tasks.get_card("niv2_task001_quoref_question_generation").metadata["task_name"] == \
        "task001_quoref_question_generation"
    rendered = set()
    for card_name, names in sorted(_tasks_by_card().items()):
        card = tasks.get_card(card_name)
        if _reads_real_files(card):
            continue
        tfds_variant = next((v for v in (card, card.alternate) if v is not None and v.source["type"] == "tfds"), None)
        with mock_tfds(tfds_variant) if tfds_variant is not None else contextlib.nullcontext():
            for task in names:
                assert _check(card, task) > 0
                rendered.add(task)
    expected = {t for c, names in _tasks_by_card().items() if not _reads_real_files(tasks.get_card(c)) for t in names}
    assert rendered == expected and len(rendered) > 3 * 71  # every flan card gives 3 or 4 distinct tasks


@pytest.mark.needs_data
@pytest.mark.slow
def test_cot_and_t0_sample_tasks_render_on_real_data(full_collection):
    from flanx.data import vocab  # noqa: PLC0415
    length = vocab.length_fn("t5_spm")
    cot = [t for c, names in _tasks_by_card().items() if tasks.get_card(c).submixture == "cot" for t in names]
    assert len(cot) >= 2 * 14  # zero-shot and few-shot of gsm8k_cot, 6 cot_*, 7 cot_ii_* (the files here)
    for task in cot:
        _check(tasks.get_card(tasks.get_spec(task).card), task, length)
    names = {e.task for s in flan2022_mixture.PLANS["flan2022"].submixtures if s.config.name == "cot"
             for fmt in s.entries.values() for e in fmt}
    assert set(cot) == names
    sample = [c for c in tasks.CARDS.values() if c.submixture == "t0" and c.source.get("type") == "jsonl"]
    assert len(sample) == 21
    for card in sample:  # the sample serves the t0 submixture when P3 is absent
        (task,) = [flan2022_mixture.format_task(card, "zsopt")]
        assert task == card.name
        _check(card, task, length)


TRAIN = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from test_flan2021_collection import MOCK_ROWS, _columns, mock_value
import flanx.data
from flanx.data import flan2022_mixture, mixtures, pipeline, tasks
from flanx.models.config import T5Config
from flanx.train import trainer
from flanx.train.config import OptimizerConfig, TrainConfig

flanx.data.register_all()
keep = set(sys.argv[2].split(","))  # a handful of FLAN 2021 cards: the run stays cheap
for card in [c for c in tasks.CARDS.values() if c.collection == "flan2021" and c.name not in keep]:
    tasks.unregister_card(card.name)
mixtures.register_collection_mixtures()
plan = flan2022_mixture.PLANS["flan2022"]
builders = {}  # TFDS builder -> the card whose mock values make usable rows
for card in tasks.CARDS.values():
    for v in (card, card.alternate):
        if v is not None and v.source.get("type") == "tfds":
            name = v.source["name"].rsplit(":", 1)[0]
            if name not in builders or len(v.mock) > len(builders[name].mock):
                builders[name] = v


def as_dataset(builder, *args, **kwargs):
    config = builder.builder_config.name if builder.builder_config else None
    card = builders.get(f"{builder.name}/{config}") or builders[builder.name]
    features = builder.info.features
    signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), features.get_tensor_info())
    rows = [{k: mock_value(f, k, i, card) for k, f in features.items()} for i in range(MOCK_ROWS)]
    try:
        return tf.data.Dataset.from_tensor_slices(_columns(rows, signature))
    except (ValueError, TypeError):
        return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=signature)


with tfds.testing.mock_data(num_examples=MOCK_ROWS, as_dataset_fn=as_dataset):
    batches = pipeline.get_dataset("flan2022", {"inputs": 256, "targets": 64}, batch_size=4, seed=0, pack=True)
    model = T5Config(vocab_size=32128, d_model=32, num_heads=2, head_dim=16, d_ff=64, num_encoder_layers=1,
                     num_decoder_layers=1, dropout_rate=0.0)
    run = TrainConfig(train_steps=3, batch_size=4, log_every=1, optimizer=OptimizerConfig(learning_rate=1e-3))
    result = trainer.train(run, model, lambda shard: batches)
print(json.dumps({"submixtures": {s.config.name: [s.weight, len(s.cards)] for s in plan.submixtures},
                  "tasks": len(mixtures.flat_rates("flan2022")), "losses": result.losses, "step": result.step}))
"""


def _small_real_data(src: Path, dst: Path) -> Path:
    """A FLANX_DATA_DIR with the first rows of the real CoT and GSM8K files (and the T5 vocabulary)."""
    (dst / "flan_cot").mkdir(parents=True)
    for name in ("aqua", "creak", "gsm8k"):
        lines = (src / "flan_cot" / f"{name}_train.tsv").read_text(encoding="utf-8").splitlines(keepends=True)
        (dst / "flan_cot" / f"{name}_train.tsv").write_text("".join(lines[:24]), encoding="utf-8")
    (dst / "gsm8k").mkdir()
    for split in ("train", "test"):
        lines = (src / "gsm8k" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines(keepends=True)
        (dst / "gsm8k" / f"{split}.jsonl").write_text("".join(lines[:24]), encoding="utf-8")
    (dst / "t5_spiece").symlink_to(src / "t5_spiece")
    return dst


@pytest.mark.needs_data
@pytest.mark.slow
def test_tiny_t5_trains_a_few_steps_on_flan2022(tmp_path, data_root):
    data = _small_real_data(data_root, tmp_path / "data")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLANX_")}
    env.update(PYTHONPATH=os.pathsep.join(sys.path), FLANX_DATA_DIR=str(data), FLANX_TFDS_DIR=str(tmp_path / "tfds"),
               FLANX_NIV2_DIR=str(write_checkout(tmp_path / "natural-instructions", NIV2_TASKS)),
               FLANX_P3_DIR=str(write_p3(tmp_path / "P3", P3_ROWS)))
    keep = "rte,anli_r1,cnn_dailymail,squad_v1,true_case,wmt16_translate_deen"
    proc = subprocess.run([sys.executable, "-c", TRAIN, str(TESTS), keep], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    subs = report["submixtures"]
    assert {s: round(w, 6) for s, (w, _) in subs.items()} == {"flan": 0.4, "t0": 0.32, "niv2": 0.2, "cot": 0.05,
                                                              "dialog": 0.03}
    # the 6 FLAN 2021 cards kept, LAMBADA and UnifiedQA science; the P3 checkout's 2 subtasks (the T0 sample steps
    # aside); the NIv2 checkout's 2 tasks; gsm8k_cot, cot_aqua, cot_creak and three cot_ii_* (the files here)
    assert {s: n for s, (_, n) in subs.items()} == {"flan": 8, "t0": 2, "niv2": 2, "cot": 6, "dialog": 4}
    assert report["step"] == 3 and sorted(map(int, report["losses"])) == [1, 2, 3]
    assert all(0 < loss < 20 for loss in report["losses"].values())  # finite, about ln(32128) at the start
