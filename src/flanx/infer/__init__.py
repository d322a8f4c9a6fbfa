"""Inference: decode a task's examples (or your own prompts) and write JSONL.

    python -m flanx.infer --gin_file=runs/infer.gin --gin.CHECKPOINT_PATH=... \\
        --gin.MIXTURE_OR_TASK_NAME=dialogsum_template_0to9_zsnoopt --gin.INFER_OUTPUT_DIR=out/

writes `INFER_OUTPUT_DIR/<task>-<split>.jsonl`, one line per example:

    {"inputs": "...", "prediction": "...", "targets": "...", "score": -12.3}

`targets` appears for task examples, `score` (the model's log-likelihood of
its prediction, summed over tokens incl. EOS) with `WITH_SCORES = True`.
With `INFER_INPUT_FILE` (JSONL with an `inputs` field, or plain text lines)
the prompts come from that file instead, tokenized with `VOCABULARY`.

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


def _prompt_lines(path: str):
    """(line number, text) of a prompt file read as UTF-8; a non-UTF-8 line is an error naming file, line, byte."""
    with open(path, "rb") as f:
        offset = 0
        for lineno, raw in enumerate(f, 1):
            try:
                yield lineno, raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{lineno}: byte 0x{raw[e.start]:02x} at byte offset {offset + e.start} is "
                                 "not valid UTF-8; flanx reads prompt files as UTF-8 (re-encode the file, e.g. "
                                 "`iconv -f latin1 -t utf-8`)") from None
            offset += len(raw)


def read_prompts(path: str, vocabulary, inputs_length: int) -> list[dict]:
    """Examples from a JSONL (`inputs` field) or plain-text file, tokenized and EOS-terminated."""
    examples = []
    for lineno, line in _prompt_lines(path):
        if not line.strip():
            continue
        if path.endswith((".jsonl", ".json")):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{lineno}: expected a JSON object with an \"inputs\" field, got "
                                 f"{type(row).__name__} {json.dumps(row)[:60]}")
            if "inputs" not in row:
                raise ValueError(f"{path}:{lineno}: no \"inputs\" field (has {sorted(row)})")
            if not isinstance(row["inputs"], str):
                raise ValueError(f"{path}:{lineno}: \"inputs\" must be a string, got "
                                 f"{'null' if row['inputs'] is None else type(row['inputs']).__name__}")
            text = row["inputs"]
        else:
            text = line.rstrip("\r\n")
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
    return records


def write_jsonl(path: str, records: Sequence[Mapping]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for rec in records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
    return path

