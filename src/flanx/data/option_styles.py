"""Answer-option styles: the fixed `OPTIONS:` block and Flan 2022's randomized styles.

FLAN 2021 (and every flanx format by default) shows answer options as
`OPTIONS:\\n- a\\n- b`. Flan 2022's zero-shot-with-options format draws a
style per example instead (FLAN's `format_options_non_deterministic`): a
heading (16 choices, one of them empty), an item style (87 choices) and an
item ending (`""`, `;` or `.`), each uniformly. Item styles are bullets
(`"\\n - "`, `" * "`, ...: 23 styles), Roman numerals (lower and upper case,
16 styles) and letters or numbers (24 styles, each listed twice in FLAN's
table, so they are drawn twice as often). When the style marks items with
distinct labels (letters, numbers, numerals) and the answer is one of the
options, the target becomes that option's label (stripped, e.g. `(B).`);
rank classification then scores the labels. Bullets keep the option text.

`draw(rng)` picks a style with a `random.Random`; flanx seeds it per example
(task, split, row), so the same example always gets the same style. The
tables are built by rule here; `flanx/data/option_styles.py` holds no data
file. Stdlib only.
"""
from __future__ import annotations

import dataclasses
import random
from typing import Sequence

MAX_OPTIONS = 26  # letter styles run out after Z

HEADINGS = ("", "OPTIONS:", "Possible answers:", "Available choices:", "Options:", "OPT:", "Choose from:",
            "Choose your answer from:", "Available options:", "Options are:", "Choices:", "Pick your answer from:",
            "Select from:", "Pick from:", "Select from the following.", "pick from the following.")
ENDINGS = ("", ";", ".")

_BULLETS = ("\n - ", "\n -", "\n -- ", "\n --", "\n + ", "\n +", "\n * ", "\n *", "\n- ", "\n+ ", "\n* ",
            "\n[-] ", "\n[+] ", " - ", " -- ", " + ", " * ", " -", " --", " +", " *", " [+] ", " [-] ")
_ROMAN = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII", "IX", "X", "XI", "XII", "XIII", "XIV", "XV", "XVI",
          "XVII", "XVIII", "XIX", "XX", "XXI", "XXII", "XXIII", "XXIV", "XXV", "XXVI")
# (before the label, after it) around Roman numerals, with a leading space or newline.
_ROMAN_FORMS = ("{}. ", "[{}] ", "({}) ", "({}). ")
# Letter and number labels: (before, after) with the line start " ", "\n" or "\n ".
_LABEL_FORMS = (("\n[", "]. "), ("\n(", "). "), ("\n", "). "), ("\n (", "). "), ("\n ", "). "), (" (", "). "),
                (" ", "). "), (" ", ". "))


def _label_sequences() -> list[list[str]]:
    lower = [chr(c) for c in range(ord("a"), ord("z") + 1)]
    upper = [chr(c) for c in range(ord("A"), ord("Z") + 1)]
    numbers = [str(i) for i in range(1, MAX_OPTIONS + 1)]
    return [lower, upper, numbers]


def _item_styles() -> list[tuple[str, ...]]:
    styles = [tuple([b] * MAX_OPTIONS) for b in _BULLETS]
    for case in (str.lower, str.upper):
        for start in (" ", "\n"):
            for form in _ROMAN_FORMS:
                styles.append(tuple(start + form.format(case(r)) for r in _ROMAN))
    labelled = [tuple(before + label + after for label in seq)
                for before, after in _LABEL_FORMS for seq in _label_sequences()]
    return styles + labelled + labelled  # FLAN lists the 24 label styles twice


ITEM_STYLES: tuple[tuple[str, ...], ...] = tuple(_item_styles())


@dataclasses.dataclass(frozen=True)
class OptionStyle:
    """One drawn style: heading, per-item markers and the item ending."""

    heading: str
    markers: tuple[str, ...]
    ending: str

    @property
    def labelled(self) -> bool:
        """Whether items carry distinct labels (then the answer becomes its label)."""
        return len({m.strip() for m in self.markers}) == len(self.markers)

    def render(self, options: Sequence[str]) -> str:
        """The options block, e.g. `Options:\\n (A). yes.\\n (B). no.`."""
        if len(options) > MAX_OPTIONS:
            raise ValueError(f"{len(options)} answer options; the option styles label at most {MAX_OPTIONS}")
        return self.heading + "".join(f"{m}{o}{self.ending}" for m, o in zip(self.markers, options))

    def label(self, index: int) -> str:
        return self.markers[index].strip()

    def answer(self, answer: str, options: Sequence[str]) -> str:
        """The target for `answer`: its option's label in a labelled style, else the answer unchanged.

        Only the styles' first `len(options)` markers count (as FLAN compares them)."""
        style = dataclasses.replace(self, markers=self.markers[:len(options)])
        if not style.labelled:
            return answer
        for i, option in enumerate(options):
            if option.strip() == answer.strip():
                return style.label(i)
        return answer

    def candidates(self, options: Sequence[str]) -> list[str]:
        """What rank classification scores: the labels in a labelled style, else the options."""
        style = dataclasses.replace(self, markers=self.markers[:len(options)])
        return [style.label(i) for i in range(len(options))] if style.labelled else list(options)


FIXED = OptionStyle("OPTIONS:", ("\n- ",) * MAX_OPTIONS, "")  # FLAN 2021's block (flanx's default)


def draw(rng: random.Random) -> OptionStyle:
    """A Flan 2022 style: heading, item style and ending drawn independently and uniformly."""
    heading = HEADINGS[rng.randrange(len(HEADINGS))]
    markers = ITEM_STYLES[rng.randrange(len(ITEM_STYLES))]
    ending = ENDINGS[rng.randrange(len(ENDINGS))]
    return OptionStyle(heading, markers, ending)
