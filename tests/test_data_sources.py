"""Sources: file formats, TFDS (mock data), Hugging Face (in-memory), synthetic, and bad input."""
from __future__ import annotations

import json
import logging

import pytest

from flanx import paths
from flanx.data import sources, synthetic_rows
from flanx.data.cards import CardError, load_card
from flanx.data.sources import DataFormatError

NLI_TEMPLATES = [{"input": "{premise} => {hypothesis}?{options}", "target": "{label}"}]


def nli_card(tmp_path, kind="jsonl", files=None, **extra):
    spec = {"name": "nli_test", "source": {"type": kind, "root": str(tmp_path)},
            "splits": {"train": files or "train.jsonl"},
            "fields": {"premise": "premise", "hypothesis": "hypothesis", "label": "label"},
            "labels": {"entailment": "yes", "not_entailment": "no"}, "templates": NLI_TEMPLATES}
    spec.update(extra)
    return load_card(spec)


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


def test_jsonl_rows_fields_and_labels(tmp_path):
    write(tmp_path / "train.jsonl", '{"premise": "A", "hypothesis": "B", "label": "entailment"}\n\n'
                                    '{"premise": "C", "hypothesis": "D", "label": "not_entailment", "x": 1}\n')
    rows = sources.load_rows(nli_card(tmp_path), "train")
    assert rows == [{"premise": "A", "hypothesis": "B", "label": "yes"},
                    {"premise": "C", "hypothesis": "D", "label": "no"}]


def test_malformed_json_names_file_and_line(tmp_path):
    f = write(tmp_path / "train.jsonl", '{"premise": "A", "hypothesis": "B", "label": "entailment"}\n{"premise": \n')
    with pytest.raises(DataFormatError, match=rf"{f}:2: not valid JSON.*on_error: skip"):
        sources.load_rows(nli_card(tmp_path), "train")


def test_missing_field_names_file_line_and_field(tmp_path):
    f = write(tmp_path / "train.jsonl", '{"premise": "A", "hypothesis": "B", "label": "entailment"}\n'
                                        '{"premise": "A", "label": "entailment"}\n')
    with pytest.raises(DataFormatError, match=rf"{f}:2: missing field 'hypothesis'.*task card 'nli_test'"):
        sources.load_rows(nli_card(tmp_path), "train")


def test_unknown_label_names_file_line_field_and_known_labels(tmp_path):
    f = write(tmp_path / "train.jsonl", '{"premise": "A", "hypothesis": "B", "label": "neutral"}\n')
    with pytest.raises(DataFormatError, match=rf"{f}:1: field 'label': unknown label 'neutral'.*'entailment'"):
        sources.load_rows(nli_card(tmp_path), "train")


def test_on_error_skip_counts_and_warns(tmp_path, caplog):
    write(tmp_path / "train.jsonl", '{"premise": "A", "hypothesis": "B", "label": "entailment"}\n'
                                    'not json\n{"premise": "A", "hypothesis": "B", "label": "maybe"}\n'
                                    '{"premise": "E", "hypothesis": "F", "label": "not_entailment"}\n')
    card = nli_card(tmp_path, on_error="skip")
    flanx_logger = logging.getLogger("flanx")
    flanx_logger.addHandler(caplog.handler)
    try:
        rows = sources.load_rows(card, "train")
    finally:
        flanx_logger.removeHandler(caplog.handler)
    assert [r["premise"] for r in rows] == ["A", "E"]
    assert card.skipped["train"] == 2
    assert "skipped 2 malformed row(s), kept 2" in caplog.text and "train.jsonl:2" in caplog.text


def test_csv_with_header_multiline_cells_and_bad_column_count(tmp_path):
    write(tmp_path / "d.csv", 'Class Index,Title,Description\n3,"Fears, pension","line one\nline two"\n'
                              '4,Space,"About, rockets"\n1,Only two\n')
    card = load_card({"name": "csv_test", "source": {"type": "csv", "root": str(tmp_path)},
                      "splits": {"train": "d.csv"}, "fields": {"title": "Title", "text": "Description",
                                                              "label": "Class Index"},
                      "labels": {"1": "World", "3": "Business", "4": "Science/Tech"},
                      "templates": [{"input": "{title}: {text}", "target": "{label}"}]})
    with pytest.raises(DataFormatError, match=r"d.csv:5: expected 3 columns"):
        sources.load_rows(card, "train")
    card.on_error = "skip"
    rows = sources.load_rows(card, "train")
    assert rows == [{"title": "Fears, pension", "text": "line one\nline two", "label": "Business"},
                    {"title": "Space", "text": "About, rockets", "label": "Science/Tech"}]


def test_tsv_and_lines_formats(tmp_path):
    write(tmp_path / "d.tsv", "q\ta\nwho?\tme\n")
    card = load_card({"name": "tsv_test", "source": {"type": "tsv", "root": str(tmp_path)}, "splits": {"train": "d.tsv"},
                      "fields": {"q": "q", "a": "a"}, "templates": [{"input": "{q}", "target": "{a}"}]})
    assert sources.load_rows(card, "train") == [{"q": "who?", "a": "me"}]
    # TREC-style `COARSE:fine question` lines; a line that does not match names its line number.
    write(tmp_path / "trec.txt", "NUM:dist How far is it ?\nLOC:city What county ?\nbroken line\n")
    card = load_card({"name": "trec_test", "source": {"type": "lines", "root": str(tmp_path),
                                                      "pattern": r"(?P<coarse>[A-Z]+):(?P<fine>\S+) (?P<q>.*)"},
                      "splits": {"train": "trec.txt"}, "fields": {"q": "q", "label": "coarse"},
                      "labels": {"NUM": "number", "LOC": "location"},
                      "templates": [{"input": "{q}", "target": "{label}"}]})
    with pytest.raises(DataFormatError, match=r"trec.txt:3: line does not match"):
        sources.load_rows(card, "train")
    assert sources.load_rows(card, "train", limit=2) == [{"q": "How far is it ?", "label": "number"},
                                                         {"q": "What county ?", "label": "location"}]


def test_take_and_drop_every_make_disjoint_splits(tmp_path):
    write(tmp_path / "all.jsonl", "".join(json.dumps({"t": str(i)}) + "\n" for i in range(20)))
    card = load_card({"name": "carve_test", "source": {"type": "jsonl", "root": str(tmp_path)},
                      "splits": {"train": {"files": "all.jsonl", "drop_every": [8, 0]},
                                 "validation": {"files": "all.jsonl", "take_every": [8, 0]}},
                      "fields": {"t": "t"}, "templates": [{"input": "{t}", "target": "{t}"}]})
    train = [r["t"] for r in sources.load_rows(card, "train")]
    val = [r["t"] for r in sources.load_rows(card, "validation")]
    assert val == ["0", "8", "16"] and len(train) == 17 and not set(train) & set(val)


def test_missing_files_raise_missing_data_error(tmp_path, monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    card = load_card({"name": "rte_missing", "dataset": "rte", "source": {"type": "jsonl"},
                      "splits": {"train": "classic_cls/rte/train.jsonl"},
                      "fields": {"p": "premise"}, "templates": [{"input": "{p}", "target": "{p}"}]})
    with pytest.raises(paths.MissingDataError, match="FLANX_DATA_DIR"):
        sources.load_rows(card, "train")
    with pytest.raises(paths.MissingDataError, match="no file matches"):
        sources.load_rows(nli_card(tmp_path, files="nope/*.jsonl"), "train")


def test_row_transforms_gsm8k_t0_mmlu_and_crlf():
    g = sources.ROW_TRANSFORMS["gsm8k"]({"question": "q", "answer": "48/2 = <<48/2=24>>24 clips.\n#### 1,072"})
    assert g["rationale"] == "48/2 = 24 clips." and g["final_answer"] == "1072"
    t = sources.ROW_TRANSFORMS["t0"]({"prompt": " Is it? \n", "completion": " Business<|endoftext|>"})
    assert t["prompt"] == "Is it?" and t["completion"] == "Business"
    m = sources.ROW_TRANSFORMS["mmlu"]({"question": "q", "choice0": "a", "choice1": "b", "choice2": "c",
                                        "choice3": "d", "answer": "2", "subject": "abstract_algebra"})
    assert m["choices"] == ["a", "b", "c", "d"] and m["answer_text"] == "c" and m["subject_name"] == "abstract algebra"
    with pytest.raises(DataFormatError, match="expected 0-3"):
        sources.ROW_TRANSFORMS["mmlu"](dict(m, answer="7"))
    with pytest.raises(DataFormatError, match="no '####'"):
        sources.ROW_TRANSFORMS["gsm8k"]({"question": "q", "answer": "no marker"})


def test_samsum_style_crlf_becomes_newline(tmp_path):
    write(tmp_path / "s.jsonl", json.dumps({"dialogue": "A: hi\r\nB: yo", "summary": "greeting"}) + "\n")
    card = load_card({"name": "crlf_test", "source": {"type": "jsonl", "root": str(tmp_path)}, "splits": {"train": "s.jsonl"},
                      "fields": {"dialogue": "dialogue", "summary": "summary"},
                      "templates": [{"input": "{dialogue}", "target": "{summary}"}]})
    assert sources.load_rows(card, "train")[0]["dialogue"] == "A: hi\nB: yo"


def test_bbh_reader_attaches_cot_prompt(tmp_path):
    (tmp_path / "cot").mkdir()
    write(tmp_path / "nav.json", json.dumps({"canary": "x", "examples": [{"input": "Go?", "target": "No"}]}))
    write(tmp_path / "cot" / "nav.txt", "CANARY LINE\n-----\nDecide navigation.\n\nQ: a?\nA: Let's think. So the "
                                        "answer is Yes.\n\nQ: b?\nA: Let's think. So the answer is No.")
    card = load_card({"name": "bbh_test", "source": {"type": "bbh", "root": str(tmp_path), "cot_prompts": "cot"},
                      "splits": {"test": "*.json"},
                      "fields": {"input": "input", "target": "target", "task": "task", "ex": "cot_exemplars",
                                 "desc": "cot_description"},
                      "templates": [{"input": "{input}", "target": "{target}"}]})
    (row,) = sources.load_rows(card, "test")
    assert row["task"] == "nav" and row["desc"] == "Decide navigation."
    assert row["ex"] == ["Q: a?\nA: Let's think. So the answer is Yes.", "Q: b?\nA: Let's think. So the answer is No."]


@pytest.mark.slow  # imports TensorFlow Datasets (~10 s cold)
def test_tfds_source_with_mock_data():
    tfds = pytest.importorskip("tensorflow_datasets")
    card = load_card({"name": "tfds_rte", "source": {"type": "tfds", "name": "glue/rte"},
                      "splits": {"train": {"name": "train"}},
                      "fields": {"premise": "sentence1", "hypothesis": "sentence2", "label": "label"},
                      "labels": {"0": "yes", "1": "no"}, "templates": NLI_TEMPLATES})
    with tfds.testing.mock_data(num_examples=5):
        rows = sources.load_rows(card, "train")
    assert len(rows) == 5
    assert all(isinstance(r["premise"], str) and r["label"] in ("yes", "no") for r in rows)


def test_hf_source_in_memory_dataset():
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict({"train": datasets.Dataset.from_dict(
        {"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]})})
    card = load_card({"name": "hf_rte", "source": {"type": "hf", "dataset": dd}, "splits": {"train": {"name": "train"}},
                      "fields": {"premise": "sentence1", "hypothesis": "sentence2", "label": "label"},
                      "labels": {0: "yes", 1: "no"}, "templates": NLI_TEMPLATES})
    assert sources.load_rows(card, "train") == [{"premise": "a", "hypothesis": "c", "label": "yes"},
                                                {"premise": "b", "hypothesis": "d", "label": "no"}]


def test_synthetic_is_deterministic_short_and_balanced():
    a = synthetic_rows.generate("chat", "train", 500, seed=0)
    assert a == synthetic_rows.generate("chat", "train", 500, seed=0)
    assert a != synthetic_rows.generate("chat", "train", 500, seed=1)
    assert a[:10] != synthetic_rows.generate("chat", "validation", 10, seed=0)
    assert max(len(r["chat"].encode()) for r in a) <= 150
    assert max(len(r["summary"].encode()) for r in a) <= 48
    for r in a:  # the labels are recoverable from the chat itself
        assert r["order_number"] in r["chat"] and r["customer"] in r["chat"] and r["order_number"] in r["summary"]
        assert (r["refund"] == "yes") == (r["intent"] == "refund")
    intents = [r["intent"] for r in a]
    assert all(60 <= intents.count(i) <= 140 for i in synthetic_rows.INTENTS)
    assert 200 <= [r["sentiment"] for r in a].count("positive") <= 300
    totals = synthetic_rows.generate("order_total", "train", 200)
    assert all(int(r["price_a"]) + int(r["price_b"]) == int(r["total"]) for r in totals)
    assert len(synthetic_rows.generate("chat", "test")) == synthetic_rows.SPLIT_SIZES["test"]
    with pytest.raises(ValueError, match="unknown synthetic generator"):
        synthetic_rows.generate("nope", "train", 1)


# ----------------------------------------------------------------------------- JSON, encodings, nulls

def json_card(tmp_path, files="train.json", **source):
    return load_card({"name": "json_test", "source": {"type": "json", "root": str(tmp_path), **source},
                      "splits": {"train": files}, "fields": {"q": "q", "a": "a"},
                      "templates": [{"input": "{q}", "target": "{a}"}]})


def test_json_list_and_records_key(tmp_path):
    write(tmp_path / "train.json", '[\n  {"q": "one", "a": "1"},\n  {"q": "two",\n   "a": "2"}\n]\n')
    assert sources.load_rows(json_card(tmp_path), "train") == [{"q": "one", "a": "1"}, {"q": "two", "a": "2"}]
    write(tmp_path / "keyed.json", json.dumps({"version": 2, "meta": {"x": [1]},
                                               "data": [{"q": "three", "a": "3"}]}, indent=1))
    assert sources.load_rows(json_card(tmp_path, "keyed.json", records_key="data"), "train") == \
        [{"q": "three", "a": "3"}]
    # An object without records_key names the key that holds a list; a wrong key lists the keys.
    with pytest.raises(sources.SourceFormatError, match=r"keyed.json: a JSON object; name the key .*records_key"
                                                        r".*keys holding a list: data"):
        sources.load_rows(json_card(tmp_path, "keyed.json"), "train")
    with pytest.raises(sources.SourceFormatError, match=r"records_key 'rows' is not a key .*version, meta, data"):
        sources.load_rows(json_card(tmp_path, "keyed.json", records_key="rows"), "train")


def test_json_record_errors_name_their_line(tmp_path):
    f = write(tmp_path / "train.json", '[{"q": "one", "a": "1"},\n 7,\n {"q": "three"}]')
    with pytest.raises(DataFormatError, match=rf"{f}:2: record \[1\] is a int, expected an object"):
        sources.load_rows(json_card(tmp_path), "train")
    card = json_card(tmp_path)
    card.on_error = "skip"
    assert sources.load_rows(card, "train") == [{"q": "one", "a": "1"}] and card.skipped["train"] == 2


def test_json_list_given_to_jsonl_says_use_type_json_even_with_skip(tmp_path):
    f = write(tmp_path / "train.jsonl", json.dumps([{"premise": "A", "hypothesis": "B", "label": "entailment"}],
                                                   indent=2))
    for on_error in ("raise", "skip"):
        with pytest.raises(sources.SourceFormatError) as e:
            sources.load_rows(nli_card(tmp_path, on_error=on_error), "train")
        assert f"{f}: this is a JSON list" in str(e.value) and "use `type: json`" in str(e.value)
        assert "on_error" not in str(e.value)
    write(tmp_path / "train.jsonl", json.dumps({"data": [{"premise": "A"}]}, indent=2))
    with pytest.raises(sources.SourceFormatError, match=r"one JSON document.*`type: json` with `records_key:`"):
        sources.load_rows(nli_card(tmp_path), "train")


def test_jsonl_given_to_json_says_use_type_jsonl(tmp_path):
    write(tmp_path / "train.json", '{"q": "one", "a": "1"}\n{"q": "two", "a": "2"}\n')
    with pytest.raises(sources.SourceFormatError, match=r"train.json: this is JSON Lines .* use `type: jsonl`"):
        sources.load_rows(json_card(tmp_path), "train")
    write(tmp_path / "train.json", '[{"q": "one", "a": "1"}]\n[{"q": "two", "a": "2"}]\n')
    with pytest.raises(sources.SourceFormatError, match=r"train.json:2: not valid JSON .*Extra data"):
        sources.load_rows(json_card(tmp_path), "train")


def test_non_utf8_bytes_name_file_line_and_offset_and_skip_per_row(tmp_path):
    good, bad = b'{"premise": "A", "hypothesis": "B", "label": "entailment"}\n', \
        b'{"premise": "caf\xe9", "hypothesis": "B", "label": "entailment"}\n'
    f = tmp_path / "train.jsonl"
    f.write_bytes(good + bad + good)
    offset = len(good) + bad.index(b"\xe9")
    with pytest.raises(DataFormatError, match=rf"{f}:2: byte 0xe9 at byte offset {offset} is not valid UTF-8"):
        sources.load_rows(nli_card(tmp_path), "train")
    card = nli_card(tmp_path, on_error="skip")
    assert len(sources.load_rows(card, "train")) == 2 and card.skipped["train"] == 1
    # The same per row for csv (a quoted cell spanning lines), lines and json sources.
    (tmp_path / "d.csv").write_bytes(b'q,a\n"x\ny",1\n"bad\xff",2\nok,3\n')
    card = load_card({"name": "csv_bytes", "source": {"type": "csv", "root": str(tmp_path)}, "splits": {"train": "d.csv"},
                      "fields": {"q": "q", "a": "a"}, "templates": [{"input": "{q}", "target": "{a}"}]})
    with pytest.raises(DataFormatError, match=r"d.csv:4: byte 0xff at byte offset 16 is not valid UTF-8"):
        sources.load_rows(card, "train")
    card.on_error = "skip"
    assert sources.load_rows(card, "train") == [{"q": "x\ny", "a": "1"}, {"q": "ok", "a": "3"}]
    (tmp_path / "l.txt").write_bytes(b"1 fine\n0 caf\xc3\n")
    card = load_card({"name": "lines_bytes", "source": {"type": "lines", "root": str(tmp_path),
                                                        "pattern": r"(?P<a>\d) (?P<q>.*)"},
                      "splits": {"train": "l.txt"}, "fields": {"q": "q", "a": "a"}, "on_error": "skip",
                      "templates": [{"input": "{q}", "target": "{a}"}]})
    assert sources.load_rows(card, "train") == [{"q": "fine", "a": "1"}] and card.skipped["train"] == 1
    data = b'[{"q": "one", "a": "1"},\n {"q": "tw\x80o", "a": "2"}]'
    (tmp_path / "train.json").write_bytes(data)
    assert data.index(b"\x80") == 35
    with pytest.raises(DataFormatError, match=r"train.json:2: byte 0x80 at byte offset 35 is not valid UTF-8"):
        sources.load_rows(json_card(tmp_path), "train")


def test_null_field_is_reported_as_null_not_missing(tmp_path):
    f = write(tmp_path / "train.jsonl", '{"premise": "A", "hypothesis": null, "label": "entailment"}\n')
    with pytest.raises(DataFormatError, match=rf"{f}:1: field 'hypothesis' is null \(template field 'hypothesis'\)"):
        sources.load_rows(nli_card(tmp_path), "train")


# ----------------------------------------------------------------------------- the source registry

def test_source_types_are_registered_readers_and_users_can_add_one(tmp_path):
    assert {"jsonl", "json", "csv", "tsv", "lines", "bbh", "tfds", "hf", "synthetic"} <= set(sources.SOURCES)
    write(tmp_path / "a.kv", "q=one;a=1\nq=two;a=2\n")

    @sources.register_source("test_kv", files=True)
    def read_kv(path, card):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            yield f"{path}:{n}", dict(item.split("=") for item in line.split(card.source.get("sep", ";")))

    @sources.register_source("test_counter", files=False, needs={"count": "how many rows"})
    def read_counter(card, spec):
        for i in range(card.source["count"]):
            yield f"counter[{i}]", {"q": f"q{i}", "a": str(i)}

    try:
        card = load_card({"name": "kv_test", "source": {"type": "test_kv", "root": str(tmp_path)},
                          "splits": {"train": "*.kv"}, "fields": {"q": "q", "a": "a"},
                          "templates": [{"input": "{q}", "target": "{a}"}]})
        assert sources.load_rows(card, "train") == [{"q": "one", "a": "1"}, {"q": "two", "a": "2"}]
        spec = {"name": "count_test", "source": {"type": "test_counter", "count": 3}, "splits": {"train": {}},
                "fields": {"q": "q", "a": "a"}, "templates": [{"input": "{q}", "target": "{a}"}]}
        assert [r["a"] for r in sources.load_rows(load_card(spec), "train")] == ["0", "1", "2"]
        with pytest.raises(CardError, match=r"source.count: a `test_counter` source needs `count`: how many rows"):
            load_card(dict(spec, source={"type": "test_counter"}))
        with pytest.raises(CardError, match=r"splits.train: a `test_kv` source reads files"):
            load_card(dict(spec, source={"type": "test_kv"}))
        with pytest.raises(CardError, match=r"source.type: expected one of .*test_kv.*; got 'test_vk'; did you mean: "
                                            r"test_kv\b"):
            load_card(dict(spec, source={"type": "test_vk"}))
        with pytest.raises(ValueError, match="source type 'jsonl' is already registered"):
            sources.register_source("jsonl", files=True)(read_kv)
    finally:
        sources.SOURCES.unregister("test_kv")
        sources.SOURCES.unregister("test_counter")
