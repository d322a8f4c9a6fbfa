"""flanx.data: the FLAN task collection on seqio (templates, task cards, sources, mixtures).

Public API:

- `register_all()`: register every task card in `tasks/` (collections in its
  folders included) and every mixture (`tasks/mixtures.yaml`, `{card}_mix`,
  the FLAN 2021 collection's `flan2021*`) in seqio, then the user's cards and
  mixtures named by `FLANX_TASKS_PATH` (`flanx.data.user_tasks`). Idempotent;
  entries added to `FLANX_TASKS_PATH` later are registered by the next call.
- `register_task_card(card)`: add a dataset from Python: `card` is a dict with
  the same keys as a YAML card, or the path of a YAML card. Returns the names
  of the seqio tasks it registered (see `docs/tasks.md`).
- `import_tasks(module_or_path)`: T5X's MIXTURE_OR_TASK_MODULE: import a Python module
  that registers tasks, or register a card file / folder of cards (with its
  `mixtures.yaml`) as a `FLANX_TASKS_PATH` entry would be.
- `get_vocabulary("t5_spm" | "byte")`: the seqio vocabulary.
- `flanx.data.pipeline.get_dataset(...)`: resumable numpy batches for training;
  `get_eval_dataset(...)`: examples for evaluation.
- `flanx.data.mixtures.replay_mixture(target, replay, ratio)`: the forgetting
  study's "target + replay" mixture.

seqio and TensorFlow are imported by this package and by the modules that
read tasks through it (`flanx.entrypoints`, `flanx.eval.evaluator`,
`flanx.eval.breakdown`, `flanx.experiments`), never by `models/` or
`train/` (tests/test_imports.py). Within this package the template engine,
card loader, sources and synthetic generators import neither, so
`flanx tasks list` stays fast.
"""
from __future__ import annotations

from flanx.data import hub_sources  # noqa: F401 - registers the tfds and hf source types in sources.SOURCES
from flanx.data import flan_transforms  # noqa: F401 - registers the FLAN collection's row transforms
from flanx.data import source_files  # noqa: F401 - registers the file source types in sources.SOURCES
from flanx.data import flan2022  # noqa: F401 - registers the Flan 2022 sources, transforms and metrics
from flanx.data.vocab import get_vocabulary

_STATE = {"collection": False, "mixtures": False}  # what register_all has registered

__all__ = ["register_all", "register_task_card", "import_tasks", "get_vocabulary"]


def register_all() -> None:
    """Register the collection and the user's FLANX_TASKS_PATH (task cards, then mixtures) in seqio."""
    from flanx.data import user_tasks  # noqa: PLC0415
    entries = user_tasks.path_entries()  # a bad FLANX_TASKS_PATH fails before anything registers
    if _STATE["mixtures"] and not user_tasks.register_entries(entries):
        return
    from flanx.data import tasks  # noqa: PLC0415 - seqio/TensorFlow on first use
    if not _STATE["collection"]:
        tasks.register_collection()
        _STATE["collection"] = True
    user_tasks.register_entries(entries)
    _STATE["mixtures"] = False  # until every mixtures file (the collection's, then the user's) has registered
    _register_mixtures()
    _STATE["mixtures"] = True


def _register_mixtures() -> None:
    """tasks/mixtures.yaml's mixtures, `{card}_mix`, and the FLAN 2021 collection's mixtures."""
    from flanx.data import flan2021, flan2022_mixture, mixtures  # noqa: PLC0415, F401 - flan2022_mixture: its kind
    mixtures.register_collection_mixtures()
    flan2021.register_mixtures()


def register_task_card(card, *, refresh_mixtures: bool = True) -> list[str]:
    """Register a task card given as a dict (YAML keys) or a YAML path; returns its task names.

    The collection is registered first (so a new card can join its mixtures);
    with `refresh_mixtures`, the collection's mixtures are rebuilt so that a
    card with `group: held_in` and a `submixture` joins `flan2022_heldin` (or
    `synth_multitask` for byte-vocabulary cards), e.g. an NIv2 card fills the
    `niv2` submixture.
    """
    from flanx.data import tasks  # noqa: PLC0415
    register_all()
    names = []
    for c in tasks.cards_from(card):
        names += tasks.register_card(c)
    if refresh_mixtures:
        _register_mixtures()
    return names


def import_tasks(module_or_path, macro: str = "MIXTURE_OR_TASK_MODULE") -> None:
    """Make the tasks of `module_or_path` known: a card file or folder (registered like a FLANX_TASKS_PATH
    entry, with its mixtures.yaml), or a Python module to import; a list does each. None: nothing."""
    import importlib  # noqa: PLC0415
    import os  # noqa: PLC0415
    from pathlib import Path  # noqa: PLC0415

    from flanx.data import user_tasks  # noqa: PLC0415
    if module_or_path is None or module_or_path == "":
        return
    if isinstance(module_or_path, (list, tuple)):
        for item in module_or_path:
            import_tasks(item, macro)
        return
    if not isinstance(module_or_path, str):
        raise user_tasks.TasksPathError(f"{macro} must be a module name, a card file or a folder (a string), "
                                        f"got {module_or_path!r}")
    if os.sep in module_or_path or module_or_path.endswith((".yaml", ".yml")) or Path(module_or_path).exists():
        register_all()
        if user_tasks.register_entries(user_tasks.path_entries(module_or_path, source=macro)):
            _register_mixtures()
        return
    try:
        importlib.import_module(module_or_path)
    except ModuleNotFoundError as e:
        if e.name and module_or_path.startswith(e.name):
            raise user_tasks.TasksPathError(
                f"{macro}={module_or_path!r} is neither a card file or folder (no such path in {os.getcwd()}) nor an "
                f"importable Python module (is its folder on PYTHONPATH?)") from None
        raise
