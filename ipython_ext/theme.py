"""The notebook look of livepatch's HTML: colours, their themes, legends and cells.

Colours are inline styles (they survive notebook sanitisers); :func:`themed`
makes them follow the notebook's light or dark theme. The letter and marker
styles and their legends are shared by every table :mod:`ipython_ext.display`
renders.
"""

from __future__ import annotations

import html
import re
from collections.abc import Iterable
from typing import Final

from livepatch.symbols import SymbolRow

__all__ = [
    "LETTER_STYLE",
    "MARKER_STYLE",
    "NATIVE_MEANING",
    "PALETTE",
    "STATE_COLOR",
    "themed",
]

#: Marker -> (class suffix, title, foreground, row background).
MARKER_STYLE: Final[dict[str, tuple[str, str, str, str]]] = {
    "=": ("same", "same in both versions", "#8a8a8a", "transparent"),
    "~": ("changed", "changed", "#b7791f", "rgba(214, 158, 46, 0.16)"),
    "+": ("added", "only in the second version", "#2f855a", "rgba(56, 161, 105, 0.16)"),
    "-": ("removed", "only in the first version", "#c53030", "rgba(229, 62, 62, 0.13)"),
}

#: nm-style letter -> (colour, meaning), after the design's symbol table.
LETTER_STYLE: Final[dict[str, tuple[str, str]]] = {
    "T": ("#2f855a", "function defined in this version"),
    "C": ("#0987a0", "class defined in this version"),
    "D": ("#2b6cb0", "data defined at top level"),
    "I": ("#805ad5", "imported name (indirect)"),
    "U": ("#b7791f", "referenced but not defined here"),
    "W": ("#a0852d", "bound only through `global` in a function (weak)"),
    # The native (ELF) tables' own letters; there W means a weak symbol.
    "B": ("#2b6cb0", "zero-initialised data (.bss)"),
    "R": ("#2b6cb0", "read-only data"),
}

#: What the letters mean in a native (ELF) table: nm -D's meanings.
NATIVE_MEANING: Final[dict[str, str]] = {
    "T": "code exported by the object",
    "D": "initialised data",
    "U": "undefined: resolved against the host or a DT_NEEDED library",
    "W": "weak symbol, defined or undefined (nm's W V w v)",
}


def _is_native(rows: Iterable[SymbolRow]) -> bool:
    """Native tables give sizes (``size N``) and have B/R rows; Python ones never."""
    return any(r.letter in ("B", "R") or r.detail.startswith("size ") for r in rows)


def _meaning(letter: str, native: bool) -> str:
    if native and letter in NATIVE_MEANING:
        return NATIVE_MEANING[letter]
    return LETTER_STYLE.get(letter, ("", "other"))[1]


#: Version state -> colour of its label in the status table.
STATE_COLOR: Final[dict[str, str]] = {
    "loaded": "#718096",
    "resolved": "#2b6cb0",
    "active": "#2f855a",
    "retired": "#805ad5",
    "failed": "#c53030",
    "purged": "#b7791f",
    "unloaded": "#a0aec0",
}

_BAD: Final = "#c53030"
_GOOD: Final = "#2f855a"
_MONO: Final = "var(--jp-code-font-family, SFMono-Regular, Menlo, Consolas, monospace)"
_TABLE: Final = f"border-collapse:collapse;font-family:{_MONO};font-size:12px;margin:4px 0"
_TD: Final = "padding:1px 8px;text-align:left;vertical-align:top;white-space:pre"
_TH: Final = _TD + ";font-weight:bold;border-bottom:1px solid #ccc"
_HEAD: Final = f"font-family:{_MONO};font-size:12px;margin:2px 0"

#: Text colours by role: (light theme, dark theme). Each passes 4.5:1 against
#: its theme's background and the diff's row tints (tests/test_notebook_frontends.py
#: measures them in a real browser).
PALETTE: Final = {
    "grey": ("#595959", "#b3b3b3"),
    "dim": ("#616161", "#a6a6a6"),
    "green": ("#276749", "#68d391"),
    "teal": ("#086f83", "#4fd1c5"),
    "blue": ("#245a94", "#7fb8f0"),
    "purple": ("#6b46c1", "#c3a6f7"),
    "amber": ("#8a5a00", "#f6ad55"),
    "red": ("#b02a2a", "#fc8f8f"),
    "olive": ("#7a5d12", "#e0c060"),
}

#: The colours the renderers write, by role (they read as they did in a light theme).
_ROLE: Final = {
    "#8a8a8a": "dim",
    "#b7791f": "amber",
    "#2f855a": "green",
    "#c53030": "red",
    "#0987a0": "teal",
    "#2b6cb0": "blue",
    "#805ad5": "purple",
    "#a0852d": "olive",
    "#718096": "grey",
    "#a0aec0": "dim",
    "#555": "grey",
    "#666": "grey",
    "#888": "dim",
    "#aaa": "dim",
}

#: Dark values where the notebook says its theme is dark (JupyterLab's
#: ``data-jp-theme-light="false"``, VS Code's ``vscode-dark``). Inline
#: fallbacks keep the light colours wherever the <style> is stripped; greys
#: then fall back to JupyterLab's text colour, which follows any theme (its
#: own dimmer grey, ``--jp-content-font-color2``, is under 4.5:1).
_THEME_CSS: Final = (
    "<style>.lp-themed {"
    + "".join(f"--lp-{name}:{light};" for name, (light, _dark) in PALETTE.items())
    + "}"
    + '[data-jp-theme-light="false"] .lp-themed, .vscode-dark .lp-themed, '
    + ".vscode-high-contrast .lp-themed {"
    + "".join(f"--lp-{name}:{dark};" for name, (_light, dark) in PALETTE.items())
    + "}</style>"
)

_COLOR_PROPERTY: Final = re.compile(r"(?<![-\w])color:(#[0-9a-fA-F]{3,6})\b")


def themed(fragment: str) -> str:
    """An HTML fragment whose text colours follow the notebook's theme.

    Every ``color:#hex`` becomes ``color:var(--lp-ROLE, LIGHT)`` inside a
    ``lp-themed`` block that defines the dark values (see ``_THEME_CSS``).
    """

    def sub(match: re.Match[str]) -> str:
        role = _ROLE.get(match.group(1).lower())
        if role is None:
            return match.group(0)
        light = PALETTE[role][0]
        if role in ("grey", "dim"):
            light = f"var(--jp-content-font-color1, {light})"
        return f"color:var(--lp-{role}, {light})"

    return f'{_THEME_CSS}<div class="lp-themed">{_COLOR_PROPERTY.sub(sub, fragment)}</div>'


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _td(content: str, style: str = "", cls: str = "", title: str = "") -> str:
    attrs = f' class="{cls}"' if cls else ""
    attrs += f' title="{_e(title)}"' if title else ""
    return f'<td{attrs} style="{_TD};{style}">{content}</td>'


def _th(content: str, colspan: int = 1, style: str = "") -> str:
    span = f' colspan="{colspan}"' if colspan > 1 else ""
    return f'<th{span} style="{_TH};{style}">{content}</th>'


def _letter(letter: str) -> str:
    color, meaning = LETTER_STYLE.get(letter, ("#718096", "other"))
    return (
        f'<span class="lp-letter lp-letter-{_e(letter)}" title="{_e(letter)}: {_e(meaning)}" '
        f'style="color:{color};font-weight:bold">{_e(letter)}</span>'
    )


def _legend(letters: Iterable[str], native: bool = False) -> str:
    present = set(letters)  # once: ``letters`` may be a generator
    shown = [k for k in LETTER_STYLE if k in present]
    if not shown:
        return ""
    parts = [f"{_letter(k)} {_e(_meaning(k, native))}" for k in shown]
    return f'<div class="lp-legend" style="{_HEAD};color:#666">{" · ".join(parts)}</div>'


def _marker_legend(flagged: bool) -> str:
    """What ``= ~ + -`` (and ``!``) mean, under a side-by-side view."""
    parts = [
        f'<span style="color:{color};font-weight:bold">{_e(m)}</span> {_e(title)}'
        for m, (_cls, title, color, _bg) in MARKER_STYLE.items()
    ]
    if flagged:
        parts.append(f'<span style="color:{_BAD};font-weight:bold">!</span> resolves differently')
    return (
        f'<div class="lp-legend lp-marker-legend" style="{_HEAD};color:#666">'
        f"{' · '.join(parts)}</div>"
    )
