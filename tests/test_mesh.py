"""flanx.mesh: resolving and checking data x fsdp x model meshes, batch splits, and the mesh presets."""
from __future__ import annotations

from pathlib import Path

import gin
import pytest

from flanx import mesh as M
from flanx import paths

MESH_DIR = paths.configs_dir() / "meshes"


# ------------------------------------------------------------------ mesh validation

def test_validate_mesh_fills_and_accepts():
    assert M.validate_mesh({"data": -1, "fsdp": 2, "model": 2}, 16, 32, 4) == {"data": 4, "fsdp": 2, "model": 2}
    assert M.validate_mesh({}, 8) == {"data": 8, "fsdp": 1, "model": 1}  # defaults: data fills
    # Model axis spanning processes: 16 processes share 2 batch shards.
    assert M.validate_mesh({"data": 1, "fsdp": 2, "model": 8}, 16, 4, 16)["fsdp"] == 2


@pytest.mark.parametrize("shape, devices, batch, procs, expected", [
    ({"data": 4, "fsdp": 1, "model": 4}, 8, None, 1, r"needs 16 devices but only 8 .*--gin.MESH_DATA=2"),
    ({"data": 2, "fsdp": 1, "model": 1}, 8, None, 1, r"uses 2 of the 8 devices.*--gin.MESH_DATA=8"),
    ({"data": 1, "fsdp": 3, "model": -1}, 8, None, 1, r"multiply to 3, which does not divide the 8"),
    ({"data": -1, "fsdp": -1, "model": 1}, 8, None, 1, r"only one mesh axis may be -1.*MESH_DATA, MESH_FSDP"),
    ({"data": 0, "fsdp": 1, "model": 1}, 8, None, 1, r"MESH_DATA=0"),
    ({"data": 2, "tensor": 4}, 8, None, 1, r"unknown mesh axes \['tensor'\]"),
    ({"data": 2, "fsdp": 2, "model": 2}, 8, 10, 1, r"BATCH_SIZE=10 is not divisible by data\*fsdp = 2\*2 = 4.*"
                                                    r"--gin.BATCH_SIZE=8 or 12"),
    ({"data": 2, "fsdp": 2, "model": 2}, 8, 2, 1, r"--gin.BATCH_SIZE=4\b"),
    ({"data": 6, "fsdp": 1, "model": 2}, 12, 12, 4, r"data\*fsdp = 6 .* 4 processes.*change MESH_DATA"),
    ({"data": 4, "fsdp": 1, "model": 1}, 4, 8, 3, r"4 devices cannot be split evenly over 3 processes"),
])
def test_validate_mesh_errors_say_what_to_change(shape, devices, batch, procs, expected):
    with pytest.raises(ValueError, match=expected):
        M.validate_mesh(shape, devices, batch, procs)


def test_host_batch_size():
    assert M.host_batch_size(64, {"data": 4, "fsdp": 4, "model": 1}, 4) == 16
    assert M.host_batch_size(64, {"data": 1, "fsdp": 2, "model": 8}, 16) == 32  # 8 processes per shard


# ------------------------------------------------------------------ presets

def preset_devices(path: Path) -> str:
    line = next(l for l in path.read_text().splitlines() if l.startswith("# devices:"))
    return line.split()[2]


def load_preset(path: Path) -> dict:
    gin.clear_config(clear_constants=True)
    try:
        gin.parse_config_file(str(path))
        return {axis: gin.query_parameter(f"%{macro}") for axis, macro in M.MESH_MACROS.items()}
    finally:
        gin.clear_config(clear_constants=True)


PRESETS = sorted(MESH_DIR.glob("*.gin"))


def test_expected_presets_exist():
    assert {p.stem for p in PRESETS} >= {"cpu_1", "v4_32_data_model", "v5e_16_fsdp", "h100_2x8_fsdp_tp"}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_fits_the_hardware_it_names(path):
    shape = load_preset(path)
    declared = preset_devices(path)
    devices = 24 if declared == "any" else int(declared)
    resolved = M.validate_mesh(shape, devices)
    assert resolved["data"] * resolved["fsdp"] * resolved["model"] == devices


@pytest.mark.parametrize("name, devices, procs, batch, expected", [
    ("v4_32_data_model", 8, 2, 32, r"needs 16 devices but only 8 were found.*MESH_DATA=2"),
    ("h100_2x8_fsdp_tp", 8, 8, 16, r"needs 16 devices but only 8.*MESH_FSDP=1"),
    ("v5e_16_fsdp", 16, 4, 24, r"BATCH_SIZE=24 is not divisible by .* = 16.*--gin.BATCH_SIZE=16 or 32"),
])
def test_bad_preset_for_the_devices_found(name, devices, procs, batch, expected):
    shape = load_preset(MESH_DIR / f"{name}.gin")
    with pytest.raises(ValueError, match=expected):
        M.validate_mesh(shape, devices, batch, procs)


def test_batch_size_check_counts_microbatches():
    M.check_batch_size(16, {"data": 2, "fsdp": 2, "model": 1}, num_microbatches=4)
    with pytest.raises(ValueError, match=r"BATCH_SIZE=8 is not divisible by data\*fsdp = 2\*2 = 4 in each of "
                                         r"NUM_MICROBATCHES=4 microbatches of 2.*--gin.BATCH_SIZE=16\b"):
        M.check_batch_size(8, {"data": 2, "fsdp": 2, "model": 1}, num_microbatches=4)
