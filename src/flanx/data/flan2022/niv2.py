"""Super-Natural Instructions v2 (NIv2) for the Flan 2022 `niv2` submixture.

Two forms of the data, one row layout:

- a checkout of github.com/allenai/natural-instructions (source type
  `niv2`): `tasks/<task>.json` holds `Definition`, `Positive Examples`,
  `Negative Examples`, `Instances` ([{id, input, output: [...]}]),
  `Categories`, ...; `splits/default/{train,test}_tasks.txt` list task names.
  Each card reads one task file.
- TFDS `natural_instructions` (source type `niv2_tfds`, one card per task,
  `source.task`): one `train` split holding every task's instances with the
  features id, input, output (the first reference), source, task_name,
  definition. The first read splits it by task into JSON Lines files under a
  cache folder (`source.cache_dir`), so each task reads only its own rows.

Rows: `task_name`, `id`, `definition` (the first Definition), `input`,
`output` (the first reference) and `outputs` (all of them), `source`,
`categories`, and `exemplars`: two worked examples ({input, output}) for
the few-shot format ("definition + 2 positive examples"; each template lays
them out after the definition): the task's first positive examples,
completed from the task's other instances when it has fewer than two (TFDS
rows carry no positive examples).

Each card records FLAN's row count of its task (`niv2_counts.tsv` beside the
card, from FLAN's constants_niv2.py) with `count: recorded`, so mixing rates
(5,000 per task at most) need not read 1,556 task files; its examples say
`_task_name` = the NIv2 task name.

A task file without a Definition, with no Instances, with an Instance whose
`output` is not a list of strings, or a split file naming a task that has
no file, fails naming the file and the field. `MMLU_OVERLAP_TASK_IDS` are
the NIv2 tasks FLAN removes because they are MMLU questions; `niv2_task_names`
lists a collection's tasks without them (cards expand one per task).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import os
import re
import types
import zlib
from pathlib import Path
from typing import Iterator

from flanx import paths
from flanx.data import hub_sources
from flanx.data.flan2022.niv2_counts import COUNTS_FILE, recorded_count, recorded_counts  # noqa: F401 - API
from flanx.data.group_lists import GROUP_LISTS
from flanx.data.sources import DataFormatError, Record, SourceFormatError, register_source

logger = logging.getLogger("flanx")

# The 57 NIv2 tasks that FLAN drops because they are MMLU subjects (task664-667 and task685-737, the
# `*_mmmlu_answer_generation_*` tasks). Origin: FLAN, flan/v2/task_configs.py NIV2_MMLU_TASK_KEYS /
# filter_mmlu_fn (task ids in range(685, 738) + [664, 665, 666, 667]).
MMLU_OVERLAP_TASK_IDS: frozenset[int] = frozenset(range(685, 738)) | frozenset({664, 665, 666, 667})

TASK_CAP = 5000  # FLAN's examples cap per NIv2 task (flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES)
TFDS_NAME = "natural_instructions:1.0.1"
CHECKOUT_DIR = "natural-instructions"  # default checkout folder under FLANX_DATA_DIR
CHECKOUT_ENV = "FLANX_NIV2_DIR"  # or point this at the checkout
DEFAULT_TASK_LISTS = ("splits/default/train_tasks.txt",)
NUM_EXEMPLARS = 2
_TASK_NUMBER = re.compile(r"^task(\d+)_")


def task_number(task: str) -> int | None:
    m = _TASK_NUMBER.match(task)
    return int(m.group(1)) if m else None


def overlaps_mmlu(task: str) -> bool:
    """Whether FLAN removes `task` from its NIv2 submixture (an MMLU subject)."""
    return task_number(task) in MMLU_OVERLAP_TASK_IDS


def card_suffix(task: str) -> str:
    """A card-name-safe form of a task name: `task074_squad1.1_question_generation` -> `task074_squad1_1_...`."""
    return re.sub(r"[^a-z0-9_]", "_", task.lower())


@dataclasses.dataclass
class NIv2Task:
    name: str
    definition: str
    source: str
    categories: list[str]
    positive: list[tuple[str, str]]  # (input, output) of the task's positive examples
    instances: list  # (origin, (id, input, outputs)) or (origin, DataFormatError)


def _first_text(doc: dict, key: str, where: str, required: bool) -> str:
    value = doc.get(key)
    if isinstance(value, list):
        value = value[0] if value else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise SourceFormatError(f"{where}: field {key!r} is missing or empty; an NIv2 task file needs its "
                                    f"task definition (a string, or a list of strings)")
        return ""
    if not isinstance(value, str):
        raise SourceFormatError(f"{where}: field {key!r} must be a string or a list of strings, got "
                                f"{type(value).__name__}")
    return value


def _instance(i: int, inst, where: str, task: str):
    """(id, input, outputs) of Instances[i], or a DataFormatError naming the field."""
    at = f"{where}: Instances[{i}]"
    if not isinstance(inst, dict):
        return DataFormatError(f"{at}: expected an object with input and output, got {type(inst).__name__}")
    if not isinstance(inst.get("input"), str):
        return DataFormatError(f"{at}.input: expected a string, got {type(inst.get('input')).__name__}")
    outputs = inst.get("output")
    if not isinstance(outputs, list) or not outputs or not all(isinstance(o, str) for o in outputs):
        return DataFormatError(f"{at}.output: expected a non-empty list of strings, got {outputs!r:.80}")
    return str(inst.get("id") or f"{task}-{i}"), inst["input"], list(outputs)


def parse_task(doc, task: str, where: str) -> NIv2Task:
    """Validate one task document (a task file's JSON) and keep what flanx uses."""
    if not isinstance(doc, dict):
        raise SourceFormatError(f"{where}: expected a JSON object (an NIv2 task file), got {type(doc).__name__}")
    definition = _first_text(doc, "Definition", where, required=True)
    instances = doc.get("Instances")
    if not isinstance(instances, list) or not instances:
        raise SourceFormatError(f"{where}: field 'Instances' is missing or empty; an NIv2 task file needs a "
                                f"list of instances [{{id, input, output: [...]}}]")
    positive = []
    for j, ex in enumerate(doc.get("Positive Examples") or []):
        out = ex.get("output") if isinstance(ex, dict) else None
        out = out[0] if isinstance(out, list) and out else out
        if not isinstance(ex, dict) or not isinstance(ex.get("input"), str) or not isinstance(out, str):
            raise SourceFormatError(f"{where}: Positive Examples[{j}]: expected an object with string input "
                                    f"and output")
        positive.append((ex["input"], out))
    categories = doc.get("Categories") or []
    return NIv2Task(
        name=task, definition=definition, source=_first_text(doc, "Source", where, required=False),
        categories=[str(c) for c in categories] if isinstance(categories, list) else [str(categories)],
        positive=positive,
        instances=[(f"{where}:Instances[{i}]", _instance(i, inst, where, task)) for i, inst in enumerate(instances)])


def load_task_file(path: Path) -> NIv2Task:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise SourceFormatError(f"{path}: byte at offset {e.start} is not valid UTF-8") from None
    except json.JSONDecodeError as e:
        raise SourceFormatError(f"{path}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") from None
    return parse_task(doc, Path(path).stem, str(path))


def _exemplars(task: NIv2Task, good: list, index: int) -> list[dict]:
    """The row's worked examples ({input, output}): positive examples first, then other instances (chosen
    per row). Templates lay them out (`fewshot` of each template in niv2.yaml)."""
    shots = [{"input": i, "output": o} for i, o in task.positive[:NUM_EXEMPLARS]]
    others = len(good) - 1
    if len(shots) < NUM_EXEMPLARS and others > 0:
        start = zlib.crc32(f"{task.name}|{good[index][0]}".encode()) % others
        for k in range(min(NUM_EXEMPLARS - len(shots), others)):
            j = (index + 1 + (start + k) % others) % len(good)
            shots.append({"input": good[j][1], "output": good[j][2][0]})
    return shots


def task_records(task: NIv2Task) -> Iterator[Record]:
    """(origin, row) for every instance of a parsed task (bad instances as DataFormatErrors)."""
    good = [inst for _, inst in task.instances if not isinstance(inst, Exception)]
    k = 0
    for origin, inst in task.instances:
        if isinstance(inst, Exception):
            yield origin, inst
            continue
        iid, inp, outputs = inst
        yield origin, {"task_name": task.name, "id": iid, "definition": task.definition, "input": inp,
                       "output": outputs[0], "outputs": outputs, "source": task.source,
                       "categories": task.categories, "exemplars": _exemplars(task, good, k)}
        k += 1


@register_source("niv2", files=True)
def read_niv2_task_file(path: Path, card) -> Iterator[Record]:
    """One task file of a natural-instructions checkout (`tasks/<task>.json`)."""
    return task_records(load_task_file(path))


# ----------------------------------------------------------------------------- TFDS form

def _tfds_data_dir(source: dict) -> Path:
    return hub_sources.data_dir_of(types.SimpleNamespace(source=source))


def tfds_prepared(source: dict) -> bool:
    """Whether the TFDS data of `source.name` is prepared in its data_dir (checked without TFDS)."""
    return hub_sources.builder_dir(source.get("name", TFDS_NAME), _tfds_data_dir(source)) is not None


def _cache_dir(source: dict) -> Path:
    if source.get("cache_dir"):
        return Path(source["cache_dir"]).expanduser()
    name = source.get("name", TFDS_NAME).replace(":", "_").replace("/", "_")
    root = paths.data_dir()
    base = root if root is not None else Path("~/.cache/flanx").expanduser()
    return base / "niv2_tfds_by_task" / name


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def split_tfds_by_task(source: dict) -> Path:
    """Write each task's TFDS rows to `<cache>/<task>.jsonl` (once; `_COMPLETE` marks a finished pass)."""
    cache = _cache_dir(source)
    if (cache / "_COMPLETE").is_file():
        return cache
    import tensorflow_datasets as tfds  # noqa: PLC0415 - heavy, only for this form
    name = source.get("name", TFDS_NAME)
    logger.info("NIv2: splitting TFDS %s by task into %s (once)", name, cache)
    cache.mkdir(parents=True, exist_ok=True)
    ds = tfds.load(name, split="train", data_dir=str(_tfds_data_dir(source)),
                   download=bool(source.get("download", False)), try_gcs=False)
    buffers: dict[str, list[str]] = {}
    written: set[str] = set()

    def flush(task: str) -> None:
        mode = "a" if task in written else "w"
        with open(cache / f"{task}.jsonl.part", mode, encoding="utf-8") as f:
            f.writelines(buffers.pop(task))
        written.add(task)

    for ex in tfds.as_numpy(ds):
        row = {k: _text(v) for k, v in ex.items()}
        buffers.setdefault(row["task_name"], []).append(json.dumps(row, ensure_ascii=False) + "\n")
        if len(buffers[row["task_name"]]) >= 1000:
            flush(row["task_name"])
    for task in list(buffers):
        flush(task)
    for task in written:
        os.replace(cache / f"{task}.jsonl.part", cache / f"{task}.jsonl")
    (cache / "_COMPLETE").write_text(f"{len(written)} tasks from {name}\n", encoding="utf-8")
    return cache


def _tfds_task(path: Path, task: str) -> NIv2Task:
    instances, definition, source = [], "", ""
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            row = json.loads(line)
            definition, source = definition or row.get("definition", ""), source or row.get("source", "")
            instances.append({"id": row.get("id"), "input": row.get("input"), "output": [row.get("output")]})
    return parse_task({"Definition": definition, "Source": source, "Instances": instances}, task, str(path))


@register_source("niv2_tfds", files=False, available=lambda card: tfds_prepared(card.source),
                 needs={"task": "the NIv2 task name, e.g. task001_quoref_question_generation"})
def read_niv2_tfds(card, split_spec: dict) -> Iterator[Record]:
    """One task's rows of TFDS `natural_instructions` (its only split, `train`)."""
    task = card.source["task"]
    if split_spec["name"] != "train":
        raise SourceFormatError(f"TFDS {card.source.get('name', TFDS_NAME)} has only a 'train' split, not "
                                f"{split_spec['name']!r}")
    cache = split_tfds_by_task(card.source)
    path = cache / f"{task}.jsonl"
    if not path.is_file():
        known = [p.name[:-len(".jsonl")] for p in cache.glob("*.jsonl")]
        raise SourceFormatError(f"source.task: {task!r} has no rows in TFDS {card.source.get('name', TFDS_NAME)} "
                                f"(split by task in {cache}){_close(task, known)}")
    return task_records(_tfds_task(path, task))


# ----------------------------------------------------------------------------- task lists

def _close(name: str, known) -> str:
    close = difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)
    return f"; did you mean: {', '.join(close)}?" if close else ""


def checkout_root(source: dict) -> Path | None:
    """The natural-instructions checkout: `source.root`, $FLANX_NIV2_DIR, or FLANX_DATA_DIR/natural-instructions."""
    if source.get("root"):
        return Path(source["root"]).expanduser()
    if os.environ.get(CHECKOUT_ENV):
        return Path(os.environ[CHECKOUT_ENV]).expanduser()
    root = paths.data_dir()
    return root / CHECKOUT_DIR if root is not None else None


def read_task_list(list_file: Path, tasks_dir: Path) -> list[str]:
    """Task names of a split file (one per line, `.json` optional); each must have `tasks_dir/<task>.json`."""
    names = []
    known = None
    for n, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        task = line.strip()
        if not task or task.startswith("#"):
            continue
        task = task[:-len(".json")] if task.endswith(".json") else task
        if not (tasks_dir / f"{task}.json").is_file():
            known = known if known is not None else [p.stem for p in tasks_dir.glob("*.json")]
            raise SourceFormatError(f"{list_file}:{n}: unknown task {task!r}: there is no "
                                    f"{tasks_dir / (task + '.json')}{_close(task, known)}")
        names.append(task)
    return names


def tfds_task_list() -> list[str]:
    """The tasks TFDS `natural_instructions` holds (FLAN's NIv2 list, from the installed builder)."""
    from tensorflow_datasets.datasets.natural_instructions import \
        natural_instructions_dataset_builder as builder  # noqa: PLC0415 - heavy, only for this list
    return list(builder._NIV2_TASKS_LIST)  # noqa: SLF001 - the builder's task list is its data


def niv2_task_names(source: dict, task_lists=None) -> list[str]:
    """The NIv2 tasks of a card's source, without FLAN's MMLU tasks; [] when the data is not here.

    Checkout (`type: niv2`): the tasks of `task_lists` (split files relative to
    the checkout; default the English training tasks; `tfds` = the TFDS builder's
    list, i.e. FLAN's). TFDS (`type: niv2_tfds`): the builder's list, once its data is
    prepared in `source.data_dir`.
    """
    if source.get("type") == "niv2_tfds":
        if not tfds_prepared(source):
            logger.info("NIv2: TFDS %s is not prepared in %s; no NIv2 tasks", source.get("name", TFDS_NAME),
                        _tfds_data_dir(source))
            return []
        names = tfds_task_list()
    else:
        root = checkout_root(source)
        if root is None or not (root / "tasks").is_dir():
            logger.info("NIv2: no natural-instructions checkout at %s (set %s or the card's source.root); no NIv2 "
                        "tasks", root, CHECKOUT_ENV)
            return []
        names = []
        for entry in task_lists or DEFAULT_TASK_LISTS:
            if entry == "tfds":
                listed = [t for t in tfds_task_list() if (root / "tasks" / f"{t}.json").is_file()]
            else:
                listed = read_task_list(root / entry, root / "tasks")
            names += [t for t in listed if t not in names]
    return [t for t in names if not overlaps_mmlu(t)]


@GROUP_LISTS.register("niv2_tasks")
def niv2_groups(raw_card: dict, groups: dict) -> list[dict]:
    """`groups: {list: niv2_tasks, task_lists: [...], tasks: [...]}`: one card per NIv2 task found here.

    No data, no cards. `tasks` keeps only the named tasks.

    A card whose `local:` block reads a checkout (`type: niv2`) takes the
    checkout's tasks when there is one (its root is filled in); otherwise the
    card's own source decides (a TFDS source: the builder's tasks once prepared).
    """
    local = raw_card.get("local") if isinstance(raw_card.get("local"), dict) else {}
    checkout = dict(local.get("source") or {}) if (local.get("source") or {}).get("type") == "niv2" else None
    source = dict(raw_card.get("source") or {})
    extra: dict = {}
    if source.get("type") == "niv2":
        checkout, source = source, None
    root = checkout_root(checkout) if checkout is not None else None
    if root is not None and (root / "tasks").is_dir():
        names = niv2_task_names(dict(checkout, type="niv2", root=str(root)), groups.get("task_lists"))
        extra = {"local": {"source": {"root": str(root)}}} if source is not None else {"source": {"root": str(root)}}
    elif source is not None:
        names = niv2_task_names(source)
    else:
        names = niv2_task_names(dict(checkout or {}, type="niv2"))
    only = groups.get("tasks")
    if only is not None:
        unknown = [t for t in only if t not in names]
        if unknown:
            raise SourceFormatError(f"task card {raw_card.get('name')!r}: groups.tasks: {unknown[0]!r} is not an NIv2 "
                                    f"task here (or is one of FLAN's MMLU tasks){_close(unknown[0], names)}")
        names = [t for t in names if t in set(only)]
    entries, seen = [], {}
    for task in names:
        suffix = card_suffix(task)
        if suffix in seen:
            raise SourceFormatError(f"NIv2 tasks {seen[suffix]!r} and {task!r} give the same card name "
                                    f"{raw_card.get('name')}_{suffix}; list only one of them")
        seen[suffix] = task
        entries.append({"group": task, "suffix": suffix, "set": _task_settings(task, extra)})
    return entries


def _task_settings(task: str, extra: dict) -> dict:
    """Card keys of one NIv2 task's card: FLAN's task name, and FLAN's row count as the rate's count (so
    mixing rates need not read every task file; a task FLAN did not record is counted from its data)."""
    settings = {**extra, "metadata": {"task_name": task}}
    n = recorded_count(task)
    if n is not None:
        train = {"train": {"num_examples": n, "count": "recorded"}}
        settings["splits"] = train
        settings["local"] = {**settings.get("local", {}), "splits": train}
    return settings
