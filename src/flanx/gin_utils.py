"""gin plumbing for flanx entry points: registration, parsing, strict macros, records.

gin is a thin, declarative front on flanx's typed configs: this module
registers them under the `flanx.` namespace (`flanx.TrainConfig`,
`flanx.DataConfig`, `flanx.MeshConfig`, `flanx.OptimizerConfig`,
`flanx.LossConfig`, `flanx.DecodeConfig`, `flanx.T5Config`, `flanx.LoraConfig`,
`flanx.get_config`, the run description `flanx.train`), so `models/` and
`train/` never import gin. Run gins bind T5X's macros to fields; entry points
only evaluate configurables, so the operative config is the run's whole record.

- `parse_gin(files, bindings)`: files (found in the working directory or
  `t5x_configs/`) then `--gin.NAME=VALUE` overrides, as T5X does; unknown
  configurables and parameters name the closest known one, an unquoted string
  gets gin's quoting (`--gin.MODEL_DIR="'/path'"`).
- `prepare_macros()`: a macro nothing uses is an error naming the closest known
  one; an unset macro takes the default of the field it is bound to (and is
  recorded); required macros still unset fail together, by name.
- `read_macros(files, bindings)`: literal macro values, nothing evaluated
  (the launchers' mesh pre-flight).
- `resolved_macro(NAME, default)` evaluates one macro (eval and infer read a
  few directly); `write_config` / `write_operative_config` save the records.
"""
from __future__ import annotations

import dataclasses
import inspect
import logging
import os
import re
from pathlib import Path

import gin
from gin import config_parser

from flanx import paths
from flanx.registry import suggest

_REGISTERED = False
# Zero-argument callables other modules add (add_registration) to register their configurables.
_EXTRA_REGISTRATIONS: list = []
# Macros set by --gin.NAME=VALUE overrides of the last parse_gin, for error messages.
_OVERRIDDEN_MACROS: dict[str, str] = {}


def model_preset(name: str = gin.REQUIRED):
    """`flanx.get_config` in gin: the registered preset `name`, with any `flanx.T5Config.FIELD`
    bindings applied on top (a model gin is `MODEL_CONFIG = @flanx.get_config()` plus
    `flanx.get_config.name = '...'`; `flanx.T5Config.dropout_rate = %DROPOUT_RATE` and
    `--gin.flanx.T5Config.d_model=128` override fields)."""
    from flanx.models import config as model_config

    preset = model_config.get_config(name)
    bound = gin.get_bindings("flanx.T5Config", resolve_references=False)
    make = gin.get_configurable("flanx.T5Config")  # records the bound fields in the operative config
    return make(**{f.name: getattr(preset, f.name) for f in dataclasses.fields(preset) if f.name not in bound})


def register_configurables() -> None:
    """Register flanx's typed configs with gin (idempotent)."""
    global _REGISTERED
    if not _REGISTERED:
        from flanx.predict import DecodeConfig
        from flanx.models import config as model_config
        from flanx.train import config as train_config

        for cls in (model_config.T5Config, model_config.LoraConfig, train_config.TrainConfig,
                    train_config.DataConfig, train_config.MeshConfig, train_config.OptimizerConfig,
                    train_config.LossConfig, DecodeConfig):
            gin.external_configurable(cls, name=cls.__name__, module="flanx")
        gin.external_configurable(model_preset, name="get_config", module="flanx")
        gin.external_configurable(train_config.TrainRun, name="train", module="flanx")
        _REGISTERED = True
    for hook in _EXTRA_REGISTRATIONS:
        hook()


def add_registration(hook) -> None:
    """Run `hook()` (which registers configurables, idempotently) whenever gin files are parsed."""
    if hook not in _EXTRA_REGISTRATIONS:
        _EXTRA_REGISTRATIONS.append(hook)


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


_LITERAL_START = tuple("'\"[({@%-+.0123456789")
_BARE_WORD = re.compile(r"(?<![\w'\"./-])[A-Za-z_][\w./-]*(?![\w'\"(])")  # an unquoted word inside a dict/list


def _explain(error: Exception, binding: str | None = None) -> str:
    """gin's parse error plus what to do: the closest known configurable or parameter, or quoting."""
    text = str(error).split("\n")[0].rstrip(".")
    if m := re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'", text):
        selector, param = m.groups()
        params = _parameters(selector)
        return f"{text}{suggest(param, params)} (its parameters: {', '.join(params)})"
    if m := re.search(r"No configurable matching '([\w.]+)'", text):
        known = [s for s, _ in gin.config._REGISTRY.items() if s.startswith("flanx.")]  # noqa: SLF001
        return f"{text}{suggest(m.group(1), known)}"
    text = re.sub(r"malformed node or string on line \d+: <ast\.\w+ object at 0x[0-9a-f]+>", "not a Python literal",
                  text)
    if binding and "=" in binding and isinstance(error, SyntaxError):
        name, value = (part.strip() for part in binding.split("=", 1))
        if value and not value.startswith(_LITERAL_START) and value not in ("True", "False", "None"):
            return (f"{text}. gin reads values as Python literals, so a string needs quotes inside the shell's: "
                    f"--gin.{name}=\"'{value}'\"")
        if value.startswith(("{", "[", "(")) and _BARE_WORD.search(value):
            quoted = _BARE_WORD.sub(lambda m: m.group(0) if m.group(0) in ("True", "False", "None")
                                    else f"'{m.group(0)}'", value)
            return (f"{text}. The shell removed the quotes inside the value: quote the whole value, "
                    f"--gin.{name}=\"{quoted}\"")
    return text


def _parameters(selector: str) -> list[str]:
    try:
        fn = gin.config._REGISTRY[selector].wrapped  # noqa: SLF001 - gin has no public signature lookup
        return [p for p in inspect.signature(fn).parameters if p not in ("self", "args", "kwargs")]
    except (KeyError, TypeError, ValueError):
        return []


def _macro_name_of(binding: str) -> str | None:
    """`NAME` for a `NAME = VALUE` binding that sets a macro (no configurable in the key)."""
    m = re.match(r"\s*([A-Za-z_][\w/]*)\s*=", binding)
    return m.group(1) if m else None


def parse_gin(gin_files: list[str], gin_bindings: list[str] = (), finalize: bool = True) -> None:
    """Register configurables, parse files then bindings. Errors name the file/binding and the fix."""
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
            raise ValueError(f"bad gin file {path}: {_explain(e)}") from e
    _OVERRIDDEN_MACROS.clear()
    for binding in gin_bindings:
        try:
            gin.parse_config(binding)
        except Exception as e:
            raise ValueError(f"bad gin override --gin.{binding.replace(' = ', '=')}: {_explain(e, binding)}") from e
        if name := _macro_name_of(binding):
            _OVERRIDDEN_MACROS[name] = binding.replace(" = ", "=")
    if finalize:
        gin.finalize()


# ------------------------------------------------------------------ strict macros


def _macro_ref_name(value) -> str | None:
    """NAME for a `%NAME` reference, else None."""
    if isinstance(value, gin.config.ConfigurableReference) and value.configurable.wrapped is gin.config.macro:
        return "/".join(value.scopes)
    return None


def _is_required_marker(value) -> bool:
    """`%gin.REQUIRED` (a run config marking a macro as one the user must set)."""
    return (isinstance(value, gin.config.ConfigurableReference)
            and value.configurable.wrapped is gin.config._retrieve_constant  # noqa: SLF001
            and value.scoped_configurable_fn() is gin.REQUIRED)


def _macro_table() -> tuple[dict, dict]:
    """(defined: name -> value, in definition order; used: name -> [(selector, param) or None])."""
    defined, used = {}, {}
    for (scope, selector), params in gin.config._CONFIG.items():  # noqa: SLF001 - gin has no public walker
        if selector == "gin.macro":
            defined[scope] = params.get("value")
        for param, value in params.items():
            direct = _macro_ref_name(value)
            for ref in gin.config.iterate_references({0: value}):
                name = _macro_ref_name(ref)
                if name is not None:  # a direct binding site, or None (inside a container or a macro)
                    site = (selector, param) if name == direct and selector != "gin.macro" and not scope else None
                    used.setdefault(name, []).append(site)
    return defined, used


_NO_DEFAULT = object()


def _field_default(sites: list) -> object:
    """The one default of the dataclass fields / parameters a macro is bound to, else _NO_DEFAULT."""
    defaults = set()
    for site in sites:
        if site is None:
            return _NO_DEFAULT
        selector, param = site
        try:
            parameter = inspect.signature(gin.config._REGISTRY[selector].wrapped).parameters.get(param)  # noqa: SLF001
        except (KeyError, TypeError, ValueError):
            return _NO_DEFAULT
        if parameter is None or parameter.default is inspect.Parameter.empty:
            return _NO_DEFAULT
        defaults.add(repr(parameter.default))
        value = parameter.default
    return value if len(defaults) == 1 else _NO_DEFAULT


def prepare_macros(read: tuple[str, ...] = (), hints: dict[str, str] | None = None) -> None:
    """Check and complete the parsed macros before anything is evaluated.

    `read` names macros the caller reads directly (`resolved_macro`); every other
    macro must be used by a binding (`... = %NAME`). Raises ValueError for a macro
    nothing uses (naming the closest known one), and for required macros still
    unset (`%gin.REQUIRED`, or bound to a field without a default), all at once;
    `hints[NAME]` is added when NAME is missing. A used macro that no file sets
    is bound to the default of the field it feeds, so the operative config records it.
    """
    defined, used = _macro_table()
    known = set(used) | set(read)
    unknown = [name for name in defined if name not in known]
    if unknown:
        described = [f"{name} (from --gin.{_OVERRIDDEN_MACROS[name]})" if name in _OVERRIDDEN_MACROS else name
                     for name in unknown]
        close = suggest(unknown[0], sorted(known)) or "."
        raise ValueError(f"unknown gin macro(s): {', '.join(described)}{close} Nothing in the gin files uses "
                         "them (no binding says `... = %NAME`), so they would be ignored; fix the name or remove them.")
    missing = [name for name, value in defined.items() if _is_required_marker(value)]
    for name, sites in used.items():
        if name in defined:
            continue
        default = _field_default(sites)
        if default is _NO_DEFAULT:
            missing.append(name)
        else:
            gin.bind_parameter((name, "gin.macro", "value"), default)
    if missing:
        extra = "".join(f"; {hints[name]}" for name in missing if hints and name in hints)
        raise ValueError(f"required gin macro(s) not set: {', '.join(missing)}. Add `NAME = ...` to a gin "
                         f"file or pass --gin.NAME=VALUE{extra}")


def evaluate(selector: str):
    """Call the configurable `selector` (e.g. 'flanx.train') with its bindings.

    A config class's own check fails as a ValueError whose first line names the
    field and its macro (`TrainConfig.batch_size (BATCH_SIZE) must be ...`).
    """
    try:
        return gin.get_configurable(selector)()
    except (ValueError, RuntimeError) as e:
        raise ValueError(str(e).split("\n  In call to configurable")[0]) from e


# ------------------------------------------------------------------ reading macros without evaluating


class _Unevaluated:
    """A reference (`@x()`, `%Y`) met by `read_macros`; macros stay resolvable by name."""
    def __init__(self, macro: str | None = None):
        self.macro = macro


class _LiteralDelegate(config_parser.ParserDelegate):
    def configurable_reference(self, scoped_name, evaluate):
        return _Unevaluated()

    def macro(self, name):
        return _Unevaluated(name)


def read_macros(gin_files: list[str], bindings: list[str] = ()) -> dict:
    """Literal macro values (`NAME = 12`) set by the files (includes followed) then by
    `NAME = VALUE` bindings; later wins. Nothing is imported or evaluated: a macro set
    to a reference (`@flanx.get_config()`) is left out, `%OTHER` takes OTHER's value."""
    found: dict = {}

    def read(text: str, where: str, seen: set) -> None:
        try:
            statements = list(config_parser.ConfigParser(text, _LiteralDelegate()))
        except Exception as e:  # noqa: BLE001 - gin's parser raises SyntaxError, ValueError, TokenError
            raise ValueError(f"bad gin {where}: {_explain(e, text if where.startswith('override') else None)}") from e
        for st in statements:
            if isinstance(st, config_parser.IncludeStatement):
                path = Path(resolve_gin_file(st.filename)).resolve()
                if path not in seen:
                    read(path.read_text(), f"file {path}", seen | {path})
            elif isinstance(st, config_parser.BindingStatement) and not st.arg_name:
                found["/".join(filter(None, (st.scope, st.selector)))] = st.value

    for name in gin_files:
        path = Path(resolve_gin_file(name)).resolve()
        read(path.read_text(), f"file {path}", {path})
    for binding in bindings:
        read(binding, f"override --gin.{binding.replace(' = ', '=')}", set())

    def literal(value, depth=0):
        if isinstance(value, _Unevaluated):
            return literal(found.get(value.macro), depth + 1) if value.macro and depth < 10 else _Unevaluated()
        return value

    values = {name: literal(value) for name, value in found.items()}
    return {name: value for name, value in values.items() if not isinstance(value, _Unevaluated)}


# ------------------------------------------------------------------ direct reads and records


def _resolve(value, name: str):
    """Evaluate gin references inside a macro's value (`@flanx.get_config()`, `%OTHER_MACRO`)."""
    if isinstance(value, gin.config.ConfigurableReference):  # `%gin.REQUIRED` evaluates to gin.REQUIRED
        fn = value.scoped_configurable_fn
        return _resolve(fn() if value.evaluate else fn, name)
    if isinstance(value, dict):
        return {k: _resolve(v, name) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_resolve(v, name) for v in value)
    return value


_MISSING = object()


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


def reset() -> None:
    """Forget all parsed gin state (for running several entry points in one process)."""
    gin.clear_config()
    _OVERRIDDEN_MACROS.clear()


def _write(model_dir: str, filename: str, text: str) -> str:
    from flanx import io

    out = os.path.join(model_dir, filename)
    with io.open_output(out) as f:
        f.write(text)
    return out


def write_config(model_dir: str, filename: str = "config.gin") -> str:
    """Write every parsed binding and macro (`gin.config_str()`) to MODEL_DIR."""
    return _write(model_dir, filename, gin.config_str())


def write_operative_config(model_dir: str, filename: str = "operative_config.gin") -> str:
    """Write gin's operative config (every value the evaluated configurables used, with the
    macros) to MODEL_DIR; process 0 only is the caller's job."""
    return _write(model_dir, filename, gin.operative_config_str())
