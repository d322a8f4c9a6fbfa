"""Inference: decode a task's examples (or your own prompts) and write JSONL.

    python -m flanx.infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=... \\
        --gin.MIXTURE_OR_TASK_NAME=dialogsum_template_0to9_zsnoopt --gin.INFER_OUTPUT_DIR=out/

writes `INFER_OUTPUT_DIR/<task>-<split>.jsonl`, one line per example:

    {"inputs": "...", "prediction": "...", "targets": "...", "score": -12.3}

`targets` appears for task examples, `score` (the model's log-likelihood of
its prediction, summed over tokens incl. EOS) with `WITH_SCORES = True`.
With `INFER_INPUT_FILE` the prompts come from that file instead, tokenized
with `VOCABULARY`: `.jsonl` (one object with an `inputs` field per line),
`.json` (a JSON list of strings or of `{"inputs": ...}` objects), or any
other name: plain text, one prompt per line. Decoding logs a progress line
over the examples.

Plain Python: `predict(params, model_config, examples, vocabulary, decode,
feature_lengths, with_scores)` -> list of records; `write_jsonl(path, records)`;
`read_prompts(path, vocabulary, inputs_length)`. The batched decode and score
calls come from `flanx.predict` (shared with evaluation); the gin entry point
is `flanx.entrypoints.infer`, run by `python -m flanx.infer` (`__main__.py`).
"""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence

import numpy as np

from flanx.predict import DecodeConfig, decode_tokens, pad_tokens, score_targets, trim_at_eos
from flanx.progress import Progress


def _prompt_text(row, where: str) -> str:
    """The prompt of one item: a string, or an object's string `inputs` field."""
    if isinstance(row, str):
        return row
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with an \"inputs\" field (or a prompt string), got "
                         f"{type(row).__name__} {json.dumps(row)[:60]}")
    if "inputs" not in row:
        raise ValueError(f"{where}: no \"inputs\" field (has {sorted(row)}); each prompt is a string or an "
                         f"object with an \"inputs\" string")
    if not isinstance(row["inputs"], str):
        got = "null" if row["inputs"] is None else f"{type(row['inputs']).__name__} {json.dumps(row['inputs'])[:60]}"
        raise ValueError(f"{where}: \"inputs\" must be a string, got {got}")
    return row["inputs"]


def _read_texts(path: str) -> list[str]:
    with open(path, "rb") as f:
        raw = f.read()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[:e.start].count(b"\n") + 1
        raise ValueError(f"{path}:{line}: byte 0x{raw[e.start]:02x} at byte offset {e.start} is not valid UTF-8; "
                         "flanx reads prompt files as UTF-8 (re-encode the file, e.g. `iconv -f latin1 -t utf-8`)"
                         ) from None
    if path.endswith(".json"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            hint = " (one JSON object per line is JSON Lines: name the file .jsonl)" if e.msg == "Extra data" else ""
            raise ValueError(f"{path}: not valid JSON ({e}){hint}; a .json prompts file holds one JSON list of "
                             f"strings or of {{\"inputs\": ...}} objects") from None
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of prompts (strings or {{\"inputs\": ...}} objects), "
                             f"got a JSON {type(data).__name__}")
        return [_prompt_text(row, f"{path}: item {i}") for i, row in enumerate(data)]
    texts = []
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        if path.endswith(".jsonl"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                hint = " (this file looks like one JSON list: name it .json)" if lineno == 1 and \
                    line.lstrip().startswith("[") else ""
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e}){hint}") from None
            if isinstance(row, list):
                raise ValueError(f"{path}:{lineno}: a JSON list where JSON Lines has one prompt object per line; "
                                 f"a file holding one JSON list of prompts is read as such when named .json")
            texts.append(_prompt_text(row, f"{path}:{lineno}"))
        else:
            texts.append(line)
    return texts


def read_prompts(path: str, vocabulary, inputs_length: int) -> list[dict]:
    """Examples from a `.jsonl` (`inputs` field), `.json` (a list) or plain-text file, tokenized and
    EOS-terminated (cut to `inputs_length` tokens)."""
    examples = []
    for text in _read_texts(path):
        ids = list(vocabulary.encode(text))[:inputs_length - 1] + [1]
        examples.append({"inputs": np.asarray(ids, np.int32), "inputs_pretokenized": text})
    if not examples:
        raise ValueError(f"{path}: no prompts found")
    return examples


def predict(params, model_config, examples: Sequence[Mapping], vocabulary, decode: DecodeConfig = DecodeConfig(),
            feature_lengths: Mapping[str, int] | None = None, with_scores: bool = False) -> list[dict]:
    """Decode `examples` (dicts with token ids `inputs`, optional `*_pretokenized` text) -> records."""
    lengths = dict(feature_lengths or {})
    in_len = lengths.get("inputs") or max(len(ex["inputs"]) for ex in examples)
    out_len = decode.max_decode_length or lengths.get("targets") or 128
    records = []
    progress = Progress("infer", len(examples), every=max(decode.batch_size, -(-len(examples) // 10)),
                        unit="examples", what="examples")
    for start in range(0, len(examples), decode.batch_size):
        chunk = examples[start:start + decode.batch_size]
        enc = pad_tokens([ex["inputs"] for ex in chunk], in_len)
        tokens, _ = decode_tokens(params, model_config, enc, decode, out_len, start)
        preds = [trim_at_eos(row) for row in tokens]
        scores = score_targets(params, model_config, enc, preds, out_len, decode.batch_size) if with_scores else None
        for i, ex in enumerate(chunk):
            rec = {"inputs": ex.get("inputs_pretokenized") or vocabulary.decode(list(map(int, ex["inputs"]))),
                   "prediction": vocabulary.decode(preds[i])}
            if "targets_pretokenized" in ex:
                rec["targets"] = ex["targets_pretokenized"]
            if scores is not None:
                rec["score"] = float(scores[i])
            records.append(rec)
        progress.advance(len(chunk))
    return records


def write_jsonl(path: str, records: Sequence[Mapping]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path

