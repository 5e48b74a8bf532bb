"""HTML to plain text with the standard library's parser: scripts, styles and other non-content
elements are dropped, block elements (paragraphs, headings, list items, table rows, <br>) become
line breaks, and character references are decoded."""

from __future__ import annotations

import re
from html.parser import HTMLParser

SKIP_TAGS = frozenset({"script", "style", "noscript", "template", "head", "svg", "iframe", "object"})
# blocks set apart by a blank line, and blocks that only start a new line
PARAGRAPH_TAGS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "pre", "table", "ul", "ol",
                            "dl", "section", "article", "header", "footer", "main", "aside", "nav", "figure",
                            "form", "fieldset", "address", "hr"})
LINE_TAGS = frozenset({"div", "li", "dt", "dd", "tr", "br", "figcaption", "title", "body", "html", "caption"})
CELL_TAGS = frozenset({"td", "th"})
_LINE, _PARA = "\x00L", "\x00P"  # break markers, resolved once all text is in
_BREAKS = re.compile(r"(?:[ \t]*\x00[LP])+[ \t]*")
_SPACES = re.compile(r"[ \t\r\f\v\xa0]+")


class _Extractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip_depth = 0
        self.pre_depth = 0

    def _break(self, tag: str) -> None:
        if tag in PARAGRAPH_TAGS:
            self.parts.append(_PARA)
        elif tag in LINE_TAGS:
            self.parts.append(_LINE)

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in SKIP_TAGS:
            self.skip_depth += 1
            return
        self._break(tag)
        self.pre_depth += tag == "pre"
        if tag in CELL_TAGS:
            self.parts.append("\t")

    def handle_startendtag(self, tag: str, attrs) -> None:
        self._break(tag)  # <br/>, <hr/>

    def handle_endtag(self, tag: str) -> None:
        if tag in SKIP_TAGS:
            self.skip_depth = max(0, self.skip_depth - 1)
            return
        self._break(tag)
        if tag == "pre":
            self.pre_depth = max(0, self.pre_depth - 1)

    def handle_data(self, data: str) -> None:
        if self.skip_depth:
            return
        data = data.replace("\x00", "")
        if self.pre_depth:
            self.parts.append(data)
        else:  # source line breaks inside running text are just spaces
            self.parts.append(_SPACES.sub(" ", data.replace("\n", " ")))


def html_to_text(html: str) -> str:
    """The visible text of an HTML document, one block per line, paragraphs apart by a blank line."""
    parser = _Extractor()
    parser.feed(html)
    parser.close()
    text = _BREAKS.sub(lambda m: "\n\n" if _PARA in m.group(0) else "\n", "".join(parser.parts))
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
