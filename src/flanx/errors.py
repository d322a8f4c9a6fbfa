"""flanx's error boundary: a user's mistake prints what, where and the fix; a bug keeps its traceback.

Every command line (`flanx ...`, `python -m flanx.train|eval|infer|convert`,
`flanx study`, the launchers) runs its `main` through `run(main, argv, prog)`:

- a *known* error (flanx's own types, and the ValueError / KeyError / OSError
  family that config, data and checkpoint readers raise, safetensors and
  unpickling errors, gin and YAML parse errors, TensorStore read errors) prints
  `prog: error: <message>` plus one hint line and exits 1;
- `--debug` (anywhere on the command line) or `FLANX_DEBUG=1` re-raises it, so
  Python prints the traceback;
- any other exception (a bug) propagates with its traceback as usual.

`FlanxError` is the base of flanx's own error types that are not ValueErrors
(a busy run directory, a failed checkpoint save). Standard library only, so
the launchers can use it on a machine with no accelerator stack.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable, Sequence

DEBUG_FLAG = "--debug"
DEBUG_ENV = "FLANX_DEBUG"
EXIT_CODE = 1
_MAX_LINES = 12
# Exception class names (anywhere in the MRO) that are the user's to fix; matched by name so that
# this module imports none of the libraries that define them.
_KNOWN_NAMES = {
    "FlanxError", "ValueError", "KeyError", "OSError", "FloatingPointError", "UnicodeError",
    "SafetensorError", "UnpicklingError", "YAMLError", "ParseError",
}
# Never presented as a user mistake: a lookup past the end of a list is a bug.
_UNKNOWN_NAMES = {"IndexError", "NotImplementedError"}


class FlanxError(Exception):
    """A problem the user fixes (a busy or unwritable run directory, a failed save); the message says how."""


def debug_requested(argv: Sequence[str] = ()) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def strip_debug(argv: Sequence[str]) -> list[str]:
    """argv without `--debug` (which every flanx command accepts)."""
    return [a for a in argv if a != DEBUG_FLAG]


def is_known(exc: BaseException) -> bool:
    """True for errors whose message is meant for the user (bad input, environment), not a bug."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & _KNOWN_NAMES) and not names & _UNKNOWN_NAMES


def describe(exc: BaseException) -> str:
    """The message to print for a known error (no traceback; never advice that would be unsafe)."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, KeyError) and exc.args and isinstance(exc.args[0], str):
        text = exc.args[0]  # str(KeyError) is the repr of its argument
    else:
        text = str(exc).strip() or type(exc).__name__
    if "UnpicklingError" in names:
        # torch suggests weights_only=False, which would run code from the file: never repeat that.
        first = next((line for line in text.splitlines() if "weights_only" not in line and line.strip()), "")
        text = (f"the file holds pickled Python objects that are not plain tensors ({first.strip()[:200]}); "
                "flanx loads only tensors from .bin checkpoints. Convert the checkpoint to safetensors "
                "in an environment you trust, or use another checkpoint")
    elif "SafetensorError" in names and "safetensors" not in text.lower():
        text = f"not a readable safetensors file: {text}"
    elif isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{text}: {exc.filename}"
    if not type(exc).__module__.startswith("flanx") and type(exc).__name__ not in ("ValueError", "KeyError") \
            and not text.startswith(type(exc).__name__):
        text = f"{type(exc).__name__}: {text}"
    lines = text.splitlines()
    if len(lines) > _MAX_LINES:
        lines = lines[:_MAX_LINES] + [f"... ({len(lines) - _MAX_LINES} more lines; {DEBUG_FLAG} shows all)"]
    return "\n".join(lines)


class _NoTracebacks(logging.Filter):
    """Keep library log records (orbax logs failed background saves with their tracebacks) to one line."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        return True


class _NoOrphanErrors(logging.Filter):
    """asyncio's "exception was never retrieved" for the writes of a failed save: flanx reports the save."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "was never retrieved" not in str(record.msg)


# Printed through sys.unraisablehook when orbax's writer threads outlive a failed save or the interpreter.
_UNRAISABLE_NOISE = ("Event loop is closed", "sys.meta_path is None")


def _quiet_unraisable(previous):
    def hook(unraisable) -> None:
        if any(text in str(unraisable.exc_value) for text in _UNRAISABLE_NOISE):
            return
        previous(unraisable)
    hook._flanx_quiet = True
    return hook


def quiet_library_noise() -> None:
    """Keep a failure's output to flanx's message: absl/orbax/asyncio log records lose their tracebacks
    (their message lines stay), and the "Event loop is closed" echoes of orbax's writer threads go."""
    for name in ("absl", "orbax", "asyncio"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTracebacks) for f in logger.filters):
            logger.addFilter(_NoTracebacks())
            if name == "asyncio":
                logger.addFilter(_NoOrphanErrors())
    if not getattr(sys.unraisablehook, "_flanx_quiet", False):
        sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)


def report(exc: BaseException, prog: str, stream=None) -> None:
    stream = stream or sys.stderr
    print(f"{prog}: error: {describe(exc)}", file=stream)
    print(f"{prog}: (pass {DEBUG_FLAG} or set {DEBUG_ENV}=1 to see the traceback)", file=stream)


def run(main: Callable[[list[str]], int | None], argv: Sequence[str] | None = None, prog: str = "flanx") -> int:
    """Call `main(argv)` (argv without --debug) inside the error boundary; return its exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = debug_requested(argv)
    if not debug:
        quiet_library_noise()
    try:
        return int(main(strip_debug(argv)) or 0)
    except Exception as e:  # noqa: BLE001 - the boundary: known errors become one message
        if debug or not is_known(e):
            raise
        report(e, prog)
        return EXIT_CODE
