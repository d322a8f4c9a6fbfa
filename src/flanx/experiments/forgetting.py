"""The forgetting study: single-task vs multi-task vs LoRA fine-tuning, one command.

    base  --(arm_steps on the target)-->  single_task   (full fine-tune, target task only)
          --(arm_steps, LoRA adapters)->  lora          (q/v adapters, base frozen)
          --(arm_steps, target+replay)->  multi_task    (target mixed with the base mixture at `replay_ratio`)
          (no fine-tuning)                base

The base is a given checkpoint (`base_checkpoint`: Hugging Face, T5X or flanx)
or is trained here on `base_mixture` for `base_steps`. Every arm starts from
the same base parameters, trains the same number of steps with the same batch
size and seed, and is evaluated with the same decoding settings on the target
task, the held-in tasks (the base mixture's) and held-out tasks (never
trained on). `flanx.experiments.report` turns the evaluations into the table,
`results.json` and plots.

Resumable: each stage writes its outputs under `out_dir` and a stage whose
outputs exist is skipped; an interrupted training stage resumes from its own
newest checkpoint (the trainer's exact resume). One study writes `out_dir` at
a time (`out_dir/flanx.lock`; a second one fails at start naming the first).

    out_dir/base/              base training run (model_dir), or absent with base_checkpoint
    out_dir/arms/<arm>/        each arm's training run (model_dir)
    out_dir/evals/<arm>.json   that arm's evaluation, written once complete
    out_dir/report.md, results.json, *.png
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import jax
import numpy as np

from flanx.models import LoraConfig, T5Config, get_config
from flanx.progress import setup_logging
from flanx.train.config import OptimizerConfig, TrainConfig

logger = logging.getLogger("flanx")

ARMS = ("single_task", "lora", "multi_task")


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
    # Arms.
    target_task: str = "synth_chat_summary_template_0to9_zsnoopt"
    arms: tuple = ARMS
    arm_steps: int = 200
    arm_learning_rate: float = 1e-3
    lora: LoraConfig = field(default_factory=lambda: LoraConfig(rank=8, alpha=16.0, dropout=0.0))
    lora_learning_rate: float = 3e-3
    # Adafactor's parameter-scaled updates barely move zero-initialised `lora_b`
    # (update ~ lr * max(rms(b), 1e-3)); adapters train with AdamW, as in the LoRA paper.
    lora_optimizer: str = "adamw"
    replay_ratio: float = 0.5
    # Shared training settings.
    batch_size: int = 16
    task_feature_lengths: dict = field(default_factory=lambda: {"inputs": 256, "targets": 64})
    pack: bool = True
    seed: int = 0
    optimizer: str = "adafactor"
    checkpoint_period: int = 200
    # Evaluation (identical for every arm).
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
    reference: dict | None = None
    # Read every task from its offline cache (`flanx cache`; same examples, same order).
    use_cached_tasks: bool = False
    task_cache_dirs: tuple = ()

    def model_config(self) -> T5Config:
        return get_config(self.model) if isinstance(self.model, str) else self.model


def _git_commit() -> str:
    try:
        here = os.path.dirname(os.path.abspath(__file__))
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10).stdout.strip() or "unknown"
    except Exception:  # noqa: BLE001 - not a checkout
        return "unknown"


def _read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def _write_json(path: str, payload: Any) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=True, default=str)
    os.replace(tmp, path)  # a half-written file never looks complete


def _curve(model_dir: str) -> list[list[float]]:
    """(step, loss) pairs from a run's metrics.jsonl (local or gs://)."""
    from flanx.train.writers import read_metrics

    return [[int(r["step"]), float(r["loss"])] for r in read_metrics(model_dir, "train") if "loss" in r]


def _to_host(params):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)


class Study:
    """Runs (or resumes) a study described by a `StudyConfig`."""

    def __init__(self, cfg: StudyConfig):
        from flanx import data

        self.cfg = cfg
        self.model_config = cfg.model_config()
        data.register_all()
        from flanx.data import cache

        self.use_cached = cache.configure(cfg.use_cached_tasks, cfg.task_cache_dirs)
        self.base_curves: dict[str, list] = {}
        self.timings: dict[str, float] = {}

    # ---- data -------------------------------------------------------------
    def _factory(self, mixture: str, seed: int):
        from flanx.data import pipeline

        cfg, use_cached = self.cfg, self.use_cached

        def make(shard):
            import seqio

            return pipeline.get_dataset(
                mixture, task_feature_lengths=dict(cfg.task_feature_lengths), split="train",
                batch_size=shard.local_batch_size, shuffle=True, seed=seed, pack=cfg.pack,
                shard_info=seqio.ShardInfo(shard.index, shard.num_shards) if shard.num_shards > 1 else None,
                use_cached=use_cached)
        return make

    def eval_tasks(self) -> tuple[str, list[str], list[str]]:
        """(target eval task, held-in eval tasks, held-out eval tasks), each a registered seqio task."""
        cfg = self.cfg
        target = cfg.target_eval_task or cfg.target_task
        for name in (target, *cfg.held_in, *cfg.held_out):
            _check_task(name)
        return target, list(cfg.held_in), list(cfg.held_out)

    # ---- training ---------------------------------------------------------
    def _train(self, model_dir: str, mixture: str, steps: int, lr: float, model_config: T5Config,
               init_params=None, optimizer: str | None = None):
        from flanx.train import trainer

        cfg = self.cfg
        tcfg = TrainConfig(
            train_steps=steps, batch_size=cfg.batch_size, model_dir=model_dir, seed=cfg.seed,
            checkpoint_period=cfg.checkpoint_period, keep_checkpoints=1, log_every=max(1, steps // 20),
            optimizer=OptimizerConfig(name=optimizer or cfg.optimizer, learning_rate=lr))
        t0 = time.perf_counter()
        result = trainer.train(tcfg, model_config, self._factory(mixture, cfg.seed), init_params=init_params)
        self.timings[os.path.basename(model_dir)] = time.perf_counter() - t0
        return _to_host(result.params)

    def base_params(self):
        """Load or train the base model; returns host params."""
        cfg = self.cfg
        if cfg.base_checkpoint:
            from flanx.checkpoints import load_params

            params, _, _ = load_params(cfg.base_checkpoint, self.model_config)
            return _to_host(params)
        model_dir = os.path.join(cfg.out_dir, "base")
        logger.info("study: training the base model on %s for %d steps", cfg.base_mixture, cfg.base_steps)
        params = self._train(model_dir, cfg.base_mixture, cfg.base_steps, cfg.base_learning_rate,
                             self.model_config)
        self.base_curves[cfg.base_mixture] = _curve(model_dir)
        return params

    def arm_params(self, arm: str, base):
        """Fine-tune one arm from the base params; returns host params (LoRA merged)."""
        from flanx.data import mixtures
        from flanx.models import lora

        cfg = self.cfg
        model_dir = os.path.join(cfg.out_dir, "arms", arm)
        if arm == "single_task":
            return self._train(model_dir, cfg.target_task, cfg.arm_steps, cfg.arm_learning_rate,
                               self.model_config, init_params=base)
        if arm == "multi_task":
            mixture = mixtures.replay_mixture(cfg.target_task, cfg.base_mixture, cfg.replay_ratio)
            return self._train(model_dir, mixture, cfg.arm_steps, cfg.arm_learning_rate,
                               self.model_config, init_params=base)
        if arm == "lora":
            lcfg = self.model_config.replace(lora=cfg.lora)
            start, _ = lora.setup(base, lcfg, jax.random.PRNGKey(cfg.seed + 1))  # the trainer's own set-up
            start = _to_host(start)
            trained = self._train(model_dir, cfg.target_task, cfg.arm_steps, cfg.lora_learning_rate,
                                  lcfg, init_params=start, optimizer=cfg.lora_optimizer)
            return _to_host(lora.merge_lora(trained, lcfg))
        raise ValueError(f"unknown study arm {arm!r}; choose from {ARMS}")

    # ---- evaluation -------------------------------------------------------
    def evaluate(self, params) -> dict:
        """Every arm: the same tasks, examples, lengths and greedy decoding."""
        from flanx.eval import evaluator
        from flanx.predict import DecodeConfig

        cfg = self.cfg
        target, held_in, held_out = self.eval_tasks()
        by_split: dict[str, list[str]] = {}
        for task in dict.fromkeys([target, *held_in, *held_out]):
            by_split.setdefault(cfg.eval_split_overrides.get(task, cfg.eval_split), []).append(task)
        decode = DecodeConfig(method="greedy", max_decode_length=cfg.max_decode_length,
                              batch_size=cfg.eval_batch_size)
        results = {}
        for split, tasks in by_split.items():
            results.update(evaluator.evaluate(params, self.model_config, tasks, split=split,
                                              feature_lengths=dict(cfg.task_feature_lengths), decode=decode,
                                              num_examples=cfg.eval_examples, use_cached=self.use_cached))
        return results

    # ---- the whole study --------------------------------------------------
    def run(self) -> dict:
        """Run or resume the study; `out_dir` is locked meanwhile (one study writes it; each arm's
        training run locks its own model_dir)."""
        from flanx.train import run_dir

        setup_logging()
        guard = run_dir.claim(self.cfg.out_dir)
        try:
            return self._run()
        finally:
            guard.release()

    def _run(self) -> dict:
        cfg = self.cfg
        os.makedirs(cfg.out_dir, exist_ok=True)
        check_study_dir(cfg, self.model_config)
        t_start = time.perf_counter()
        target, held_in, held_out = self.eval_tasks()
        base = None
        evals: dict[str, dict] = {}
        for arm in ("base", *cfg.arms):
            path = os.path.join(cfg.out_dir, "evals", f"{arm}.json")
            if os.path.exists(path):
                logger.info("study: %s already evaluated (%s), skipping", arm, path)
                evals[arm] = _read_json(path)
                continue
            if base is None:
                base = self.base_params()
            params = base if arm == "base" else self.arm_params(arm, base)
            logger.info("study: evaluating %s on %d tasks", arm, 1 + len(held_in) + len(held_out))
            t0 = time.perf_counter()
            metrics = self.evaluate(params)
            evals[arm] = {"metrics": metrics, "eval_time_s": time.perf_counter() - t0,
                          "train_time_s": self.timings.get(arm if arm != "base" else "base", 0.0)}
            _write_json(path, evals[arm])
        return self.report(evals, time.perf_counter() - t_start, target, held_in, held_out)

    def report(self, evals, wall_time, target, held_in, held_out) -> dict:
        from flanx.experiments import report

        cfg = self.cfg
        arms = {}
        for arm, ev in evals.items():
            model_dir = os.path.join(cfg.out_dir, "arms", arm)
            arms[arm] = {"metrics": ev["metrics"], "curve": _curve(model_dir) if arm != "base" else [],
                         "steps": 0 if arm == "base" else cfg.arm_steps,
                         "wall_time_s": ev.get("train_time_s", 0.0) + ev.get("eval_time_s", 0.0)}
        base_dir = os.path.join(cfg.out_dir, "base")
        base_curves = {cfg.base_mixture: _curve(base_dir)} if os.path.isdir(base_dir) else {}
        all_tasks = [target, *held_in, *held_out]
        results = {
            "name": cfg.name, "target_task": target, "held_in": held_in, "held_out": held_out,
            "primary_metric": {t: primary_metric(evals["base"]["metrics"].get(t, {})) for t in all_tasks},
            "target_metrics": ["rouge1", "rouge2", "rougeL", "rougeLsum"],
            "arms": arms, "base_curves": base_curves, "reference": cfg.reference,
            "meta": {"config": _config_dict(cfg), "model_config": dataclasses.asdict(self.model_config),
                     "commit": _git_commit(), "seed": cfg.seed, "base_steps": cfg.base_steps,
                     "arm_steps": cfg.arm_steps, "wall_time_s": round(wall_time, 1),
                     "description": cfg.description, "jax_backend": jax.default_backend()},
        }
        files = report.write_report(results, cfg.out_dir)
        logger.info("study: report written to %s", files["report"])
        return {"results": results, "files": files}


PRIMARY_METRICS = ("rougeL", "exact_match", "accuracy", "rank_accuracy")


def primary_metric(metrics: dict) -> str:
    """The metric a task is judged by in the report: ROUGE-L, exact match or accuracy."""
    for name in PRIMARY_METRICS:
        if name in metrics:
            return name
    return sorted(metrics)[0] if metrics else "accuracy"


def _check_task(name: str) -> None:
    import seqio

    if name not in seqio.TaskRegistry.names():
        import difflib

        close = difflib.get_close_matches(name, seqio.TaskRegistry.names(), n=5, cutoff=0.5)
        raise ValueError(f"study task {name!r} is not a registered seqio task"
                         + (f"; close matches: {', '.join(close)}" if close else "")
                         + ". List tasks with `flanx tasks list`.")


def _config_dict(cfg: StudyConfig) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        out[f.name] = dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
    return out


# Fields that only name or describe a study, or say where its (identical) data is read from:
# changing them keeps its results valid.
_PRESENTATION_FIELDS = ("name", "out_dir", "description", "reference", "use_cached_tasks", "task_cache_dirs")
STUDY_CONFIG_FILE = "study_config.json"


def _fingerprint(cfg: StudyConfig, model_config: T5Config) -> dict:
    fields = {k: v for k, v in _config_dict(cfg).items() if k not in _PRESENTATION_FIELDS}
    fields["model"] = dataclasses.asdict(model_config)
    return json.loads(json.dumps(fields, sort_keys=True, default=str))  # tuples -> lists, as on disk


class StudyDirMismatch(ValueError):
    """`out_dir` holds results of another configuration."""


def check_study_dir(cfg: StudyConfig, model_config: T5Config) -> None:
    """Refuse to resume into `out_dir` when its results came from another configuration.

    Resuming skips every arm with an `evals/<arm>.json`, so a changed setting
    (steps, learning rate, tasks, model) would otherwise be reported beside
    numbers that were not produced with it. The first run records the settings
    in `out_dir/study_config.json`.
    """
    path = os.path.join(cfg.out_dir, STUDY_CONFIG_FILE)
    current = _fingerprint(cfg, model_config)
    if not os.path.exists(path):
        _write_json(path, current)
        return
    try:
        recorded = _read_json(path)
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


def run_study(cfg: StudyConfig) -> dict:
    return Study(cfg).run()
