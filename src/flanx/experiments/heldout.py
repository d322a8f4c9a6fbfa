"""FLAN's held-out-cluster experiment: instruction-tune on every other cluster, evaluate the held-out one zero-shot.

    base --(evaluate zero-shot on the held-out cluster)------------------------> evals/base/seed<seed>.json
    base --(instruction-tune on flan2021_minus_{cluster}, per seed)--> evaluate -> evals/instruction_tuned/seed<k>.json

`HeldoutConfig` (gin: `flanx.HeldoutConfig`, bound by
`t5x_configs/experiments/heldout_*.gin`) names the cluster (a paper cluster
such as `nli` or a code key such as `entailment`), the base (a checkpoint,
a base trained here on `base_mixture`, or the model's fresh initialization),
the instruction-tuning run and the evaluation. The training side is FLAN's
`flan2021_minus_{cluster}` (every other cluster, after FLAN's overlap rules;
rate min(3000, n)); the evaluation side is the held-out cluster's zero-shot
tasks (`flanx.data.flan2021.eval_tasks`: rank classification for option
tasks, generation otherwise). `train_datasets` / `eval_datasets` restrict
either side to named cards; `only_available_data` keeps only the cards whose
data can be read here (local files under FLANX_DATA_DIR, prepared TFDS data),
which is how a CPU run on a partial data folder works.

The run is the forgetting study's machinery (`flanx.experiments.forgetting.Study`)
with one training arm, `instruction_tuned` (a full fine-tune on the training
mixture): the same resumable stages, `out_dir` lock, `invocations.json`,
evaluation files and report format (`flanx.experiments.report`; the report
has no target task, only held-out tasks), plus the per-task score plot.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import logging
import sys
from dataclasses import dataclass, field
from typing import NamedTuple

from flanx.experiments import arms as arms_lib
from flanx.experiments.forgetting import Study
from flanx.experiments.study_config import StudyConfig
from flanx.models import T5Config, get_config

logger = logging.getLogger("flanx")

ARM = "instruction_tuned"
arms_lib.register_arm(ARM, description="full fine-tune on the held-out-cluster experiment's training mixture "
                      "(instruction tuning)", override=True)(arms_lib.single_task)


@dataclass(frozen=True)
class HeldoutConfig:
    """Everything one held-out-cluster run depends on (recorded in the report)."""
    cluster: str = "nli"                   # paper cluster (nli, commonsense, ...) or code key (entailment, ...)
    name: str = ""                         # default: heldout_{cluster}
    out_dir: str = "runs/heldout_nli"
    description: str = ""
    collection: str = "flan2021"
    model: T5Config | str = "tiny"
    # Base: a checkpoint (Hugging Face, T5X or flanx), else trained here on base_mixture, else fresh weights.
    base_checkpoint: str | None = None
    base_mixture: str | None = None
    base_steps: int = 0
    base_learning_rate: float = 1e-2
    # Instruction tuning.
    train_mixture: str | None = None       # default: {collection}_minus_{cluster}
    train_datasets: tuple = ()             # only these cards of the training side (empty: all)
    eval_datasets: tuple = ()              # only these cards of the held-out cluster (empty: all)
    only_available_data: bool = False      # drop cards whose data cannot be read here (and say so)
    steps: int = 1000
    learning_rate: float = 1e-3
    optimizer: str = "adafactor"
    batch_size: int = 16
    task_feature_lengths: dict = field(default_factory=lambda: {"inputs": 256, "targets": 64})
    pack: bool = True
    seed: int = 0                          # the base (its training run or its initialization)
    seeds: tuple = (0,)                    # one instruction-tuning run per seed
    checkpoint_period: int = 1000
    # Zero-shot evaluation of the held-out cluster (identical for base and tuned models).
    eval_split_overrides: dict = field(default_factory=dict)   # card or task -> split
    eval_examples: int | None = 200
    eval_batch_size: int = 50
    max_decode_length: int = 64
    bootstrap_samples: int = 1000
    use_cached_tasks: bool = False
    task_cache_dirs: tuple = ()

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"HeldoutConfig.seeds must be distinct seeds, e.g. (0, 1, 2); got {self.seeds!r}")
        if self.steps < 1:
            raise ValueError(f"HeldoutConfig.steps must be >= 1 (instruction-tuning steps), got {self.steps}")
        if self.base_mixture and self.base_steps < 1 and not self.base_checkpoint:
            raise ValueError("HeldoutConfig.base_mixture needs base_steps >= 1 (or set base_mixture = None)")

    def model_config(self) -> T5Config:
        return get_config(self.model) if isinstance(self.model, str) else self.model


class HeldoutPlan(NamedTuple):
    """What a held-out-cluster run trains on and evaluates, after the config's restrictions."""
    cluster: str
    train_mixture: str                 # the mixture that is trained on (registered)
    train_datasets: tuple[str, ...]    # cards on its training side
    eval_tasks: dict[str, str]         # zero-shot task -> split
    eval_datasets: tuple[str, ...]
    excluded: tuple[str, ...]          # removed by FLAN's overlap rules
    dropped: dict[str, str]            # card -> why it was left out (no data here, not selected)


def _require_known(names, known: list[str], what: str, knob: str) -> None:
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
            raise ValueError(f"HeldoutConfig.{knob}: {name!r} is not on the {what}"
                             + (f"; close matches: {', '.join(close)}" if close else "")
                             + f". Cards there: {', '.join(known)}")


def _readable(card, split: str) -> bool:
    from flanx.data import sources

    return split in card.splits and sources.data_available(card)


def plan(cfg: HeldoutConfig) -> HeldoutPlan:
    """Resolve the cluster into training cards, a registered training mixture and evaluation tasks."""
    from flanx import data
    from flanx.data import clusters as clusters_lib
    from flanx.data import flan2021, mixtures

    data.register_all()
    clusters_lib.code_keys(cfg.cluster)  # ClusterError naming close matches and every known cluster
    cards = {c.name: c for c in flan2021.collection_cards(cfg.collection)}
    side = flan2021.cluster_cards(cfg.cluster, list(cards.values()))
    if not side.held_out:
        raise ValueError(f"cluster {cfg.cluster!r} has no card in collection {cfg.collection!r} "
                         f"(tasks/{cfg.collection}/): nothing to evaluate zero-shot")
    _require_known(cfg.train_datasets, side.train, f"training side of held-out cluster {cfg.cluster!r}",
                   "train_datasets")
    _require_known(cfg.eval_datasets, side.held_out, f"held-out cluster {cfg.cluster!r}", "eval_datasets")
    dropped: dict[str, str] = {}
    train = [n for n in side.train if not cfg.train_datasets or n in cfg.train_datasets]
    evals = [n for n in side.held_out if not cfg.eval_datasets or n in cfg.eval_datasets]
    split_of = {n: cfg.eval_split_overrides.get(n, flan2021.eval_split(cards[n])) for n in evals}
    split_of = {n: cfg.eval_split_overrides.get(flan2021.eval_task(cards[n]), s) for n, s in split_of.items()}
    if cfg.only_available_data:
        dropped.update({n: "no training data here" for n in train if not _readable(cards[n], "train")})
        dropped.update({n: f"no {split_of[n]} data here" for n in evals if not _readable(cards[n], split_of[n])})
        train = [n for n in train if n not in dropped]
        evals = [n for n in evals if n not in dropped]
    if not evals:
        raise ValueError(f"held-out cluster {cfg.cluster!r} has no evaluable data: none of "
                         f"{', '.join(side.held_out)} can be read here. Put their files under FLANX_DATA_DIR "
                         f"(cards with a `local:` block) or prepare them with `flanx data prepare --collection "
                         f"{cfg.collection} --data_dir DIR`, or hold out another cluster")
    if not train:
        raise ValueError(f"no training data for held-out cluster {cfg.cluster!r}: none of its training side's "
                         f"cards ({', '.join(side.train)}) can be read here. Prepare them (`flanx data prepare`) "
                         f"or name readable ones in HeldoutConfig.train_datasets")
    mixture = cfg.train_mixture or f"{cfg.collection}_minus_{cfg.cluster}"
    if train != side.train and not cfg.train_mixture:  # FLAN's rates over the kept cards only
        mixture = f"{mixture}_{'_'.join(sorted(train))}" if len(train) <= 4 else f"{mixture}_{len(train)}_cards"
        rate = mixtures.ExamplesRate(flan2021.CAP)
        mixtures.register_mixture(mixture, [e for n in train for e in mixtures.card_entries(cards[n], rate)],
                                  f"{cfg.collection}_minus_{cfg.cluster} restricted to {', '.join(train)}")
    elif mixture not in mixtures.MIXTURES and not cfg.train_mixture:
        raise ValueError(f"mixture {mixture!r} is not registered (collection {cfg.collection!r} has no "
                         f"held-out split for {cfg.cluster!r})")
    return HeldoutPlan(cfg.cluster, mixture, tuple(train),
                       {flan2021.eval_task(cards[n]): split_of[n] for n in evals}, tuple(evals),
                       tuple(side.excluded), dropped)


def study_config(cfg: HeldoutConfig, resolved: HeldoutPlan) -> StudyConfig:
    """The forgetting study's settings that run this experiment (one arm, no target, held-out tasks)."""
    return StudyConfig(
        name=cfg.name or f"heldout_{cfg.cluster}", out_dir=cfg.out_dir, description=cfg.description,
        model=cfg.model_config(), base_checkpoint=cfg.base_checkpoint, base_mixture=cfg.base_mixture or "",
        base_steps=cfg.base_steps, base_learning_rate=cfg.base_learning_rate, target_task=resolved.train_mixture,
        arms=(ARM,), knobs={}, arm_steps=cfg.steps, arm_learning_rate=cfg.learning_rate,
        batch_size=cfg.batch_size, task_feature_lengths=dict(cfg.task_feature_lengths), pack=cfg.pack,
        seed=cfg.seed, seeds=tuple(cfg.seeds), optimizer=cfg.optimizer, checkpoint_period=cfg.checkpoint_period,
        target_eval_task=None, held_in=(), held_out=tuple(resolved.eval_tasks),
        eval_split_overrides=dict(resolved.eval_tasks), eval_examples=cfg.eval_examples,
        eval_batch_size=cfg.eval_batch_size, max_decode_length=cfg.max_decode_length, curve_every=0,
        bootstrap_samples=cfg.bootstrap_samples, use_cached_tasks=cfg.use_cached_tasks,
        task_cache_dirs=tuple(cfg.task_cache_dirs))


# Fields that only name or describe a run, add seeds, or say where its (identical) data is read from.
_PRESENTATION_FIELDS = ("name", "out_dir", "description", "seeds", "bootstrap_samples", "use_cached_tasks",
                        "task_cache_dirs")


class HeldoutStudy(Study):
    """The study with the held-out cluster's tasks as its only evaluation group."""

    def __init__(self, cfg: HeldoutConfig, command: str | None = None):
        self.heldout, self.plan = cfg, plan(cfg)
        super().__init__(study_config(cfg, self.plan), command)

    def eval_tasks(self) -> dict[str, str]:
        return dict(self.plan.eval_tasks)

    def groups(self):
        return None, [], list(self.plan.eval_tasks)

    def settings(self) -> dict:
        cfg = self.heldout
        fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in _PRESENTATION_FIELDS}
        fields.update(model=dataclasses.asdict(self.model_config), train_mixture=self.plan.train_mixture,
                      train_datasets=list(self.plan.train_datasets), held_out=list(self.plan.eval_tasks),
                      eval_splits=dict(self.plan.eval_tasks), target_eval_task=None)
        return json.loads(json.dumps(fields, sort_keys=True, default=str))

    def base_params(self):
        """A checkpoint, a base trained on base_mixture, or (neither) the model's initialization at `seed`."""
        if self._base is None and not self.heldout.base_checkpoint and not self.heldout.base_mixture:
            import jax

            from flanx.experiments.forgetting import _to_host
            from flanx.models import init_params

            logger.info("heldout: base = the model freshly initialized (seed %d)", self.heldout.seed)
            self._base = _to_host(init_params(self.model_config, jax.random.PRNGKey(self.heldout.seed)))
        return super().base_params()

    def report_meta(self) -> dict:
        meta = super().report_meta()
        p, cfg = self.plan, self.heldout
        base = cfg.base_checkpoint or (
            f"trained here on {cfg.base_mixture} for {cfg.base_steps} steps" if cfg.base_mixture
            else f"freshly initialized (seed {cfg.seed}), no pretraining")
        notes = [f"Held-out cluster: `{p.cluster}`; evaluated zero-shot on: {', '.join(p.eval_datasets)}.",
                 f"Base (`base`): {base}.",
                 f"Instruction tuning (`{ARM}`): {cfg.steps} steps on `{p.train_mixture}` "
                 f"({len(p.train_datasets)} datasets: {', '.join(p.train_datasets)}), per seed.",
                 "Never trained on: the held-out cluster" + (f" and, by FLAN's overlap rules, "
                                                             f"{', '.join(p.excluded)}" if p.excluded else "") + "."]
        by_reason: dict[str, list[str]] = {}
        for card, why in p.dropped.items():
            by_reason.setdefault(why, []).append(card)
        notes += [f"Left out, {why} ({len(cards)}): {', '.join(cards)}." for why, cards in by_reason.items()]
        suite = self.suite()
        majority = {t: suite.majority(t) for t in p.eval_tasks}
        if any(v is not None for v in majority.values()):
            notes.append("Majority-class baseline (always the most frequent correct answer, from the data): "
                         + ", ".join(f"`{t}` {v:.4f}" for t, v in majority.items() if v is not None)
                         + ". The tables' chance level is a uniform guess among the options; a score at or below "
                         "the majority baseline shows no ability on the task even when it is above that chance.")
        meta.update(title="Held-out-cluster experiment", notes=notes)
        return meta


def run_heldout(cfg: HeldoutConfig, command: str | None = None) -> dict:
    return HeldoutStudy(cfg, command or " ".join(sys.argv)).run()
