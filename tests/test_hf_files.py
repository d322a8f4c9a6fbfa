"""`flanx convert --to hf` gives an export that transformers loads and tokenizes as is: tokenizer files that
give seqio's ids, a model card, normal file modes, and `generate` equal to flanx's greedy decoding."""
from __future__ import annotations

import json
import os
import stat

import jax
import numpy as np
import pytest
import seqio

from flanx import convert
from flanx.checkpoints import load_params, save_params
from flanx.data import vocab
from flanx.models import decoding, get_config, init_params
from flanx.predict import pad_tokens, trim_at_eos
from flanx.train import trainer
from flanx.train.config import OptimizerConfig, TrainConfig
from flanx.train.synthetic import SyntheticBatches
from flanx.train.writers import MetricsWriter

TEXTS = ["#Person1#: Hello, how are you?\n#Person2#: I'm fine — thanks!", "  two  spaces ", "tab\there",
         "ünïcödé ñ 日本語 😀", "Awwww, soooooo cute!!!!!!!!", "order 1234 is late; ships 2026-12-01."]


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _transformers():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("torch")
    return transformers


def _generate(export, prompts, steps):
    """transformers' greedy generate from the export, tokenized by the export's own tokenizer."""
    import torch
    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    model = transformers.T5ForConditionalGeneration.from_pretrained(export).eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=steps, do_sample=False, num_beams=1)
    return tokenizer, batch["input_ids"].numpy(), [trim_at_eos(row[1:]) for row in out.numpy()]


def _flanx_greedy(model_dir, ids, steps):
    params, config, _ = load_params(model_dir)
    out = np.asarray(decoding.greedy_decode(params, config, pad_tokens(ids, max(map(len, ids))), steps))
    return [trim_at_eos(row) for row in out]


@pytest.mark.slow
@pytest.mark.needs_torch
def test_export_of_a_run_loads_tokenizes_and_generates_as_flanx(tmp_path, umask_022, capsys):
    model_dir = tmp_path / "run"
    cfg = TrainConfig(train_steps=3, batch_size=4, log_every=1, model_dir=str(model_dir),
                      optimizer=OptimizerConfig(learning_rate=0.01))
    trainer.train(cfg, get_config("tiny"), lambda shard: SyntheticBatches(shard, 32, 8, vocab_size=200))
    # What `python -m flanx.train` and `python -m flanx.eval` add to a MODEL_DIR.
    (model_dir / "vocabulary.json").write_text(json.dumps(vocab.vocabulary_record("byte")))
    (model_dir / "operative_config.gin").write_text("MIXTURE_OR_TASK_NAME = 'ut_chats'\nTRAIN_STEPS = 3\n")
    writer = MetricsWriter(str(model_dir / "eval"))
    writer.write(3, "eval", {"ut_chats": {"rouge1": 0.25, "rougeL": 0.125}})
    writer.close()

    export = tmp_path / "export"
    assert convert.main(["--to", "hf", str(model_dir), str(export)]) == 0
    names = sorted(os.listdir(export))
    assert names == ["README.md", "config.json", "model.safetensors", "special_tokens_map.json",
                     "tokenizer_config.json"]
    assert {oct(stat.S_IMODE(os.stat(export / n).st_mode)) for n in names} == {"0o644"}
    assert oct(stat.S_IMODE(os.stat(export).st_mode)) == "0o755"
    card = (export / "README.md").read_text()
    assert "- `MIXTURE_OR_TASK_NAME`: `'ut_chats'`" in card and "- `TRAIN_STEPS`: `3`" in card
    assert "| 3 | ut_chats | rouge1 | 0.2500 |" in card and "(step 3)" in card
    assert "optimizer: name='adafactor', learning_rate=0.01" in card

    tokenizer, hf_ids, hf_out = _generate(str(export), TEXTS, 12)
    byte = seqio.ByteVocabulary()
    assert type(tokenizer).__name__ == "ByT5Tokenizer"
    for text, row in zip(TEXTS, hf_ids):
        assert [int(t) for t in row if t] == list(byte.encode(text)) + [1]
    assert hf_out == _flanx_greedy(model_dir, [list(byte.encode(t)) + [1] for t in TEXTS], 12)
    assert any(len(x) > 3 for x in hf_out)  # real token sequences, not empty outputs

    # A Hugging Face input keeps its tokenizer.
    again = tmp_path / "again"
    assert convert.main(["--to", "hf", str(export), str(again)]) == 0
    assert (again / "tokenizer_config.json").read_text() == (export / "tokenizer_config.json").read_text()
    # A checkpoint with no vocabulary record: weights and card, and a note on how to add a tokenizer.
    bare = tmp_path / "bare"
    save_params(bare, init_params(get_config("tiny"), jax.random.PRNGKey(0)), get_config("tiny"))
    capsys.readouterr()
    assert convert.main(["--to", "hf", str(bare), str(tmp_path / "bare_hf")]) == 0
    err = capsys.readouterr().err
    assert "no tokenizer written" in err and "pass --vocabulary t5_spm|byte|FILE.model" in err
    assert sorted(os.listdir(tmp_path / "bare_hf")) == ["README.md", "config.json", "model.safetensors"]


@pytest.mark.slow
@pytest.mark.needs_data
@pytest.mark.needs_torch
def test_spm_export_gives_seqio_ids_on_real_text_and_flanx_generations(tmp_path, data_root, umask_022):
    config = get_config("tiny_spm")
    ckpt = tmp_path / "ckpt"
    save_params(ckpt, init_params(config, jax.random.PRNGKey(3)), config)
    export = tmp_path / "export"
    assert convert.main(["--to", "hf", "--vocabulary", "t5_spm", str(ckpt), str(export)]) == 0
    assert {"spiece.model", "spm_char.model", "tokenizer_config.json", "special_tokens_map.json"} <= \
        set(os.listdir(export))

    transformers = _transformers()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(export))
    spm = seqio.SentencePieceVocabulary(str(vocab.spm_path()), extra_ids=100)
    texts = list(TEXTS)
    for name in ("dialogsum/dialogsum.test.jsonl", "samsum/samsum.train.jsonl"):
        with open(data_root / name, encoding="utf-8") as f:
            for line in list(f)[:1500]:
                row = json.loads(line)
                texts += [row["dialogue"], row.get("summary") or row["summary1"]]
    mismatched = [t for t in texts if tokenizer(t).input_ids != list(spm.encode(t)) + [1]]
    assert not mismatched, mismatched[:3]
    ids = list(spm.encode(texts[7]))
    assert tokenizer.decode(ids + [1], skip_special_tokens=True) == spm.decode(ids)
    assert tokenizer.convert_tokens_to_ids(["<extra_id_0>", "<extra_id_99>"]) == [32099, 32000]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id) == (1, 0, 2)

    prompts = texts[6:10]
    _, _, hf_out = _generate(str(export), prompts, 10)
    assert hf_out == _flanx_greedy(ckpt, [list(spm.encode(t)) + [1] for t in prompts], 10)
