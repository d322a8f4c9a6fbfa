"""T5X checkpoints: the test writes them itself (TensorStore zarr + raw msgpack, T5X's layout) and loads them.

The writer below follows the documented layout, not flanx's exporter: a
`checkpoint_<step>/checkpoint` msgpack file with `{'version': 3, 'optimizer':
{'target': params, 'state': {'step', 'param_states'}}}`, arrays either inline
(msgpack ext type 1 = (shape, dtype name, C bytes), as flax.serialization
writes them) or in gzip zarr v2 directories named `target.<dotted path>`,
referenced by 'PLACEHOLDER://' strings or TensorStore spec dicts.
"""
from __future__ import annotations

import functools
import json
import shutil

import jax
import msgpack
import numpy as np
import pytest
import tensorstore as ts
from helpers import assert_same_tree, random_params

from flanx import checkpoints as C
from flanx.models import Transformer, get_config

CFG = get_config("tiny", num_decoder_layers=3)


def ext_array(a):
    a = np.asarray(a)
    return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes("C")), use_bin_type=True))


def write_zarr(directory, array, kvstore=None):
    chunks = [max(1, array.shape[0] // 2)] + list(array.shape[1:])  # several chunk files per array
    spec = {"driver": "zarr", "kvstore": kvstore or {"driver": "file", "path": str(directory)},
            "metadata": {"compressor": {"id": "gzip"}, "shape": list(array.shape), "chunks": chunks}}
    ts.open(spec, create=True, dtype=array.dtype.name).result().write(array).result()
    return spec["metadata"]


def write_t5x(model_dir, params, step, style="placeholder"):
    """Write a T5X checkpoint_<step>/ dir; style: placeholder | spec | inline | ocdbt."""
    ckpt = model_dir / f"checkpoint_{step}"
    ckpt.mkdir(parents=True)
    target, slots = {}, {}
    for path, array in C.flatten(params).items():
        name = "target." + path.replace("/", ".")
        if style == "inline":
            target[path] = ext_array(array)
        elif style == "ocdbt":
            write_zarr(None, array, {"driver": "ocdbt", "base": f"file://{ckpt}", "path": name})
            target[path] = "PLACEHOLDER://" + name
        else:
            metadata = write_zarr(ckpt / name, array)
            target[path] = ("PLACEHOLDER://" + name if style == "placeholder" else
                            {"driver": "zarr", "dtype": array.dtype.name, "metadata": metadata,
                             "kvstore": {"driver": "file", "path": name}})
        # Adafactor slots: references to arrays that are not even there - import must not read them.
        slots[path + "/v_row"] = "PLACEHOLDER://state.param_states." + path.replace("/", ".") + ".v_row"
        slots[path + "/v_col"] = ext_array(np.zeros(array.shape[-1:], np.float32))
    contents = {"version": 3, "optimizer": {"target": C.unflatten(target), "state": {
        "step": ext_array(np.asarray(step, np.int32)), "param_states": C.unflatten(slots)}}}
    (ckpt / "checkpoint").write_bytes(msgpack.packb(contents, use_bin_type=True))
    return ckpt


@functools.partial(jax.jit, static_argnums=0)
def _logits(config, params):
    enc = np.array([[5, 6, 7, 8, 1, 0], [9, 10, 1, 0, 0, 0]], np.int32)
    dec = np.array([[0, 11, 12, 13], [0, 14, 0, 0]], np.int32)
    return Transformer(config).apply({"params": params}, enc, dec)


@pytest.fixture(scope="module")
def params():
    return random_params(CFG)


@pytest.mark.slow  # the placeholder case compiles the model (~5 s)
@pytest.mark.parametrize("style", ["placeholder", "spec", "inline", "ocdbt"])
def test_t5x_checkpoint_written_by_hand_loads_and_runs(tmp_path, params, style):
    write_t5x(tmp_path / "model", params, step=1198000, style=style)
    assert C.detect_format(tmp_path / "model") == "t5x"
    loaded, config, step = C.load_params(tmp_path / "model", CFG)
    assert step == 1198000 and config == CFG
    assert_same_tree(loaded, params)
    if style == "placeholder":  # the loaded weights drive the model exactly like the originals
        got, want = np.asarray(_logits(CFG, loaded)), np.asarray(_logits(CFG, params))
        np.testing.assert_array_equal(got, want)
        assert np.abs(want).max() > 1e-2


def test_latest_step_step_dir_and_msgpack_file_all_load(tmp_path, params):
    write_t5x(tmp_path / "m", random_params(CFG, seed=3), step=100, style="inline")
    ckpt = write_t5x(tmp_path / "m", params, step=200)
    (tmp_path / "m" / "checkpoint_300.tmp-123").mkdir()  # an unfinished save is ignored
    for where in (tmp_path / "m", ckpt, ckpt / "checkpoint"):
        loaded, step = C.import_t5x(where)
        assert step == 200
        assert_same_tree(loaded, params)
    _, step = C.import_t5x(tmp_path / "m" / "checkpoint_100")
    assert step == 100


def test_scanned_t5x_checkpoint_loads_into_either_layout(tmp_path, params):
    write_t5x(tmp_path / "m", C.stack_layers(params), step=5)
    loaded, config, _ = C.load_params(tmp_path / "m", CFG)
    assert not config.scan_layers
    assert_same_tree(loaded, params)
    loaded, config, _ = C.load_params(tmp_path / "m", CFG, scan_layers=True)
    assert config.scan_layers
    assert_same_tree(loaded, C.stack_layers(params))


def test_single_file_msgpack_checkpoints(tmp_path, params):
    from flax import serialization

    contents = {"version": 3, "optimizer": {"target": C.unflatten({k: ext_array(v) for k, v in C.flatten(params).items()}),
                                            "state": {"step": ext_array(np.asarray(42, np.int32)), "param_states": {}}}}
    single = tmp_path / "flan.msgpack"
    single.write_bytes(msgpack.packb(contents, use_bin_type=True))
    assert C.detect_format(single) == "t5x_msgpack"
    loaded, _, step = C.load_params(single, CFG)
    assert step == 42
    assert_same_tree(loaded, params)
    bare = tmp_path / "params.msgpack"  # flax.serialization.to_bytes(params)
    bare.write_bytes(serialization.to_bytes(params))
    loaded, _, step = C.load_params(bare, CFG)
    assert step is None
    assert_same_tree(loaded, params)


def test_t5x_to_flanx_to_t5x_round_trip_by_value(tmp_path, params):
    write_t5x(tmp_path / "in", params, step=77)
    loaded, config, step = C.load_params(tmp_path / "in", CFG)
    native = C.save_params(tmp_path / "native", loaded, config, step=step)
    back = C.load_native(native)
    out = C.export_t5x(back.params, tmp_path / "out", step=back.step)
    assert out.name == "checkpoint_77"
    zarray = json.loads((out / "target.encoder.layers_1.mlp.wo.kernel" / ".zarray").read_text())
    assert zarray["compressor"]["id"] == "gzip" and zarray["shape"] == [128, 64]
    spec = C.t5x.read_msgpack(out / "checkpoint")["optimizer"]["target"]["encoder"]["layers_1"]["mlp"]["wo"]["kernel"]
    assert spec["kvstore"] == {"driver": "file", "path": "target.encoder.layers_1.mlp.wo.kernel"}
    final, final_step = C.import_t5x(tmp_path / "out")
    assert final_step == 77
    assert_same_tree(final, params)
    with pytest.raises(C.CheckpointError, match="already exists"):
        C.export_t5x(params, tmp_path / "out", step=77)


# ----------------------------------------------------------------------------- damaged checkpoints


def test_truncated_corrupt_and_empty_msgpack_name_the_file(tmp_path, params):
    ckpt = write_t5x(tmp_path / "m", params, step=1)
    file = ckpt / "checkpoint"
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with pytest.raises(C.CheckpointError, match=f"{file}.*truncated"):
        C.import_t5x(ckpt)
    file.write_bytes(b"\x83" + b"\xc1" * 40)  # a map header, then bytes msgpack never uses
    with pytest.raises(C.CheckpointError, match=f"{file}.*not a readable msgpack"):
        C.import_t5x(ckpt)
    file.write_bytes(b"")
    with pytest.raises(C.CheckpointError, match=f"{file}.*empty"):
        C.import_t5x(ckpt)
    file.write_bytes(msgpack.packb({"version": 1, "optimizer": {}}))
    with pytest.raises(C.CheckpointError, match="version 1"):
        C.import_t5x(ckpt)


def test_missing_and_corrupt_zarr_arrays_name_the_parameter(tmp_path, params):
    import shutil

    ckpt = write_t5x(tmp_path / "m", params, step=1)
    name = "target.decoder.layers_2.self_attention.key.kernel"
    chunk = sorted(p for p in (ckpt / name).iterdir() if not p.name.startswith("."))[0]
    chunk.write_bytes(chunk.read_bytes()[:7])
    with pytest.raises(C.CheckpointError, match="decoder/layers_2/self_attention/key/kernel.*corrupt or truncated"):
        C.import_t5x(ckpt)
    shutil.rmtree(ckpt / name)
    with pytest.raises(C.CheckpointError, match=f"decoder/layers_2/self_attention/key/kernel: its zarr array directory {name}/.*missing"):
        C.import_t5x(ckpt)


def test_wrong_shapes_in_t5x_checkpoint_name_the_parameter(tmp_path, params):
    bad = C.unflatten(dict(C.flatten(params)))
    bad["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"] = np.zeros((64, 100), np.float32)
    write_t5x(tmp_path / "m", bad, step=1)
    with pytest.raises(C.CheckpointError) as err:
        C.load_params(tmp_path / "m", CFG)
    assert "T5X checkpoint" in str(err.value) and str(tmp_path / "m") in str(err.value)
    assert "encoder/layers_0/mlp/wi_0/kernel has shape (64, 100), the model expects (64, 128)" in str(err.value)
    with pytest.raises(C.CheckpointError, match="carries no model config"):
        C.load_params(tmp_path / "m")


def test_array_paths_never_lead_outside_the_checkpoint(tmp_path, params):
    """A spec's path is looked up inside the checkpoint directory only: an absolute path (where T5X once
    wrote the array) counts by its last name there, `..` is refused; an array outside is never read."""
    ckpt = write_t5x(tmp_path / "m", params, step=1, style="spec")
    name = "target.token_embedder.embedding"
    outside = tmp_path / "elsewhere" / name
    embedding = C.flatten(params)["token_embedder/embedding"]
    write_zarr(outside, np.full_like(embedding, 7.0))
    contents = msgpack.unpackb((ckpt / "checkpoint").read_bytes(), raw=False, strict_map_key=False)
    spec = contents["optimizer"]["target"]["token_embedder"]["embedding"]

    spec["kvstore"]["path"] = str(outside)  # absolute: the array of that name inside the checkpoint is read
    (ckpt / "checkpoint").write_bytes(msgpack.packb(contents, use_bin_type=True))
    loaded, _ = C.import_t5x(ckpt)
    np.testing.assert_array_equal(loaded["token_embedder"]["embedding"], embedding)
    shutil.rmtree(ckpt / name)  # ... and without it, the outside copy is still not used
    with pytest.raises(C.CheckpointError, match=f"token_embedder/embedding: its zarr array directory {name}/"):
        C.import_t5x(ckpt)

    spec["kvstore"]["path"] = f"../../elsewhere/{name}"
    (ckpt / "checkpoint").write_bytes(msgpack.packb(contents, use_bin_type=True))
    with pytest.raises(C.CheckpointError, match=rf"token_embedder/embedding: its array path '\.\./\.\./elsewhere/"
                                                rf"{name}' leads outside the checkpoint directory"):
        C.import_t5x(ckpt)
