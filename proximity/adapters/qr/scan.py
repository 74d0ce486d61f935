"""What a code reader saw: one :class:`CodeScan` per code shown, however many frames it stayed.

Two kinds of hardware read codes in a store: cameras, whose frames go through a
decoder (``decode.py``), and 2D scanners that decode themselves and deliver
text lines (USB-serial/CDC, or keyboard-wedge through evdev). Both feed a
:class:`Deduper`, so a code held in front of a camera for two seconds, or read
twice by a scanner's continuous mode, is one scan.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from typing import Literal

from pydantic import Field

from proximity.clock import Clock
from proximity.readings import Reading

MAX_TEXT = 2048
"""Longer "codes" are refused (a QR code holds at most about 4,296 characters, but
nothing a store acts on needs more than a URL)."""


class CodeScan(Reading):
    """One code read by one scanner or camera. ``text`` never goes into logs or events:
    only what the gateway makes of it (a verified signed code, a product URL) does."""

    kind: Literal["code_scan"] = "code_scan"
    scanner: str = Field(min_length=1, description="which scanner or camera read it")
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    source: Literal["camera", "scanner"]


class Deduper:
    """The same text from the same reader within ``window`` seconds of its last
    sighting is the same scan: a code stays one scan while it stays in view."""

    def __init__(self, window: float = 2.0, monotonic: Callable[[], float] = time.monotonic):
        self.window = window
        self._monotonic = monotonic
        self._last: dict[str, float] = {}
        self.duplicates = 0

    def fresh(self, text: str) -> bool:
        now = self._monotonic()
        last = self._last.get(text)
        self._last[text] = now
        if len(self._last) > 256:  # forget codes long out of view
            self._last = {t: at for t, at in self._last.items() if now - at <= self.window}
        if last is not None and now - last <= self.window:
            self.duplicates += 1
            return False
        return True


class ScanMaker:
    """Turns texts into :class:`CodeScan` readings: cleaned, checked, deduplicated, counted."""

    def __init__(
        self,
        scanner: str,
        source: Literal["camera", "scanner"],
        clock: Clock,
        window: float = 2.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.scanner = scanner
        self.source: Literal["camera", "scanner"] = source
        self._clock = clock
        self.deduper = Deduper(window, monotonic)
        self.scans = 0
        self.rejected: Counter[str] = Counter()
        """Texts refused, by reason: ``empty``, ``too_long``, ``not_text``."""

    def make(self, text: str) -> CodeScan | None:
        text = text.strip()
        if not text:
            self.rejected["empty"] += 1
            return None
        if len(text) > MAX_TEXT:
            self.rejected["too_long"] += 1
            return None
        if any(ord(c) < 0x20 and c not in "\t" for c in text):
            self.rejected["not_text"] += 1
            return None
        if not self.deduper.fresh(text):
            return None
        self.scans += 1
        return CodeScan(at=self._clock.now(), scanner=self.scanner, text=text, source=self.source)
