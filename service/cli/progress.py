"""A progress bar for long operator commands, on stderr so that stdout stays the command's result.

On a terminal it redraws one line; otherwise (CI logs, pipes) it prints a plain line at each tenth,
so a log shows progress without thousands of lines.
"""

from __future__ import annotations

import sys
from typing import TextIO

WIDTH = 30


class ProgressBar:
    def __init__(self, label: str, total: int, stream: TextIO | None = None) -> None:
        self.label, self.total = label, total
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._last_tenth = -1
        self._drawn = False

    def update(self, done: int, note: str = "") -> None:
        self._drawn = True
        share = 1.0 if self.total <= 0 else min(1.0, done / self.total)
        if self.tty:
            filled = int(share * WIDTH)
            bar = "#" * filled + "." * (WIDTH - filled)
            self.stream.write(f"\r{self.label} [{bar}] {done}/{self.total} {note}".rstrip() + "\x1b[K")
        elif (tenth := int(share * 10)) != self._last_tenth:
            self._last_tenth = tenth
            self.stream.write(f"{self.label}: {done}/{self.total} ({int(share * 100)}%) {note}".rstrip() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self._drawn:  # end the redrawn line; nothing drawn, nothing to end
            self.stream.write("\n")
            self.stream.flush()
