"""What a forgetting study is: `StudyConfig`, and the check that a resumed study keeps its settings.

`StudyConfig` (gin: `flanx.StudyConfig`, bound by `t5x_configs/experiments/*.gin`)
holds every setting a study depends on. `check_study_dir` records the
settings that change results in `out_dir/study_config.json` on the first run
and refuses to resume into that directory with different ones; names,
descriptions, seeds, arms and knob values may change (new runs are added,
finished ones reused).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field

from flanx.models import LoraConfig, T5Config, get_config


@dataclass(frozen=True)
class StudyConfig:
    """Everything one study run depends on (recorded in the report)."""
    name: str = "synthetic_forgetting"
    out_dir: str = "runs/demo"
    description: str = ""
    model: T5Config | str = "tiny"
    # Base: a checkpoint, or trained here on base_mixture.
    base_checkpoint: str | None = None
    base_mixture: str = "synth_multitask"
    base_steps: int = 600
    base_learning_rate: float = 1e-2
    # Arms (flanx.experiments.arms.ARMS) and the knob values each sweeps (arm -> values).
    target_task: str = "synth_chat_summary_template_0to9_zsnoopt"
    arms: tuple = ("single_task", "lora", "replay")
    knobs: dict = field(default_factory=dict)
    wise_ft_source: str = "single_task"
    arm_steps: int = 200
    arm_learning_rate: float = 1e-3
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=8, alpha=16.0, dropout=0.0))
    lora_learning_rate: float = 3e-3
    lora_optimizer: str | None = None     # None: the study's optimizer family (Adafactor without parameter scaling)
    fisher_examples: int = 64             # EWC: examples of the base mixture the Fisher is estimated on
    # Shared training settings.
    batch_size: int = 16
    task_feature_lengths: dict = field(default_factory=lambda: {"inputs": 256, "targets": 64})
    pack: bool = True
    seed: int = 0                          # the base run (and the Fisher's examples)
    seeds: tuple = (0,)                    # every training arm runs once per seed
    optimizer: str = "adafactor"
    checkpoint_period: int = 200
    # Evaluation (identical for every variant).
    target_eval_task: str | None = "synth_chat_summary_template_0to9_zsnoopt"
    held_in: tuple = ("synth_chat_intent_template_0to7_zsopt", "synth_chat_order_number_template_0to7_zsnoopt",
                      "synth_chat_sentiment_template_0to7_zsopt", "synth_order_total_template_0to7_zsnoopt")
    held_out: tuple = ("synth_chat_customer_name_template_0to7_zsnoopt",
                       "synth_chat_refund_template_0to7_zsopt_scoring")
    eval_split: str = "validation"
    eval_split_overrides: dict = field(default_factory=dict)   # task -> split (e.g. MMLU/BBH: test)
    eval_examples: int = 100
    eval_batch_size: int = 50
    max_decode_length: int = 64
    curve_every: int = 0                   # evaluate every k fine-tuning steps (0: only at the end)
    curve_examples: int = 50
    bootstrap_samples: int = 1000
    reference: dict | None = None
    # Read every task from its offline cache (`flanx cache`; same examples, same order).
    use_cached_tasks: bool = False
    task_cache_dirs: tuple = ()

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"StudyConfig.seeds must be distinct seeds, e.g. (0, 1, 2); got {self.seeds!r}")
        if self.curve_every < 0 or self.curve_examples < 1:
            raise ValueError("StudyConfig.curve_every must be >= 0 and curve_examples >= 1")

    def model_config(self) -> T5Config:
        return get_config(self.model) if isinstance(self.model, str) else self.model

    def eval_tasks(self) -> dict[str, str]:
        """task -> split for the target, held-in and held-out tasks."""
        target = self.target_eval_task or self.target_task
        return {t: self.eval_split_overrides.get(t, self.eval_split)
                for t in dict.fromkeys([target, *self.held_in, *self.held_out])}


def _config_dict(cfg: StudyConfig) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    return out


# Fields that only name or describe a study, add seeds and report settings, or say where its (identical)
# data is read from: changing them keeps its results valid.
_PRESENTATION_FIELDS = ("name", "out_dir", "description", "reference", "seeds", "arms", "knobs", "bootstrap_samples",
                        "use_cached_tasks", "task_cache_dirs")
STUDY_CONFIG_FILE = "study_config.json"


def fingerprint(cfg: StudyConfig, model_config: T5Config) -> dict:
    fields = {k: v for k, v in _config_dict(cfg).items() if k not in _PRESENTATION_FIELDS}
    fields["model"] = dataclasses.asdict(model_config)
    return json.loads(json.dumps(fields, sort_keys=True, default=str))  # tuples -> lists, as on disk


class StudyDirMismatch(ValueError):
    """`out_dir` holds results of another configuration."""


def check_study_dir(cfg: StudyConfig, model_config: T5Config) -> None:
    """Refuse to resume into `out_dir` when its results came from another configuration.

    Resuming skips every variant with an evaluation file, so a changed setting
    (steps, learning rate, tasks, model) would otherwise be reported beside
    numbers that were not produced with it. Adding seeds, arms or knob values
    is fine: only the new runs are made. The first run records the settings
    in `out_dir/study_config.json`.
    """
    path = os.path.join(cfg.out_dir, STUDY_CONFIG_FILE)
    current = fingerprint(cfg, model_config)
    if not os.path.exists(path):
        os.makedirs(cfg.out_dir, exist_ok=True)
        with open(path, "w") as f:
            json.dump(current, f, indent=2, sort_keys=True)
        return
    try:
        with open(path) as f:
            recorded = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); delete it only if {cfg.out_dir} holds "
                         "results of the current configuration") from None
    changed = sorted(k for k in set(recorded) | set(current) if recorded.get(k) != current.get(k))
    if changed:
        detail = "; ".join(f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise StudyDirMismatch(
            f"study out_dir {cfg.out_dir} holds results of a different configuration ({detail}). "
            f"Resuming would mix them. Use a new directory (--gin.flanx.StudyConfig.out_dir='...') "
            f"or delete {cfg.out_dir} to start over.")
