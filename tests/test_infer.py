"""flanx.infer: prompt files (.jsonl, .json list, text) and progress over the examples decoded."""
from __future__ import annotations

import json
import logging

import jax
import numpy as np
import pytest
import seqio

from flanx import infer
from flanx.models import get_config, init_params
from flanx.predict import DecodeConfig

VOCAB = seqio.ByteVocabulary()
PROMPTS = ["Summarize: the order is late.", "Classify: I want a refund ü"]


def _ids(text, length=64):
    return [b + 3 for b in text.encode()][:length - 1] + [1]


@pytest.mark.parametrize("name, content", [
    ("prompts.json", json.dumps(PROMPTS)),
    ("prompts.json", json.dumps([{"inputs": p, "id": i} for i, p in enumerate(PROMPTS)])),
    ("prompts.jsonl", "".join(json.dumps({"inputs": p}) + "\n" for p in PROMPTS)),
    ("prompts.txt", "\n".join(PROMPTS) + "\n\n"),
])
def test_prompt_files_of_every_kind_give_the_same_examples(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    examples = infer.read_prompts(str(path), VOCAB, 64)
    assert [ex["inputs_pretokenized"] for ex in examples] == PROMPTS
    assert [list(ex["inputs"]) for ex in examples] == [_ids(p) for p in PROMPTS]


@pytest.mark.parametrize("name, content, message", [
    ("p.json", '{"inputs": "a"}\n{"inputs": "b"}\n', r"p.json: not valid JSON \(Extra data.*JSON Lines: name the file "
                                                      r"\.jsonl"),
    ("p.json", '{"prompts": ["a"]}', r"p.json: expected a JSON list of prompts .* got a JSON dict"),
    ("p.json", '["a", 3]', r"p.json: item 1: expected a JSON object with an \"inputs\" field \(or a prompt string\), "
                           r"got int 3"),
    ("p.json", '[{"text": "a"}]', r"p.json: item 0: no \"inputs\" field \(has \['text'\]\)"),
    ("p.jsonl", '["a", "b"]\n', r"p.jsonl:1: a JSON list .* named .json"),
])
def test_bad_prompt_files_say_what_to_fix(tmp_path, name, content, message):
    (tmp_path / name).write_text(content)
    with pytest.raises(ValueError, match=message):
        infer.read_prompts(str(tmp_path / name), VOCAB, 64)


@pytest.mark.slow
def test_predict_logs_progress_over_examples(caplog):
    config = get_config("tiny", num_encoder_layers=1, num_decoder_layers=1)
    params = init_params(config, jax.random.PRNGKey(0))
    examples = [{"inputs": np.asarray(_ids(f"prompt {i}"), np.int32)} for i in range(10)]
    with caplog.at_level(logging.INFO, logger="flanx"):
        records = infer.predict(params, config, examples, VOCAB, DecodeConfig(batch_size=4), {"targets": 4})
    assert len(records) == 10
    lines = [r.getMessage().split(" examples/s")[0] for r in caplog.records if r.getMessage().startswith("[infer]")]
    assert lines == ["[infer] examples 4/10 (40.0%)", "[infer] examples 8/10 (80.0%)", "[infer] examples 10/10 (100.0%)"]
