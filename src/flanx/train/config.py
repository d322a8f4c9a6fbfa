"""Typed configuration for training: what a run is, as frozen dataclasses.

These are plain Python and hold the only defaults a run has. gin is a thin
front on them: the run gins (`t5x_configs/runs/*.gin`) bind T5X's macros to
their fields (`flanx.TrainConfig.train_steps = %TRAIN_STEPS`) and
`python -m flanx.train` evaluates them; the forgetting study builds them
directly. Nothing under `flanx.train` reads gin.

- `OptimizerConfig`: Adafactor (T5X defaults) or AdamW, the learning-rate
  schedule and its warmup.
- `LossConfig`: z-loss, label smoothing and loss normalization.
- `MeshConfig`: device mesh sizes for the `data`, `fsdp` and `model` axes.
- `DataConfig`: which task or mixture a run trains on, at which lengths
  (T5X's DatasetConfig, without importing seqio).
- `TrainConfig`: the run itself (steps, batch, checkpoints, logging).
- `TrainRun`: what `python -m flanx.train` evaluates (model, TrainConfig,
  DataConfig, initial checkpoint, evaluation during training).

Every check in `__post_init__` names the field and the gin macro the run gins
bind to it (`TrainConfig.batch_size (BATCH_SIZE) must be a positive integer,
got 2.7`): a float, a string or a bool where an integer belongs is refused,
never truncated.
"""
from __future__ import annotations

import dataclasses
import numbers
import operator
from dataclasses import dataclass, field
from typing import Mapping

OPTIMIZERS = ("adafactor", "adamw")
SCHEDULES = ("constant", "rsqrt", "linear", "cosine")
NORMALIZATIONS = ("per_token", "per_sequence", "per_batch")


def _where(owner: str, name: str, macro: str | None) -> str:
    return f"{owner}.{name}" + (f" ({macro})" if macro else "")


def check_int(owner: str, name: str, value, macro: str | None = None, minimum: int | None = None,
              allow_none: bool = False):
    """`value` as an int, or a ValueError naming `owner.name` and its gin macro.

    Ints (numpy ints too) pass; floats, strings and bools are refused, so
    `BATCH_SIZE = 2.7` is an error rather than a batch of 2.
    """
    if value is None and allow_none:
        return None
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    bound = "" if minimum is None else (" positive" if minimum == 1 else f" >= {minimum}")
    if number is None:
        raise ValueError(f"{_where(owner, name, macro)} must be a{bound or 'n'} integer"
                         f"{' or None' if allow_none else ''}, got {value!r}")
    if minimum is not None and number < minimum:
        raise ValueError(f"{_where(owner, name, macro)} must be a{bound} integer, got {number}")
    return int(number)


def check_real(owner: str, name: str, value, macro: str | None = None, positive: bool = False):
    """`value` as a float (ints allowed), or a ValueError naming `owner.name` and its gin macro."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"{_where(owner, name, macro)} must be a number, got {value!r}")
    if positive and not value > 0:
        raise ValueError(f"{_where(owner, name, macro)} must be > 0, got {value!r}")
    return float(value)


def _check_bool(owner: str, name: str, value, macro: str | None = None) -> None:
    if not isinstance(value, bool):
        raise ValueError(f"{_where(owner, name, macro)} must be True or False, got {value!r}")


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
        check_real("OptimizerConfig", "learning_rate", self.learning_rate, "LEARNING_RATE", positive=True)
        check_int("OptimizerConfig", "warmup_steps", self.warmup_steps, minimum=0)
        check_int("OptimizerConfig", "decay_steps", self.decay_steps, minimum=1, allow_none=True)


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
        if not isinstance(self.normalization, str):
            check_real("LossConfig", "normalization", self.normalization, "LOSS_NORMALIZING_FACTOR",
                       positive=True)
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"LossConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass(frozen=True)
class MeshConfig:
    """Device mesh sizes; at most one axis may be -1 (fill with the remaining devices)."""
    data: int = -1
    fsdp: int = 1
    model: int = 1

    def __post_init__(self):
        sizes = {axis: check_int("MeshConfig", axis, getattr(self, axis), f"MESH_{axis.upper()}")
                 for axis in ("data", "fsdp", "model")}
        for axis, size in sizes.items():
            if size == 0 or size < -1:
                raise ValueError(f"MeshConfig.{axis} (MESH_{axis.upper()}) must be >= 1, or -1 to fill "
                                 f"with the remaining devices; got {size}")
            object.__setattr__(self, axis, size)
        fill = [f"MESH_{axis.upper()}" for axis, size in sizes.items() if size == -1]
        if len(fill) > 1:
            raise ValueError(f"only one mesh axis may be -1 (fill), got {', '.join(fill)}")


@dataclass(frozen=True)
class DataConfig:
    """The training examples: a seqio task or mixture at fixed feature lengths.

    `task_feature_lengths` maps feature names to positive lengths, e.g.
    `{'inputs': 512, 'targets': 128}`; `pack` packs several examples into a
    row; `seed` orders the shuffle (the run gins bind it, like
    `TrainConfig.seed`, to RANDOM_SEED). `module` (MIXTURE_OR_TASK_MODULE, as
    in T5X) is what to load before the name is looked up: a Python module to
    import, or a task card file or folder (`flanx.data.user_tasks.import_tasks`).
    """
    mixture_or_task_name: str
    task_feature_lengths: Mapping[str, int]
    split: str = "train"
    shuffle: bool = True
    seed: int = 0
    pack: bool = True
    use_cached: bool = False
    cache_dirs: tuple = ()
    module: str | tuple | None = None

    def __post_init__(self):
        if not isinstance(self.mixture_or_task_name, str) or not self.mixture_or_task_name:
            raise ValueError("DataConfig.mixture_or_task_name (MIXTURE_OR_TASK_NAME) must be a task or mixture "
                             f"name, got {self.mixture_or_task_name!r}")
        if not isinstance(self.task_feature_lengths, Mapping) or not self.task_feature_lengths:
            raise ValueError("DataConfig.task_feature_lengths (TASK_FEATURE_LENGTHS) must be a dict like "
                             f"{{'inputs': 512, 'targets': 128}}, got {self.task_feature_lengths!r}")
        lengths = {}
        for feature, length in self.task_feature_lengths.items():
            lengths[feature] = check_int("DataConfig", f"task_feature_lengths[{feature!r}]", length,
                                         "TASK_FEATURE_LENGTHS", minimum=1)
        object.__setattr__(self, "task_feature_lengths", lengths)
        if not isinstance(self.split, str) or not self.split:
            raise ValueError(f"DataConfig.split must be a split name, got {self.split!r}")
        _check_bool("DataConfig", "shuffle", self.shuffle, "SHUFFLE")
        _check_bool("DataConfig", "pack", self.pack, "PACK")
        _check_bool("DataConfig", "use_cached", self.use_cached, "USE_CACHED_TASKS")
        dirs = (self.cache_dirs,) if isinstance(self.cache_dirs, str) else tuple(self.cache_dirs or ())
        if not all(isinstance(d, str) and d for d in dirs):
            raise ValueError(f"DataConfig.cache_dirs (TASK_CACHE_DIRS) must be a directory or a list of them, "
                             f"got {self.cache_dirs!r}")
        object.__setattr__(self, "cache_dirs", dirs)
        modules = self.module if isinstance(self.module, (list, tuple)) else [self.module]
        if not all(m is None or (isinstance(m, str) and m) for m in modules):
            raise ValueError("DataConfig.module (MIXTURE_OR_TASK_MODULE) must be a Python module name, a task card "
                             f"file or a folder of cards (a string, or a list of them), got {self.module!r}")
        if isinstance(self.module, list):
            object.__setattr__(self, "module", tuple(self.module))
        check_int("DataConfig", "seed", self.seed, "RANDOM_SEED")


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
        ints = {  # field: (gin macro, minimum)
            "train_steps": ("TRAIN_STEPS", 1), "batch_size": ("BATCH_SIZE", 1), "seed": ("RANDOM_SEED", None),
            "num_microbatches": ("NUM_MICROBATCHES", 1), "checkpoint_period": ("CHECKPOINT_PERIOD", 1),
            "eval_period": ("EVAL_PERIOD", 0), "log_every": ("LOG_EVERY", 1)}
        for name, (macro, minimum) in ints.items():
            object.__setattr__(self, name, check_int("TrainConfig", name, getattr(self, name), macro, minimum))
        object.__setattr__(self, "keep_checkpoints", check_int(
            "TrainConfig", "keep_checkpoints", self.keep_checkpoints, "KEEP_CHECKPOINTS", 1, allow_none=True))
        if self.model_dir is not None and (not isinstance(self.model_dir, str) or not self.model_dir):
            raise ValueError(f"TrainConfig.model_dir (MODEL_DIR) must be a directory path, got {self.model_dir!r}; "
                             "on the command line quote it for gin: --gin.MODEL_DIR=\"'/path/to/run'\"")
        _check_bool("TrainConfig", "async_checkpointing", self.async_checkpointing)
        if self.batch_size % self.num_microbatches:
            raise ValueError(f"BATCH_SIZE={self.batch_size} must be divisible by "
                             f"num_microbatches={self.num_microbatches} (NUM_MICROBATCHES)")
        for name, kind in (("optimizer", OptimizerConfig), ("loss", LossConfig), ("mesh", MeshConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"TrainConfig.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class TrainRun:
    """Everything `python -m flanx.train` runs: gin's `flanx.train`, bound in t5x_configs/base/train.gin.

    model: the T5Config (MODEL_CONFIG); config: TrainConfig; data: DataConfig.
    initial_checkpoint_path: where a new run starts (any checkpoint format); the
      trainer ignores it when MODEL_DIR already has checkpoints to resume.
    eval_mixtures: tasks / mixtures evaluated every `config.eval_period` steps
      and at the end, on `eval_split` (`eval_examples` each, None: all), decoded
      with `decode` (a flanx.predict DecodeConfig; None: its defaults).
    """
    model: object
    config: TrainConfig
    data: DataConfig
    initial_checkpoint_path: str | None = None
    eval_mixtures: tuple = ()
    eval_split: str = "validation"
    eval_examples: int | None = None
    decode: object = None

    def __post_init__(self):
        for name, kind in (("config", TrainConfig), ("data", DataConfig)):
            if not isinstance(getattr(self, name), kind):
                raise ValueError(f"train.{name} must be a {kind.__name__}, got {getattr(self, name)!r}")
        if not self.config.model_dir:
            raise ValueError("TrainConfig.model_dir (MODEL_DIR) is not set: python -m flanx.train needs a run "
                             "directory, e.g. --gin.MODEL_DIR=\"'runs/my_run'\"")
        if self.initial_checkpoint_path is not None and not isinstance(self.initial_checkpoint_path, str):
            raise ValueError("train.initial_checkpoint_path (INITIAL_CHECKPOINT_PATH) must be a path or None, "
                             f"got {self.initial_checkpoint_path!r}")
        names = self.eval_mixtures or ()
        object.__setattr__(self, "eval_mixtures", (names,) if isinstance(names, str) else tuple(names))
        check_int("train", "eval_examples", self.eval_examples, "EVAL_EXAMPLES", minimum=1, allow_none=True)
