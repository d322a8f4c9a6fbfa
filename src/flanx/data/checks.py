"""Start-up checks of a run's data against its model and feature lengths, with the fix named.

- `check_vocabulary(name, vocab_size, model)`: the vocabulary of a task or
  mixture must fit the model's `vocab_size` (a SentencePiece card on
  `models/tiny.gin`'s 384 ids would train on ids that have no embedding).
  Raises `VocabularyMismatch` naming the model gins that fit.
- `length_report(name, lengths)` / `warn_truncation(name, lengths)`: token
  lengths (with EOS) of a sample of the training examples, their percentiles
  and the share that `TASK_FEATURE_LENGTHS` truncates; a warning when more
  than `TRUNCATION_WARNING_SHARE` of the inputs or targets are cut.

Both read flanx's own registries (cards, mixtures) and render examples in
Python (cached on the card, so the training pipeline reuses them); nothing
here builds a TensorFlow dataset.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import random
import re

logger = logging.getLogger("flanx")

TRUNCATION_WARNING_SHARE = 0.05  # warn when more than this share of sampled examples is truncated
SAMPLE_SIZE = 2000               # examples measured, spread over the mixture's tasks by their rates
PERCENTILES = (50, 90, 95, 99, 100)


class VocabularyMismatch(ValueError):
    """A task's vocabulary has more ids than the model's embedding."""


def leaf_tasks(name: str) -> list[str]:
    """The seqio tasks under a task or (nested) mixture name, in order, without repeats."""
    from flanx.data import mixtures, register_all, tasks  # noqa: PLC0415

    register_all()
    if name in tasks.SPECS:
        return [name]
    out: list[str] = []
    for member, _ in mixtures.get_mixture(name):  # KeyError with close matches for an unknown name
        out += [t for t in leaf_tasks(member) if t not in out]
    return out


def vocabularies(name: str) -> list[str]:
    """The vocabulary names (card `vocabulary:`) used by the tasks under `name`."""
    from flanx.data import tasks  # noqa: PLC0415

    found: list[str] = []
    for task in leaf_tasks(name):
        vocab = tasks.get_card(tasks.get_spec(task).card).vocabulary
        if vocab not in found:
            found.append(vocab)
    return found


def vocabulary_size(vocabulary: str) -> int:
    from flanx.data import get_vocabulary  # noqa: PLC0415

    return int(get_vocabulary(vocabulary).vocab_size)


def model_gins_for(vocab_size: int, limit: int = 3) -> list[tuple[str, int]]:
    """(gin file, its vocab_size) of the smallest model gins in t5x_configs/models/ with room for `vocab_size` ids."""
    from flanx import paths  # noqa: PLC0415
    from flanx.models.config import PRESETS  # noqa: PLC0415

    found = []
    for path in sorted((paths.configs_dir() / "models").glob("*.gin")):
        m = re.search(r"^flanx\.get_config\.name\s*=\s*'(\w+)'", path.read_text(), re.MULTILINE)
        if not m or m.group(1) not in PRESETS:
            continue
        c = PRESETS[m.group(1)]
        if c.vocab_size >= vocab_size:
            size = c.d_model * (c.d_ff + c.num_heads * c.head_dim) * (c.num_encoder_layers + c.num_decoder_layers)
            found.append((size, f"models/{path.name}", c.vocab_size))
    return [(name, vocab) for _, name, vocab in sorted(found)[:limit]]


def check_vocabulary(name: str, vocab_size: int, model: str = "the model", macro: str = "MIXTURE_OR_TASK_NAME",
                     fix: str | None = None) -> None:
    """Raise VocabularyMismatch when a task under `name` has token ids the model has no embedding for."""
    for vocabulary in vocabularies(name):
        check_vocabulary_fits(vocabulary, vocab_size, model, f"{macro} {name!r} uses", fix)


def check_vocabulary_fits(vocabulary: str, vocab_size: int, model: str = "the model",
                          what: str = "VOCABULARY is", fix: str | None = None) -> None:
    """Raise VocabularyMismatch when the vocabulary named `vocabulary` has more ids than `vocab_size`.
    The message ends with `fix`, by default the model gins whose vocabulary fits."""
    need = vocabulary_size(vocabulary)
    if need <= vocab_size:
        return
    if fix is None:
        use = ", ".join(f"--gin_file={g} (vocab_size {v:,})" for g, v in model_gins_for(need))
        fix = (f"Use a model gin whose vocabulary fits, e.g. {use}; or set "
               f"--gin.flanx.T5Config.vocab_size={int(math.ceil(need / 128) * 128)} on this model")
    raise VocabularyMismatch(
        f"{what} the {vocabulary!r} vocabulary ({need:,} token ids), but {model} has vocab_size {vocab_size:,}: "
        f"ids from {vocab_size:,} up have no embedding, so the loss would be NaN or the outputs meaningless. {fix}")


@dataclasses.dataclass
class LengthReport:
    """Token lengths (with EOS) of `examples` sampled training examples."""
    examples: int
    lengths: dict[str, int]               # the feature lengths checked (TASK_FEATURE_LENGTHS)
    percentiles: dict[str, dict[int, int]]  # feature -> {50: p50, ..., 100: max}
    truncated: dict[str, float]           # feature -> share of examples longer than its length

    def message(self, macro: str = "TASK_FEATURE_LENGTHS") -> str:
        parts = []
        for feature, share in self.truncated.items():
            p = self.percentiles[feature]
            pct = ", ".join(f"p{q} {v}" if q < 100 else f"max {v}" for q, v in p.items())
            parts.append(f"{feature}: {share:.0%} longer than {self.lengths[feature]} (token lengths {pct})")
        suggest = {f: max(self.lengths[f], _round_up(self.percentiles[f][99])) for f in self.truncated}
        return (f"{macro} truncates many training examples ({self.examples} sampled): " + "; ".join(parts) +
                f". Truncated targets teach the model to stop early; truncated inputs lose the text. To keep 99% "
                f"whole: --gin.{macro}=\"{suggest!r}\"")


def _round_up(n: int, to: int = 16) -> int:
    return max(to, int(math.ceil(n / to) * to))


def _percentile(sorted_values: list[int], q: int) -> int:
    """Nearest-rank percentile of a sorted list."""
    if q >= 100:
        return sorted_values[-1]
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_report(name: str, lengths: dict, split: str = "train", sample_size: int = SAMPLE_SIZE,
                  seed: int = 0) -> LengthReport:
    """Measure a sample of `name`'s examples (spread over its tasks by their mixing rates)."""
    from flanx.data import mixtures, render, tasks, vocab  # noqa: PLC0415

    task_names = leaf_tasks(name)
    rates = mixtures.flat_rates(name) if len(task_names) > 1 else {task_names[0]: 1.0}
    total = sum(rates.values()) or 1.0
    rng = random.Random(seed)
    measured: dict[str, list[int]] = {"inputs": [], "targets": []}
    for task, rate in rates.items():
        spec = tasks.get_spec(task)
        card = tasks.get_card(spec.card)
        if split not in card.splits:
            continue
        examples = render.render_examples(card, spec, split)
        k = min(len(examples), max(1, round(sample_size * rate / total)))
        length = vocab.length_fn(card.vocabulary)
        for ex in rng.sample(examples, k) if k < len(examples) else examples:
            measured["inputs"].append(length(ex["inputs_pretokenized"]) + 1)  # + EOS
            measured["targets"].append(length(ex["targets_pretokenized"]) + 1)
    report = LengthReport(len(measured["inputs"]), {}, {}, {})
    for feature, values in measured.items():
        if feature not in lengths or not values:
            continue
        values.sort()
        report.lengths[feature] = int(lengths[feature])
        report.percentiles[feature] = {q: _percentile(values, q) for q in PERCENTILES}
        report.truncated[feature] = sum(v > lengths[feature] for v in values) / len(values)
    return report


def warn_truncation(name: str, lengths: dict, split: str = "train", share: float = TRUNCATION_WARNING_SHARE,
                    macro: str = "TASK_FEATURE_LENGTHS") -> LengthReport | None:
    """Log a warning (and return the report) when more than `share` of inputs or targets are truncated."""
    report = length_report(name, lengths, split)
    if any(s > share for s in report.truncated.values()):
        logger.warning("%s", report.message(macro))
        return report
    return None
