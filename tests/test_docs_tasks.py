"""docs/tasks.md's walk-through runs as written: its data file, card and shell commands, in order.

The section "Your own dataset, end to end (no Python)" is the test script: each ```json / ```yaml
block is saved under the path its paragraph names ("Save this as `my_tasks/...`"), and the ```bash
blocks run in one shell, in a fresh folder, with flanx and this checkout's code on PATH/PYTHONPATH.
The last block asserts that transformers' `generate` on the export equals flanx's predictions.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Your own dataset, end to end (no Python)"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)


def walkthrough() -> tuple[dict[str, str], str]:
    """({relative path: file text}, the bash script) from the docs section."""
    text = (ROOT / "docs" / "tasks.md").read_text()
    start = text.index(SECTION)
    end = text.index("\n## ", start + len(SECTION))
    section = text[start:end]
    files, script, last = {}, [], 0
    for m in FENCE.finditer(section):
        lang, body = m.group(1), m.group(2)
        before = section[last:m.start()]
        last = m.end()
        if lang in ("json", "yaml"):
            names = re.findall(r"`([\w./-]+\.(?:json|yaml))`", before)
            assert names, f"the paragraph before a ```{lang} block must name its file: {before[-200:]!r}"
            files[names[-1]] = body
        elif lang == "bash":
            script.append(body)
    return files, "\n".join(script)


def test_walkthrough_section_is_complete():
    files, script = walkthrough()
    assert set(files) == {"my_tasks/support_chats.json", "my_tasks/support_chats.yaml"}
    assert len(json.loads(files["my_tasks/support_chats.json"])) == 12
    for command in ("flanx tasks show", "flanx train", "flanx eval", "flanx infer", "flanx convert --to hf",
                    "model.generate"):
        assert command in script
    assert "import flanx" not in script and "from flanx" not in script  # no Python against flanx


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.needs_torch
def test_walkthrough_runs_as_written(tmp_path):
    files, script = walkthrough()
    for name, body in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    bin_dir = os.path.dirname(sys.executable)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
               PYTHONPATH=str(ROOT / "src"), JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="3")
    env.pop("FLANX_TASKS_PATH", None)
    proc = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-6000:]

    assert "[train] step 20/20 (100.0%) loss=" in log and "[train] step 30/30" in log  # progress on the console
    finals = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith('{"model_dir"')]
    assert [(r["step"], r["resumed_from"]) for r in finals] == [(20, None), (30, 20)]
    (row,) = [json.loads(x) for x in (tmp_path / "runs/support/eval/metrics.jsonl").read_text().splitlines()]
    assert row["step"] == 30 and 0.0 <= row["support_chats"]["rouge1"] <= 1.0
    predictions = (tmp_path / "runs/support/eval/support_chats-step30.jsonl").read_text().splitlines()
    assert len(predictions) == 3 and {"inputs", "targets", "prediction", "score"} == set(json.loads(predictions[0]))
    card = (tmp_path / "export/support_chats/README.md").read_text()
    assert "support_chats" in card and "| 30 | support_chats | rouge1 |" in card
    assert json.loads((tmp_path / "export/support_chats/tokenizer_config.json").read_text())["eos_token"] == "</s>"
