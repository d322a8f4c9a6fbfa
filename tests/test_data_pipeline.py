"""The training pipeline: T5X batch features, determinism, resume by value, disjoint host shards."""
from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from helpers import assert_same_batches, take
import seqio

import flanx.data
from flanx.data import mixtures, pipeline, render, tasks

LENGTHS = {"inputs": 48, "targets": 8}


def _card(name, size):
    return {"name": name, "group": "pipe_test", "vocabulary": "byte",
            "source": {"type": "synthetic", "generator": "order_total", "seed": 7},
            "splits": {"train": {"size": size}, "validation": {"size": 12}},
            "fields": {"a": "price_a", "b": "price_b", "x": "item_a", "y": "item_b", "total": "total"},
            "templates": [{"input": name[-1] + " {x} ${a} + {y} ${b} = ?", "target": "{total}"}],
            "formats": ["zsnoopt"]}


@pytest.fixture(scope="module")
def pipe_tasks():
    flanx.data.register_all()
    flanx.data.register_task_card(_card("pipe_a", 30), refresh_mixtures=False)
    flanx.data.register_task_card(_card("pipe_b", 45), refresh_mixtures=False)
    mixtures.register_examples_mixture("pipe_mix", ["pipe_a", "pipe_b"], cap=None)
    yield "pipe_a_template_0to0_zsnoopt", "pipe_mix"
    tasks.unregister_card("pipe_a")
    tasks.unregister_card("pipe_b")


def _decode(tokens) -> str:
    return bytes(int(t) - 3 for t in tokens if t > 2).decode()


def test_packed_batches_have_t5x_features(pipe_tasks):
    task, _ = pipe_tasks
    batch = next(pipeline.get_dataset(task, LENGTHS, batch_size=4, seed=0))
    assert set(batch) == {"encoder_input_tokens", "encoder_segment_ids", "encoder_positions", "decoder_input_tokens",
                          "decoder_target_tokens", "decoder_loss_weights", "decoder_segment_ids", "decoder_positions"}
    for k, v in batch.items():
        assert v.dtype == np.int32 and v.shape == (4, LENGTHS["targets" if k.startswith("decoder") else "inputs"]), k
    card, spec = tasks.get_card("pipe_a"), tasks.get_spec(task)
    rendered = {(e["inputs_pretokenized"], e["targets_pretokenized"]) for e in render.render_examples(card, spec, "train")}
    packed = 0
    for row in range(4):
        enc, seg = batch["encoder_input_tokens"][row], batch["encoder_segment_ids"][row]
        tgt, dseg = batch["decoder_target_tokens"][row], batch["decoder_segment_ids"][row]
        assert ((enc > 0) == (seg > 0)).all() and ((tgt > 0) == (dseg > 0)).all()
        np.testing.assert_array_equal(batch["decoder_loss_weights"][row], (tgt > 0).astype(np.int32))
        for s in range(1, seg.max() + 1):
            x, y = enc[seg == s], tgt[dseg == s]
            assert x[-1] == 1 and y[-1] == 1  # EOS closes every packed example
            np.testing.assert_array_equal(batch["encoder_positions"][row][seg == s], np.arange(len(x)))
            np.testing.assert_array_equal(batch["decoder_input_tokens"][row][dseg == s], np.r_[0, y[:-1]])
            assert (_decode(x), _decode(y)) in rendered
            packed += 1
    assert packed > 4  # several short examples share a row


def test_same_seed_same_batches_other_seed_differs(pipe_tasks):
    _, mix = pipe_tasks
    a = take(pipeline.get_dataset(mix, LENGTHS, batch_size=4, seed=11), 4)
    b = take(pipeline.get_dataset(mix, LENGTHS, batch_size=4, seed=11), 4)
    c = take(pipeline.get_dataset(mix, LENGTHS, batch_size=4, seed=12), 4)
    assert_same_batches(a, b)
    assert not all(np.array_equal(x["encoder_input_tokens"], y["encoder_input_tokens"]) for x, y in zip(a, c))


@pytest.mark.slow
def test_resume_gives_exactly_the_next_batches_across_epochs(pipe_tasks):
    task, mix = pipe_tasks
    for name, pack in ((task, False), (mix, True)):
        it = pipeline.get_dataset(name, LENGTHS, batch_size=4, seed=3, pack=pack)
        take(it, 9)  # pipe_a alone has 30 rows: 9 unpacked batches of 4 cross an epoch boundary
        state = json.loads(json.dumps(it.state()))
        assert state["batches"] == 9 and state["seed"] == 3 and state["name"] == name
        expected = take(it, 5)
        resumed = pipeline.get_dataset(name, LENGTHS, batch_size=4, seed=3, pack=pack, start_state=state)
        assert_same_batches(take(resumed, 5), expected)
        fresh = pipeline.get_dataset(name, LENGTHS, batch_size=4, seed=3, pack=pack)
        fresh.restore(state)
        assert_same_batches(take(fresh, 5), expected)
        assert fresh.state()["batches"] == 14
    other = pipeline.get_dataset(task, LENGTHS, batch_size=4, seed=4, pack=False)
    with pytest.raises(ValueError, match="seed: saved 3 vs now 4"):
        other.restore(state | {"name": task, "pack": False})


def test_host_shards_are_disjoint_and_cover_the_split(pipe_tasks):
    task, _ = pipe_tasks
    rendered = render.render_examples(tasks.get_card("pipe_a"), tasks.get_spec(task), "train")
    # The split can hold identical rows (prices repeat), so compare multisets: every example of
    # the split occurs exactly once over all shards, hence no example is on two hosts.
    everything = collections.Counter(e["inputs_pretokenized"] for e in rendered)
    assert sum(everything.values()) == 30
    for num_shards in (2, 3):
        seen = collections.Counter()
        for index in range(num_shards):
            it = pipeline.get_dataset(task, LENGTHS, batch_size=1, seed=5, pack=False, num_epochs=1,
                                      shard_info=seqio.ShardInfo(index, num_shards))
            shard = [_decode(b["encoder_input_tokens"][0]) for b in it]
            assert len(shard) == 30 // num_shards
            seen.update(shard)
        assert seen == everything


def test_eval_dataset_keeps_order_and_batches(pipe_tasks):
    task, _ = pipe_tasks
    examples = pipeline.get_eval_dataset(task, "validation", LENGTHS)
    rendered = render.render_examples(tasks.get_card("pipe_a"), tasks.get_spec(task), "validation")
    assert [e["inputs_pretokenized"] for e in examples] == [r["inputs_pretokenized"] for r in rendered]
    assert len(pipeline.get_eval_dataset(task, "validation", LENGTHS, num_examples=5)) == 5
    batch = pipeline.make_eval_batch(examples[:3], LENGTHS)
    assert batch["encoder_input_tokens"].shape == (3, 48)
    np.testing.assert_array_equal(batch["decoder_target_tokens"][0][:len(examples[0]["targets"])], examples[0]["targets"])
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 0], 0)
    np.testing.assert_array_equal(batch["decoder_input_tokens"][:, 1:], batch["decoder_target_tokens"][:, :-1])
    with pytest.raises(ValueError, match="is a mixture"):
        pipeline.get_eval_dataset("pipe_mix")


def test_unknown_name_lists_close_matches(pipe_tasks):
    with pytest.raises(KeyError, match="did you mean: pipe_a_template_0to0_zsnoopt"):
        pipeline.get_dataset("pipe_a_template_0to0_zsnopt", LENGTHS)
    with pytest.raises(ValueError, match="seed must be an int"):
        pipeline.get_dataset(pipe_tasks[0], LENGTHS, seed=None)
