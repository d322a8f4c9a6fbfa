"""Where flanx finds things: real datasets, the task collection and gin configs.

One place resolves data locations. Real datasets live under the directory named
by the `FLANX_DATA_DIR` environment variable (in a checkout: `../shared/data`);
`require_dataset` raises `MissingDataError` naming the variable and the files
it expected, so a missing download is never a mysterious `FileNotFoundError`.
"""
from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "FLANX_DATA_DIR"
# Prepared TFDS / Hugging Face data (`flanx data prepare`); default $FLANX_DATA_DIR/tfds.
TFDS_DIR_ENV = "FLANX_TFDS_DIR"

# dataset -> files (relative to FLANX_DATA_DIR) that must exist to use it.
DATASETS: dict[str, tuple[str, ...]] = {
    "dialogsum": ("dialogsum/dialogsum.train.jsonl", "dialogsum/dialogsum.dev.jsonl",
                  "dialogsum/dialogsum.test.jsonl"),
    "samsum": ("samsum/samsum.train.jsonl", "samsum/samsum.validation.jsonl",
               "samsum/samsum.test.jsonl"),
    "t0": ("t0_train_50k_per_template",),
    "rte": ("classic_cls/rte",),
    "cb": ("classic_cls/cb",),
    "sst2": ("classic_cls/sst2",),
    "trec": ("classic_cls/trec",),
    "agnews": ("classic_cls/agnews",),
    "gsm8k": ("gsm8k/train.jsonl", "gsm8k/test.jsonl"),
    "mmlu": ("mmlu/dev", "mmlu/test"),
    "bbh": ("bbh", "bbh/cot-prompts"),
    "t5_spiece": ("t5_spiece/spiece.model",),
}


class MissingDataError(FileNotFoundError):
    """A dataset flanx needs is not where `FLANX_DATA_DIR` says it is."""


def package_root() -> Path:
    """The directory holding the `flanx` package."""
    return Path(__file__).resolve().parent


def _resource_dir(name: str) -> Path:
    """`tasks/` or `t5x_configs/`: from a source checkout, else installed package data."""
    checkout = package_root().parent.parent / name
    if checkout.is_dir():
        return checkout
    installed = package_root() / "_resources" / name
    if installed.is_dir():
        return installed
    raise FileNotFoundError(f"flanx cannot find its {name}/ directory (looked in {checkout} and {installed})")


def tasks_dir() -> Path:
    """The FLAN task collection: task cards (YAML) and mixtures."""
    return _resource_dir("tasks")


def configs_dir() -> Path:
    """The gin configs (`t5x_configs/`)."""
    return _resource_dir("t5x_configs")


def data_dir(required: bool = False) -> Path | None:
    """The real-data root from `FLANX_DATA_DIR`, or None when unset/absent."""
    value = os.environ.get(DATA_DIR_ENV)
    if value and Path(value).is_dir():
        return Path(value).resolve()
    if required:
        raise MissingDataError(
            f"{DATA_DIR_ENV} is {'unset' if not value else 'not a directory: ' + value}. "
            f"Point it at the folder holding the flanx datasets, e.g. export {DATA_DIR_ENV}=../shared/data")
    return None


def tfds_data_dir() -> Path | None:
    """Where flanx reads prepared TFDS (and saved Hugging Face) data: `$FLANX_TFDS_DIR`, else
    `$FLANX_DATA_DIR/tfds` when that folder exists, else None (TFDS's own default)."""
    value = os.environ.get(TFDS_DIR_ENV)
    if value:
        return Path(value).expanduser().resolve()
    root = data_dir()
    return root / "tfds" if root is not None and (root / "tfds").is_dir() else None


def dataset_available(name: str) -> bool:
    """True when every file `DATASETS[name]` lists exists under FLANX_DATA_DIR."""
    root = data_dir()
    return root is not None and all((root / rel).exists() for rel in DATASETS[name])


def require_dataset(name: str) -> Path:
    """Return FLANX_DATA_DIR for dataset `name`, or raise MissingDataError saying what is missing."""
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    root = data_dir(required=True)
    missing = [rel for rel in DATASETS[name] if not (root / rel).exists()]
    if missing:
        raise MissingDataError(
            f"dataset {name!r} is incomplete under {DATA_DIR_ENV}={root}: missing {', '.join(missing)}. "
            f"Copy the dataset there (see the README, section 'Data').")
    return root
