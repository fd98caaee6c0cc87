"""Text normalisation for the DAPT corpus.

Every rule works on whole lines or single characters and keeps line structure: nothing is reflowed
and runs of inner spaces are never collapsed, because code listings, hex dumps and tables carry their
meaning in columns. Each rule is a small function so it can be tested (and reported) on its own.
"""
from __future__ import annotations

import html
import re
import unicodedata

# --- character level ----------------------------------------------------------------------------

_NEWLINES = re.compile(r"\r\n|\r|\u2028|\u2029|\u0085")
# Invisible characters that only ever come from word processors and web pages.
_INVISIBLE = re.compile("[\u200b\u2060\ufeff\u00ad]")
# Space-like characters replaced one-for-one by a plain space so columns stay aligned.
_SPACE_LIKE = re.compile("[\u00a0\u2007\u202f]")
# C0/C1 controls except tab and newline; form feed is handled first (it means "new page").
_CONTROLS = re.compile("[\x00-\x08\x0b\x0e-\x1f\x7f\x80-\x84\x86-\x9f]")
_TRAILING_WS = re.compile(r"[ \t]+$", re.M)
_BLANK_RUNS = re.compile(r"\n(?:[ \t]*\n){2,}")


def newlines(text: str) -> str:
    return _NEWLINES.sub("\n", text)


def unicode_nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def invisible_chars(text: str) -> str:
    return _INVISIBLE.sub("", text)


def space_like_chars(text: str) -> str:
    return _SPACE_LIKE.sub(" ", text)


def control_chars(text: str) -> str:
    # A form feed separates pages: keep the separation as a line break, drop the control itself.
    return _CONTROLS.sub("", text.replace("\f", "\n"))


def trailing_whitespace(text: str) -> str:
    return _TRAILING_WS.sub("", text)


# Only well-formed entities of the kinds scrapers leave behind; "&#CEY" in a hex dump stays as it is.
_ENTITY = re.compile(r"&(?:amp|lt|gt|quot|apos|nbsp|#\d{1,6}|#[xX][0-9a-fA-F]{1,6});")


def html_entities(text: str) -> str:
    def one(m: re.Match) -> str:
        out = html.unescape(m.group(0))
        return " " if out == "\u00a0" else out
    return _ENTITY.sub(one, text)


# --- line level (scraping debris) ---------------------------------------------------------------

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n((?:[A-Za-z_][\w -]*:.*\n|[ \t]+.*\n|-[ \t].*\n|[ \t]*\n)*?)---[ \t]*\n")
_HTML_ONLY_LINE = re.compile(
    r"^[ \t]*(?:</?(?:br|p|div|span|hr|center|font|b|i|u|small|big|strong|em|nav|footer|header)\b[^<>]*/?>[ \t]*)+$",
    re.I | re.M)
_EDIT_LINK = re.compile(r"[ \t]*\[edit\][ \t]*$", re.I | re.M)
_PAGE_MARKER = re.compile(r"^[ \t]*-[ \t]*(?:\d{1,4}|[IVXLC]{1,7})[ \t]*-[ \t]*$", re.M)
# Web-page chrome that is never content; matched against whole lines only.
_CHROME_LINE = re.compile(
    r"^[ \t]*(?:skip to (?:main )?content|jump to (?:navigation|search)|share this(?: page)?:?|"
    r"back to top|log ?in|sign in|retrieved from \".*\"|this page was last (?:edited|modified) on .*|"
    r"powered by [\w .-]+|(?:this (?:site|website) uses )?cookies?(?: policy| settings)?[.!]?|"
    r"\[code listing omitted[^\]\n]*\])[ \t]*$",
    re.I | re.M)
# The Italian appendices one scraper adds after the page ("extracted code", "original source").
_SCRAPER_APPENDIX = re.compile(r"^#*[ \t]*(?:codice estratto|fonte originale)\b", re.I | re.M)


def front_matter(text: str) -> str:
    return _FRONT_MATTER.sub("", text, count=1)


def debris_lines(text: str) -> str:
    text = _EDIT_LINK.sub("", text)
    for pattern in (_HTML_ONLY_LINE, _PAGE_MARKER, _CHROME_LINE):
        text = pattern.sub("\x00", text)
    # Remove the marked lines including their newline; a marked line keeps no blank line behind.
    return re.sub(r"^\x00\n?", "", text, flags=re.M)


def scraper_appendix(text: str) -> str:
    m = _SCRAPER_APPENDIX.search(text)
    return text[:m.start()] if m else text


def _title_key(line: str) -> str:
    return line.strip().lstrip("#").strip().lower()


def duplicate_title(text: str) -> str:
    """Scraped pages often repeat the title as the first two non-blank lines: keep one."""
    lines = text.split("\n")
    firsts = [i for i, line in enumerate(lines) if line.strip()][:2]
    if len(firsts) == 2 and _title_key(lines[firsts[0]]) and _title_key(lines[firsts[0]]) == _title_key(lines[firsts[1]]):
        del lines[firsts[1]]
    return "\n".join(lines)


def blank_line_runs(text: str) -> str:
    """At most one blank line in a row; more carries no meaning, even in listings."""
    return _BLANK_RUNS.sub("\n\n", text)


def outer_blank_lines(text: str) -> str:
    # Only newlines: leading spaces of the first line may be indentation of a listing.
    return text.strip("\n") + "\n" if text.strip() else ""


# Order matters: characters first (so later patterns see clean lines), whitespace tidying last.
RULES = (
    ("newlines", newlines),
    ("unicode_nfc", unicode_nfc),
    ("invisible_chars", invisible_chars),
    ("space_like_chars", space_like_chars),
    ("control_chars", control_chars),
    ("html_entities", html_entities),
    ("trailing_whitespace", trailing_whitespace),
    ("front_matter", front_matter),
    ("scraper_appendix", scraper_appendix),
    ("debris_lines", debris_lines),
    ("duplicate_title", duplicate_title),
    ("blank_line_runs", blank_line_runs),
    ("outer_blank_lines", outer_blank_lines),
)
RULE_NAMES = tuple(name for name, _ in RULES)


def normalise(text: str, changed: dict[str, int] | None = None) -> str:
    """Apply every rule in order; `changed` (optional) counts which rules altered the text."""
    for name, rule in RULES:
        out = rule(text)
        if changed is not None and out != text:
            changed[name] = changed.get(name, 0) + 1
        text = out
    return text
