"""Reading pages of `bulkbackup serve` as a person does: the commands they show."""

from __future__ import annotations

from html.parser import HTMLParser


class Commands(HTMLParser):
    """The text of every `<code data-cmd>` of a page, in order (entities decoded)."""

    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []
        self._open = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "code" and any(name == "data-cmd" for name, _ in attrs):
            self._open = True
            self.found.append("")

    def handle_endtag(self, tag: str) -> None:
        self._open = self._open and tag != "code"

    def handle_data(self, data: str) -> None:
        if self._open:
            self.found[-1] += data
