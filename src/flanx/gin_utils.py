"""gin plumbing for flanx entry points: registration, file search, overrides.

flanx keeps gin at the edges: entry points (`python -m flanx.train`, ...) and
the few objects a researcher swaps (model config, optimizer, schedule,
mixture, lengths). Those objects are plain Python; this module registers them
as gin configurables under the `flanx.` namespace, so `models/` and `train/`
never import gin.

`resolved_macro(NAME, default)` gives a macro's evaluated value (a missing
required macro fails naming it); `write_config(dir)` saves every binding.

`parse_gin(gin_files, gin_bindings)` resolves `--gin_file` names against the
working directory and flanx's own `t5x_configs/` (so `--gin_file=models/tiny.gin`
or `t5x_configs/runs/finetune.gin` both work) and applies `--gin.NAME=VALUE`
overrides after the files, as T5X does.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import gin

from flanx import paths

_REGISTERED = False


def register_configurables() -> None:
    """Register flanx's swappable objects with gin (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from flanx.models import config as model_config

    gin.external_configurable(model_config.T5Config, name="T5Config", module="flanx")
    gin.external_configurable(model_config.LoraConfig, name="LoraConfig", module="flanx")
    gin.external_configurable(model_config.get_config, name="get_config", module="flanx")
    # Training and decoding knobs (plain dataclasses; the entry points pass the T5X macros in).
    from flanx.predict import DecodeConfig
    from flanx.train.config import LossConfig, OptimizerConfig

    gin.external_configurable(OptimizerConfig, name="OptimizerConfig", module="flanx")
    gin.external_configurable(LossConfig, name="LossConfig", module="flanx")
    gin.external_configurable(DecodeConfig, name="DecodeConfig", module="flanx")
    for hook in _EXTRA_REGISTRATIONS:
        hook()
    _REGISTERED = True


# Other modules append zero-argument callables that register their configurables.
_EXTRA_REGISTRATIONS: list = []


def resolve_gin_file(name: str) -> str:
    """Find a gin file: as given, relative to t5x_configs/, or with t5x_configs/ stripped."""
    candidates = [Path(name)]
    root = paths.configs_dir()
    stripped = name[len("t5x_configs/"):] if name.startswith("t5x_configs/") else name
    candidates += [root / stripped, root / (stripped + ".gin")]
    for c in candidates:
        if c.is_file():
            return str(c)
    raise FileNotFoundError(
        f"gin file {name!r} not found (looked in the working directory and {root}). "
        f"Available run configs: {', '.join(sorted(p.name for p in (root / 'runs').glob('*.gin')))}")


def split_gin_args(argv: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Split `--gin_file=F` / `--gin_file F` and `--gin.NAME=VALUE` out of argv.

    Returns (gin_files, gin_bindings, remaining_argv).
    """
    files, bindings, rest = [], [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file":
            files.append(next(it))
        elif arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            bindings.append(f"{name} = {value}")
        elif arg.startswith("--gin_bindings="):
            bindings.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    return files, bindings, rest


def _drop_gin_search_misses(record: logging.LogRecord) -> bool:
    """gin logs `ERROR Path not found: X` for every search location an `include` misses before
    the one that has it; flanx's own errors name a file that is really missing."""
    return not (record.levelno == logging.ERROR and record.msg == "Path not found: %s")


def parse_gin(gin_files: list[str], gin_bindings: list[str] = (), finalize: bool = True) -> None:
    """Register configurables, parse files then bindings. Errors name the file/binding."""
    register_configurables()
    root_logger = logging.getLogger()
    if _drop_gin_search_misses not in root_logger.filters:
        root_logger.addFilter(_drop_gin_search_misses)
    search_root = str(paths.configs_dir())
    if search_root not in gin.config._LOCATION_PREFIXES:  # noqa: SLF001 - gin has no public getter
        gin.add_config_file_search_path(search_root)
        gin.add_config_file_search_path(str(Path(search_root).parent))
    resolved = [resolve_gin_file(f) for f in gin_files]
    for path in resolved:
        try:
            gin.parse_config_file(path)
        except Exception as e:  # gin raises several types; re-raise with the file named
            raise ValueError(f"bad gin file {path}: {e}") from e
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except Exception as e:
            raise ValueError(f"bad gin override --gin.{binding.replace(' = ', '=')}: {e}") from e
    if finalize:
        gin.finalize()


def macro_value(name: str, default=gin.REQUIRED):
    """The value of gin macro `name`; with no default, a missing macro raises naming it."""
    try:
        return gin.query_parameter(f"%{name}")
    except ValueError:
        if default is gin.REQUIRED:
            raise ValueError(
                f"required gin macro {name} is not set: add `{name} = ...` to a gin file "
                f"or pass --gin.{name}=VALUE") from None
        return default


def _resolve(value, name: str):
    """Evaluate gin references inside a macro's value (`@flanx.T5Config()`, `%OTHER_MACRO`)."""
    if isinstance(value, gin.config.ConfigurableReference):  # `%gin.REQUIRED` evaluates to gin.REQUIRED
        fn = value.scoped_configurable_fn
        return _resolve(fn() if value.evaluate else fn, name)
    if isinstance(value, dict):
        return {k: _resolve(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, name) for v in value)
    return value


def resolved_macro(name: str, default=gin.REQUIRED, hint: str = ""):
    """The evaluated value of macro `name`.

    An unset macro gives `default`, or raises naming it when there is none; a
    macro set to `%gin.REQUIRED` (a run config marking it required) always
    raises until a later file or `--gin.NAME=VALUE` sets it. `hint` is appended
    to the message.
    """
    try:
        raw = gin.query_parameter(f"%{name}")
    except ValueError:  # gin's only complaint here: no such macro
        raw = _MISSING
    value = gin.REQUIRED if raw is _MISSING else _resolve(raw, name)
    marked_required = raw is not _MISSING and value is gin.REQUIRED
    if value is gin.REQUIRED:
        if default is gin.REQUIRED or marked_required:
            raise ValueError(f"required gin macro {name} is not set: add `{name} = ...` to a gin file "
                             f"or pass --gin.{name}=VALUE" + (f"; {hint}" if hint else ""))
        return default
    return value


_MISSING = object()


def reset() -> None:
    """Forget all parsed gin state (for running several entry points in one process)."""
    global _REGISTERED
    gin.clear_config()
    _REGISTERED = False


def write_config(model_dir: str, filename: str = "config.gin") -> str:
    """Write every parsed gin binding and macro (`gin.config_str()`) to MODEL_DIR."""
    from flanx import io

    out = os.path.join(model_dir, filename)
    with io.open_output(out) as f:
        f.write(gin.config_str())
    return out


def write_operative_config(model_dir: str, filename: str = "config.gin") -> str:
    """Write gin's operative config to MODEL_DIR (process 0 only is the caller's job)."""
    from flanx import io

    out = os.path.join(model_dir, filename)
    with io.open_output(out) as f:
        f.write(gin.operative_config_str())
    return out
