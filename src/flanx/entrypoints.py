"""Gin-configured entry points: `python -m flanx.train|eval|infer` and `flanx train|eval|infer`.

Each takes `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` overrides, plus
the distributed flags `--coordinator_address --num_processes --process_id`
(or SLURM / `FLANX_*` environment, see `flanx.distributed`). The run configs
in `t5x_configs/runs/` use T5X's macro names; this module turns the macros
into typed configs (`TrainConfig`, `OptimizerConfig`, ...) and calls the
plain-Python APIs (`flanx.train.trainer.train`, `flanx.eval.evaluator`,
`flanx.infer`). A required macro that is missing fails at start-up naming it.

train: MODEL_CONFIG (a model gin file), MODEL_DIR, MIXTURE_OR_TASK_NAME,
  TASK_FEATURE_LENGTHS, TRAIN_STEPS (absolute), BATCH_SIZE; optional
  INITIAL_CHECKPOINT_PATH, DROPOUT_RATE, LEARNING_RATE, LOSS_NORMALIZING_FACTOR,
  EVAL_PERIOD, EVAL_MIXTURES, EVAL_SPLIT, EVAL_EXAMPLES, CHECKPOINT_PERIOD,
  KEEP_CHECKPOINTS, RANDOM_SEED, NUM_MICROBATCHES, PACK, LOG_EVERY, MESH_DATA/FSDP/MODEL;
  finer knobs as bindings on flanx.OptimizerConfig / flanx.LossConfig / flanx.DecodeConfig.
eval:  CHECKPOINT_PATH, EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME (a name or a list);
  optional MODEL_CONFIG (else the checkpoint's), TASK_FEATURE_LENGTHS, SPLIT, EVAL_EXAMPLES.
infer: CHECKPOINT_PATH, INFER_OUTPUT_DIR, MIXTURE_OR_TASK_NAME or INFER_INPUT_FILE;
  optional TASK_FEATURE_LENGTHS, SPLIT, INFER_EXAMPLES, WITH_SCORES, VOCABULARY.
all three: USE_CACHED_TASKS (T5X's name; default False) reads the tasks from their offline cache
  (`flanx cache`) in TASK_CACHE_DIRS (a directory or a list).
"""
from __future__ import annotations

import json
import logging
import os

import gin

from flanx import distributed, gin_utils
from flanx.progress import setup_logging

logger = logging.getLogger("flanx")
MODEL_HINT = "include a model gin file, e.g. --gin_file=models/flan_t5_base.gin (sets MODEL_CONFIG)"
m = gin_utils.resolved_macro


def _start(argv: list[str], command: str) -> None:
    """Split flags, start multi-process JAX, parse gin. Exits on --help or unknown flags."""
    dist_flags, argv = distributed.split_distributed_args(list(argv))
    files, bindings, rest = gin_utils.split_gin_args(argv)
    if any(a in ("-h", "--help") for a in rest):
        print(f"usage: python -m flanx.{command} --gin_file=runs/{command if command != 'train' else 'finetune'}.gin "
              f"[--gin_file=...] [--gin.NAME=VALUE ...]\n\n{__doc__}")
        raise SystemExit(0)
    if rest:
        raise SystemExit(f"flanx {command}: unknown arguments {rest}; use --gin_file=FILE and --gin.NAME=VALUE")
    if not files:
        raise SystemExit(f"flanx {command}: pass at least one --gin_file (e.g. runs/{command}.gin and a model)")
    distributed.initialize(distributed.resolve(dist_flags))
    gin_utils.reset()
    gin_utils.parse_gin(files, bindings, finalize=False)


def _require(*names: str, maybe: tuple[str, ...] = ()) -> None:
    """Fail at start-up naming every required macro that is not set.

    `maybe` macros are optional unless a run config marks them `%gin.REQUIRED`.
    """
    missing = []
    for name in names + maybe:
        try:
            m(name) if name in names else m(name, None)
        except ValueError:
            missing.append(name)
    if missing:
        hint = f"; {MODEL_HINT}" if "MODEL_CONFIG" in missing else ""
        raise ValueError(f"required gin macro(s) not set: {', '.join(missing)}. Add `NAME = ...` to a gin "
                         f"file or pass --gin.NAME=VALUE{hint}")


def _is_primary() -> bool:
    import jax
    return jax.process_index() == 0


def _load(path: str, model_config):
    """(params on device, config, step) from any checkpoint format."""
    import jax

    from flanx.checkpoints import load_params
    params, config, step = load_params(path, model_config)
    return jax.device_put(params) if jax.process_count() == 1 else params, config, step


def _use_cached(names=(), split: str = "train") -> bool:
    """USE_CACHED_TASKS / TASK_CACHE_DIRS; when cached, fail now if a task of `names` is not."""
    from flanx.data import cache
    use = cache.configure(m("USE_CACHED_TASKS", False), m("TASK_CACHE_DIRS", None))
    for name in names if use else ():
        cache.require_cached(name, split)
    return use


def _decode_config(**overrides):
    return gin.get_configurable("flanx.DecodeConfig")(**overrides)


# ---------------------------------------------------------------- train


def _train_configs():
    from flanx.train.config import MeshConfig, TrainConfig

    model_config = m("MODEL_CONFIG", hint=MODEL_HINT)
    dropout = m("DROPOUT_RATE", None)
    if dropout is not None:
        model_config = model_config.replace(dropout_rate=float(dropout))
    lr = m("LEARNING_RATE", None)
    optimizer = gin.get_configurable("flanx.OptimizerConfig")(**({"learning_rate": float(lr)} if lr else {}))
    norm = m("LOSS_NORMALIZING_FACTOR", None)
    loss = gin.get_configurable("flanx.LossConfig")(**({"normalization": norm} if norm is not None else {}))
    mesh = MeshConfig(**{a: int(m(distributed.MESH_MACROS[a], distributed.MESH_DEFAULTS[a]))
                         for a in ("data", "fsdp", "model")})
    cfg = TrainConfig(
        train_steps=int(m("TRAIN_STEPS")), batch_size=int(m("BATCH_SIZE")), model_dir=str(m("MODEL_DIR")),
        seed=int(m("RANDOM_SEED", 0)), num_microbatches=int(m("NUM_MICROBATCHES", 1)),
        checkpoint_period=int(m("CHECKPOINT_PERIOD", 1000)), keep_checkpoints=m("KEEP_CHECKPOINTS", None),
        eval_period=int(m("EVAL_PERIOD", 0) or 0), log_every=int(m("LOG_EVERY", 10)),
        optimizer=optimizer, loss=loss, mesh=mesh)
    return model_config, cfg


def _initial_params(path: str | None, model_config, model_dir: str, train_steps: int):
    """Params and step of INITIAL_CHECKPOINT_PATH, unless MODEL_DIR already has checkpoints to resume."""
    from flanx.train.checkpointing import Checkpointer

    ckpt = Checkpointer(os.path.join(model_dir, "checkpoints"))
    resuming = ckpt.latest_step() is not None
    ckpt.close()
    if resuming or not path:
        return None, 0
    from flanx.checkpoints import load_params

    base_config = model_config.replace(lora=None) if model_config.lora is not None else model_config
    params, _, step = load_params(path, base_config)  # host numpy; the trainer lays it out on the mesh
    step = int(step or 0)
    if train_steps <= step:
        raise ValueError(f"TRAIN_STEPS={train_steps} is not beyond the initial checkpoint's step {step} "
                         f"({path}); TRAIN_STEPS is absolute (T5X): set TRAIN_STEPS={step} + the steps to train")
    if model_config.lora is not None:  # fresh adapters on the loaded base weights
        import jax

        from flanx.models import lora
        params = jax.device_get(lora.add_lora(params, model_config, jax.random.PRNGKey(int(m("RANDOM_SEED", 0)))))
    return params, step


def train(argv: list[str]) -> int:
    """`python -m flanx.train`: gin -> TrainConfig -> `flanx.train.trainer.train`."""
    _start(argv, "train")
    _require("MODEL_CONFIG", "MODEL_DIR", "MIXTURE_OR_TASK_NAME", "TASK_FEATURE_LENGTHS", "TRAIN_STEPS",
             "BATCH_SIZE", maybe=("INITIAL_CHECKPOINT_PATH",))
    model_config, cfg = _train_configs()
    import jax
    distributed.setup_process_logging(cfg.model_dir, jax.process_index())  # MODEL_DIR/logs/process_{i}.log
    name = m("MIXTURE_OR_TASK_NAME")
    lengths = dict(m("TASK_FEATURE_LENGTHS"))
    pack, shuffle = bool(m("PACK", True)), bool(m("SHUFFLE", True))
    use_cached = _use_cached([name], "train")
    if _is_primary():
        gin_utils.write_config(cfg.model_dir)
    init, init_step = _initial_params(m("INITIAL_CHECKPOINT_PATH", None), model_config, cfg.model_dir,
                                      cfg.train_steps)

    def data_factory(shard):
        import seqio

        from flanx.data import pipeline
        info = seqio.ShardInfo(shard.index, shard.num_shards) if shard.num_shards > 1 else None
        return pipeline.get_dataset(name, lengths, split="train", batch_size=shard.local_batch_size,
                                    shuffle=shuffle, seed=cfg.seed, pack=pack, shard_info=info,
                                    use_cached=use_cached)

    eval_fn = None
    eval_names = m("EVAL_MIXTURES", ()) or ()
    if eval_names:
        from flanx.eval.evaluator import EvalRunner
        eval_fn = EvalRunner(model_config, list(eval_names), m("EVAL_SPLIT", "validation"), lengths,
                             _decode_config(), m("EVAL_EXAMPLES", None), use_cached=use_cached)

    from flanx.train import preemption, trainer
    try:
        result = trainer.train(cfg, model_config, data_factory, init_params=init, eval_fn=eval_fn,
                               init_step=init_step)
    except preemption.Preempted as e:
        logger.warning("%s", e)
        return preemption.EXIT_CODE
    if _is_primary():
        gin_utils.write_operative_config(cfg.model_dir, "operative_config.gin")
        last = result.losses.get(result.step)
        print(json.dumps({"model_dir": cfg.model_dir, "step": result.step, "resumed_from": result.resumed_from,
                          "final_loss": last, "evals": result.evals[-1:] if result.evals else []}))
    return 0


# ---------------------------------------------------------------- eval


def eval(argv: list[str]) -> int:  # noqa: A001 - the command's name
    """`python -m flanx.eval`: evaluate a checkpoint on tasks/mixtures with seqio's Evaluator."""
    _start(argv, "eval")
    _require("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME")
    setup_logging()
    from flanx.eval.evaluator import evaluate
    from flanx.train.writers import MetricsWriter

    path, out_dir = str(m("CHECKPOINT_PATH")), str(m("EVAL_OUTPUT_DIR"))
    names = m("MIXTURE_OR_TASK_NAME")
    names = [names] if isinstance(names, str) else list(names)
    if _is_primary():
        gin_utils.write_config(out_dir)
    params, config, step = _load(path, m("MODEL_CONFIG", None))
    lengths = m("TASK_FEATURE_LENGTHS", None)
    results = evaluate(params, config, names, split=m("SPLIT", "validation"), feature_lengths=lengths,
                       decode=_decode_config(), num_examples=m("EVAL_EXAMPLES", None), step=step,
                       use_cached=_use_cached(names, m("SPLIT", "validation")))
    writer = MetricsWriter(out_dir)
    writer.write(step or 0, "eval", results)
    writer.close()
    if _is_primary():
        print(json.dumps({"checkpoint": path, "step": step, "results": results}))
    return 0


# ---------------------------------------------------------------- infer


def infer(argv: list[str]) -> int:
    """`python -m flanx.infer`: decode a task split (or INFER_INPUT_FILE) to JSONL."""
    _start(argv, "infer")
    _require("CHECKPOINT_PATH", "INFER_OUTPUT_DIR", maybe=("MIXTURE_OR_TASK_NAME", "INFER_INPUT_FILE"))
    setup_logging()
    from flanx import infer as infer_lib

    path, out_dir = str(m("CHECKPOINT_PATH")), str(m("INFER_OUTPUT_DIR"))
    input_file, task = m("INFER_INPUT_FILE", None), m("MIXTURE_OR_TASK_NAME", None)
    if not (input_file or task):
        raise ValueError("set MIXTURE_OR_TASK_NAME (a task) or INFER_INPUT_FILE (JSONL with \"inputs\", or text)")
    lengths = m("TASK_FEATURE_LENGTHS", None)
    params, config, _ = _load(path, m("MODEL_CONFIG", None))
    decode = _decode_config()
    if input_file:
        from flanx.data import get_vocabulary
        vocab = get_vocabulary(m("VOCABULARY", "t5_spm"))
        examples = infer_lib.read_prompts(input_file, vocab, (lengths or {}).get("inputs", 512))
        out_name = os.path.splitext(os.path.basename(input_file))[0] + ".jsonl"
    else:
        import seqio

        from flanx.data import pipeline
        split = m("SPLIT", "validation")
        examples = pipeline.get_eval_dataset(task, split, lengths, m("INFER_EXAMPLES", None),
                                             use_cached=_use_cached())
        vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
        out_name = f"{task}-{split}.jsonl"
    if _is_primary():
        gin_utils.write_config(out_dir)
    records = infer_lib.predict(params, config, examples, vocab, decode, lengths, bool(m("WITH_SCORES", False)))
    if _is_primary():
        out = infer_lib.write_jsonl(os.path.join(out_dir, out_name), records)
        print(json.dumps({"output": out, "examples": len(records)}))
    return 0

