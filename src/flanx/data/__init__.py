"""flanx.data: the FLAN task collection on seqio (templates, task cards, sources, mixtures).

Public API:

- `register_all()`: register every task card in `tasks/` (collections in its
  folders included) and every mixture (`tasks/mixtures.yaml`, `{card}_mix`,
  the FLAN 2021 collection's `flan2021*`) in seqio. Idempotent.
- `register_task_card(card)`: add a dataset from Python: `card` is a dict with
  the same keys as a YAML card, or the path of a YAML card. Returns the names
  of the seqio tasks it registered (see `docs/tasks.md`).
- `get_vocabulary("t5_spm" | "byte")`: the seqio vocabulary.
- `flanx.data.pipeline.get_dataset(...)`: resumable numpy batches for training;
  `get_eval_dataset(...)`: examples for evaluation.
- `flanx.data.mixtures.replay_mixture(target, replay, ratio)`: the forgetting
  study's "target + replay" mixture.

Only this package (and evaluation glue) imports seqio and TensorFlow; the
template engine, card loader, sources and synthetic generators here do not,
so `flanx tasks list` stays fast.
"""
from __future__ import annotations

from flanx.data import hub_sources  # noqa: F401 - registers the tfds and hf source types in sources.SOURCES
from flanx.data import flan_transforms  # noqa: F401 - registers the FLAN collection's row transforms
from flanx.data import source_files  # noqa: F401 - registers the file source types in sources.SOURCES
from flanx.data import flan2022  # noqa: F401 - registers the Flan 2022 sources, transforms and metrics
from flanx.data.vocab import get_vocabulary

_REGISTERED = False

__all__ = ["register_all", "register_task_card", "get_vocabulary"]


def register_all() -> None:
    """Register the whole collection (task cards, then mixtures) in seqio, once."""
    global _REGISTERED
    if _REGISTERED:
        return
    from flanx.data import tasks  # noqa: PLC0415 - seqio/TensorFlow on first use
    tasks.register_collection()
    _register_mixtures()
    _REGISTERED = True


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
