"""Shared pytest setup: markers that skip with a reason, data and torch probes, and one jax compilation
cache for the whole test run. Shared helpers (random params, exact comparisons, subprocesses) are in
`helpers.py`."""
from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile

import pytest

from flanx import paths

# One persistent jax compilation cache per test run, set before any test imports jax: in-process tests
# read it through jax's config, subprocesses through the environment they inherit, so the train steps,
# decoders and evaluators that many tests compile alike are compiled once. A dir set by the caller wins.
_CACHE_VARS = {"JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0", "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
_OWN_CACHE = None if os.environ.get("JAX_COMPILATION_CACHE_DIR") else tempfile.mkdtemp(prefix="flanx-test-jax-cache-")
if _OWN_CACHE:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
for _name, _value in _CACHE_VARS.items():
    os.environ.setdefault(_name, _value)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def pytest_configure(config):
    for line in (
        "slow: takes more than a few seconds; still runs in CI (deselect with -m 'not slow')",
        "needs_data: reads real datasets from FLANX_DATA_DIR; skipped when absent",
        "needs_torch: compares against transformers/PyTorch; skipped when not installed",
        "gpu: needs a GPU; skipped on CPU-only machines",
    ):
        config.addinivalue_line("markers", line)


def _has_gpu() -> bool:
    try:
        import jax
        return any(d.platform == "gpu" for d in jax.devices())
    except Exception:  # noqa: BLE001 - any backend failure means no GPU
        return False


def pytest_collection_modifyitems(config, items):
    no_data = paths.data_dir() is None
    no_torch = not (importlib.util.find_spec("torch") and importlib.util.find_spec("transformers"))
    gpu_checked, has_gpu = False, False
    for item in items:
        if no_data and "needs_data" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=f"{paths.DATA_DIR_ENV} not set or missing; real data unavailable"))
        if no_torch and "needs_torch" in item.keywords:
            item.add_marker(pytest.mark.skip(reason="torch/transformers not installed (pip install -e '.[test]')"))
        if "gpu" in item.keywords:
            if not gpu_checked:
                has_gpu, gpu_checked = _has_gpu(), True
            if not has_gpu:
                item.add_marker(pytest.mark.skip(reason="no GPU on this machine"))


@pytest.fixture
def data_root():
    """FLANX_DATA_DIR as a Path (tests using it must be marked needs_data)."""
    root = paths.data_dir()
    if root is None:
        pytest.skip(f"{paths.DATA_DIR_ENV} not set")
    return root


@pytest.fixture
def clean_gin():
    """Forget every gin binding and macro a test parsed (entry points run in this process)."""
    yield
    from flanx import gin_utils

    gin_utils.reset()


def pytest_unconfigure(config):
    if _OWN_CACHE:
        shutil.rmtree(_OWN_CACHE, ignore_errors=True)
