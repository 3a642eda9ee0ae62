"""HTML reduction and text sanitizing used by http_fetch."""

from __future__ import annotations

import pytest

from handlers.tools.http_fetch import html_to_text, sanitize_text

pytestmark = pytest.mark.unit


def test_html_to_text_edge_cases() -> None:
    title, text = html_to_text(
        "<title> A\n title </title><pre>keep   spaces\n  here</pre><p>x<br>y</p>"
        "<img alt='chart'><a href='/rel'>/rel</a><svg><text>drop</text></svg><p>after",
        "https://site.test/dir/page",
    )
    assert title == "A title"
    assert "keep   spaces\n  here" in text
    assert "x\ny" in text
    assert "[image: chart]" in text
    assert "[https://site.test/rel]" in text
    assert "drop" not in text
    assert text.endswith("after")


def test_sanitize_text_keeps_tabs_and_newlines() -> None:
    assert sanitize_text("a\tb\r\nc\x00d\x1b[31m\u202ee\ufeff") == "a\tb\nc" + "d[31me"
