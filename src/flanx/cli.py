"""`flanx ...`: the umbrella command.

Each subcommand lives in the module that owns it and exposes `main(argv)`;
this file only dispatches (`module` or `module:function`, called with the
remaining argv), importing lazily so `flanx tasks list` does not
pay for JAX and `flanx convert` does not pay for TensorFlow. Every command
runs inside `flanx.errors.run`: a user's mistake prints one message and exits
1, `--debug` (or FLANX_DEBUG=1) shows the traceback.
"""
from __future__ import annotations

import importlib
import sys

COMMANDS = {
    "demo": ("flanx.experiments.demo", "run the embedded default study on synthetic data (what `make demo` runs)"),
    "study": ("flanx.experiments.cli", "forgetting study: `flanx study forgetting --gin_file=...`"),
    "train": ("flanx.entrypoints:train", "train a model (T5X-style gin: --gin_file, --gin.NAME=VALUE)"),
    "eval": ("flanx.entrypoints:eval", "evaluate a checkpoint on tasks/mixtures"),
    "infer": ("flanx.entrypoints:infer", "write predictions for a task to JSONL"),
    "convert": ("flanx.convert", "convert checkpoints between Hugging Face, T5X and flanx formats"),
    "cache": ("flanx.data.cache_pipeline", "cache tasks/mixtures offline with Apache Beam (seqio's cache format)"),
    "tasks": ("flanx.data.cli", "list and show registered tasks: `flanx tasks list|show NAME`"),
    "mixtures": ("flanx.data.cli", "show a mixture's rates and shares: `flanx mixtures show NAME`"),
    "data": ("flanx.data.prepare", "prepare a collection's TFDS/HF data for offline use: "
                                   "`flanx data prepare --collection flan2021 --data_dir DIR`"),
}


def usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: flanx COMMAND [ARGS...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """`flanx COMMAND ...` inside flanx's error boundary (`flanx.errors.run`; `--debug` shows tracebacks)."""
    from flanx import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    return errors.run(dispatch, argv, prog=f"flanx {command}" if command in COMMANDS else "flanx")


def dispatch(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"flanx: unknown command {name!r}\n\n{usage()}", file=sys.stderr)
        return 2
    target = COMMANDS[name][0]
    module_name, _, func_name = target.partition(":")
    module = importlib.import_module(module_name)
    # Modules serving several commands (tasks/mixtures) get the command name first.
    if getattr(module, "MULTI_COMMAND", False):
        rest = [name] + rest
    return int(getattr(module, func_name or "main")(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
