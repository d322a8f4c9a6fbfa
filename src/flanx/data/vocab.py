"""Vocabularies: the T5 SentencePiece model and the file-free byte vocabulary.

`VOCABULARIES` registers the names a card's `vocabulary:` may take;
`get_vocabulary("t5_spm" | "byte")` returns the seqio vocabulary a task uses;
`length_fn(name)` counts tokens in plain Python (for few-shot budgets and
`flanx tasks show`) without TensorFlow. The SentencePiece file is
`$FLANX_SPM_PATH` when set, else `$FLANX_DATA_DIR/t5_spiece/spiece.model`;
it is opened only when first used, so tasks register without data.
Both vocabularies reserve 0 = pad, 1 = EOS, 2 = UNK. The T5 model has 32,000
pieces plus 100 extra ids (32,100; FLAN-T5 pads its embedding to 32,128);
the byte vocabulary has 3 + 256 = 259 ids.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any, Callable

from flanx import paths
from flanx.registry import Registry, UnknownName

SPM_PATH_ENV = "FLANX_SPM_PATH"
SPM_EXTRA_IDS = 100
BYTE_OFFSET = 3


def spm_path(required: bool = True) -> Path:
    """The T5 SentencePiece model file; MissingDataError when `required` and it is not there."""
    override = os.environ.get(SPM_PATH_ENV)
    if override:
        path = Path(override)
        if required and not path.is_file():
            raise paths.MissingDataError(f"{SPM_PATH_ENV}={override} is not a file. Point it at a "
                                         f"SentencePiece model (e.g. the T5 spiece.model) or unset it")
        return path
    if required:
        return paths.require_dataset("t5_spiece") / "t5_spiece" / "spiece.model"
    root = paths.data_dir() or Path(os.environ.get(paths.DATA_DIR_ENV) or "FLANX_DATA_DIR-is-unset")
    return root / "t5_spiece" / "spiece.model"


@functools.lru_cache(maxsize=None)
def _seqio_spm(path: str):
    import seqio  # noqa: PLC0415 - TensorFlow only when tokenizing
    return seqio.SentencePieceVocabulary(path, extra_ids=SPM_EXTRA_IDS)


@functools.lru_cache(maxsize=None)
def _seqio_byte():
    import seqio  # noqa: PLC0415
    return seqio.ByteVocabulary()


@functools.lru_cache(maxsize=None)
def _spm_processor(path: str):
    import sentencepiece as spm  # noqa: PLC0415
    return spm.SentencePieceProcessor(model_file=path)


@dataclasses.dataclass(frozen=True)
class VocabularyType:
    """What a card's `vocabulary: NAME` gives: seqio's vocabulary, and plain-Python token ids."""

    seqio: Callable[[bool], Any]  # required -> seqio.Vocabulary (required=False: do not check files yet)
    encode: Callable[[str], list]  # text -> token ids (no EOS), equal to the seqio vocabulary's


VOCABULARIES: Registry[VocabularyType] = Registry(
    "vocabulary", hint="Register one with flanx.data.vocab.VOCABULARIES.register('name', VocabularyType(...))")
VOCABULARIES.register("byte", VocabularyType(
    seqio=lambda required: _seqio_byte(), encode=lambda text: [b + BYTE_OFFSET for b in text.encode("utf-8")]))
VOCABULARIES.register("t5_spm", VocabularyType(
    seqio=lambda required: _seqio_spm(str(spm_path(required))),
    encode=lambda text: list(_spm_processor(str(spm_path())).encode(text))))


def get_vocabulary(name: str, required: bool = True):
    """The seqio vocabulary named `name` (a `VOCABULARIES` key: "t5_spm", "byte").

    With `required=False` the SentencePiece file is not checked (tasks register
    before data is present; seqio opens the file only when tokenizing).
    """
    return _vocabulary(name).seqio(required)


def _vocabulary(name: str) -> VocabularyType:
    try:
        return VOCABULARIES[name]
    except UnknownName as e:
        raise ValueError(str(e)) from None


def length_fn(name: str) -> Callable[[str], int]:
    """Token count of a string under vocabulary `name` (no EOS), in plain Python."""
    if name == "byte":
        return lambda text: len(text.encode("utf-8"))
    if name == "t5_spm":
        proc = _spm_processor(str(spm_path()))
        return lambda text: len(proc.encode(text))
    encode = _vocabulary(name).encode
    return lambda text: len(encode(text))


def encode(name: str, text: str) -> list[int]:
    """Token ids of `text` (no EOS) in plain Python; equals the seqio vocabulary's encoding."""
    return _vocabulary(name).encode(text)


def vocabulary_record(name: str) -> dict:
    """What an export needs to rebuild vocabulary `name` outside flanx (`MODEL_DIR/vocabulary.json`):
    its type (`sentencepiece`, `byte` or `other`), size, and the SentencePiece model file and extra ids."""
    v = get_vocabulary(name)
    record = {"name": name, "vocab_size": int(v.vocab_size), "pad_id": 0, "eos_id": 1, "unk_id": 2}
    model_file = getattr(v, "sentencepiece_model_file", None)
    if model_file:
        record.update(type="sentencepiece", sentencepiece_model=str(Path(model_file).resolve()),
                      extra_ids=int(getattr(v, "extra_ids", 0) or 0))
    else:
        record["type"] = "byte" if type(v).__name__ == "ByteVocabulary" else "other"
    return record
