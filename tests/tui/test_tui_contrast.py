"""Every text colour of both shipped themes is at least 4.5:1 against the background it is drawn on
(WCAG 2.1 AA, success criterion 1.4.3), computed from the theme files (themes/*.yaml) and the rules of
tui/workbench.tcss, as Textual resolves them: theme variables, ``auto`` text (the contrasting text
colour at its alpha), and colours with an alpha blended over what is under them.

Each colour rule of the stylesheet is either checked against its background (its own, or the one of
the widget it is drawn in, from :data:`DRAWN_ON`) or listed in :data:`NOT_TEXT` (bars and rules,
not text); a new rule that is neither fails the test, so no colour escapes it.
"""

from __future__ import annotations

import re

import pytest
from paths import REPO

pytest.importorskip("textual")

from textual.color import Color  # noqa: E402

from sysextant.tui.themes import VARIABLE_DEFAULTS, builtin_themes  # noqa: E402

TCSS = REPO / "tui" / "workbench.tcss"
AA = 4.5

#: Where a rule without a background of its own is drawn: the first matching selector prefix.
DRAWN_ON = [
    ("TreeList", "$background"),
    ("ExtensionsPanel OptionList", "$surface"),
    ("ExtensionsPanel", "$surface"),
    ("UkiGauge", "$panel"),
    ("#status", "$surface"),
    ("#colhead", "$surface"),
    ("#name-error", "$surface"),  # in a dialog
    ("#build-overall", "$background"),
    ("StagesView", "$background"),
    ("ResultView", "$background"),
]

#: Colour rules that draw no text: bar cells, the gauge's empty track, borders.
NOT_TEXT = {"TreeList > .tree-list--bar", "TreeList > .tree-list--bar-empty", "UkiGauge > .gauge--empty",
            "#build-overall > .overall--bar", "#build-overall > .overall--bar-empty", "StagesView > .build--bar",
            "StagesView > .build--bar-empty"}


def luminance(c: Color) -> float:
    """WCAG relative luminance."""
    def channel(v: int) -> float:
        s = v / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    return 0.2126 * channel(c.r) + 0.7152 * channel(c.g) + 0.0722 * channel(c.b)


def contrast(a: Color, b: Color) -> float:
    hi, lo = sorted((luminance(a), luminance(b)), reverse=True)
    return (hi + 0.05) / (lo + 0.05)


class Palette:
    """A theme's variables as Textual generates them, with Sysextant's own."""

    def __init__(self, theme) -> None:  # noqa: ANN001 - a textual Theme
        self.name = theme.name
        self.vars = {**VARIABLE_DEFAULTS, **theme.to_color_system().generate(), **theme.variables}

    def colour(self, expr: str, under: Color) -> Color:
        """The opaque colour ``expr`` (``$var``, ``$var 30%``, ``auto 87%``, ``#rrggbb``) paints over ``under``."""
        expr = expr.strip()
        m = re.fullmatch(r"(\$[\w-]+|auto|#[0-9a-fA-F]{3,8})(?:\s+(\d+)%)?", expr)
        assert m, f"{self.name}: cannot read the colour {expr!r}"
        token, pct = m.group(1), m.group(2)
        if token == "auto":
            c = under.get_contrast_text(1.0)
        elif token.startswith("$"):
            value = self.vars[token[1:]]
            c = self.colour(value, under)
        else:
            c = Color.parse(token)
        alpha = c.a * (int(pct) / 100 if pct else 1.0)
        return under.blend(c.with_alpha(1.0), alpha) if alpha < 1 else c.with_alpha(1.0)

    @property
    def background(self) -> Color:
        return Color.parse(self.vars["background"])


def rules() -> list[tuple[str, dict[str, str]]]:
    out = []
    text = re.sub(r"/\*.*?\*/", "", TCSS.read_text(), flags=re.S)
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", text):
        props = dict((k.strip(), v.strip()) for k, _, v in
                     (p.partition(":") for p in body.split(";") if ":" in p))
        for sel in selector.split(","):
            out.append((" ".join(sel.split()), props))
    return out


def drawn_on(selector: str, props: dict[str, str]) -> str | None:
    if "background" in props:
        return props["background"]
    base = selector.split(":")[0]
    return next((bg for prefix, bg in DRAWN_ON if base.startswith(prefix)), None)


def pairs(p: Palette) -> list[tuple[str, Color, Color]]:
    """(what, text colour, background) for every text colour the workbench draws."""
    out: list[tuple[str, Color, Color]] = []
    screen = p.background
    surface = p.colour("$surface", screen)
    for selector, props in rules():
        if "color" not in props or selector in NOT_TEXT:
            continue
        bg_expr = drawn_on(selector, props)
        assert bg_expr is not None, f"{selector}: add where it is drawn to DRAWN_ON, or to NOT_TEXT"
        under = surface if selector.startswith("ExtensionsPanel") else screen  # what a tint lies over
        bg = p.colour(bg_expr, under)
        out.append((selector, p.colour(props["color"], bg), bg))
    # [dim] in the one-line widgets is drawn in $muted (see tui/widgets/line.py)
    for sel in ("#topbar", "#crumb", "#item", "#status"):
        bg = p.colour(dict(rules())[sel].get("background", "$surface"), screen)
        out.append((f"{sel} [dim] ($muted)", p.colour("$muted", bg), bg))
    # the tree list's plain figures, and text Textual draws from the theme
    out.append(("tree list figures ($foreground)", p.colour("$foreground", screen), screen))
    panel = p.colour("$panel", screen)
    out.append(("footer key", p.colour(p.vars["footer-key-foreground"], panel), panel))
    out.append(("footer description", p.colour("$foreground", panel), panel))
    # extension names drawn in their colour: in the tree list, in the panel, on its highlighted row
    highlights = {sel: props["background"] for sel, props in rules()
                  if sel.startswith("ExtensionsPanel OptionList") and "option-highlighted" in sel}
    assert highlights, "the extensions list draws its highlighted row with a background of ours"
    for ext in [f"$ext-{k}" for k in range(6)] + ["$muted"]:  # and the dim figures next to them
        out.append((f"{ext} in the tree list", p.colour(ext, screen), screen))
        for sel, bg_expr in highlights.items():
            bg = p.colour(bg_expr, surface)
            out.append((f"{ext} on {sel}", p.colour(ext, bg), bg))
    return out


@pytest.mark.parametrize("theme", [t for t in builtin_themes() if t.name.startswith("sysextant")],
                         ids=lambda t: t.name)
def test_every_text_colour_is_wcag_aa_against_its_background(theme) -> None:  # noqa: ANN001
    p = Palette(theme)
    low = [f"{what}: {contrast(fg, bg):.2f}:1 ({fg.hex} on {bg.hex})"
           for what, fg, bg in pairs(p) if contrast(fg, bg) < AA]
    assert not low, f"{theme.name}: below {AA}:1\n  " + "\n  ".join(low)


def test_the_contrast_formula() -> None:
    assert contrast(Color(0, 0, 0), Color(255, 255, 255)) == pytest.approx(21.0)
    assert contrast(Color.parse("#767676"), Color(255, 255, 255)) == pytest.approx(4.54, abs=0.01)
