"""P3 (bigscience/P3) for Flan 2022's `t0` submixture (T0-SF): source, row transform, subtask lists.

P3 holds T0's prompted datasets, one subtask per (dataset, prompt), e.g.
`adversarial_qa_dbert_based_on`; each row has the prompt already rendered
(`inputs_pretokenized`), its answer (`targets_pretokenized`) and, for
multiple choice, `answer_choices`. Source type `p3` reads one subtask
(`source.subtask`) from, in this order:

- `source.dataset`: an in-memory mapping subtask -> {split: rows} (e.g. a
  dict of `datasets.DatasetDict`), for tests and data already loaded;
- a P3 checkout (`source.root`, else $FLANX_P3_DIR, else FLANX_DATA_DIR/P3
  when present): a clone of huggingface.co/datasets/bigscience/P3 with its
  `data/<subtask>/{split}.tfrecord-*` and `info.{split}.json` files;
- subtasks saved with `datasets.save_to_disk` under
  `<flanx TFDS folder>/hf/bigscience/P3/<subtask>` (where `flanx data
  prepare` saves Hugging Face data);
- Hugging Face `datasets.load_dataset(source.path or "bigscience/P3",
  subtask, split=..., revision=source.revision)` (network or the local HF cache).

Row transform `p3` does what FLAN does to a P3 row: the prompt with its
newlines turned into spaces (`question`), the answer (`answer`) and the
answer choices (`options`, stripped; the answer must be one of them).
`t0_sf_subtasks` lists the T0-SF subtasks (P3 minus the datasets FLAN 2021
already has, `t0_sf_data`); postprocessors `take_first_line` and
`take_first_word` are FLAN's for P3's short answers.
"""
from __future__ import annotations

import difflib
import json
import logging
import os
from pathlib import Path
from typing import Iterator

from flanx import paths
from flanx.data.group_lists import GROUP_LISTS
from flanx.data.flan2022.t0_sf_data import P3_DATASETS_IN_FLAN2021, T0_SF_SUBTASKS
from flanx.data.sources import DataFormatError, Record, SourceFormatError, register_source
from flanx.data.transforms import ROW_TRANSFORMS
from flanx.eval.metrics import POSTPROCESSORS

logger = logging.getLogger("flanx")

TASK_CAP = 20000  # FLAN's examples cap per T0-SF subtask (flan/v2/mixtures.py DEFAULT_MIXTURE_MAX_EXAMPLES)
HUB_PATH = "bigscience/P3"
CHECKOUT_DIR = "P3"  # default checkout folder under FLANX_DATA_DIR
CHECKOUT_ENV = "FLANX_P3_DIR"
HUB_ENV = "FLANX_P3_HUB"  # "1": read T0-SF subtasks from the Hugging Face Hub (or its cache)
TEXT_FEATURES = ("inputs_pretokenized", "targets_pretokenized")


def _close(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.6)
    return f"; did you mean: {', '.join(close)}?" if close else ""


def p3_dataset(subtask: str) -> str | None:
    """The P3 dataset a subtask belongs to (the longest known dataset id it starts with), or None."""
    found = [d for d in P3_DATASETS_IN_FLAN2021 if subtask.startswith(d + "_")]
    return max(found, key=len) if found else None


def is_t0_sf(subtask: str) -> bool:
    """FLAN's rule: a P3 subtask of a dataset not in FLAN 2021, and not a `_score_eval` variant."""
    dataset = p3_dataset(subtask)
    return dataset is not None and not P3_DATASETS_IN_FLAN2021[dataset] and not subtask.endswith("_score_eval")


def checkout_root(source: dict) -> Path | None:
    """A P3 checkout (`source.root`, $FLANX_P3_DIR, or FLANX_DATA_DIR/P3), when it has a `data/` folder."""
    if source.get("root"):
        root = Path(source["root"]).expanduser()
    elif os.environ.get(CHECKOUT_ENV):
        root = Path(os.environ[CHECKOUT_ENV]).expanduser()
    else:
        base = paths.data_dir()
        root = base / CHECKOUT_DIR if base is not None else None
    return root if root is not None and (root / "data").is_dir() else None


def saved_root(source: dict) -> Path | None:
    """Where `flanx data prepare` saves Hugging Face data of P3 (`<TFDS folder>/hf/bigscience/P3`), if there."""
    base = paths.tfds_data_dir()
    root = Path(base) / "hf" / source.get("path", HUB_PATH) if base is not None else None
    return root if root is not None and root.is_dir() else None


def available_subtasks(source: dict) -> list[str] | None:
    """The subtasks a P3 source can read here, or None when that is any P3 subtask (the Hub)."""
    if source.get("dataset") is not None:
        return sorted(source["dataset"])
    for root in (checkout_root(source), saved_root(source)):
        if root is not None:
            folder = root / "data" if root == checkout_root(source) else root
            return sorted(p.name for p in folder.iterdir() if p.is_dir())
    if source.get("hub") or os.environ.get(HUB_ENV) == "1":
        return None
    return []


def t0_sf_subtasks(source: dict, only=None) -> list[str]:
    """The T0-SF subtasks a P3 source can read here (optionally only those in `only`)."""
    if only is not None:
        unknown = [s for s in only if s not in T0_SF_SUBTASKS]
        if unknown:
            dataset = p3_dataset(unknown[0])
            why = (f"is a P3 subtask of {dataset}, a FLAN 2021 dataset, so it is not in T0-SF"
                   if dataset and P3_DATASETS_IN_FLAN2021[dataset] else
                   "is not a T0-SF subtask (FLAN's P3 prompts, flanx.data.flan2022.t0_sf_data)")
            raise SourceFormatError(f"groups.subtasks: {unknown[0]!r} {why}{_close(unknown[0], T0_SF_SUBTASKS)}")
    wanted = list(only) if only is not None else list(T0_SF_SUBTASKS)
    here = available_subtasks(source)
    if here is not None:
        wanted = [s for s in wanted if s in set(here)]
        if not wanted:
            logger.info("P3: no T0-SF subtasks here (set %s, the card's source.root or source.hub: true)",
                        CHECKOUT_ENV)
    return wanted


# ----------------------------------------------------------------------------- reading

def _in_memory(source: dict, subtask: str, split: str):
    dataset = source["dataset"]
    if subtask not in dataset:
        raise SourceFormatError(f"source.subtask: unknown P3 subtask {subtask!r}; the in-memory dataset has "
                                f"{len(dataset)} subtask(s){_close(subtask, dataset)}")
    splits = dataset[subtask]
    if split not in splits:
        raise SourceFormatError(f"source.subtask {subtask!r}: no split {split!r} (splits: {', '.join(splits)})")
    return splits[split]


def _checkout_rows(root: Path, subtask: str, split: str) -> Iterator[tuple[str, dict]]:
    folder = root / "data" / subtask
    if not folder.is_dir():
        known = [p.name for p in (root / "data").iterdir() if p.is_dir()]
        raise SourceFormatError(f"source.subtask: unknown P3 subtask {subtask!r}: there is no {folder}"
                                f"{_close(subtask, known)}")
    info_file = folder / f"info.{split}.json"
    files = sorted(folder.glob(f"{split}.tfrecord-*"))
    if not info_file.is_file() or not files:
        raise paths.MissingDataError(f"P3 subtask {subtask!r}: no {split!r} split in {folder} (expected "
                                     f"{info_file.name} and {split}.tfrecord-* files; fetch them with git lfs pull)")
    features = json.loads(info_file.read_text(encoding="utf-8")).get("features", {})
    missing = [f for f in TEXT_FEATURES if f not in features]
    if missing:
        raise SourceFormatError(f"{info_file}: features lack {missing[0]!r} (features: {', '.join(features)})")
    import tensorflow as tf  # noqa: PLC0415 - only this form needs TFRecords
    parse = {f: tf.io.FixedLenFeature([], tf.string) for f in TEXT_FEATURES}  # tf.Example keys -> their types
    if "answer_choices" in features:
        parse["answer_choices"] = tf.io.FixedLenSequenceFeature([], tf.string, allow_missing=True)
    ds = tf.data.TFRecordDataset([str(f) for f in files]).map(lambda pb: tf.io.parse_single_example(pb, parse))
    for i, ex in enumerate(ds.as_numpy_iterator()):
        row = {k: [c.decode("utf-8") for c in v] if k == "answer_choices" else v.decode("utf-8")
               for k, v in ex.items()}
        yield f"{files[0].parent}/{split}.tfrecord[{i}]", row


def _saved(root: Path, subtask: str, split: str):
    if not (root / subtask).is_dir():
        known = [p.name for p in root.iterdir() if p.is_dir()]
        raise SourceFormatError(f"source.subtask: unknown P3 subtask {subtask!r}: there is no {root / subtask}"
                                f"{_close(subtask, known)}")
    import datasets  # noqa: PLC0415 - optional
    saved = datasets.load_from_disk(str(root / subtask))
    if split not in saved:
        raise SourceFormatError(f"source.subtask {subtask!r}: no split {split!r} in {root / subtask}")
    return saved[split]


def _hub_rows(source: dict, subtask: str, split: str):
    import datasets  # noqa: PLC0415 - optional, only for the Hub form
    path = source.get("path", HUB_PATH)
    try:
        return datasets.load_dataset(path, subtask, split=split, revision=source.get("revision"))
    except (ValueError, FileNotFoundError, RuntimeError) as e:  # unknown config, missing files, scripts refused
        hint = _close(subtask, T0_SF_SUBTASKS) if subtask not in T0_SF_SUBTASKS else ""
        if "script" in str(e).lower():
            hint += ("; a loading-script dataset needs `source.revision` naming a revision without the script "
                     "(e.g. refs/convert/parquet), or use a P3 checkout (source.root)")
        raise SourceFormatError(f"source.subtask {subtask!r}: Hugging Face {path} could not load it "
                                f"({' '.join(str(e).split())[:300]}){hint}") from None


def _p3_available(card) -> bool:
    here = available_subtasks(card.source)
    return here is None or card.source.get("subtask") in here


@register_source("p3", files=False, available=_p3_available,
                 needs={"subtask": "the P3 subtask, e.g. adversarial_qa_dbert_based_on"})
def read_p3(card, split_spec: dict) -> Iterator[Record]:
    """One P3 subtask's split: from `source.dataset`, a P3 checkout, or the Hugging Face Hub."""
    source, subtask, split = card.source, card.source["subtask"], split_spec["name"]
    if source.get("dataset") is not None:
        rows, label = _in_memory(source, subtask, split), f"p3:{subtask}/{split}"
    elif checkout_root(source) is not None:
        yield from _checkout_rows(checkout_root(source), subtask, split)
        return
    elif saved_root(source) is not None:
        rows, label = _saved(saved_root(source), subtask, split), f"p3:{subtask}/{split}"
    else:
        rows, label = _hub_rows(source, subtask, split), f"hf:{source.get('path', HUB_PATH)}/{subtask}/{split}"
    for i, row in enumerate(rows):
        yield f"{label}[{i}]", dict(row)


# ----------------------------------------------------------------------------- rows and answers

@ROW_TRANSFORMS.register("p3")
def p3_row(row: dict) -> dict:
    """A P3 row as FLAN prepares it: `question` (newlines -> spaces), `answer`, `options` (answer choices)."""
    prompt, target = row["inputs_pretokenized"], row["targets_pretokenized"]
    for key, value in (("inputs_pretokenized", prompt), ("targets_pretokenized", target)):
        if not isinstance(value, str):
            raise DataFormatError(f"field {key!r}: expected a string, got {type(value).__name__}")
    answer = target.replace("\n", "").strip()
    if not answer:
        raise DataFormatError("field 'targets_pretokenized' is empty")
    choices = row.get("answer_choices")
    options = [str(c).replace("\n", "").strip() for c in (choices if choices is not None else [])]
    if options and answer not in options:
        raise DataFormatError(f"field 'targets_pretokenized': answer {answer!r} is not one of answer_choices "
                              f"{options[:5]}")
    return dict(row, question=prompt.replace("\n", " ").strip(), answer=answer, options=options)


@POSTPROCESSORS.register("take_first_line")
def take_first_line(text, example=None, is_target=False) -> str:
    """The first line, stripped (FLAN's postprocessor for P3 answers)."""
    text = text.decode("utf-8") if isinstance(text, bytes) else str(text)
    return text.strip().split("\n", 1)[0].strip()


@POSTPROCESSORS.register("take_first_word")
def take_first_word(text, example=None, is_target=False) -> str:
    """The first word (FLAN's postprocessor for P3 subtasks whose answers are one token)."""
    words = (text.decode("utf-8") if isinstance(text, bytes) else str(text)).split()
    return words[0] if words else ""


def subtask_settings(subtask: str) -> dict:
    """Card keys of one T0-SF subtask: answer options for `mc_options`, FLAN's postprocessor, its row count
    (recorded: mixing rates use it even with the data here), FLAN's task name for the examples."""
    _, kind, train_rows, target_tokens = T0_SF_SUBTASKS[subtask]
    # P3's row count weighs the mixture without reading the subtask (amazon_polarity: 3.6M rows).
    settings = {"splits": {"train": {"num_examples": train_rows, "count": "recorded"}},
                "metadata": {"task_name": subtask}}
    if kind == "mc_options":
        settings.update(fields={"options": "options"}, options_field="options", answer_field="answer")
    elif kind == "qa":
        settings["postprocess"] = "take_first_word" if target_tokens == 1 else "take_first_line"
    return settings


@GROUP_LISTS.register("t0_sf")
def t0_sf_groups(raw_card: dict, groups: dict) -> list[dict]:
    """`groups: {list: t0_sf, subtasks: [...]}`: one card per T0-SF subtask the card's P3 source has here."""
    only = groups.get("subtasks")
    if only is not None and (not isinstance(only, list) or not all(isinstance(s, str) for s in only)):
        raise SourceFormatError(f"task card {raw_card.get('name')!r}: groups.subtasks: expected a list of P3 subtask "
                                f"names")
    return [{"group": s, "suffix": s.lower().replace(".", "_"), "set": subtask_settings(s)}
            for s in t0_sf_subtasks(dict(raw_card.get("source") or {}), only)]
