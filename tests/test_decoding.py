"""flanx.models.decoding: KV-cache greedy vs full forward, EOS handling, beam search
(vs greedy and vs exhaustive search), sampling filters, scoring with weights and packing."""
import dataclasses
import functools
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from flanx.checkpoints import stack_layers
from flanx.models import Transformer, get_config, init_params
from flanx.models import decoding

CFG = get_config("tiny", num_encoder_layers=1, num_decoder_layers=2)
STEPS = 8


@pytest.fixture(scope="module")
def params():
    return init_params(CFG, jax.random.PRNGKey(0))


def _encoder_inputs(batch=3, length=10, seed=0):
    rng = np.random.default_rng(seed)
    enc = rng.integers(2, CFG.vocab_size, (batch, length)).astype(np.int32)
    for i, n in enumerate((length, 6, 2)[:batch]):
        enc[i, n:] = 0
    return enc


@functools.partial(jax.jit, static_argnums=0)
def _logits(cfg, params, enc, dec):
    return Transformer(cfg).apply({"params": params}, enc, dec)


def _naive_greedy(cfg, params, enc, steps):
    """Argmax decoding by re-running the full decoder on the whole prefix (no cache)."""
    dec = np.zeros((len(enc), steps + 1), np.int32)
    for t in range(steps):
        dec[:, t + 1] = np.argmax(_logits(cfg, params, enc, dec[:, :steps])[:, t], axis=-1)
    return dec[:, 1:]


def test_greedy_cache_matches_full_forward_and_scan(params):
    enc = _encoder_inputs()
    ours = np.asarray(decoding.greedy_decode(params, CFG, enc, STEPS, eos_id=-1))
    np.testing.assert_array_equal(ours, _naive_greedy(CFG, params, enc, STEPS))
    scan_cfg = dataclasses.replace(CFG, scan_layers=True)
    scanned = np.asarray(decoding.greedy_decode(stack_layers(params), scan_cfg, enc, STEPS, eos_id=-1))
    np.testing.assert_array_equal(scanned, ours)
    bf16 = decoding.greedy_decode(stack_layers(params), dataclasses.replace(scan_cfg, dtype="bfloat16"),
                                  enc, STEPS, eos_id=-1)
    assert bf16.shape == ours.shape and int(bf16.min()) >= 0 and int(bf16.max()) < CFG.vocab_size


def test_greedy_eos_stops_and_zero_fills(params):
    enc = _encoder_inputs()
    free = np.asarray(decoding.greedy_decode(params, CFG, enc, STEPS, eos_id=-1))
    eos = int(free[0, 2])
    out = np.asarray(decoding.greedy_decode(params, CFG, enc, STEPS, eos_id=eos))
    for row, ref in zip(out, free):
        hits = np.flatnonzero(ref == eos)
        end = hits[0] + 1 if len(hits) else STEPS
        np.testing.assert_array_equal(row[:end], ref[:end])
        assert (row[end:] == 0).all()
    assert out[0, 2] == eos and (out[0, 3:] == 0).all()


def test_beam_one_equals_greedy_and_scores(params):
    enc = _encoder_inputs()
    greedy = decoding.greedy_decode(params, CFG, enc, STEPS, eos_id=-1)
    tokens, scores = decoding.beam_search(params, CFG, enc, num_beams=1, max_decode_length=STEPS,
                                          alpha=0.0, eos_id=-1)
    np.testing.assert_array_equal(np.asarray(tokens[:, 0]), np.asarray(greedy))
    dec_in = np.pad(np.asarray(greedy), ((0, 0), (1, 0)))[:, :-1]
    batch = dict(encoder_input_tokens=enc, decoder_input_tokens=dec_in, decoder_target_tokens=greedy,
                 decoder_loss_weights=np.ones_like(dec_in))
    np.testing.assert_allclose(scores[:, 0], decoding.score(params, CFG, batch), atol=1e-4)


def test_beam_search_equals_exhaustive_search():
    """With 2 * num_beams >= every continuation, beam search is exhaustive: exact best EOS-ended sequences."""
    cfg = get_config("tiny", vocab_size=6, d_model=32, num_heads=2, head_dim=8, d_ff=32,
                     num_encoder_layers=1, num_decoder_layers=2)
    params = init_params(cfg, jax.random.PRNGKey(3))
    enc = _encoder_inputs(batch=2, length=5)
    enc = np.where(enc > 0, enc % 4 + 2, 0).astype(np.int32)
    length, alpha, eos = 3, 0.6, 1
    tokens, scores = decoding.beam_search(params, cfg, enc, num_beams=80, max_decode_length=length,
                                          alpha=alpha)
    others = [t for t in range(cfg.vocab_size) if t != eos]
    candidates = [p + (eos,) for n in range(length) for p in itertools.product(others, repeat=n)]
    dec_in = np.array([np.pad((0,) + c[:-1], (0, length - len(c))) for c in candidates], np.int32)
    targets = np.array([np.pad(c, (0, length - len(c))) for c in candidates], np.int32)
    weights = (np.arange(length)[None] < np.array([len(c) for c in candidates])[:, None]).astype(np.float32)
    penalty = decoding.brevity_penalty(alpha, weights.sum(1))
    for row in range(len(enc)):
        batch = dict(encoder_input_tokens=np.repeat(enc[row:row + 1], len(candidates), 0),
                     decoder_input_tokens=dec_in, decoder_target_tokens=targets, decoder_loss_weights=weights)
        brute = np.asarray(decoding.score(params, cfg, batch)) / penalty
        order = np.argsort(-brute)[:len(candidates)]
        np.testing.assert_array_equal(np.asarray(tokens[row, :len(candidates)]), targets[order])
        np.testing.assert_allclose(np.asarray(scores[row, :len(candidates)]), brute[order], atol=1e-4)


def test_sampling_filters(params):
    enc = _encoder_inputs()
    greedy = np.asarray(decoding.greedy_decode(params, CFG, enc, STEPS))
    key = jax.random.PRNGKey(7)
    np.testing.assert_array_equal(
        np.asarray(decoding.sample(params, CFG, enc, key, STEPS, temperature=0.7, top_k=1)), greedy)
    np.testing.assert_array_equal(
        np.asarray(decoding.sample(params, CFG, enc, key, STEPS, temperature=0.0)), greedy)
    free = decoding.sample(params, CFG, enc, key, STEPS)
    np.testing.assert_array_equal(np.asarray(free), np.asarray(decoding.sample(params, CFG, enc, key, STEPS)))
    assert not np.array_equal(np.asarray(free), greedy)
    with pytest.raises(ValueError, match="top_p"):
        decoding.sample(params, CFG, enc, key, STEPS, top_p=0.0)


def test_sampling_distribution_top_k_and_top_p(params):
    n = 3000
    enc = np.repeat(_encoder_inputs(batch=1), n, axis=0)
    temperature = 1.5
    logits = np.asarray(_logits(CFG, params, enc[:1], np.zeros((1, 1), np.int32)))[0, 0] / temperature
    probs = np.exp(logits - logits.max())
    probs /= probs.sum()
    top = np.argsort(-probs)
    key = jax.random.PRNGKey(11)
    drawn = np.asarray(decoding.sample(params, CFG, enc, key, 1, temperature=temperature, top_k=3))[:, 0]
    assert set(drawn) <= set(top[:3])
    want = probs[top[:3]] / probs[top[:3]].sum()
    got = np.array([(drawn == t).mean() for t in top[:3]])
    np.testing.assert_allclose(got, want, atol=0.04)
    top_p = float(probs[top[0]] + 0.5 * probs[top[1]])  # nucleus = the two most likely tokens
    drawn = np.asarray(decoding.sample(params, CFG, enc, key, 1, temperature=temperature, top_p=top_p))[:, 0]
    assert set(drawn) <= set(top[:2])
    np.testing.assert_allclose((drawn == top[0]).mean(), probs[top[0]] / probs[top[:2]].sum(), atol=0.04)


def test_score_weights_padding_and_packing(params):
    rng = np.random.default_rng(5)
    e1, e2 = rng.integers(2, 300, 6), rng.integers(2, 300, 3)
    t1, t2 = rng.integers(2, 300, 4), rng.integers(2, 300, 3)

    def single(e, t):  # one example, padded to the packed batch's lengths
        return dict(encoder_input_tokens=np.pad(e, (0, 11 - len(e)))[None],
                    decoder_input_tokens=np.pad(np.r_[0, t[:-1]], (0, 9 - len(t)))[None],
                    decoder_target_tokens=np.pad(t, (0, 9 - len(t)))[None])

    s1 = float(decoding.score(params, CFG, single(e1, t1))[0])
    s2 = float(decoding.score(params, CFG, single(e2, t2))[0])
    assert s1 < 0 and s2 < 0
    pad = lambda x, n: np.pad(np.asarray(x), (0, n - len(x)))[None]  # noqa: E731
    packed = dict(
        encoder_input_tokens=pad(np.r_[e1, e2], 11), encoder_segment_ids=pad([1] * 6 + [2] * 3, 11),
        encoder_positions=pad(list(range(6)) + list(range(3)), 11),
        decoder_input_tokens=pad(np.r_[0, t1[:-1], 0, t2[:-1]], 9), decoder_target_tokens=pad(np.r_[t1, t2], 9),
        decoder_segment_ids=pad([1] * 4 + [2] * 3, 9), decoder_positions=pad(list(range(4)) + list(range(3)), 9),
        decoder_loss_weights=pad([1.0] * 7, 9))
    np.testing.assert_allclose(float(decoding.score(params, CFG, packed)[0]), s1 + s2, atol=1e-4)
    half = dict(packed, decoder_loss_weights=pad([1.0] * 4, 9))
    np.testing.assert_allclose(float(decoding.score(params, CFG, half)[0]), s1, atol=1e-4)
    with pytest.raises(ValueError, match="decoder_target_tokens"):
        decoding.score(params, CFG, {"encoder_input_tokens": packed["encoder_input_tokens"]})


def test_argmax_equals_jnp_argmax_with_ties_nans_and_infs():
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, size=(6, 257)).astype(np.float32)  # many ties
    x[1, 5] = x[1, 200] = np.inf
    x[2, :] = -np.inf
    x[3, 10] = x[3, 3] = np.nan
    x[4, :] = np.nan
    x[5, 0] = 1e30
    got = np.asarray(jax.jit(decoding.argmax)(jnp.asarray(x)))
    np.testing.assert_array_equal(got, np.asarray(jnp.argmax(jnp.asarray(x), axis=-1)))
    assert list(got[1:5]) == [5, 0, 3, 0]
