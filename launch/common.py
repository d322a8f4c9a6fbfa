"""What the flanx launchers share: argument passthrough, command plans, mesh pre-flight.

Every launcher builds a *plan*: an ordered list of shell command lines. With
`--dry_run` the plan is printed (one command per line, nothing else), so the
output is itself a bash script that does what the launcher would do; without
it the same lines run one after another under bash, stopping at the first
failure (steps marked `always` still run, e.g. tearing a TPU VM down).

Launchers use only the standard library plus `flanx.io` and `flanx.mesh`
(themselves stdlib-only at import), found in this checkout's `src/` when
flanx is not installed, so they run on a laptop with nothing but gcloud or
sbatch. The
mesh pre-flight reads gin files with gin's own parser (`flanx.gin_utils`)
when gin-config is installed, and is skipped (the trainer repeats it) when not.
"""
from __future__ import annotations

import dataclasses
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIGS_DIR = REPO_ROOT / "t5x_configs"

try:
    from flanx import io, mesh
except ImportError:  # launching from a checkout where flanx is not installed
    sys.path.insert(0, str(REPO_ROOT / "src"))
    from flanx import io, mesh


class LaunchError(Exception):
    """Bad launcher input; the message says what to change."""


@dataclasses.dataclass
class Step:
    """One shell command line; `always` steps run even after an earlier failure."""
    command: str
    always: bool = False


def run_plan(steps: list[Step], dry_run: bool, out=None) -> int:
    """Print the steps (dry run) or run them in order under bash; return the first failing exit code."""
    out = out or sys.stdout
    if dry_run:
        for step in steps:
            print(step.command, file=out)
        return 0
    status = 0
    for step in steps:
        if status and not step.always:
            continue
        print(f"+ {step.command}", file=sys.stderr, flush=True)
        rc = subprocess.run(step.command, shell=True, executable="/bin/bash").returncode
        if rc and not status:
            print(f"flanx launcher: command failed with exit code {rc}: {step.command}", file=sys.stderr)
            status = rc
    return status


# ------------------------------------------------------------ trainer arguments

@dataclasses.dataclass
class TrainArgs:
    """The trainer's command line, split so launchers can inspect and rewrite it."""
    gin_files: list[str]
    gin_bindings: list[tuple[str, str]]  # (NAME, VALUE) from --gin.NAME=VALUE, in order
    model_dir: str | None
    other: list[str]  # anything else, passed through untouched

    def argv(self, gin_files: list[str] | None = None) -> list[str]:
        files = self.gin_files if gin_files is None else gin_files
        args = [f"--gin_file={f}" for f in files]
        if self.model_dir is not None:
            args.append(f"--gin.MODEL_DIR={gin_string(self.model_dir)}")
        args += [f"--gin.{name}={value}" for name, value in self.gin_bindings]
        return args + self.other


def gin_string(value: str) -> str:
    """A gin string literal: gs://b/run -> "gs://b/run"."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def split_train_args(argv: list[str], model_dir: str | None = None) -> TrainArgs:
    """Separate `--gin_file`, `--gin.NAME=VALUE` (MODEL_DIR taken out) and the rest of argv."""
    files, bindings, other = [], [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("--gin_file="):
            files.append(arg.split("=", 1)[1])
        elif arg == "--gin_file":
            value = next(it, None)
            if value is None:
                raise LaunchError("--gin_file needs a value")
            files.append(value)
        elif arg.startswith("--gin.") and "=" in arg:
            name, value = arg[len("--gin."):].split("=", 1)
            if name == "MODEL_DIR":
                if model_dir is not None and _unquote(value) != model_dir:
                    raise LaunchError(f"--model_dir={model_dir} and --gin.MODEL_DIR={value} disagree: give one")
                model_dir = _unquote(value)
            else:
                bindings.append((name, value))
        else:
            other.append(arg)
    return TrainArgs(files, bindings, model_dir, other)


def require_model_dir(args: TrainArgs, remote_only: bool = False) -> str:
    if not args.model_dir:
        raise LaunchError("no run directory: pass --model_dir=DIR (or --gin.MODEL_DIR=\"DIR\")")
    if remote_only and not io.is_remote(args.model_dir):
        raise LaunchError(
            f"MODEL_DIR={args.model_dir} is a local path, but the workers of a multi-host slice share no disk: "
            f"use a bucket, e.g. --model_dir=gs://YOUR_BUCKET/flanx/RUN_NAME")
    return args.model_dir


def parse_env_pairs(pairs: list[str]) -> dict[str, str]:
    """`--env KEY=VALUE` (repeatable) -> dict, with a clear error for a missing '='."""
    env = {}
    for pair in pairs or []:
        key, eq, value = pair.partition("=")
        if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise LaunchError(f"--env {pair!r}: expected KEY=VALUE")
        env[key] = value
    return env


def env_assignments(env: dict[str, str]) -> str:
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in env.items())


# ------------------------------------------------------------ gin files and mesh pre-flight

def resolve_gin_file(name: str) -> Path | None:
    """Where a `--gin_file` lives here: as given, or under t5x_configs/ (as flanx.gin_utils finds it)."""
    stripped = name[len("t5x_configs/"):] if name.startswith("t5x_configs/") else name
    for candidate in (Path(name), CONFIGS_DIR / stripped, CONFIGS_DIR / (stripped + ".gin")):
        if candidate.is_file():
            return candidate
    return None


def packaged_name(name: str) -> str | None:
    """`name` relative to flanx's own t5x_configs/ (shipped inside the package), or None for a user file."""
    path = resolve_gin_file(name)
    if path is None:
        return None
    try:
        return str(path.resolve().relative_to(CONFIGS_DIR.resolve()))
    except ValueError:
        return None


def integer_macros(gin_files: list[str], bindings: list[tuple[str, str]]) -> dict[str, int] | None:
    """Integer gin macros (`NAME = 12`) from the files, their includes, then overrides; later wins.

    Read with gin's own parser (`flanx.gin_utils.read_macros`), nothing evaluated.
    None when gin is not installed here (the trainer repeats the checks at start-up).
    """
    try:
        from flanx import gin_utils
    except ImportError:  # a bare laptop with only gcloud / sbatch
        return None
    try:
        macros = gin_utils.read_macros(gin_files, [f"{name} = {value}" for name, value in bindings])
    except (FileNotFoundError, ValueError) as e:
        raise LaunchError(str(e)) from None
    return {name: value for name, value in macros.items()
            if isinstance(value, int) and not isinstance(value, bool)}


def preflight_mesh(args: TrainArgs, num_devices: int, num_processes: int) -> dict[str, int] | None:
    """Check MESH_DATA/MESH_FSDP/MESH_MODEL and BATCH_SIZE against the devices being launched.

    Runs only when a mesh macro is set somewhere; the trainer repeats the check at start-up.
    """
    macros = integer_macros(args.gin_files, args.gin_bindings)
    if macros is None:
        print("flanx launcher: gin-config is not installed here, so the mesh pre-flight is skipped "
              "(the trainer checks the mesh at start-up)", file=sys.stderr)
        return None
    if not any(m in macros for m in mesh.MESH_MACROS.values()):
        return None
    shape = {axis: macros.get(macro, mesh.MESH_DEFAULTS[axis])
             for axis, macro in mesh.MESH_MACROS.items()}
    try:
        return mesh.validate_mesh(shape, num_devices, macros.get("BATCH_SIZE"), num_processes)
    except ValueError as e:
        raise LaunchError(f"{e} (launching {num_devices} devices in {num_processes} processes)") from None


def main_wrapper(main, argv: list[str] | None = None):
    """Run a launcher's main(argv): LaunchError is a one-line message and exit code 2; other known errors
    go through flanx's error boundary (`flanx.errors.run`, `--debug` shows the traceback)."""
    from flanx import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return errors.run(main, argv, prog=os.path.basename(sys.argv[0]))
    except LaunchError as e:
        if errors.debug_requested(argv):
            raise
        print(f"{os.path.basename(sys.argv[0])}: error: {e}", file=sys.stderr)
        return 2
