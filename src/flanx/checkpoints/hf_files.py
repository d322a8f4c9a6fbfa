"""What makes a Hugging Face export usable as is: tokenizer files, a model card, normal file modes.

`flanx convert --to hf` writes, next to `config.json` + `model.safetensors`:

- tokenizer files that `transformers.AutoTokenizer.from_pretrained(export)`
  loads to give the same token ids as the seqio vocabulary the model was
  trained with, EOS (1) appended:
  * SentencePiece (the T5 vocabulary `t5_spm`): the model as `spm_char.model`
    (the file name transformers' SentencePiece-backed `SpeechT5Tokenizer`
    reads; that class runs the model through the `sentencepiece` library
    itself and appends EOS, so ids equal seqio's exactly) and as
    `spiece.model` (what `T5Tokenizer.from_pretrained(export)` reads; that
    class goes through the `tokenizers` library, whose Unigram segmentation
    breaks score ties differently from sentencepiece on rare strings such
    as "soooooo"), `tokenizer_config.json` (pad 0, EOS 1, UNK 2, no BOS,
    `<extra_id_0..99>` at ids 32099..32000 as in seqio) and
    `special_tokens_map.json`;
  * the byte vocabulary (`byte`): `ByT5Tokenizer` with `extra_ids: 0`
    (bytes + 3, pad 0, EOS 1, UNK 2: seqio's ByteVocabulary).
  (transformers 5's `T5Tokenizer(vocab_file=...)` built by hand ignores the
  file and maps every word to UNK; load the export's tokenizer instead.)
- `README.md`: a model card with the architecture, how to load it, the
  training settings of the run it came from and its evaluation metrics when
  the checkpoint sits in a flanx MODEL_DIR (`train_config.json`,
  `operative_config.gin`, `metrics.jsonl`, `*/metrics.jsonl`).

The vocabulary comes from `--vocabulary` (`t5_spm`, `byte`, a SentencePiece
`.model` file, or `none`), else from the run record `vocabulary.json` that
`python -m flanx.train` writes in MODEL_DIR, else from the input's own
tokenizer files when the input is a Hugging Face directory.
TensorFlow- and transformers-free (the files are written by hand).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

VOCABULARY_RECORD = "vocabulary.json"  # written by `python -m flanx.train` in MODEL_DIR
SPM_FILES = ("spm_char.model", "spiece.model")
HF_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "tokenizer.json", "spiece.model",
                      "spm_char.model", "added_tokens.json")
SPECIAL = {"pad_token": "<pad>", "eos_token": "</s>", "unk_token": "<unk>"}


class TokenizerError(ValueError):
    """The vocabulary to export cannot be found or is not one transformers can load."""


def record_for(vocabulary: str) -> dict | None:
    """A vocabulary record from `--vocabulary`: 't5_spm', 'byte', a `.model` file, or 'none' (None)."""
    if vocabulary == "none":
        return None
    if vocabulary == "byte":
        return {"name": "byte", "type": "byte"}
    if vocabulary == "t5_spm":
        from flanx.data import vocab  # stdlib + paths only at import
        return {"name": "t5_spm", "type": "sentencepiece", "sentencepiece_model": str(vocab.spm_path()),
                "extra_ids": vocab.SPM_EXTRA_IDS}
    if vocabulary.endswith(".model"):
        if not Path(vocabulary).is_file():
            raise TokenizerError(f"--vocabulary {vocabulary}: no such SentencePiece model file")
        return {"name": Path(vocabulary).name, "type": "sentencepiece", "sentencepiece_model": vocabulary,
                "extra_ids": 100}
    raise TokenizerError(f"--vocabulary {vocabulary!r}: use t5_spm, byte, a SentencePiece .model file, or none")


def run_dirs(input_path: str | os.PathLike) -> list[Path]:
    """The checkpoint directory and its parents up to a MODEL_DIR (`.../checkpoints/<step>/params`)."""
    path = Path(input_path).absolute()
    dirs = [path] + list(path.parents)[:3]
    return [d for d in dirs if d.is_dir()]


def find_run_file(input_path, name: str) -> Path | None:
    for d in run_dirs(input_path):
        if (d / name).is_file():
            return d / name
    return None


def write_tokenizer(out: Path, record: dict, model_max_length: int | None = None) -> list[str]:
    """Write the tokenizer files for `record` into `out`; returns their names."""
    config = {**SPECIAL, "bos_token": None, "model_max_length": model_max_length or 512,
              "clean_up_tokenization_spaces": False}
    if record.get("type") == "sentencepiece":
        spm = Path(record["sentencepiece_model"])
        if not spm.is_file():
            raise TokenizerError(f"the run's SentencePiece model {spm} is gone; pass --vocabulary FILE.model "
                                 f"(or --vocabulary none to export without a tokenizer)")
        for name in SPM_FILES:
            shutil.copyfile(spm, out / name)
        extra = [f"<extra_id_{i}>" for i in range(int(record.get("extra_ids", 0)) - 1, -1, -1)]
        config.update(tokenizer_class="SpeechT5Tokenizer", normalize=False, additional_special_tokens=extra)
        files = list(SPM_FILES)
    elif record.get("type") == "byte":
        config.update(tokenizer_class="ByT5Tokenizer", extra_ids=0)
        files = []
    else:
        raise TokenizerError(f"vocabulary {record.get('name')!r} ({record.get('type')}) has no Hugging Face "
                             f"tokenizer flanx can write; pass --vocabulary none or a SentencePiece .model file")
    special = {**SPECIAL, **({"additional_special_tokens": config["additional_special_tokens"]}
                             if config.get("additional_special_tokens") else {})}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")
    return files + ["tokenizer_config.json", "special_tokens_map.json"]


def copy_hf_tokenizer(input_path: Path, out: Path) -> list[str]:
    """Copy a Hugging Face input's own tokenizer files; returns their names."""
    found = [n for n in HF_TOKENIZER_FILES if (input_path / n).is_file()]
    for name in found:
        shutil.copyfile(input_path / name, out / name)
    return found


def resolve_record(input_path, vocabulary: str | None) -> tuple[dict | None, str]:
    """(vocabulary record or None, where it came from) for an export."""
    if vocabulary:
        return record_for(vocabulary), f"--vocabulary {vocabulary}"
    found = find_run_file(input_path, VOCABULARY_RECORD)
    if found is not None:
        try:
            return json.loads(found.read_text()), str(found)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{found}: not valid JSON ({e}); pass --vocabulary") from None
    return None, ""


# ----------------------------------------------------------------------------- model card


def _eval_rows(model_dir: Path) -> list[dict]:
    rows = []
    for path in [model_dir / "metrics.jsonl"] + sorted(model_dir.glob("*/metrics.jsonl")):
        if not path.is_file():
            continue
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            if row.get("kind") == "eval":
                rows.append(row)
    return rows


def _training_lines(model_dir: Path) -> list[str]:
    lines = []
    operative = model_dir / "operative_config.gin"
    if operative.is_file():
        from flanx import gin_utils
        try:
            macros = gin_utils.read_macros([str(operative)])
        except Exception:  # noqa: BLE001 - a model card never fails an export
            macros = {}
        for name in ("MIXTURE_OR_TASK_NAME", "MIXTURE_OR_TASK_MODULE", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
                     "BATCH_SIZE", "LEARNING_RATE", "DROPOUT_RATE", "INITIAL_CHECKPOINT_PATH", "RANDOM_SEED"):
            if name in macros and macros[name] is not None:
                lines.append(f"- `{name}`: `{macros[name]!r}`")
    train_config = model_dir / "train_config.json"
    if train_config.is_file():
        try:
            opt = json.loads(train_config.read_text()).get("optimizer") or {}
        except json.JSONDecodeError:
            opt = {}
        if opt:
            keys = ("name", "learning_rate", "schedule", "warmup_steps", "multiply_by_parameter_scale",
                    "weight_decay")
            lines.append("- optimizer: " + ", ".join(f"{k}={opt[k]!r}" for k in keys if k in opt))
    if operative.is_file():
        lines.append(f"- the complete configuration is the run's `operative_config.gin` ({operative})")
    return lines


def model_card(out_name: str, config, input_path, step, tokenizer: list[str], vocab_source: str) -> str:
    """README.md text for an export."""
    run = find_run_file(input_path, "train_config.json")
    model_dir = run.parent if run else None
    layers = f"{config.num_encoder_layers}+{config.num_decoder_layers} layers"
    text = ["---", "library_name: transformers", "pipeline_tag: text2text-generation", "tags: [t5, flanx]",
            "---", "", f"# {out_name}", "",
            f"A T5 encoder-decoder (d_model {config.d_model}, {layers}, {config.num_heads} heads, d_ff "
            f"{config.d_ff}, vocab_size {config.vocab_size}) trained with flanx and exported by `flanx convert "
            f"--to hf` from `{input_path}`" + (f" (step {step})." if step is not None else "."), "",
            "## Use", "", "```python", "from transformers import AutoTokenizer, T5ForConditionalGeneration", "",
            'path = "."  # this directory',
            "tokenizer = AutoTokenizer.from_pretrained(path)" if tokenizer else
            "tokenizer = ...  # no tokenizer was exported: use the vocabulary the model was trained with",
            "model = T5ForConditionalGeneration.from_pretrained(path)",
            'batch = tokenizer(["your prompt"], return_tensors="pt")',
            "out = model.generate(**batch, max_new_tokens=64, do_sample=False)  # greedy, as flanx decodes",
            "print(tokenizer.batch_decode(out, skip_special_tokens=True))", "```", ""]
    if tokenizer:
        text += ["## Tokenizer", "", f"Files: {', '.join(f'`{t}`' for t in tokenizer)} (from {vocab_source}). "
                 "`AutoTokenizer` gives the token ids the model was trained with, EOS (1) appended.", ""]
    if model_dir is not None:
        lines = _training_lines(model_dir)
        if lines:
            text += ["## Training", "", f"Run directory: `{model_dir}`", ""] + lines + [""]
        rows = _eval_rows(model_dir)
        if rows:
            text += ["## Evaluation", "", "| step | task | metric | value |", "|---|---|---|---|"]
            for row in rows:
                for task, metrics in row.items():
                    if isinstance(metrics, dict):
                        text += [f"| {row.get('step')} | {task} | {k} | {v:.4f} |" for k, v in sorted(metrics.items())
                                 if isinstance(v, (int, float))]
            text.append("")
    return "\n".join(text)


def normalize_modes(root: Path) -> None:
    """Files 0666 and folders 0777, less the umask (0644 / 0755 with the usual 022), as `open` would make
    them: some writers (safetensors) create files 0600."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)
