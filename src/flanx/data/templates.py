"""FLAN-style templates: safe rendering, answer options and few-shot assembly.

A template is an (input, target) pair of strings with named `{field}`
placeholders. Rendering is deliberately tiny and safe: the only operation is
replacing `{name}` (a plain identifier) with the row's string value. There is
no attribute access, indexing, format spec, conversion or code; `{{` and `}}`
are literal braces; anything else with a brace is rejected when the template
is loaded. Substitution is a single pass, so braces inside data stay inert.

Four formats per dataset, as FLAN defines them:

- `zsopt` / `zsnoopt`: zero-shot with / without the answer options,
- `fsopt` / `fsnoopt`: few-shot, k exemplars (rendered with the same template)
  before the example, joined by FLAN-style delimiters, within a length budget
  that drops whole exemplars (never cuts one in half).

Options render exactly as `OPTIONS:\\n- a\\n- b` (a card with `options_style:
random` draws Flan 2022's styles in `zsopt` instead: `flanx.data.option_styles`).
A template places them with the `{options}` placeholder, which expands to a
blank line plus the block in the `opt` formats and to nothing in the `noopt`
formats; templates without the placeholder get the block appended at the end
in `opt` formats.

A template may carry its own few-shot layout (`TemplateFewShot`: FLAN's
few-shot patterns differ per template): shot count, separators, a `prefix`
rendered from the example and placed before the exemplars (NIv2: the task
definition first), and an `input` used in the few-shot format instead of the
template's input (e.g. without the definition, which the prefix already gave).
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, Mapping, Sequence

FORMATS = ("zsopt", "zsnoopt", "fsopt", "fsnoopt")
OPTIONS_FIELD = "options"

_TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)\}|[{}]")


class TemplateError(ValueError):
    """A template is malformed, or a row lacks a field the template needs."""


def parse(text: str, where: str = "template") -> tuple[tuple[str, str], ...]:
    """Split `text` into ("text", s) and ("field", name) parts; reject anything unsafe."""
    if not isinstance(text, str):
        raise TemplateError(f"{where}: a template must be a string, got {type(text).__name__}")
    parts: list[tuple[str, str]] = []
    pos = 0
    for m in _TOKEN.finditer(text):
        if m.start() > pos:
            parts.append(("text", text[pos:m.start()]))
        token = m.group(0)
        if token in ("{{", "}}"):
            parts.append(("text", token[0]))
        elif m.group(1) is not None:
            parts.append(("field", m.group(1)))
        else:
            snippet = text[max(0, m.start() - 10):m.start() + 20]
            raise TemplateError(
                f"{where}: unsupported brace at offset {m.start()} near {snippet!r}. Templates allow only "
                f"{{field}} with a plain name (no attributes, indexing, format specs); write {{{{ or }}}} "
                f"for a literal brace")
        pos = m.end()
    if pos < len(text):
        parts.append(("text", text[pos:]))
    # Merge adjacent text parts so rendering is a simple join.
    merged: list[tuple[str, str]] = []
    for kind, value in parts:
        if merged and kind == "text" and merged[-1][0] == "text":
            merged[-1] = ("text", merged[-1][1] + value)
        else:
            merged.append((kind, value))
    return tuple(merged)


def substitute(parts: Sequence[tuple[str, str]], values: Mapping[str, object], where: str = "template") -> str:
    """Render parsed `parts` with `values` (each converted with `str`), in one pass."""
    out = []
    for kind, value in parts:
        if kind == "text":
            out.append(value)
            continue
        if value not in values:
            raise TemplateError(f"{where}: field {value!r} is not in the row (fields: {', '.join(sorted(values))})")
        out.append(str(values[value]))
    return "".join(out)


def format_template(text: str, values: Mapping[str, object]) -> str:
    """Parse and render in one call (convenience for code and tests)."""
    return substitute(parse(text), values)


@dataclasses.dataclass(frozen=True)
class TemplateFewShot:
    """A template's own few-shot layout; None fields take the card's `fewshot` settings."""

    k: int | None = None
    inputs_prefix: str | None = None
    targets_prefix: str | None = None
    x_y_delimiter: str | None = None
    example_separator: str | None = None
    prefix: str | None = None  # rendered from the example, before the exemplars
    input: str | None = None   # the input in few-shot formats (query and exemplars)

    LAYOUT = ("k", "inputs_prefix", "targets_prefix", "x_y_delimiter", "example_separator")


@dataclasses.dataclass(frozen=True)
class Template:
    """One (input, target) template; `inverted` marks templates that swap the task's direction."""

    input: str
    target: str
    inverted: bool = False
    where: str = "template"
    fewshot: TemplateFewShot | None = None

    def __post_init__(self):
        object.__setattr__(self, "_input_parts", parse(self.input, f"{self.where} input"))
        object.__setattr__(self, "_target_parts", parse(self.target, f"{self.where} target"))
        fs = self.fewshot
        prefix = parse(fs.prefix, f"{self.where} fewshot.prefix") if fs and fs.prefix else ()
        object.__setattr__(self, "_prefix_parts", prefix)
        if fs and fs.input is not None:
            plain = Template(fs.input, self.target, self.inverted, f"{self.where} fewshot")
        else:
            plain = None
        object.__setattr__(self, "_fewshot_template", plain)

    @property
    def fields(self) -> set[str]:
        parts = self._input_parts + self._target_parts + self._prefix_parts  # type: ignore[attr-defined]
        if self._fewshot_template is not None:  # type: ignore[attr-defined]
            parts += self._fewshot_template._input_parts  # type: ignore[attr-defined]
        return {v for k, v in parts if k == "field"} - {OPTIONS_FIELD}

    @property
    def has_options_slot(self) -> bool:
        return any(k == "field" and v == OPTIONS_FIELD for k, v in self._input_parts)  # type: ignore[attr-defined]

    def fewshot_template(self) -> "Template":
        """The template that renders the query and exemplars in few-shot formats (itself, or its
        `fewshot.input` with the same target)."""
        return self._fewshot_template or self  # type: ignore[attr-defined]

    def fewshot_config(self, card_config: "FewShotConfig") -> "FewShotConfig":
        """The card's few-shot settings with this template's layout on top."""
        fs = self.fewshot
        if fs is None:
            return card_config
        changes = {k: getattr(fs, k) for k in TemplateFewShot.LAYOUT if getattr(fs, k) is not None}
        return dataclasses.replace(card_config, **changes) if changes else card_config

    def fewshot_prefix(self, row: Mapping[str, object]) -> str:
        """`fewshot.prefix` rendered from the example ('' when the template has none)."""
        return substitute(self._prefix_parts, row, f"{self.where} fewshot.prefix")  # type: ignore[attr-defined]

    def render(self, row: Mapping[str, object], options: Sequence[str] | None = None,
               with_options: bool = False, options_block: str | None = None) -> tuple[str, str]:
        """(input, target) for `row`; options shown only when `with_options` and options exist.

        `options_block` replaces the fixed `OPTIONS:` block (a drawn Flan 2022 style)."""
        block = ""
        if with_options and options:
            block = "\n\n" + (render_options(options) if options_block is None else options_block)
        values = dict(row)
        values[OPTIONS_FIELD] = block
        inp = substitute(self._input_parts, values, f"{self.where} input")  # type: ignore[attr-defined]
        if block and not self.has_options_slot:
            inp = inp.rstrip() + block
        tgt = substitute(self._target_parts, values, f"{self.where} target")  # type: ignore[attr-defined]
        return inp, tgt

    def rendered_length(self, row: Mapping[str, object], options: Sequence[str] | None, with_options: bool,
                        length_fn: Callable[[str], int]) -> tuple[int, int]:
        """(input, target) lengths of `render(...)` as the sum of the pieces' lengths.

        Each piece (template text, field value, options block) is measured on
        its own, so with a memoized `length_fn` a row's fields are measured
        once however many templates and exemplars reuse them.
        """
        block = "\n\n" + render_options(options) if (with_options and options) else ""

        def total(parts) -> int:
            n = 0
            for kind, value in parts:
                if kind == "text":
                    n += length_fn(value)
                elif value == OPTIONS_FIELD:
                    n += length_fn(block) if block else 0
                else:
                    n += length_fn(str(row[value]))
            return n

        extra = length_fn(block) if block and not self.has_options_slot else 0
        return total(self._input_parts) + extra, total(self._target_parts)  # type: ignore[attr-defined]


def render_options(options: Sequence[str]) -> str:
    """`OPTIONS:\\n- a\\n- b` (FLAN's exact layout)."""
    return "OPTIONS:\n" + "\n".join(f"- {o}" for o in options)


def is_opt(fmt: str) -> bool:
    check_format(fmt)
    return fmt.endswith("opt") and not fmt.endswith("noopt")


def is_fewshot(fmt: str) -> bool:
    check_format(fmt)
    return fmt.startswith("fs")


def check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown template format {fmt!r}; expected one of {', '.join(FORMATS)}")


@dataclasses.dataclass(frozen=True)
class FewShotConfig:
    """How few-shot inputs are laid out and how long they may get.

    An exemplar renders as `inputs_prefix + input + x_y_delimiter +
    targets_prefix + target`; exemplars are joined (and followed by the final
    example) with `example_separator`; the final example ends with
    `x_y_delimiter + targets_prefix` stripped of trailing spaces, so the model
    continues with the answer. `max_input_tokens` is the budget for the whole
    input, in tokens of the task's vocabulary, or in characters with
    `budget_unit: chars`. With `drop_empty` (as Flan 2022), an example left
    with no exemplar within the budget is dropped instead of served zero-shot.
    """

    k: int = 3
    inputs_prefix: str = ""
    targets_prefix: str = ""
    x_y_delimiter: str = "\n"
    example_separator: str = "\n\n"
    max_input_tokens: int = 512
    budget_unit: str = "tokens"
    pool_split: str = "train"
    match_field: str | None = None
    exemplars_field: str | None = None
    prefix_field: str | None = None
    drop_empty: bool = False

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"fewshot.k must be >= 1, got {self.k}")
        if self.max_input_tokens < 1:
            raise ValueError(f"fewshot.max_input_tokens must be >= 1, got {self.max_input_tokens}")
        if self.budget_unit not in ("tokens", "chars"):
            raise ValueError(f"fewshot.budget_unit must be 'tokens' or 'chars', got {self.budget_unit!r}")
        if not isinstance(self.drop_empty, bool):
            raise ValueError(f"fewshot.drop_empty must be true or false, got {self.drop_empty!r}")


def render_exemplar(inp: str, tgt: str, cfg: FewShotConfig) -> str:
    return f"{cfg.inputs_prefix}{inp}{cfg.x_y_delimiter}{cfg.targets_prefix}{tgt}"


def assemble_fewshot(final_input: str, exemplars: Sequence[str], cfg: FewShotConfig,
                     length_fn: Callable[[str], int] = len, prefix: str = "",
                     lengths: tuple[int, Sequence[int]] | None = None) -> tuple[str, int]:
    """Join `prefix`, exemplars and the final example; drop trailing exemplars to fit the budget.

    Returns (input, number of exemplars kept). The length of the whole input
    is the sum of its parts' lengths (`length_fn` of each piece and of the
    separators, or the precomputed `lengths` = (final input, [exemplars]) in
    the few-shot layout); for characters and bytes that sum is exact, for
    SentencePiece it can differ from tokenizing the joined text by about a
    token per join. Exemplars are dropped whole, last first; with none left
    the input is the zero-shot input in the few-shot layout (after `prefix`,
    e.g. a task description).
    """
    final = f"{cfg.inputs_prefix}{final_input}{cfg.x_y_delimiter}{cfg.targets_prefix}".rstrip()
    head = [prefix] if prefix else []
    sep_len = length_fn(cfg.example_separator)
    final_len, ex_lens = lengths if lengths is not None else (length_fn(final), None)
    total = sum(length_fn(p) + sep_len for p in head) + final_len
    kept: list[str] = []
    # Keeping the longest prefix of exemplars that fits equals dropping the last ones until it fits.
    for i, exemplar in enumerate(exemplars):
        total += (ex_lens[i] if ex_lens is not None else length_fn(exemplar)) + sep_len
        if total > cfg.max_input_tokens:
            break
        kept.append(exemplar)
    return cfg.example_separator.join(head + kept + [final]), len(kept)
