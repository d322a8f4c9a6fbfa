"""flanx.registry: registration, duplicate refusal, lookups that name the mistake."""
import pytest

from flanx.registry import Registry, UnknownName


def test_register_decorator_and_direct():
    reg = Registry("metric")

    @reg.register("bleu")
    def bleu():
        return 1

    reg.register("rouge", len)
    assert reg["bleu"] is bleu and reg["rouge"] is len
    assert reg.names() == ("bleu", "rouge") and "bleu" in reg and len(reg) == 2


def test_duplicate_needs_override():
    reg = Registry("source type")
    reg.register("jsonl", len)
    with pytest.raises(ValueError, match="source type 'jsonl' is already registered"):
        reg.register("jsonl", str)
    reg.register("jsonl", str, override=True)
    assert reg["jsonl"] is str


def test_unknown_name_lists_close_matches_and_hint():
    reg = Registry("row transform", hint="register one with @ROW_TRANSFORMS.register('name')")
    reg.register("gsm8k", len)
    reg.register("mmlu", len)
    with pytest.raises(UnknownName) as e:
        reg["gsm8"]
    assert "unknown row transform 'gsm8'; did you mean: gsm8k?" in str(e.value)
    assert "known: gsm8k, mmlu" in str(e.value) and "@ROW_TRANSFORMS.register" in str(e.value)
    with pytest.raises(ValueError, match=r"^task card x.yaml: row_transform: unknown row transform 'nope'"):
        reg.check("nope", "task card x.yaml: row_transform")
