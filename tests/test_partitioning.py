"""Mesh resolution, logical-axis rules, optimizer-state layouts, and 1- vs 8-device parity."""
from __future__ import annotations

import textwrap
import types

import jax
import numpy as np
import pytest
from helpers import result_line, run_python, subprocess_env, write_script
from jax.sharding import PartitionSpec as P

from flanx import mesh as mesh_lib, partitioning
from flanx.train import optim
from flanx.train.config import OptimizerConfig

MESH_222 = types.SimpleNamespace(shape={"data": 2, "fsdp": 2, "model": 2})


def test_mesh_shape_fills_and_errors_name_the_fix():
    assert partitioning.mesh_shape({"data": -1, "fsdp": 2, "model": 1}, 8) == (4, 2, 1)
    assert partitioning.mesh_shape({"data": 2, "fsdp": 2, "model": 2}, 8) == (2, 2, 2)
    with pytest.raises(ValueError, match="needs 16 devices but only 8"):
        partitioning.mesh_shape({"data": 4, "fsdp": 2, "model": 2}, 8)
    with pytest.raises(ValueError, match="only one mesh axis may be -1"):
        partitioning.mesh_shape({"data": -1, "fsdp": -1}, 8)
    with pytest.raises(ValueError, match="BATCH_SIZE=6"):
        partitioning.mesh_shape({"data": -1}, 4, global_batch_size=6)


def test_logical_rules_give_dp_fsdp_and_tensor_parallel_layouts():
    spec = lambda axes, shape, mesh=MESH_222: partitioning.logical_to_spec(axes, shape, mesh)  # noqa: E731
    assert spec(("embed", "joined_kv"), (64, 64)) == P("fsdp", "model")
    assert spec(("joined_kv", "embed"), (64, 64)) == P("model", "fsdp")
    assert spec(("embed", "mlp"), (64, 128)) == P("fsdp", "model")
    assert spec(("vocab", "embed"), (384, 64)) == P("model", "fsdp")
    assert spec(("heads", "relpos_buckets"), (4, 32)) == P("model", None)
    assert spec(("embed",), (64,)) == P("fsdp")
    assert spec(("embed", "layers", "mlp"), (64, 2, 128)) == P("fsdp", None, "model")
    # Not divisible: stays replicated rather than failing (e.g. an odd head count).
    assert spec(("heads", "relpos_buckets"), (3, 32)) == P(None, None)
    # Pure data parallel: everything replicated.
    dp = types.SimpleNamespace(shape={"data": 8, "fsdp": 1, "model": 1})
    assert spec(("embed", "mlp"), (64, 128), dp) == P(None, None)
    with pytest.raises(ValueError, match="do not match shape"):
        spec(("embed",), (4, 4))


def test_optimizer_state_follows_parameter_layout():
    params = {"enc": {"wi": {"kernel": jax.ShapeDtypeStruct((256, 512), np.float32)},
                      "norm": {"scale": jax.ShapeDtypeStruct((256,), np.float32)}}}
    specs = {"enc": {"wi": {"kernel": P("fsdp", "model")}, "norm": {"scale": P("fsdp")}}}
    opt = optim.make_optimizer(OptimizerConfig(name="adafactor"))
    state = jax.eval_shape(opt.init, params)
    out = partitioning.state_specs(state, specs, params)
    factored = out.inner_state[0]
    # Row statistics keep the row axis, column statistics the column axis.
    got = {tuple(getattr(factored, f)["enc"]["wi"]["kernel"]) for f in ("v_row", "v_col")}
    assert got == {("fsdp",), ("model",)}
    assert tuple(factored.v["enc"]["norm"]["scale"]) == ("fsdp",)
    assert out.count == P() and all(v == P() for v in out.hyperparams.values())
    adam = optim.make_optimizer(OptimizerConfig(name="adamw"))
    a_out = partitioning.state_specs(jax.eval_shape(adam.init, params), specs, params)
    assert a_out.inner_state[0].mu["enc"]["wi"]["kernel"] == P("fsdp", "model")


def test_single_device_host_shard_and_batch_checks():
    mesh = partitioning.create_mesh({"data": -1})
    shard = partitioning.host_shard(mesh, 8)
    assert (shard.index, shard.num_shards, shard.local_batch_size) == (0, 1, 8)
    batch = partitioning.to_global_batch({"x": np.arange(16).reshape(8, 2)}, mesh, 8)
    np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(16).reshape(8, 2))
    with pytest.raises(ValueError, match="BATCH_SIZE=6 .* not divisible"):
        mesh_lib.check_batch_size(6, {"data": 4, "fsdp": 1, "model": 1})


PARITY = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from flax import traverse_util
    from flanx import partitioning
    from flanx.models import get_config, init_params
    from flanx.train import trainer
    from flanx.train.config import OptimizerConfig, TrainConfig
    from flanx.train.synthetic import SyntheticBatches

    assert jax.device_count() == 8, jax.devices()
    model = get_config("tiny", dropout_rate=0.0)
    start = jax.tree.map(np.asarray, init_params(model, jax.random.PRNGKey(0)))
    layouts = {"1dev": ({"data": 1}, jax.devices()[:1], 1), "d2f2m2": ({"data": 2, "fsdp": 2, "model": 2}, None, 1),
               "d2f2m2_micro2": ({"data": 2, "fsdp": 2, "model": 2}, None, 2)}
    out = {}
    for name, (sizes, devices, micro) in layouts.items():
        mesh = partitioning.create_mesh(sizes, devices)
        # Factor every matrix (tiny's dims are < 128): factored Adafactor updates are smooth in the
        # gradient, while an unfactored first step is sign(g) and flips for |g| ~ 0 under any change
        # of reduction order. The sharded row/column statistics are exercised too.
        cfg = TrainConfig(train_steps=3, batch_size=8, num_microbatches=micro, log_every=100,
                          optimizer=OptimizerConfig(learning_rate=1e-3, min_dim_size_to_factor=32))
        res = trainer.train(cfg, model, lambda s: SyntheticBatches(s, 16, 8, vocab_size=64), init_params=start,
                            mesh=mesh)
        wi = res.params["encoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
        flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, res.params))
        moved = max(float(np.max(np.abs(flat[k] - v))) for k, v in traverse_util.flatten_dict(start).items())
        out[name] = {"losses": [res.losses[s] for s in (1, 2, 3)], "spec": str(wi.sharding.spec), "moved": moved,
                     "devices": len(wi.sharding.device_set),
                     "params": {"/".join(k): v.ravel()[:4096].tolist() for k, v in flat.items()}}
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_one_device_and_eight_devices_train_identically(tmp_path):
    proc = run_python(write_script(tmp_path, PARITY), timeout=600,
                      env=subprocess_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    out = result_line(proc.stdout)
    ref = out["1dev"]
    assert ref["devices"] == 1
    assert out["d2f2m2"]["spec"] == str(P("fsdp", "model")) and out["d2f2m2"]["devices"] == 8
    for name in ("d2f2m2", "d2f2m2_micro2"):
        np.testing.assert_allclose(out[name]["losses"], ref["losses"], atol=1e-5, rtol=0, err_msg=name)
        worst = max(np.max(np.abs(np.asarray(out[name]["params"][k]) - np.asarray(v)))
                    for k, v in ref["params"].items())
        assert worst <= 1e-5, (name, worst)
    # The steps really trained: updates are far larger than the tolerance.
    assert ref["moved"] > 1e-4 and ref["losses"][0] != ref["losses"][2]
