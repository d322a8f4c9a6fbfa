"""Foundation: data locations, progress lines and per-process logs, the umbrella CLI, gin plumbing, install layout."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flanx import cli, gin_utils, paths, progress

REPO = Path(__file__).resolve().parents[1]


def test_require_dataset_names_variable_and_missing_files(tmp_path, monkeypatch):
    monkeypatch.setenv(paths.DATA_DIR_ENV, str(tmp_path))
    (tmp_path / "dialogsum").mkdir()
    (tmp_path / "dialogsum" / "dialogsum.train.jsonl").write_text("{}\n")
    with pytest.raises(paths.MissingDataError) as e:
        paths.require_dataset("dialogsum")
    msg = str(e.value)
    assert "FLANX_DATA_DIR" in msg and "dialogsum/dialogsum.dev.jsonl" in msg
    assert "dialogsum/dialogsum.train.jsonl" not in msg.split("missing")[1]
    assert not paths.dataset_available("dialogsum")


def test_require_dataset_unset_variable(monkeypatch):
    monkeypatch.delenv(paths.DATA_DIR_ENV, raising=False)
    assert paths.data_dir() is None
    with pytest.raises(paths.MissingDataError, match="FLANX_DATA_DIR is unset"):
        paths.require_dataset("gsm8k")
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        paths.require_dataset("nope")


@pytest.mark.needs_data
def test_real_data_dir_has_every_listed_dataset(data_root):
    for name in paths.DATASETS:
        assert paths.dataset_available(name), name
        assert paths.require_dataset(name) == data_root


def test_resource_dirs_found():
    """The checkout's task collection and gin configs, with the files every run relies on."""
    assert paths.tasks_dir() == REPO / "tasks" and paths.configs_dir() == REPO / "t5x_configs"
    assert (paths.tasks_dir() / "mixtures.yaml").is_file() and (paths.tasks_dir() / "dialogsum.yaml").is_file()
    for gin_file in ("base/train.gin", "runs/pretrain.gin", "runs/finetune.gin", "runs/eval.gin", "runs/infer.gin",
                     "models/tiny.gin", "meshes/cpu_1.gin", "experiments/forgetting_synthetic.gin"):
        assert (paths.configs_dir() / gin_file).is_file(), gin_file


def test_progress_lines_have_step_scalars_rate_and_eta():
    t = iter([0.0, 10.0, 20.0])
    lines = []
    p = progress.Progress("train", total=40, every=10, unit="tokens", emit=lines.append, clock=lambda: next(t))
    for step in range(1, 11):
        p.update(step, n_units=100, loss=2.5, lr=1e-3)
    # 1,000 tokens over 10 s, 10 steps/10 s -> 30 steps left = 30 s.
    assert lines == ["[train] step 10/40 (25.0%) loss=2.5000 lr=1.00e-03 tokens/s=100 eta=30s"]
    for step in range(11, 21):
        p.update(step, n_units=50, loss=2.0)
    assert lines[-1] == "[train] step 20/40 (50.0%) loss=2.0000 tokens/s=50 eta=20s"


def test_format_duration():
    assert progress.format_duration(5) == "5s"
    assert progress.format_duration(221) == "3m41s"
    assert progress.format_duration(3 * 3600 + 125) == "3h02m"


def test_process_log_paths(tmp_path, monkeypatch):
    assert progress.process_log_path(str(tmp_path), 3) == str(tmp_path / "logs" / "process_3.log")
    monkeypatch.setenv("FLANX_LOG_DIR", str(tmp_path / "local"))
    assert progress.process_log_path("gs://bucket/run", 1) == str(tmp_path / "local" / "process_1.log")


LOGGING_PROBE = """
import logging, sys
from flanx import progress
progress.setup_logging()  # the entry points' console logger for `flanx` (does not propagate)
print(progress.setup_process_logging(sys.argv[1], int(sys.argv[2])))
logging.getLogger("flanx.train").info("trainer info")
logging.getLogger("orbax.lib").info("library info")
logging.getLogger("flanx.train").warning("trainer warning")
"""


@pytest.mark.parametrize("process_id", [0, 1])
def test_setup_process_logging_writes_per_process_file(tmp_path, process_id):
    proc = subprocess.run([sys.executable, "-c", LOGGING_PROBE, str(tmp_path), str(process_id)],
                          capture_output=True, text=True, timeout=60, check=True)
    path = proc.stdout.strip()
    assert path == str(tmp_path / "logs" / f"process_{process_id}.log")
    text = Path(path).read_text()
    for line in ("INFO flanx.train: trainer info", "INFO orbax.lib: library info",
                 "WARNING flanx.train: trainer warning"):
        assert f"[p{process_id}] {line}" in text
    assert "trainer warning" in proc.stderr and "library info" not in proc.stderr
    assert ("trainer info" in proc.stderr) == (process_id == 0)  # other processes: warnings only


ENTRY_POINT_LOGGING = """
import logging, sys
from flanx import progress
progress.setup_process_logging(sys.argv[1], int(sys.argv[2]))  # all `python -m flanx.train` sets up
progress.Progress("train", 4, every=2).update(2, 100, loss=1.5)
logging.getLogger("flanx").warning("trainer warning")
"""


@pytest.mark.parametrize("process_id", [0, 1])
def test_train_progress_reaches_the_console_and_the_log(tmp_path, process_id):
    """`python -m flanx.train` calls setup_process_logging alone: process 0's progress lines must show on the
    console as well as in MODEL_DIR/logs, and a warning once."""
    proc = subprocess.run([sys.executable, "-c", ENTRY_POINT_LOGGING, str(tmp_path), str(process_id)],
                          capture_output=True, text=True, timeout=60, check=True)
    line = "[train] step 2/4 (50.0%) loss=1.5000 tokens/s="
    assert line in (tmp_path / "logs" / f"process_{process_id}.log").read_text()
    assert (line in proc.stderr) == (process_id == 0)
    assert proc.stderr.count("trainer warning") == 1


def test_progress_over_examples_writes_about_every_n():
    lines, t = [], iter(range(100))
    p = progress.Progress("eval", total=100, every=30, unit="examples", what="examples", emit=lines.append,
                          clock=lambda: next(t))
    for n in (16, 16, 16, 16, 16, 16, 4):
        p.advance(n)  # 16, 32, ..., 96, 100: lines on passing 30, 60, 90, and at the total
    assert [x.split(" (")[0] for x in lines] == ["[eval] examples 32/100", "[eval] examples 64/100",
                                                "[eval] examples 96/100", "[eval] examples 100/100"]
    assert lines[0].endswith("examples/s=32 eta=2s")  # 32 examples by the first tick; 68 left at 32/tick


def test_cli_usage_and_unknown_command(capsys):
    assert cli.main([]) == 0
    out = capsys.readouterr().out
    for name in ("demo", "train", "eval", "infer", "convert", "tasks", "mixtures", "study"):
        assert f"  {name}" in out
    assert cli.main(["frobnicate"]) == 2
    assert "unknown command 'frobnicate'" in capsys.readouterr().err


def test_split_gin_args():
    files, bindings, rest = gin_utils.split_gin_args(
        ["--gin_file=a.gin", "--gin_file", "b.gin", "--gin.TRAIN_STEPS=10",
         "--gin.MODEL_DIR='/tmp/x'", "--other", "v"])
    assert files == ["a.gin", "b.gin"]
    assert bindings == ["TRAIN_STEPS = 10", "MODEL_DIR = '/tmp/x'"]
    assert rest == ["--other", "v"]


def test_missing_gin_file_lists_run_configs():
    with pytest.raises(FileNotFoundError, match="gin file 'nope.gin' not found"):
        gin_utils.resolve_gin_file("nope.gin")


def test_gin_include_search_logs_no_false_errors(tmp_path, monkeypatch, caplog):
    """An `include 'models/tiny.gin'` resolved through flanx's search path is not an error;
    a really missing include still fails naming the file."""
    import gin

    monkeypatch.chdir(tmp_path)
    good = tmp_path / "good.gin"
    good.write_text("include 'models/tiny.gin'\n")
    gin.clear_config()
    try:
        with caplog.at_level("INFO"):
            gin_utils.parse_gin([str(good)], finalize=False)
        assert not [r for r in caplog.records if r.levelname == "ERROR"], caplog.text
        bad = tmp_path / "bad.gin"
        bad.write_text("include 'models/no_such_model.gin'\n")
        gin.clear_config()
        with pytest.raises(ValueError, match="bad.gin.*no_such_model"):
            gin_utils.parse_gin([str(bad)], finalize=False)
    finally:
        gin.clear_config()


def test_makefile_and_ci_call_the_readme_test_command():
    readme = (REPO / "README.md").read_text()
    opening = readme[: readme.index("## Map of the repo")]
    assert "make demo" in opening and "make test" in opening
    assert "make test" in (REPO / ".ci" / "run").read_text()
    make = (REPO / "Makefile").read_text()
    for target in ("demo:", "test:", "bench:"):
        assert target in make


def test_installed_wheel_carries_tasks_and_configs(tmp_path):
    """A non-editable build puts tasks/ and t5x_configs/ under flanx/_resources."""
    out = subprocess.run(
        [sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert out.returncode == 0, out.stderr[-2000:]
    res = tmp_path / "flanx" / "_resources"
    assert (res / "tasks").is_dir() and (res / "t5x_configs").is_dir()
    src_cards = sorted(p.name for p in (REPO / "tasks").rglob("*") if p.is_file())
    assert sorted(p.name for p in (res / "tasks").rglob("*") if p.is_file()) == src_cards
