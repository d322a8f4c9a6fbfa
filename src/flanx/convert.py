"""`python -m flanx.convert` / `flanx convert`: convert checkpoints between Hugging Face, T5X and flanx.

    python -m flanx.convert [--from auto|hf|t5x|flanx|peft] --to flanx|hf|t5x|peft INPUT OUTPUT
        [--model NAME | --config FILE] [--scan_layers true|false] [--merge_lora] [--step N] [--overwrite]
        [--base PATH_OR_NAME] [--with_base]
        [--vocabulary t5_spm|byte|FILE.model|none]

INPUT is detected by its files unless --from says otherwise. T5X checkpoints
carry no model config: name the preset with --model (e.g. flan_t5_base), or
give --config FILE (a flanx.json, T5Config fields as JSON, or an HF config.json).
OUTPUT is a directory: a flanx checkpoint, a Hugging Face model directory, or
a T5X model dir holding `checkpoint_<step>/`. It is written under a temporary
name beside OUTPUT and renamed when complete, so an interrupted conversion
never leaves a directory that looks like a finished checkpoint; an existing
non-empty OUTPUT is replaced only with --overwrite. Output files get the
usual modes (0644 / 0755 under umask 022).

`--to hf` also writes the tokenizer (the run's vocabulary, recorded in
MODEL_DIR by `python -m flanx.train`, or `--vocabulary`; a Hugging Face input
keeps its own) and a model card `README.md` with the run's settings and eval
metrics, so `AutoTokenizer` / `T5ForConditionalGeneration.from_pretrained(OUTPUT)`
work as is (`flanx.checkpoints.hf_files`).

PEFT (`flanx.checkpoints.peft`): `--to peft` writes a LoRA checkpoint's adapters
as `adapter_config.json` + `adapter_model.safetensors` (`--with_base` adds the
frozen base as a Hugging Face model in OUTPUT/base; `--base NAME` records e.g.
`google/flan-t5-base` as the adapter's base model). `--from peft` (detected by
`adapter_config.json`) reads an adapter plus its base model: `--base PATH`, else
INPUT/base, else the adapter's local `base_model_name_or_path`; --model/--config
then describe the base.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
from pathlib import Path

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _parse_bool(text: str) -> bool:
    try:
        return _BOOL[text.lower()]
    except KeyError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flanx convert", description=__doc__.split("\n\n")[0])
    p.add_argument("--from", dest="src_format", default="auto", choices=("auto", "hf", "t5x", "flanx", "peft"),
                   help="input format (default: detect from the files)")
    p.add_argument("--to", dest="dst_format", required=True, choices=("flanx", "hf", "t5x", "peft"),
                   help="output format")
    p.add_argument("--model", help="model preset for inputs without a config (T5X), or to check the input against")
    p.add_argument("--config", help="instead of --model: a JSON file with the T5Config (a flanx.json, a plain "
                                     "dict of T5Config fields, or a Hugging Face config.json)")
    p.add_argument("--scan_layers", type=_parse_bool, default=None,
                   help="layer layout of the output (flanx/T5X): true = scanned 'layers', false = 'layers_N'; "
                        "default keeps the input's")
    p.add_argument("--merge_lora", action="store_true",
                   help="fold LoRA adapters into the kernels (always done for --to hf, which has no LoRA)")
    p.add_argument("--step", type=int, default=None, help="step to record (default: the input's, else 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing non-empty OUTPUT")
    p.add_argument("--base", help="PEFT: --from peft: the adapter's base checkpoint; --to peft: the base model "
                                  "name to record (e.g. google/flan-t5-base)")
    p.add_argument("--with_base", action="store_true", help="--to peft: also write the base model (HF) to OUTPUT/base")
    p.add_argument("--vocabulary", default=None,
                   help="--to hf: the tokenizer to write: t5_spm, byte, a SentencePiece .model file, or none "
                        "(default: the vocabulary the run recorded in MODEL_DIR, or a Hugging Face input's own)")
    p.add_argument("input", help="checkpoint to read")
    p.add_argument("output", help="directory to write")
    return p


def _check_output(output: Path, overwrite: bool, input_path: Path) -> None:
    if output.resolve() == input_path.resolve():
        raise SystemExit(f"flanx convert: OUTPUT {output} is the INPUT; write to another directory")
    if output.exists() and (output.is_file() or any(output.iterdir())) and not overwrite:
        raise SystemExit(f"flanx convert: {output} exists and is not empty; pass --overwrite to replace it")


def load_config_file(path: str | os.PathLike):
    """T5Config from a flanx.json sidecar, a dict of T5Config fields, or a Hugging Face config.json."""
    import json

    from flanx.checkpoints import CheckpointError, native

    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"--config {path}: cannot read a JSON config ({e})") from e
    if not isinstance(data, dict):
        raise CheckpointError(f"--config {path}: expected a JSON object")
    if data.get("format") == "flanx":
        data = data.get("config") or {}
    elif "model_type" in data or "d_kv" in data:
        from flanx.checkpoints import hf

        return hf.config_from_hf(data, str(path))
    return native.config_from_dict(data, source=f"--config {path}")


def convert(input_path: str | os.PathLike, output: str | os.PathLike, dst_format: str, *, src_format: str = "auto",
            model: str | None = None, config_file: str | None = None, scan_layers: bool | None = None, step: int | None = None,
            merge_lora: bool = False, overwrite: bool = False, base: str | None = None,
            with_base: bool = False, vocabulary: str | None = None) -> Path:
    """Convert `input_path` to `dst_format` at `output`; return `output`."""
    from flanx import checkpoints, io

    input_path, output = Path(input_path), Path(output).absolute()
    _check_output(output, overwrite, input_path)
    from flanx.checkpoints import peft

    if with_base and dst_format != "peft":
        raise ValueError("--with_base goes with --to peft")
    if dst_format == "peft" and merge_lora:
        raise ValueError("--to peft keeps the adapters separate; drop --merge_lora (or use --to hf)")
    auto_peft = src_format == "auto" and peft.is_adapter_dir(input_path)
    fmt = "peft" if auto_peft else checkpoints.detect_format(input_path) if src_format == "auto" else src_format
    if fmt == "t5x" and input_path.is_file():
        fmt = "t5x_msgpack"
    if fmt == "peft":  # the adapter on its base model; --model / --config describe the base
        base_cfg = load_config_file(config_file) if config_file else None
        if model is not None:
            from flanx.models import get_config

            base_cfg = get_config(model)
        base_params, base_cfg, _ = checkpoints.load_params(peft.base_path(input_path, base), base_cfg)
        params, config = peft.import_peft(input_path, base_params, base_cfg)
        raw = checkpoints.RawCheckpoint(params, config, None, fmt, f"PEFT adapter {input_path}")
        model = config_file = None
    given = None  # the config named on the command line, checked before the checkpoint is read
    if model is not None:
        from flanx.models import get_config

        given = get_config(model)
    if config_file is not None:
        given = load_config_file(config_file)
    if given is None and fmt in ("t5x", "t5x_msgpack"):
        raise checkpoints.CheckpointError(
            f"T5X checkpoint {input_path} carries no model config; pass --model NAME (e.g. --model flan_t5_base) "
            "or --config FILE")
    if fmt != "peft":
        raw = checkpoints.read_checkpoint(input_path, fmt)
    config = given if given is not None else raw.config
    if config is None:
        raise checkpoints.CheckpointError(
            f"{raw.source} carries no model config; pass --model NAME (e.g. --model flan_t5_base) "
            "or --config FILE")
    if scan_layers is None:  # keep the input's layer layout
        scan_layers = checkpoints.is_scanned(raw.params)
    params, config = checkpoints.fit_params(raw.params, config, scan_layers, dtype=None, source=raw.source)
    step = raw.step if step is None else step
    if config.lora is not None and (merge_lora or dst_format == "hf"):
        from flanx.models import lora

        params = checkpoints.to_numpy(lora.merge_lora(params, config))
        config = dataclasses.replace(config, lora=None)

    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = io.staging_path(output)
    try:
        if dst_format == "flanx":
            checkpoints.save_params(tmp, params, config, {"converted_from": str(input_path), "source_format": fmt},
                                    step=step)
        elif dst_format == "t5x":
            tmp.mkdir()
            checkpoints.export_t5x(params, tmp, step=step or 0)
        elif dst_format == "hf":
            from flanx.checkpoints import hf

            hf.export_hf(checkpoints.unstack_layers(params), dataclasses.replace(config, scan_layers=False), tmp)
            _hf_extras(tmp, output, input_path, fmt, config, step, vocabulary)
        elif dst_format == "peft":
            peft.export_peft(params, config, tmp, base_model_name_or_path=str(output / "base") if with_base else base)
            if with_base:
                from flanx.checkpoints import hf

                hf.export_hf(peft.without_lora(checkpoints.unstack_layers(params)),
                             dataclasses.replace(config, scan_layers=False, lora=None), tmp / "base")
        else:
            raise SystemExit(f"flanx convert: unknown output format {dst_format!r}")
        from flanx.checkpoints.hf_files import normalize_modes
        normalize_modes(tmp)
        io.publish(tmp, output)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output


def _hf_extras(tmp: Path, output: Path, input_path: Path, fmt: str, config, step, vocabulary: str | None) -> None:
    """Tokenizer files and README.md beside an HF export's weights."""
    from flanx.checkpoints import hf_files

    record, source = hf_files.resolve_record(input_path, vocabulary)
    if record is not None:
        files = hf_files.write_tokenizer(tmp, record)
    elif fmt == "hf" and vocabulary is None:
        files, source = hf_files.copy_hf_tokenizer(input_path, tmp), str(input_path)
    else:
        files = []
    if not files and vocabulary != "none":
        print(f"flanx convert: no tokenizer written ({input_path} records no vocabulary); pass --vocabulary "
              "t5_spm|byte|FILE.model to add one", file=sys.stderr)
    (tmp / "README.md").write_text(hf_files.model_card(output.name, config, input_path, step, files, source))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    from flanx.checkpoints import CheckpointError

    try:
        out = convert(args.input, args.output, args.dst_format, src_format=args.src_format, model=args.model,
                      config_file=args.config,
                      scan_layers=args.scan_layers, step=args.step, merge_lora=args.merge_lora,
                      overwrite=args.overwrite, base=args.base, with_base=args.with_base,
                      vocabulary=args.vocabulary)
    except (CheckpointError, ValueError) as e:  # bad input: say what and why, no traceback
        print(f"flanx convert: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst_format} checkpoint to {out}")
    return 0


if __name__ == "__main__":
    from flanx.errors import run
    sys.exit(run(main, sys.argv[1:], prog="flanx convert"))
