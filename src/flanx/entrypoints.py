"""Gin-configured entry points: `python -m flanx.train|eval|infer` and `flanx train|eval|infer`.

Each takes `--gin_file=F` (repeatable) and `--gin.NAME=VALUE` overrides, plus
the distributed flags `--coordinator_address --num_processes --process_id`
(or SLURM / `FLANX_*` environment, see `flanx.distributed`). The run configs
in `t5x_configs/runs/` use T5X's macro names. Macros are strict: one that
nothing uses is an error naming the closest known name, and a required one
that is missing fails at start-up naming it.

train: evaluates `flanx.train` (`flanx.train.config.TrainRun`: the model config, `TrainConfig`,
  `DataConfig`, the initial checkpoint and in-training evaluation), as bound
  by `runs/pretrain.gin` / `runs/finetune.gin` through `base/train.gin`, and
  calls `flanx.train.trainer.train`. This module holds no defaults: they are
  the dataclasses' own. Macros: MODEL_CONFIG (a model gin file), MODEL_DIR,
  MIXTURE_OR_TASK_NAME, TASK_FEATURE_LENGTHS, TRAIN_STEPS (absolute), BATCH_SIZE,
  DROPOUT_RATE, LEARNING_RATE; optional INITIAL_CHECKPOINT_PATH,
  LOSS_NORMALIZING_FACTOR, EVAL_PERIOD, EVAL_MIXTURES, EVAL_SPLIT, EVAL_EXAMPLES,
  CHECKPOINT_PERIOD, KEEP_CHECKPOINTS, RANDOM_SEED, NUM_MICROBATCHES, PACK,
  SHUFFLE, LOG_EVERY, MESH_DATA/FSDP/MODEL, MIXTURE_OR_TASK_MODULE; finer knobs as bindings on
  flanx.OptimizerConfig / flanx.LossConfig / flanx.DecodeConfig / flanx.T5Config.
  MODEL_DIR gets config.gin (every binding) and operative_config.gin (every
  value the run uses, macros included) before training starts; the operative
  config alone (with a new MODEL_DIR) re-runs the run.
eval:  CHECKPOINT_PATH, EVAL_OUTPUT_DIR, MIXTURE_OR_TASK_NAME (a name or a list);
  optional MODEL_CONFIG (else the checkpoint's), TASK_FEATURE_LENGTHS, SPLIT, EVAL_EXAMPLES,
  MIXTURE_OR_TASK_MODULE.
infer: CHECKPOINT_PATH, INFER_OUTPUT_DIR, MIXTURE_OR_TASK_NAME or INFER_INPUT_FILE;
  optional MODEL_CONFIG, TASK_FEATURE_LENGTHS, SPLIT, INFER_EXAMPLES, WITH_SCORES, VOCABULARY,
  MIXTURE_OR_TASK_MODULE.
all three: USE_CACHED_TASKS (T5X's name; default False) reads the tasks from their offline cache
  (`flanx cache`) in TASK_CACHE_DIRS (a directory or a list).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os

import gin

from flanx import distributed, gin_utils
from flanx.progress import setup_logging, setup_process_logging

logger = logging.getLogger("flanx")
MODEL_HINT = "include a model gin file, e.g. --gin_file=models/flan_t5_base.gin (sets MODEL_CONFIG)"
macro = gin_utils.resolved_macro  # macro(NAME[, default]): a macro's evaluated value
# Macros each command reads itself (train reads none: its macros reach it through bindings).
DIRECT_MACROS = {
    "train": (),
    "eval": ("CHECKPOINT_PATH", "EVAL_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "MODEL_CONFIG", "TASK_FEATURE_LENGTHS",
             "SPLIT", "EVAL_EXAMPLES", "USE_CACHED_TASKS", "TASK_CACHE_DIRS", "MIXTURE_OR_TASK_MODULE"),
    "infer": ("CHECKPOINT_PATH", "INFER_OUTPUT_DIR", "MIXTURE_OR_TASK_NAME", "INFER_INPUT_FILE", "MODEL_CONFIG",
              "TASK_FEATURE_LENGTHS", "SPLIT", "INFER_EXAMPLES", "WITH_SCORES", "VOCABULARY", "USE_CACHED_TASKS",
              "TASK_CACHE_DIRS", "MIXTURE_OR_TASK_MODULE"),
}


def _start(argv: list[str], command: str) -> None:
    """Split flags, start multi-process JAX, parse gin, check the macros. Exits on --help or unknown flags."""
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
    gin_utils.prepare_macros(read=DIRECT_MACROS[command], hints={"MODEL_CONFIG": MODEL_HINT})


def _require(*names: str, maybe: tuple[str, ...] = ()) -> None:
    """Fail at start-up naming every required macro that is not set.

    `maybe` macros are optional unless a run config marks them `%gin.REQUIRED`.
    """
    missing = []
    for name in names + maybe:
        try:
            macro(name) if name in names else macro(name, None)
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


def _use_cached(names=(), split: str = "train", use: bool | None = None, cache_dirs=None) -> bool:
    """USE_CACHED_TASKS / TASK_CACHE_DIRS (from the DataConfig for training, read directly by eval and
    infer); when cached, fail now if a task of `names` is not."""
    from flanx.data import cache
    if use is None:
        use, cache_dirs = macro("USE_CACHED_TASKS", False), macro("TASK_CACHE_DIRS", None)
    use = cache.configure(use, cache_dirs or None)
    if use and names:
        from flanx.data import register_all
        register_all()
    for name in names if use else ():
        cache.require_cached(name, split)
    return use


def _decode_config(**overrides):
    return gin.get_configurable("flanx.DecodeConfig")(**overrides)


def _model_name(source: str = "MODEL_CONFIG") -> str:
    """'the model (MODEL_CONFIG: preset 'tiny')' for start-up messages."""
    try:
        return f"the model ({source}: preset {gin.query_parameter('flanx.get_config.name')!r})"
    except ValueError:
        return f"the model ({source})"


_CHECKPOINT_FIX = "This checkpoint was trained on another vocabulary: evaluate it on tasks that use that one"


def _write_vocabulary_record(model_dir: str, names: list[str]) -> None:
    """MODEL_DIR/vocabulary.json: the run's vocabulary, for `flanx convert --to hf` to write its tokenizer."""
    if len(names) != 1:
        return
    from flanx import io
    from flanx.data import vocab
    with io.open_output(os.path.join(model_dir, "vocabulary.json")) as f:
        json.dump(vocab.vocabulary_record(names[0]), f, indent=2)


def _prepare_tasks(module, names, vocab_size: int, model: str, fix: str | None = None) -> None:
    """Load MIXTURE_OR_TASK_MODULE and the user's FLANX_TASKS_PATH; check each name's vocabulary fits."""
    from flanx.data import checks, import_tasks
    import_tasks(module)
    for name in names:
        checks.check_vocabulary(name, vocab_size, model, fix=fix)


@contextlib.contextmanager
def _own_output_dir(out_dir: str):
    """Lock an output directory for this command (`flanx.train.run_dir.claim`); a failed command
    removes the directory again when the lock created it and nothing else was written."""
    from flanx.train import run_dir

    guard = run_dir.claim(out_dir)
    try:
        yield
    except BaseException:
        guard.release(failed=True)
        raise
    guard.release()


def _write_text(directory: str, name: str, text: str) -> None:
    from flanx import io

    with io.open_output(os.path.join(directory, name)) as f:
        f.write(text)


# ---------------------------------------------------------------- train


def train(argv: list[str]) -> int:
    """`python -m flanx.train`: gin -> `flanx.train` (a TrainRun) -> `flanx.train.trainer.train`."""
    _start(argv, "train")
    run = gin_utils.evaluate("flanx.train")
    cfg, model_config, data = run.config, run.model, run.data
    _prepare_tasks(data.module, [data.mixture_or_task_name, *run.eval_mixtures], model_config.vocab_size,
                   _model_name())
    import jax

    from flanx.data import checks, pipeline
    setup_logging()
    pipeline.check_name(data.mixture_or_task_name)  # an unknown task fails before MODEL_DIR is touched
    use_cached = _use_cached([data.mixture_or_task_name], data.split, data.use_cached, data.cache_dirs)
    records = {"config.gin": gin.config_str(), "operative_config.gin": gin.operative_config_str()}
    vocabularies = checks.vocabularies(data.mixture_or_task_name)

    def model_dir_ready():  # MODEL_DIR is locked and checked against its checkpoints: write there now
        setup_process_logging(cfg.model_dir, jax.process_index())  # MODEL_DIR/logs/process_{i}.log
        if _is_primary():
            for name, text in records.items():
                _write_text(cfg.model_dir, name, text)
            _write_vocabulary_record(cfg.model_dir, vocabularies)
            checks.warn_truncation(data.mixture_or_task_name, data.task_feature_lengths, data.split)

    def data_factory(shard):
        import seqio

        from flanx.data import pipeline
        info = seqio.ShardInfo(shard.index, shard.num_shards) if shard.num_shards > 1 else None
        logger.info("data: shard %d of %d, %d rows of each batch of %d", shard.index, shard.num_shards,
                    shard.local_batch_size, cfg.batch_size)
        return pipeline.get_dataset(data.mixture_or_task_name, data.task_feature_lengths, split=data.split,
                                    batch_size=shard.local_batch_size, shuffle=data.shuffle, seed=data.seed,
                                    pack=data.pack, shard_info=info,
                                    use_cached=use_cached)

    eval_fn = None
    if run.eval_mixtures:
        from flanx.eval.evaluator import EvalRunner
        eval_fn = EvalRunner(model_config, list(run.eval_mixtures), run.eval_split, data.task_feature_lengths,
                             run.decode or _decode_config(), run.eval_examples, use_cached=use_cached)

    from flanx.train import preemption, trainer
    try:
        result = trainer.train(cfg, model_config, data_factory, eval_fn=eval_fn,
                               init_checkpoint=run.initial_checkpoint_path, on_model_dir_ready=model_dir_ready)
    except preemption.Preempted as e:
        logger.warning("%s", e)
        return e.exit_code
    if _is_primary():
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

    path, out_dir = str(macro("CHECKPOINT_PATH")), str(macro("EVAL_OUTPUT_DIR"))
    names = macro("MIXTURE_OR_TASK_NAME")
    names = [names] if isinstance(names, str) else list(names)
    by_metadata: dict = {}  # results per template and per format (_template_type): flanx.eval.breakdown
    with _own_output_dir(out_dir):  # nothing is written there before the checkpoint has loaded
        params, config, step = _load(path, macro("MODEL_CONFIG", None))
        _prepare_tasks(macro("MIXTURE_OR_TASK_MODULE", None), names, config.vocab_size,
                       f"the checkpoint's model ({path})", fix=_CHECKPOINT_FIX)
        if _is_primary():
            gin_utils.write_config(out_dir)
        lengths = macro("TASK_FEATURE_LENGTHS", None)
        results = evaluate(params, config, names, split=macro("SPLIT", "validation"), feature_lengths=lengths,
                           decode=_decode_config(), num_examples=macro("EVAL_EXAMPLES", None), step=step,
                           use_cached=_use_cached(names, macro("SPLIT", "validation")),
                           predictions_dir=out_dir if _is_primary() else None, breakdown=by_metadata)
        writer = MetricsWriter(out_dir)
        writer.write(step or 0, "eval", results)
        writer.close()
        if _is_primary():
            from flanx import io as io_lib
            with io_lib.open_output(os.path.join(out_dir, "breakdown.json")) as f:
                json.dump({"step": step, **by_metadata}, f, indent=1, sort_keys=True)
    if _is_primary():
        print(json.dumps({"checkpoint": path, "step": step, "results": results, "breakdown": by_metadata}))
    return 0


# ---------------------------------------------------------------- infer


def infer(argv: list[str]) -> int:
    """`python -m flanx.infer`: decode a task split (or INFER_INPUT_FILE) to JSONL."""
    _start(argv, "infer")
    _require("CHECKPOINT_PATH", "INFER_OUTPUT_DIR", maybe=("MIXTURE_OR_TASK_NAME", "INFER_INPUT_FILE"))
    setup_logging()
    from flanx import infer as infer_lib

    path, out_dir = str(macro("CHECKPOINT_PATH")), str(macro("INFER_OUTPUT_DIR"))
    input_file, task = macro("INFER_INPUT_FILE", None), macro("MIXTURE_OR_TASK_NAME", None)
    if not (input_file or task):
        raise ValueError("set MIXTURE_OR_TASK_NAME (a task) or INFER_INPUT_FILE (JSONL with \"inputs\", or text)")
    lengths = macro("TASK_FEATURE_LENGTHS", None)
    decode = _decode_config()
    model = f"the checkpoint's model ({path})"
    if input_file:  # the prompts are read (and checked) before the checkpoint is loaded
        from flanx.data import get_vocabulary
        vocab_name = macro("VOCABULARY", "t5_spm")
        vocab = get_vocabulary(vocab_name)
        examples = infer_lib.read_prompts(input_file, vocab, (lengths or {}).get("inputs", 512))
        out_name = os.path.splitext(os.path.basename(input_file))[0] + ".jsonl"
    else:
        import seqio

        from flanx.data import import_tasks, pipeline
        import_tasks(macro("MIXTURE_OR_TASK_MODULE", None))
        split = macro("SPLIT", "validation")
        examples = pipeline.get_eval_dataset(task, split, lengths, macro("INFER_EXAMPLES", None),
                                             use_cached=_use_cached())
        vocab = seqio.get_mixture_or_task(task).output_features["targets"].vocabulary
        out_name = f"{task}-{split}.jsonl"
    with _own_output_dir(out_dir):
        params, config, _ = _load(path, macro("MODEL_CONFIG", None))
        if input_file:
            from flanx.data import checks
            checks.check_vocabulary_fits(vocab_name, config.vocab_size, model, "VOCABULARY is",
                                         fix="Set VOCABULARY to the one the checkpoint was trained with, e.g. "
                                             "--gin.VOCABULARY=\"'byte'\" for the byte-level models")
        else:
            _prepare_tasks(None, [task], config.vocab_size, model, fix=_CHECKPOINT_FIX)
        if _is_primary():
            gin_utils.write_config(out_dir)
        records = infer_lib.predict(params, config, examples, vocab, decode, lengths,
                                    bool(macro("WITH_SCORES", False)))
        if _is_primary():
            out = infer_lib.write_jsonl(os.path.join(out_dir, out_name), records)
            print(json.dumps({"output": out, "examples": len(records)}))
    return 0

