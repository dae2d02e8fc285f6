"""Progress bars on stderr, only when stderr is a terminal (logs and CI stay clean)."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm


class Progress:
    def __init__(
        self,
        total: float | None,
        unit: str,
        desc: str,
        enabled: bool = True,
        unit_scale: bool = False,
    ) -> None:
        self._bar: tqdm[Any] | None = None
        if enabled and sys.stderr.isatty():
            self._bar = tqdm(
                total=total, unit=unit, desc=desc, unit_scale=unit_scale,
                file=sys.stderr, dynamic_ncols=True, mininterval=0.5,
            )

    def set_position(self, position: float | None) -> None:
        if self._bar is not None and position is not None:
            self._bar.update(position - self._bar.n)

    def update(self, n: float = 1) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def set_total(self, total: float) -> None:
        if self._bar is not None and self._bar.total != total:
            self._bar.total = total
            self._bar.refresh()

    def set_postfix(self, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
