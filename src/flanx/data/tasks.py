"""seqio registration of task cards, and flanx's registry of cards and tasks.

`register_card(card)` turns every `TaskSpec` of a card into a `seqio.Task`:
its source renders examples in Python (`flanx.data.render`) and serves them
as `inputs_pretokenized` / `targets_pretokenized` with the metadata features
`_task_name`, `_task_source`, `_template_type`, `_template_idx`
(`flanx.data.variants`; not model features, so seqio's feature converters
and mixtures drop them before batching); preprocessors copy them to
`inputs` / `targets`, tokenize with the card's vocabulary and append EOS
after trimming. Tokenized examples can be cached offline (`flanx cache`: the
`seqio.CacheDatasetPlaceholder` sits before the EOS step) and read back with
`use_cached=True` in the same order (`flanx.data.cache.CacheableTask`).
Registration reads no data: a task whose files are missing
registers, and reading it raises `flanx.paths.MissingDataError`.

Lookups by name (`get_card`, `get_spec`) list close matches when a name is
unknown. Registering a TFDS card constructs its builder offline
(`check_builders`), so an unknown builder name or version fails here,
naming the card file and key.
"""
from __future__ import annotations

import difflib
import json
import logging
from pathlib import Path

import numpy as np
import seqio
import tensorflow as tf

from flanx.data import cache, hub_sources, render, variants, vocab
from flanx.data.card_files import check_collision, collection_card_files, expand_groups, load_card_file
from flanx.data.cards import CardError, TaskCard, TaskSpec, load_card, task_specs
from flanx.eval import metrics as metrics_lib

# The input pipeline runs on the host: TensorFlow must not take GPU memory that JAX needs (it
# reserves nearly all of it on first use otherwise). Hidden before any TF op creates a context.
try:
    tf.config.set_visible_devices([], "GPU")
except RuntimeError:  # a TF context already exists (TF imported and used elsewhere first)
    pass

CARDS: dict[str, TaskCard] = {}
SPECS: dict[str, TaskSpec] = {}


TASK_SHUFFLE_BUFFER = 128  # after tokenizing; the source already shuffles the whole split


class _QuietUncachedWarning(logging.Filter):
    """seqio warns that FunctionDataSources shuffle poorly; flanx's shuffle the whole split per epoch."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Using an uncached FunctionDataset for training")


logging.getLogger("absl").addFilter(_QuietUncachedWarning())


class FlanxSource(seqio.FunctionDataSource):
    """A FunctionDataSource serving a card's rendered examples.

    `num_input_examples` is None on purpose: seqio would then cache the
    (already in-memory) source, which would freeze the shuffled order of the
    first epoch. Counts come from `flanx.data.render.count_examples`.
    """

    def __init__(self, card: TaskCard, spec: TaskSpec):
        self._card, self._spec = card, spec

        def dataset_fn(split: str, shuffle_files: bool, seed: int | None = None) -> tf.data.Dataset:
            return _examples_dataset(card, spec, split, shuffle_files, seed)

        super().__init__(dataset_fn=dataset_fn, splits=card.split_names, caching_permitted=True)

    def num_input_examples(self, split: str) -> None:
        return None


def _examples_dataset(card: TaskCard, spec: TaskSpec, split: str, shuffle: bool, seed: int | None):
    vocab.get_vocabulary(card.vocabulary)  # MissingDataError now rather than a TensorFlow error while tokenizing
    examples = render.render_examples(card, spec, split)
    if not examples:
        raise ValueError(f"task {spec.name!r} has no examples in split {split!r} (task card {card.path})")
    columns = {
        "inputs_pretokenized": tf.constant([ex["inputs_pretokenized"] for ex in examples], tf.string),
        "targets_pretokenized": tf.constant([ex["targets_pretokenized"] for ex in examples], tf.string),
    }
    for name in variants.METADATA_FEATURES:  # FLAN's metadata; the feature converter drops it before the model
        values = [ex[name] for ex in examples]
        columns[name] = tf.constant(values, tf.int32 if name == "_template_idx" else tf.string)
    if card.references_field and not spec.scoring:  # several references per target, for evaluation
        refs = [json.dumps(ex.get("references") or [ex["targets_pretokenized"]]) for ex in examples]
        columns[metrics_lib.REFERENCES_FEATURE] = tf.constant(refs, tf.string)
    if spec.scoring:
        columns["idx"] = tf.constant(np.array([ex["idx"] for ex in examples], np.int32).reshape(-1, 2))
        columns["is_correct"] = tf.constant([ex["is_correct"] for ex in examples], tf.bool)
    ds = tf.data.Dataset.from_tensor_slices(columns)
    if shuffle and seed is not None:
        # A full shuffle of the raw strings (cheap), different every epoch, the same on every
        # host for a given seed, so `ShardInfo` slices stay disjoint.
        ds = ds.shuffle(len(examples), seed=int(seed), reshuffle_each_iteration=True)
    return ds


def _copy_pretokenized(ds: tf.data.Dataset) -> tf.data.Dataset:
    @tf.autograph.experimental.do_not_convert  # plain dict copy: skip autograph's per-task conversion cost
    def fn(ex):
        return dict(ex, inputs=ex["inputs_pretokenized"], targets=ex["targets_pretokenized"])
    return ds.map(fn, num_parallel_calls=tf.data.AUTOTUNE)


def output_features(vocabulary_name: str) -> dict[str, seqio.Feature]:
    v = vocab.get_vocabulary(vocabulary_name, required=False)
    return {"inputs": seqio.Feature(v, add_eos=True), "targets": seqio.Feature(v, add_eos=True)}


def metric_fns(card: TaskCard, spec: TaskSpec) -> list:
    """The seqio metric functions of a task: the card's predict metrics, or for a `_scoring` task
    rank classification plus the card's score metrics; options bound, on the card's scale."""
    fns = [metrics_lib.METRICS[m] for m in card.metrics]
    fns = [f for f in fns if metrics_lib.is_score_metric(f) == spec.scoring]
    if spec.scoring and metrics_lib.rank_classification not in fns:
        fns.insert(0, metrics_lib.rank_classification)
    return [metrics_lib.bind_metric(f, card.options, card.metric_scale) for f in fns]


def _seqio_task(card: TaskCard, spec: TaskSpec) -> seqio.Task:
    if spec.scoring:
        postprocess = metrics_lib.rank_target
    else:
        postprocess = metrics_lib.POSTPROCESSORS[card.postprocess]
        if card.references_field:
            postprocess = metrics_lib.with_references(postprocess)
    return cache.CacheableTask(
        spec.name,
        source=FlanxSource(card, spec),
        output_features=output_features(card.vocabulary),
        preprocessors=[_copy_pretokenized, seqio.preprocessors.tokenize, seqio.CacheDatasetPlaceholder(),
                       seqio.preprocessors.append_eos_after_trim],
        postprocess_fn=postprocess,
        metric_fns=metric_fns(card, spec),
        shuffle_buffer_size=TASK_SHUFFLE_BUFFER,
    )


def register_card(card: TaskCard) -> list[str]:
    """Register every task of `card` in seqio; returns the task names.

    A card replaces a registered card of the same name when it comes from the
    same file (a reload) or says `override: true`; otherwise that is a
    CardError naming both files. The replaced card's tasks are removed.
    """
    check_collision(CARDS.get(card.name), card)
    check_builders(card)
    specs = task_specs(card)
    for spec in specs:
        other = SPECS.get(spec.name)
        if other is not None and other.card != card.name:
            raise ValueError(f"task card {card.path}: task name {spec.name!r} is already made by card "
                             f"{other.card!r}; rename one of the cards")
    if card.name in CARDS:
        unregister_card(card.name)
    names = []
    for spec in specs:
        seqio.TaskRegistry.remove(spec.name)
        seqio.TaskRegistry.add_provider(spec.name, _seqio_task(card, spec))
        SPECS[spec.name] = spec
        names.append(spec.name)
    CARDS[card.name] = card
    return names


def check_builders(card: TaskCard) -> None:
    """A TFDS source must name a builder (and version) the installed tensorflow-datasets constructs offline."""
    for variant in (card, card.alternate):
        if variant is None or variant.source.get("type") != "tfds":
            continue
        name = variant.source["name"]
        reason = hub_sources.check_builder(name)
        if reason:
            key = "local.source.name" if variant.variant == "local" else "source.name"
            raise CardError(f"task card {card.path}: {key}: {name!r} is not a TFDS builder that the installed "
                            f"tensorflow-datasets constructs offline: {reason}")


def unregister_card(name: str) -> None:
    """Remove a card and its tasks from flanx's registry and seqio (mixtures are left as they are)."""
    card = get_card(name)
    for spec in task_specs(card):
        SPECS.pop(spec.name, None)
        seqio.TaskRegistry.remove(spec.name)
    del CARDS[name]


def cards_from(card_or_path) -> list[TaskCard]:
    """TaskCards from a TaskCard, a dict, or a YAML path."""
    if isinstance(card_or_path, TaskCard):
        return [card_or_path]
    if isinstance(card_or_path, dict):
        return [load_card(raw) for raw in expand_groups(card_or_path)]
    if isinstance(card_or_path, (str, Path)):
        return load_card_file(card_or_path)
    raise TypeError(f"register_task_card takes a dict, a TaskCard or a YAML path, got {type(card_or_path).__name__}")


def register_collection() -> list[str]:
    """Register every card in `tasks/`."""
    names = []
    for path in collection_card_files():
        for card in load_card_file(path):
            names += register_card(card)
    return names


def unknown_name(kind: str, name: str, known) -> KeyError:
    """A KeyError for an unknown name, listing close matches."""
    close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.5)
    hint = f"; did you mean: {', '.join(close)}?" if close else \
        "; `flanx tasks list` and `flanx mixtures list` show what is registered"
    return KeyError(f"unknown {kind} {name!r}{hint}")


def get_card(name: str) -> TaskCard:
    if name not in CARDS:
        raise unknown_name("task card", name, CARDS)
    return CARDS[name]


def get_spec(name: str) -> TaskSpec:
    if name not in SPECS:
        raise unknown_name("task", name, SPECS)
    return SPECS[name]
