"""Markdown in replies, rendered on the server into HTML that is safe to insert in a page.

CommonMark through markdown-it-py with raw HTML off (a reply's ``<script>`` is shown as text)
and markdown-it's link check (``javascript:``, ``vbscript:``, ``file:`` and ``data:`` links are
not made into links). Pages insert the result as it is; nothing else needs escaping.
"""

from __future__ import annotations

from functools import lru_cache

from markdown_it import MarkdownIt


@lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False}).enable(
        ["table", "strikethrough"]
    )


def render(text: str) -> str:
    """``text`` (Markdown) as safe HTML."""
    return str(_parser().render(text))
