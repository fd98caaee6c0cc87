"""Each DAPT normalisation rule on its own, and the promise that listings, dumps and tables survive."""
from __future__ import annotations

import unicodedata

from data import normalize as N

LISTING = (
    "        LDA #$00        ; clear\n"
    "loop:   STA $0400,X     ; screen\n"
    "        INX\n"
    "        BNE loop\n"
    "\n"
    "C000  A9 00 8D 20 D0 60   ..  .`\n"
    "| $D020 | 53280 |  border   |\n"
    "10 PRINT \"HELLO   WORLD\"\n"
)


def test_newlines_become_lf():
    assert N.newlines("a\r\nb\rc\u2028d\u2029e\u0085f") == "a\nb\nc\nd\ne\nf"


def test_unicode_nfc():
    decomposed = "Bu\u0308cher"          # u + combining diaeresis
    assert N.unicode_nfc(decomposed) == unicodedata.normalize("NFC", decomposed) == "B\u00fccher"


def test_invisible_chars_removed():
    assert N.invisible_chars("tran\u00adsis\u200btor\ufeff\u2060") == "transistor"


def test_space_like_chars_become_one_space_each():
    # one-for-one so column alignment in tables is kept
    assert N.space_like_chars("A\u00a0\u00a0B\u202fC\u2007D") == "A  B C D"


def test_control_chars_removed_and_form_feed_breaks_line():
    assert N.control_chars("page1\fpage2\x00\x07\x1b[0m\x7f\x9b!") == "page1\npage2[0m!"
    assert N.control_chars("tab\tkept\nnewline kept") == "tab\tkept\nnewline kept"


def test_html_entities_decoded_only_when_well_formed():
    assert N.html_entities("a &amp; b &lt;c&gt; &quot;d&quot; &#65;&#x42;&nbsp;e") == 'a & b <c> "d" AB e'
    dump = '5 .;[T./F_-#?RA"_8!@X&#CEY<7%'
    assert N.html_entities(dump) == dump


def test_trailing_whitespace_only():
    assert N.trailing_whitespace("a  b   \n\tc\t \n") == "a  b\n\tc\n"


def test_front_matter_removed_only_at_start():
    doc = "---\ntitle: Sprites\nsource: https://example.org/x\ntags:\n  - vic\n---\n# Sprites\ntext\n"
    assert N.front_matter(doc) == "# Sprites\ntext\n"
    prose = "---\nThis is a horizontal rule, then prose.\n---\n"
    assert N.front_matter(prose) == prose
    assert N.front_matter("x\n---\na: b\n---\n") == "x\n---\na: b\n---\n"


def test_scraper_appendix_cut():
    doc = "# Page\nbody\n\n## Codice Estratto\n```\nlda #0\n```\nFonte originale: http://x\n"
    assert N.scraper_appendix(doc) == "# Page\nbody\n\n"


def test_debris_lines_removed_whole_lines_only():
    doc = ("Heading [edit]\nSkip to content\nreal text mentions log in here\n<br>\n</div>\n- 12 -\n-IV-\n"
           "Retrieved from \"https://x\"\nThis page was last edited on 1 May 2020.\n"
           "[code listing omitted: its line breaks were lost when the page was scraped]\n"
           "<expression> stays\nend\n")
    assert N.debris_lines(doc) == "Heading\nreal text mentions log in here\n<expression> stays\nend\n"


def test_duplicate_title_dropped():
    assert N.duplicate_title("# Sprites\n\nSprites\n\nbody\n") == "# Sprites\n\n\nbody\n"
    assert N.duplicate_title("# Sprites\n\nbody\n\nSprites\n") == "# Sprites\n\nbody\n\nSprites\n"


def test_blank_line_runs_collapsed_to_one():
    assert N.blank_line_runs("a\n\n\n\n\nb\n \t\n\n\nc\n\nd") == "a\n\nb\n\nc\n\nd"


def test_outer_blank_lines_keep_first_line_indentation():
    assert N.outer_blank_lines("\n\n    LDA #1\n\n\n") == "    LDA #1\n"
    assert N.outer_blank_lines(" \n\n") == ""


def test_listing_hexdump_and_table_survive_every_rule():
    assert N.normalise(LISTING) == LISTING


def test_no_reflow_and_no_inner_space_collapse():
    text = "short line\nanother   short   line\n    indented\tcode\n"
    out = N.normalise(text)
    assert out.split("\n") == text.split("\n")


def test_normalise_is_idempotent_and_counts_rules():
    messy = "\ufeff---\ntitle: x\n---\r\n# T\r\n\r\nT\r\n\r\n\r\n\r\nbody\u00a0 text  \r\n&amp;\f"
    changed: dict[str, int] = {}
    once = N.normalise(messy, changed)
    assert N.normalise(once) == once
    assert once == "# T\n\nbody  text\n&\n"
    assert {"newlines", "front_matter", "duplicate_title", "space_like_chars", "html_entities"} <= set(changed)


def test_rule_order_is_declared():
    assert N.RULE_NAMES[0] == "newlines" and N.RULE_NAMES[-1] == "outer_blank_lines"
    assert len(set(N.RULE_NAMES)) == len(N.RULE_NAMES)
