"""The forgetting study: fine-tune a base on one task with every arm and seed, measure what it forgets.

    base --(arm plan, arm_steps, per seed)--> single_task, replay@r, l2sp@c, ewc@c, lora@rank, ...
         --(no training)------------------> wise_ft@alpha (base <-> wise_ft_source interpolation)

The base is a given checkpoint (`base_checkpoint`: Hugging Face, T5X or flanx)
or is trained here on `base_mixture` for `base_steps` (seed `seed`). Each arm
(`flanx.experiments.arms`: a registry; `knobs` sweeps their values) returns a
plan that the study runs identically for every seed in `seeds`: same steps,
batch size and data pipeline (the seed orders the data and seeds the run).
Every variant and the base are evaluated on the same examples of the target,
held-in and held-out tasks (`flanx.experiments.evaluation`), keeping
per-example scores; with `curve_every` the held-in and held-out tasks are
also evaluated every k fine-tuning steps on the first `curve_examples` of
those examples. `flanx.experiments.report` turns the evaluation files into
numbers with spreads, and `flanx.experiments.plots` into pictures.

Resumable: each stage writes its outputs under `out_dir` and a stage whose
outputs exist is skipped; an interrupted training run resumes from its own
newest checkpoint (the trainer's exact resume). One study writes `out_dir` at
a time (`out_dir/flanx.lock`; a second one fails at start naming the first).
With `use_cached_tasks`, every task is read from its offline cache (`flanx cache`).

    out_dir/study_config.json           the settings (resuming with other settings is refused)
    out_dir/invocations.json            each run of the command: command, commit, wall and CPU time, load
    out_dir/base/                       base training run (absent with base_checkpoint)
    out_dir/runs/<variant>/seed<k>/     each training variant's run (model_dir)
    out_dir/evals/<variant>/seed<k>.json  its evaluation, written once complete
    out_dir/report.md, results.json, *.png
"""
from __future__ import annotations

import json
import logging
import os
import resource
import subprocess
import sys
import time

import jax
import numpy as np

from flanx.experiments import arms as arms_lib
from flanx.experiments.evaluation import record, write_record
from flanx.experiments.study_config import (STUDY_CONFIG_FILE, StudyConfig, StudyDirMismatch,  # noqa: F401
                                            check_settings, check_study_dir, fingerprint)
from flanx.train.config import TrainConfig

INVOCATIONS_FILE = "invocations.json"   # one record per `flanx study` run into out_dir: command, commit, times, load

logger = logging.getLogger("flanx")


def _git_commit() -> str:
    """The checkout's commit (short), `-dirty` when tracked files differ from it; 'unknown' outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "."], cwd=here, timeout=10).returncode
    except Exception:  # noqa: BLE001 - no git
        return "unknown"
    return (commit + ("-dirty" if dirty else "")) if commit else "unknown"


def _read_json(path: str, default):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _cpu_time() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _to_host(params):
    return jax.tree.map(lambda x: np.asarray(jax.device_get(x)), params)


def _curve_values(task_evals: dict, limit: int) -> dict[str, dict[str, float]]:
    """{task: {primary metric: value over its first `limit` examples}} (from per-example scores)."""
    from flanx.experiments.report import primary_metric

    out = {}
    for task, body in task_evals.items():
        metric = primary_metric(body["metrics"])
        per = body["per_example"].get(metric)
        if per:
            out[task] = {metric: round(float(np.mean(per[:limit])), 6)}
    return out


def _point(values: dict[str, dict[str, float]]) -> dict[str, float]:
    return {t: next(iter(m.values())) for t, m in values.items()}


class Study:
    """Runs (or resumes) a study described by a `StudyConfig`."""

    def __init__(self, cfg: StudyConfig, command: str | None = None):
        from flanx import data

        self.cfg, self.command = cfg, command
        self.model_config = cfg.model_config()
        data.register_all()
        from flanx.data import cache

        self.use_cached = cache.configure(cfg.use_cached_tasks, cfg.task_cache_dirs)
        self.variants = arms_lib.variants(cfg.arms, cfg.knobs)
        self._suite = self._base = self._fisher = None

    # ---- pieces -----------------------------------------------------------
    def suite(self):
        from flanx.experiments.evaluation import EvalSuite
        from flanx.predict import DecodeConfig

        if self._suite is None:
            cfg, tasks = self.cfg, self.eval_tasks()
            for name in tasks:
                _check_task(name)
            self._suite = EvalSuite(tasks, cfg.task_feature_lengths, DecodeConfig(
                method="greedy", max_decode_length=cfg.max_decode_length, batch_size=cfg.eval_batch_size),
                cfg.eval_examples, use_cached=self.use_cached)
        return self._suite

    def eval_tasks(self) -> dict[str, str]:
        """task -> split of every evaluated task."""
        return self.cfg.eval_tasks()

    def groups(self) -> tuple[str | None, list[str], list[str]]:
        """(target evaluation task or None, held-in tasks, held-out tasks) of the report."""
        cfg = self.cfg
        return cfg.target_eval_task or cfg.target_task, list(cfg.held_in), list(cfg.held_out)

    def settings(self) -> dict:
        """The settings that change results (recorded in out_dir and in the report)."""
        return fingerprint(self.cfg, self.model_config)

    def _factory(self, mixture: str, seed: int, pack: bool | None = None):
        from flanx.data import pipeline

        cfg, use_cached = self.cfg, self.use_cached

        def make(shard):
            import seqio

            return pipeline.get_dataset(
                mixture, task_feature_lengths=dict(cfg.task_feature_lengths), split="train",
                batch_size=shard.local_batch_size, shuffle=True, seed=seed, pack=cfg.pack if pack is None else pack,
                shard_info=seqio.ShardInfo(shard.index, shard.num_shards) if shard.num_shards > 1 else None,
                use_cached=use_cached)
        return make

    def base_params(self):
        """Load or train the base model (host params), once."""
        if self._base is not None:
            return self._base
        cfg = self.cfg
        if cfg.base_checkpoint:
            from flanx.checkpoints import load_params

            self._base = _to_host(load_params(cfg.base_checkpoint, self.model_config)[0])
            return self._base
        from flanx.train import trainer
        from flanx.train.config import OptimizerConfig

        logger.info("study: training the base model on %s for %d steps", cfg.base_mixture, cfg.base_steps)
        tcfg = TrainConfig(train_steps=cfg.base_steps, batch_size=cfg.batch_size, seed=cfg.seed,
                           model_dir=os.path.join(cfg.out_dir, "base"), checkpoint_period=cfg.checkpoint_period,
                           keep_checkpoints=1, log_every=max(1, cfg.base_steps // 20),
                           optimizer=OptimizerConfig(name=cfg.optimizer, learning_rate=cfg.base_learning_rate))
        result = trainer.train(tcfg, self.model_config, self._factory(cfg.base_mixture, cfg.seed))
        self._base = _to_host(result.params)
        return self._base

    def fisher(self):
        """Diagonal Fisher of the base on `fisher_examples` unpacked examples of the base mixture (once)."""
        if self._fisher is None:
            from flanx.models import decoding
            from flanx.partitioning import HostShard
            from flanx.train.regularizers import diagonal_fisher

            cfg = self.cfg
            size = min(cfg.fisher_examples, cfg.batch_size)
            it = self._factory(cfg.base_mixture, cfg.seed, pack=False)(HostShard(0, 1, size))
            batches = [next(it) for _ in range(-(-cfg.fisher_examples // size))]
            keys = ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens", "decoder_loss_weights")
            logger.info("study: EWC Fisher on %d examples of %s", len(batches) * size, cfg.base_mixture)
            config = self.model_config
            self._fisher = diagonal_fisher(lambda p, batch: decoding.score(p, config, batch), self.base_params(),
                                           [{k: b[k] for k in keys if k in b} for b in batches])
        return self._fisher

    def trained_params(self, variant: str, seed: int):
        """A trained variant's final parameters for `seed` (host; LoRA merged into plain kernels)."""
        from flanx.checkpoints import load_params
        from flanx.models import lora

        model_dir = self._run_dir(variant, seed)
        if not os.path.isdir(os.path.join(model_dir, "checkpoints")):
            raise ValueError(f"{variant} seed {seed} has no trained run in {model_dir}; put the arm it names "
                             f"(StudyConfig.wise_ft_source) in StudyConfig.arms")
        params, config, _ = load_params(model_dir)
        return _to_host(lora.merge_lora(params, config)) if config.lora is not None else _to_host(params)

    def _run_dir(self, variant: str, seed: int) -> str:
        return os.path.join(self.cfg.out_dir, "runs", variant, f"seed{seed}")

    def _eval_path(self, variant: str, seed: int) -> str:
        return os.path.join(self.cfg.out_dir, "evals", variant, f"seed{seed}.json")

    # ---- one variant ------------------------------------------------------
    def _train(self, variant: str, seed: int, plan: arms_lib.ArmPlan) -> tuple[dict, list, float]:
        """Train one plan; returns (final evaluation, curve points, train time)."""
        from flanx.train import trainer
        from flanx.train.writers import read_metrics

        cfg = self.cfg
        model_dir = self._run_dir(variant, seed)
        tcfg = TrainConfig(train_steps=cfg.arm_steps, batch_size=cfg.batch_size, model_dir=model_dir, seed=seed,
                           checkpoint_period=cfg.checkpoint_period, keep_checkpoints=1,
                           log_every=max(1, cfg.arm_steps // 20), eval_period=cfg.curve_every,
                           optimizer=plan.optimizer)
        final: dict = {}
        limit, eval_time = cfg.curve_examples, [0.0]
        curve_tasks = list(dict.fromkeys([*cfg.held_in, *cfg.held_out]))

        def eval_fn(params, step):
            t0 = time.perf_counter()
            if step >= cfg.arm_steps:  # the end of the run: the full evaluation, kept whole
                final.update(self.suite()(params, plan.model_config))
                values = _curve_values(final, limit)
            else:  # held-in and held-out tasks on the curve examples
                values = _curve_values(self.suite()(params, plan.model_config, limit=limit, tasks=curve_tasks), limit)
            eval_time[0] += time.perf_counter() - t0
            return values

        t0 = time.perf_counter()
        result = trainer.train(tcfg, plan.model_config, self._factory(plan.mixture, seed),
                               init_params=plan.init_params, eval_fn=eval_fn, extra_loss=plan.extra_loss)
        train_time = time.perf_counter() - t0 - eval_time[0]
        if not final:  # the run had finished before (resumed at its last step): evaluate its parameters
            final.update(self.suite()(_to_host(result.params), plan.model_config))
        points = {}
        for row in read_metrics(model_dir, "eval"):
            if row["step"] < cfg.arm_steps:
                points[int(row["step"])] = _point({t: v for t, v in row.items() if isinstance(v, dict)})
        points[cfg.arm_steps] = _point(_curve_values({t: final[t] for t in curve_tasks}, limit))
        return final, [{"step": s, "values": points[s]} for s in sorted(points)], train_time

    def run_variant(self, variant: arms_lib.Variant, seed: int) -> dict:
        cfg = self.cfg
        ctx = arms_lib.ArmContext(cfg, self.model_config, self.base_params(), seed, self.fisher,
                                  lambda name: self.trained_params(name, seed))
        plan = arms_lib.ARMS[variant.arm].fn(ctx, variant.value)
        info = {"arm": variant.arm, "knob": variant.knob, "value": variant.value, "optimizer": plan.describe(),
                "steps": cfg.arm_steps if plan.trains else 0}
        if plan.same_as:
            return record(variant.name, seed, None, **info, same_as=plan.same_as)
        cpu0, t0 = _cpu_time(), time.perf_counter()
        if plan.trains:
            logger.info("study: %s seed %d: training %d steps on %s (%s)", variant.name, seed, cfg.arm_steps,
                        plan.mixture, info["optimizer"])
            tasks, curve, train_time = self._train(variant.name, seed, plan)
            from flanx.train.writers import read_metrics

            losses = {int(r["step"]): round(float(r["loss"]), 5) for r in
                      read_metrics(self._run_dir(variant.name, seed), "train") if "loss" in r}
            info.update(train_loss=sorted(losses.items()), curve=curve)
        else:
            logger.info("study: %s seed %d: evaluating", variant.name, seed)
            tasks, train_time = self.suite()(plan.params, plan.model_config), 0.0
        elapsed = time.perf_counter() - t0
        return record(variant.name, seed, tasks, **info, train_time_s=round(train_time, 1),
                      eval_time_s=round(elapsed - train_time, 1), cpu_time_s=round(_cpu_time() - cpu0, 1))

    def run_base(self) -> dict:
        cpu0, t0 = _cpu_time(), time.perf_counter()
        params = self.base_params()
        train_time = time.perf_counter() - t0
        tasks = self.suite()(params, self.model_config)
        held = [*self.cfg.held_in, *self.cfg.held_out]
        start = _point(_curve_values({t: tasks[t] for t in held}, self.cfg.curve_examples))
        return record(arms_lib.BASE, self.cfg.seed, tasks, arm=None, knob=None, value=None, optimizer=None, steps=0,
                      curve=[{"step": 0, "values": start}], train_time_s=round(train_time, 1),
                      eval_time_s=round(time.perf_counter() - t0 - train_time, 1),
                      cpu_time_s=round(_cpu_time() - cpu0, 1))

    # ---- the whole study --------------------------------------------------
    def run(self) -> dict:
        """Run or resume the study; `out_dir` is locked meanwhile (one study writes it; each training
        run locks its own model_dir)."""
        from flanx.progress import setup_logging
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
        check_settings(cfg.out_dir, self.settings(), type(cfg).__name__)
        t_start, cpu_start, load_start = time.perf_counter(), _cpu_time(), os.getloadavg()
        invocation = {"command": self.command, "commit": _git_commit(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "load_average_start": [round(x, 2) for x in load_start], "cpus": os.cpu_count()}
        evals_dir = os.path.join(cfg.out_dir, "evals")

        def record_invocation(ended: str | None = None) -> None:
            invocation.update(wall_time_s=round(time.perf_counter() - t_start, 1),
                              cpu_time_s=round(_cpu_time() - cpu_start, 1),
                              load_average_end=[round(x, 2) for x in os.getloadavg()])
            if ended:
                invocation["ended"] = ended
            path = os.path.join(cfg.out_dir, INVOCATIONS_FILE)
            history = _read_json(path, [])
            with open(path, "w") as f:
                json.dump(history + [invocation], f, indent=1)

        try:
            if not os.path.exists(self._eval_path(arms_lib.BASE, cfg.seed)):
                write_record(evals_dir, self.run_base())
            for seed in cfg.seeds:
                for variant in self.variants:  # training arms first: evaluation-only arms may read them
                    path = self._eval_path(variant.name, seed)
                    if os.path.exists(path):
                        logger.info("study: %s seed %d already evaluated, skipping", variant.name, seed)
                        continue
                    write_record(evals_dir, self.run_variant(variant, seed))
        except BaseException as e:  # an interrupted invocation still counts in the report's times
            record_invocation(f"interrupted: {type(e).__name__}")
            raise
        record_invocation()
        return self.report()

    def report_meta(self) -> dict:
        """The report's provenance: description, settings, and the recorded invocations (times summed)."""
        cfg = self.cfg
        runs = _read_json(os.path.join(cfg.out_dir, INVOCATIONS_FILE), [])
        meta = {"description": cfg.description, "jax_backend": jax.default_backend(),
                "config": self.settings(), "invocations": runs}
        if runs:  # the last command and commit; times and loads summed / listed over every invocation
            meta.update(command=runs[-1]["command"], commit=runs[-1]["commit"],
                        wall_time_s=round(sum(r["wall_time_s"] for r in runs), 1),
                        cpu_time_s=round(sum(r["cpu_time_s"] for r in runs), 1),
                        load_average=[r["load_average_start"] + r["load_average_end"] for r in runs])
        return meta

    def report(self) -> dict:
        """Write the report from the evaluation files (and the recorded invocations) in `out_dir`."""
        from flanx.experiments import report

        cfg, meta = self.cfg, self.report_meta()
        found = report.read_evals(os.path.join(cfg.out_dir, "evals"))
        evals = {}  # the configured variants and seeds, in config order
        for name in [arms_lib.BASE] + [v.name for v in self.variants]:
            by_seed = {s: b for s, b in found.get(name, {}).items() if name == arms_lib.BASE or s in cfg.seeds}
            if by_seed:
                evals[name] = by_seed
        target, held_in, held_out = self.groups()
        results = report.build_results(evals, target, held_in, held_out, name=cfg.name,
                                       meta=meta, reference=cfg.reference, samples=cfg.bootstrap_samples)
        files = report.write_report(results, cfg.out_dir)
        logger.info("study: report written to %s", files["report"])
        return {"results": results, "files": files}


def _check_task(name: str) -> None:
    import seqio

    if name not in seqio.TaskRegistry.names():
        import difflib

        close = difflib.get_close_matches(name, seqio.TaskRegistry.names(), n=5, cutoff=0.5)
        raise ValueError(f"study task {name!r} is not a registered seqio task"
                         + (f"; close matches: {', '.join(close)}" if close else "")
                         + ". List tasks with `flanx tasks list`.")


def run_study(cfg: StudyConfig, command: str | None = None) -> dict:
    return Study(cfg, command or " ".join(sys.argv)).run()
