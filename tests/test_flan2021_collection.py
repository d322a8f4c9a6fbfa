"""The FLAN 2021 collection (`tasks/flan2021/`), card by card, offline and without a model.

For every card: it loads and agrees with `tasks/clusters.yaml`; its TFDS
builder constructs offline (empty data_dir, no GCS, no download); and every
template renders in every format on mock TFDS rows (`tfds.testing.mock_data`
with a generator that fills each feature with usable values: non-empty
text, valid class labels, the card's raw label values for its label column,
and the card's `mock:` values where a row transform needs more). Cards with
a `local:` block are also rendered from their files when FLANX_DATA_DIR has
them, and their recorded row counts are checked against those files.

One card: `pytest tests/test_flan2021_collection.py -k rte`.
"""
from __future__ import annotations

import dataclasses
import functools
import re

import numpy as np
import pytest

from flanx import cli, paths
from flanx.data import card_files
from flanx.data import clusters as clusters_lib
from flanx.data import render, sources
from flanx.data.cards import TaskSpec, task_specs
from flanx.data.templates import is_opt

COLLECTION = "flan2021"
FLAN_TASKS = clusters_lib.collection_tasks(COLLECTION)  # FLAN 2021's 69 task names
CLUSTER_OF = {t: c.key for c in clusters_lib.cluster_table().clusters.values() for t in c.tasks}
CARD_FILES = {p.stem: p for p in card_files.collection_card_files(COLLECTION)}
MOCK_ROWS = 12  # rows per split: enough for 3 few-shot exemplars and every class of a 12-way label
MIN_TEMPLATES = 10  # FLAN writes 10 templates per dataset


def words(text: str) -> int:  # the few-shot budget in words: no SentencePiece model needed
    return len(text.split())


@functools.lru_cache(maxsize=None)
def load(name: str, use_local: bool = False):
    (card,) = card_files.load_card_file(CARD_FILES[name], use_local=use_local)
    return card


def by_card(test):
    return pytest.mark.parametrize("name", sorted(CARD_FILES), ids=str)(test)


# ----------------------------------------------------------------------------- mock TFDS rows

_WORDS = ("river", "quiet", "market", "seven", "green", "paper", "window", "early", "travel", "garden", "silver",
          "winter", "doctor", "yellow", "bridge", "simple")


def _text(column: str, i: int) -> str:
    return f"{column.replace('_', ' ')} {_WORDS[i % 16]} {_WORDS[(3 * i + 5) % 16]} {i}."


def _scalar(feature, column: str, i: int, card):
    import tensorflow_datasets as tfds  # noqa: PLC0415
    F = tfds.features
    label_column = card.fields.get(card.label_field) if card.labels else None
    if isinstance(feature, F.ClassLabel):
        if column == label_column:  # the card's labels may name classes by text or by index
            keys = [k for k in card.labels if k.isdigit() and int(k) < feature.num_classes] or \
                   [feature.str2int(k) for k in card.labels if k in feature.names]
            return int(keys[i % len(keys)]) if keys else i % feature.num_classes
        return i % feature.num_classes
    if isinstance(feature, F.Text):
        return _text(column, i)
    kind = np.dtype(feature.get_tensor_info().np_dtype).kind
    if column == label_column and kind in "iuf":
        keys = [k for k in card.labels if re.fullmatch(r"-?\d+(\.\d+)?", k)]
        if keys:
            return type(0 if kind in "iu" else 0.0)(float(keys[i % len(keys)]))
    if kind == "b":
        return i % 2 == 0
    if kind in "iu":
        return i % 2  # a safe index into any list of two or more
    if kind == "f":
        return float(i % 6)
    return _text(column, i)


def mock_value(feature, column: str, i: int, card):
    """A usable value of a TFDS feature for mock row i of `card` (the card's `mock:` values win)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415
    F = tfds.features
    if column in card.mock:
        values = card.mock[column]
        return values[i % len(values)]
    if isinstance(feature, F.FeaturesDict):
        return {k: mock_value(v, k, i, card) for k, v in feature.items()}
    if isinstance(feature, F.Sequence):
        n = feature._length or 3  # noqa: SLF001 - TFDS keeps the fixed length here
        items = [mock_value(feature.feature, column, 7 * i + j, card) for j in range(n)]
        if isinstance(feature.feature, F.FeaturesDict):
            return {k: [item[k] for item in items] for k in feature.feature.keys()}
        return items
    return _scalar(feature, column, i, card)


def mock_tfds(card):
    """`tfds.testing.mock_data` serving MOCK_ROWS usable rows of `card` from every split."""
    import tensorflow as tf  # noqa: PLC0415
    import tensorflow_datasets as tfds  # noqa: PLC0415

    def as_dataset(builder, *args, **kwargs):
        features = builder.info.features
        signature = tf.nest.map_structure(lambda t: tf.TensorSpec(t.shape, t.dtype), features.get_tensor_info())
        rows = [{k: mock_value(f, k, i, card) for k, f in features.items()} for i in range(MOCK_ROWS)]
        try:  # columns of equal-length values: fast
            return tf.data.Dataset.from_tensor_slices(_columns(rows, signature))
        except (ValueError, TypeError):  # ragged `mock:` values
            return tf.data.Dataset.from_generator(lambda: iter(rows), output_signature=signature)

    return _MockOnce(tfds.testing.mock_data(num_examples=MOCK_ROWS, as_dataset_fn=as_dataset))


class _MockOnce:
    """The mocked `tfds.load` builds one dataset per card and serves it for every split (mock rows
    do not depend on the split), which keeps the collection test fast."""

    def __init__(self, mocked):
        self.mocked = mocked

    def __enter__(self):
        import tensorflow_datasets as tfds  # noqa: PLC0415
        self.mocked.__enter__()
        self.original, datasets = tfds.load, {}

        def load(name, **kwargs):
            if name not in datasets:
                datasets[name] = self.original(name, **kwargs)
            return datasets[name]
        tfds.load = load
        return self

    def __exit__(self, *exc):
        import tensorflow_datasets as tfds  # noqa: PLC0415
        tfds.load = self.original
        return self.mocked.__exit__(*exc)


def _columns(rows: list, signature):
    if isinstance(signature, dict):
        return {k: _columns([r[k] for r in rows], signature[k]) for k in signature}
    return np.array(rows, dtype=signature.dtype.as_numpy_dtype if signature.dtype != "string" else object)


def render_all(card, length_fn=words) -> int:
    """Render every task of `card` on every split, and every template in every format on train."""
    n = 0
    for split in card.splits:
        for spec in task_specs(card):
            if not spec.per_template:
                n += _check(card, spec, split, length_fn)
    train = "train" if "train" in card.splits else next(iter(card.splits))
    for i, template in enumerate(card.templates):
        for fmt in card.formats:
            spec = TaskSpec(f"{card.name}_check_{i}_{fmt}", card.name, (i,), fmt)
            n += _check(card, spec, train, length_fn)
            if is_opt(fmt) and not template.inverted:
                scoring = TaskSpec(f"{spec.name}_scoring", card.name, (i,), fmt, scoring=True)
                n += _check(card, scoring, train, length_fn)
    return n


def _check(card, spec, split, length_fn) -> int:
    examples = render.render_examples(card, spec, split, length_fn)
    assert examples, f"{spec.name} on {split}: no examples (a row transform dropped every mock row?)"
    for ex in examples:
        inp, tgt = ex["inputs_pretokenized"], ex["targets_pretokenized"]
        assert isinstance(inp, str) and inp.strip() and isinstance(tgt, str) and tgt.strip(), (spec.name, ex)
        tid = spec.template_ids[0]
        if len(spec.template_ids) == 1 and is_opt(spec.fmt) and not card.templates[tid].inverted:
            assert "OPTIONS:\n- " in inp, f"{spec.name}: the options block is missing"
    if spec.scoring:  # one example per option; at least one correct option per row
        rows = {ex["idx"][0] for ex in examples}
        assert rows == {ex["idx"][0] for ex in examples if ex["is_correct"]}, spec.name
    return len(examples)


# ----------------------------------------------------------------------------- per card

@by_card
def test_card_agrees_with_the_flan_facts(name):
    card = load(name)
    assert card.name == name, f"{CARD_FILES[name]}: the file name must be the card name"
    assert name in FLAN_TASKS, f"{name!r} is not a FLAN 2021 task name (tasks/clusters.yaml)"
    assert card.collection == COLLECTION
    assert card.clusters == (CLUSTER_OF[name],), f"{name}: clusters should be [{CLUSTER_OF[name]}]"
    assert len(card.templates) >= MIN_TEMPLATES
    assert card.source["type"] in ("tfds", "hf")
    assert card.splits["train"].get("num_examples"), f"{name}: record splits.train.num_examples (FLAN's count)"
    assert card.group == "held_in" and card.submixture == "flan"


@by_card
def test_tfds_builder_resolves_offline(name, tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    card = load(name)
    if card.source["type"] != "tfds":
        pytest.skip(f"{name} reads {card.source['type']}")
    spec = card.source["name"]
    assert re.fullmatch(r"[\w-]+(/[\w.-]+)?:\d+\.\d+\.\d+", spec), f"{name}: pin the version: name[/config]:X.Y.Z"
    builder = tfds.builder(spec, data_dir=str(tmp_path), try_gcs=False)
    assert str(builder.version) == spec.rsplit(":", 1)[1]
    assert not list(tmp_path.iterdir()), "constructing the builder must not download or write anything"
    unknown = set(card.mock) - set(builder.info.features.keys())
    assert not unknown, f"{name}: mock: names columns the builder does not have: {sorted(unknown)}"


@by_card
def test_every_template_and_format_renders_on_mock_rows(name):
    pytest.importorskip("tensorflow_datasets")
    card = load(name)
    if card.source["type"] != "tfds":
        pytest.skip(f"{name} reads {card.source['type']}")
    card.row_cache.clear()
    with mock_tfds(card):
        assert render_all(card) > 0


@pytest.mark.needs_data
@by_card
def test_local_files_render_and_match_recorded_counts(name):
    card = load(name)
    local = card.alternate
    if local is None or not sources.data_available(local):
        pytest.skip(f"{name}: no local block, or its files are not under {paths.DATA_DIR_ENV}")
    for split, spec in local.splits.items():
        if "num_examples" in spec:
            assert render.count_examples(local, split) == spec["num_examples"], (name, split)
        local.row_cache[split] = sources.load_rows(local, split)[:MOCK_ROWS]  # render the first rows only
    if local.fewshot.pool_split not in local.splits:  # evaluation files only: exemplars need the main source
        local = dataclasses.replace(local, formats=tuple(f for f in local.formats if f.startswith("zs")))
    vocab_free = render_all(local)
    assert vocab_free > 0


@by_card
def test_prepared_tfds_data_matches_recorded_counts(name):
    card = load(name)
    if card.source["type"] != "tfds" or not sources.data_available(card):
        pytest.skip(f"{name}: TFDS data not prepared here ({paths.TFDS_DIR_ENV})")
    from flanx.data import hub_sources  # noqa: PLC0415
    for split, spec in card.splits.items():
        if "num_examples" in spec:
            assert hub_sources.split_size(card, split) == spec["num_examples"], (name, split)


# ----------------------------------------------------------------------------- the whole collection

def test_collection_lists_all_flan2021_tasks_with_ten_templates(capsys):
    code = cli.main(["tasks", "list", "--collection", COLLECTION, "--cards"])
    out = capsys.readouterr().out
    listed = {}
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) > 4 and parts[1] == COLLECTION:
            listed[parts[0]] = int(parts[3])
    missing = sorted(set(FLAN_TASKS) - set(listed))
    assert code == 0 and not missing, f"{len(missing)} FLAN 2021 task(s) have no card in tasks/{COLLECTION}/: {missing}"
    assert set(listed) == set(FLAN_TASKS)
    few = {n: k for n, k in listed.items() if k < MIN_TEMPLATES}
    assert not few, f"cards with fewer than {MIN_TEMPLATES} templates: {few}"


# FLAN 2021's training-mixture sizes: the sum of min(3000, n) over the tasks each mixture trains on
# (flan/mixtures.py rates over flan/tasks.py split sizes). Paper clusters, then the code keys spelled otherwise.
FLAN_RATE_SUMS = {
    "nli": 152276, "commonsense": 174350, "sentiment": 176371, "paraphrase": 152276, "closed_book_qa": 179401,
    "struct_to_text": 176371, "translation": 164371, "reading_comprehension": 164371,
    "reading_comprehension_with_commonsense": 156350, "coreference": 183745, "misc": 161371, "summarization": 156712,
    "structure_to_text": 176371, "open_domain_qa": 179401, "text_formatting": 179371, "common_sense": 174350,
    "entailment": 152276, "math": 185371, "conversational_qa": 182371, "word_disambiguation": 185371,
    "linguistic_acceptability": 185371, "question_classification": 185371, "read_comp_and_common_sense": 156350,
}
FLAN_RATE_TOTAL = 188371  # all 69 tasks


@pytest.fixture(scope="module")
def registered():
    import flanx.data  # noqa: PLC0415 - seqio and TensorFlow
    flanx.data.register_all()
    from flanx.data import flan2021, mixtures  # noqa: PLC0415
    present = {c.name for c in flan2021.collection_cards()}
    missing = sorted(set(FLAN_TASKS) - present)
    assert not missing, f"the FLAN 2021 mixtures need all 69 cards; missing: {missing}"
    return mixtures


def test_flan2021_mixtures_have_flans_rates(registered):
    mixtures = registered
    assert sum(mixtures.flat_rates("flan2021").values()) == pytest.approx(FLAN_RATE_TOTAL)
    for cluster, total in FLAN_RATE_SUMS.items():
        assert sum(mixtures.flat_rates(f"flan2021_minus_{cluster}").values()) == pytest.approx(total), cluster


def test_mixtures_show_prints_heldout_nli_rates(registered, capsys):
    assert cli.main(["mixtures", "show", "flan2021_minus_nli"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if re.match(r"\w+_template_0to\d+_(zs|fs)n?o?opt ", line)]
    cards = {r[0].split("_template_")[0] for r in rows}
    assert len(cards) == 55 and not cards & set(clusters_lib.cluster_table().clusters["paraphrase"].tasks)
    assert sum(float(r[2]) for r in rows) == pytest.approx(FLAN_RATE_SUMS["nli"], abs=0.01 * len(rows))
    assert "removed by the overlap rules: glue_mrpc, glue_qqp, paws_wiki, stsb" in out
