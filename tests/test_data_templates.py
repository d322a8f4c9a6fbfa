"""Template engine: safe substitution, options layout, formats and few-shot budgets (no TensorFlow)."""
from __future__ import annotations

import pytest

from flanx.data import templates
from flanx.data.templates import FewShotConfig, Template, TemplateError, assemble_fewshot, format_template


def test_substitutes_named_fields_and_literal_braces():
    assert format_template("Q: {question} {{not a field}} A:", {"question": "why?"}) == "Q: why? {not a field} A:"
    assert format_template("{a}{b}{a}", {"a": "x", "b": 2}) == "x2x"


@pytest.mark.parametrize("bad", [
    "{a.__class__}", "{a[0]}", "{0}", "{}", "{a!r}", "{a:>10}", "{a b}", "stray } brace", "open { brace",
    "{__import__('os')}",
])
def test_rejects_anything_but_plain_names(bad):
    with pytest.raises(TemplateError, match="unsupported brace"):
        templates.parse(bad, "card x: templates[3] input")
    with pytest.raises(TemplateError, match=r"card x: templates\[3\] input"):
        templates.parse(bad, "card x: templates[3] input")


def test_braces_in_data_are_inert():
    # Substitution is one pass: a field value that looks like a placeholder stays text.
    out = format_template("{a} and {b}", {"a": "{b}", "b": "{a.__class__}"})
    assert out == "{b} and {a.__class__}"


def test_objects_are_only_stringified():
    class Sneaky:
        secret = "leaked"

        def __str__(self):
            return "plain"
    assert format_template("{x}", {"x": Sneaky()}) == "plain"


def test_missing_field_names_field_and_template():
    t = Template("{premise} / {hypothesis}", "{label}", where="task card rte.yaml: templates[2]")
    with pytest.raises(TemplateError, match=r"rte.yaml: templates\[2\] input: field 'hypothesis'"):
        t.render({"premise": "p", "label": "yes"})


def test_options_render_exactly():
    assert templates.render_options(["yes", "no"]) == "OPTIONS:\n- yes\n- no"
    t = Template("{premise}\nTrue?{options}", "{label}")
    row = {"premise": "It rains.", "label": "yes"}
    assert t.render(row, ["yes", "no"], with_options=True) == ("It rains.\nTrue?\n\nOPTIONS:\n- yes\n- no", "yes")
    assert t.render(row, ["yes", "no"], with_options=False) == ("It rains.\nTrue?", "yes")
    # Without the placeholder the block is appended after the input.
    t2 = Template("Is it true? {premise}  ", "{label}")
    assert t2.render(row, ["yes", "no"], True)[0] == "Is it true? It rains.\n\nOPTIONS:\n- yes\n- no"
    assert t.fields == {"premise", "label"} and t.has_options_slot and not t2.has_options_slot


def test_format_names():
    assert templates.FORMATS == ("zsopt", "zsnoopt", "fsopt", "fsnoopt")
    assert [templates.is_opt(f) for f in templates.FORMATS] == [True, False, True, False]
    assert [templates.is_fewshot(f) for f in templates.FORMATS] == [False, False, True, True]
    with pytest.raises(ValueError, match="unknown template format 'fs'"):
        templates.is_opt("fs")


def test_fewshot_layout_and_delimiters():
    cfg = FewShotConfig(k=2, inputs_prefix="Q: ", targets_prefix="A: ", x_y_delimiter="\n",
                        example_separator="\n\n", max_input_tokens=10_000)
    ex = [templates.render_exemplar("1+1?", "2", cfg), templates.render_exemplar("2+2?", "4", cfg)]
    text, kept = assemble_fewshot("3+3?", ex, cfg, prefix="Arithmetic.")
    assert kept == 2
    assert text == "Arithmetic.\n\nQ: 1+1?\nA: 2\n\nQ: 2+2?\nA: 4\n\nQ: 3+3?\nA:"


def test_budget_drops_whole_exemplars_last_first():
    exemplars = ["aaaa|1", "bbbbbbbb|2", "cc|3"]  # 6, 10, 4 chars
    final = "zz"  # renders "zz|" -> stripped "zz|"
    lengths = []
    for budget in range(0, 40):
        cfg = FewShotConfig(k=3, x_y_delimiter="|", example_separator="##", max_input_tokens=max(1, budget))
        text, kept = assemble_fewshot(final, exemplars, cfg)
        # Recompute independently: longest prefix of exemplars whose joined text fits.
        expect = 0
        for n in range(len(exemplars) + 1):
            if len("##".join(exemplars[:n] + ["zz|"])) <= max(1, budget):
                expect = n
            else:
                break
        assert kept == expect, budget
        assert text == "##".join(exemplars[:kept] + ["zz|"])
        if kept:
            assert len(text) <= budget
        lengths.append(kept)
    # By hand: "zz|" = 3; + "aaaa|1" and "##" = 11; + "bbbbbbbb|2" and "##" = 23; + "cc|3" and "##" = 29.
    assert (lengths[10], lengths[11], lengths[22], lengths[23], lengths[28], lengths[29]) == (0, 1, 1, 2, 2, 3)
    # Never cut mid-exemplar: every kept exemplar appears whole.
    assert all(e in assemble_fewshot(final, exemplars, FewShotConfig(k=3, max_input_tokens=30))[0]
               for e in exemplars)


def test_budget_uses_the_given_length_function():
    cfg = FewShotConfig(k=2, max_input_tokens=5, x_y_delimiter=" ", example_separator=" ")
    words = lambda s: len(s.split())  # noqa: E731 - a toy "tokenizer"
    text, kept = assemble_fewshot("q3", ["q1 a1", "q2 a2"], cfg, length_fn=words)
    # q3 = 1 word, each exemplar 2 words, each separator 0 words -> 1 + 2 + 2 = 5 fits.
    assert kept == 2 and text == "q1 a1 q2 a2 q3"
    text, kept = assemble_fewshot("q3 long", ["q1 a1", "q2 a2"], cfg, length_fn=words)
    assert kept == 1 and text == "q1 a1 q3 long"


def test_fewshot_config_validation():
    with pytest.raises(ValueError, match="fewshot.k"):
        FewShotConfig(k=0)
    with pytest.raises(ValueError, match="max_input_tokens"):
        FewShotConfig(max_input_tokens=0)
