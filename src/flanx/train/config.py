"""Typed configuration for training: what a run is, as frozen dataclasses.

These are plain Python: the entry points (`python -m flanx.train`) fill them
from gin macros, the forgetting study builds them directly. Nothing under
`flanx.train` reads gin.

- `OptimizerConfig`: Adafactor (T5X defaults) or AdamW, the learning-rate
  schedule and its warmup.
- `LossConfig`: z-loss, label smoothing and loss normalization.
- `MeshConfig`: device mesh sizes for the `data`, `fsdp` and `model` axes.
- `TrainConfig`: the run itself (steps, batch, checkpoints, logging).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("constant", "rsqrt", "linear", "cosine")
NORMALIZATIONS = ("per_token", "per_sequence", "per_batch")


@dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer and learning-rate schedule.

    `learning_rate` is the peak rate. Schedules (multiplier on the peak, as a
    function of the steps taken in this run, `t`):
      constant: 1;  rsqrt: sqrt(w / max(t, w)) with w = max(warmup_steps, 1);
      linear / cosine: decay from 1 to `end_lr_fraction` over `decay_steps`
      (default: the whole run) after warmup.
    `warmup_steps` ramps linearly from 0 unless `linear_warmup=False` (then the
    rate is flat during warmup, the T5X `rsqrt_decay` shape).
    """
    name: str = "adafactor"
    learning_rate: float = 1e-3
    schedule: str = "constant"
    warmup_steps: int = 0
    linear_warmup: bool = True
    decay_steps: int | None = None
    end_lr_fraction: float = 0.0
    # Adafactor (T5X defaults).
    decay_rate: float = 0.8
    min_dim_size_to_factor: int = 128
    clipping_threshold: float | None = 1.0
    multiply_by_parameter_scale: bool = True
    momentum: float | None = None
    epsilon1: float = 1e-30
    # AdamW.
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    # Both.
    grad_clip_norm: float | None = None

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            raise ValueError(f"OptimizerConfig.name={self.name!r}: choose one of {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"OptimizerConfig.schedule={self.schedule!r}: choose one of {SCHEDULES}")
        if self.learning_rate <= 0:
            raise ValueError(f"OptimizerConfig.learning_rate={self.learning_rate} must be > 0 (LEARNING_RATE)")
        if self.warmup_steps < 0:
            raise ValueError(f"OptimizerConfig.warmup_steps={self.warmup_steps} must be >= 0")


@dataclass(frozen=True)
class LossConfig:
    """Cross-entropy options as in T5X.

    `normalization`: "per_token" divides the summed loss by the number of
    target tokens; "per_sequence" averages each sequence (packed segment) over
    its tokens, then over sequences; "per_batch" divides the token sum by the
    number of rows; a float is a fixed `LOSS_NORMALIZING_FACTOR`.
    """
    z_loss: float = 1e-4
    label_smoothing: float = 0.0
    normalization: str | float = "per_token"

    def __post_init__(self):
        if isinstance(self.normalization, str) and self.normalization not in NORMALIZATIONS:
            raise ValueError(f"LossConfig.normalization={self.normalization!r}: choose one of "
                             f"{NORMALIZATIONS} or a float (LOSS_NORMALIZING_FACTOR)")
        if not isinstance(self.normalization, str) and float(self.normalization) <= 0:
            raise ValueError(f"LOSS_NORMALIZING_FACTOR={self.normalization} must be > 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"LossConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; exactly one axis may be -1 (fill with the remaining devices)."""
    data: int = -1
    fsdp: int = 1
    model: int = 1


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    `train_steps` is absolute: a run initialised from a checkpoint at step S
    trains `train_steps - S` steps, as in T5X. `batch_size` is global (all
    hosts together); `num_microbatches` splits it for gradient accumulation.
    `model_dir=None` trains in memory (no checkpoints, no metric files).
    """
    train_steps: int
    batch_size: int
    model_dir: str | None = None
    seed: int = 0
    num_microbatches: int = 1
    checkpoint_period: int = 1000
    keep_checkpoints: int | None = None
    async_checkpointing: bool = True
    eval_period: int = 0
    log_every: int = 10
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)

    def __post_init__(self):
        if self.train_steps < 0:
            raise ValueError(f"TrainConfig.train_steps={self.train_steps} must be >= 0 (TRAIN_STEPS)")
        if self.batch_size <= 0:
            raise ValueError(f"TrainConfig.batch_size={self.batch_size} must be > 0 (BATCH_SIZE)")
        if self.num_microbatches <= 0 or self.batch_size % self.num_microbatches:
            raise ValueError(f"BATCH_SIZE={self.batch_size} must be divisible by "
                             f"num_microbatches={self.num_microbatches}")
        if self.checkpoint_period <= 0:
            raise ValueError(f"CHECKPOINT_PERIOD={self.checkpoint_period} must be > 0")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)
