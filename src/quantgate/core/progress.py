"""Progress and log lines on stderr; stdout carries only the report. Every line is made inert
(quantgate.core.untrusted.plain: it may name an artifact) and, on a GitHub runner, wrapped in
`::stop-commands::`."""

from __future__ import annotations

import os
import sys
import time

from quantgate.core.untrusted import plain, stop_commands

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def log(message: str) -> None:
    if not _quiet:
        text = plain(message) + "\n"
        sys.stderr.write(stop_commands(text, sys.stderr))
        sys.stderr.flush()


class Progress:
    """A one-line bar on a terminal; on a CI log, a line every few seconds at most."""

    def __init__(self, label: str, total: int, unit: str = ""):
        self.label = plain(label)  # it may name an artifact
        self.total = max(total, 1)
        self.unit = unit
        self.done = 0
        self.tty = sys.stderr.isatty() and os.environ.get("TERM") != "dumb"
        self.started = self.last = time.monotonic()
        self.shown = False

    def _fmt(self, value: int) -> str:
        if self.unit == "B":
            for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
                if value < 1024 or unit == "TiB":
                    return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
                value /= 1024  # type: ignore[assignment]
        return str(value)

    def update(self, amount: int) -> None:
        self.done += amount
        if _quiet:
            return
        now = time.monotonic()
        interval = 0.1 if self.tty else 5.0
        if now - self.last < interval or now - self.started < 1.0:
            return
        self.last = now
        self._draw()

    def _draw(self) -> None:
        share = min(1.0, self.done / self.total)
        text = f"{self.label}: {share:6.1%} ({self._fmt(self.done)} / {self._fmt(self.total)})"
        if self.tty:
            bar = "#" * int(share * 30)
            print(f"\r{self.label}: [{bar:<30}] {share:6.1%}", end="", file=sys.stderr, flush=True)
        else:
            sys.stderr.write(stop_commands(text + "\n", sys.stderr))
            sys.stderr.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown and not _quiet:
            if self.tty:
                self._draw()
                print(file=sys.stderr, flush=True)
            else:
                sys.stderr.write(stop_commands(f"{self.label}: done\n", sys.stderr))
                sys.stderr.flush()
