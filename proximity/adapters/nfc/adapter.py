"""The NFC adapter: an nfcpy reader in, :class:`NfcTap` readings out.

nfcpy is blocking, so the adapter is a
:class:`~proximity.adapters.threaded.ThreadedSource`: its worker thread runs
``ContactlessFrontend.connect()`` in a loop, whose callbacks only have the
:class:`~proximity.adapters.nfc.tap.TapDecoder` make a tap and hand it to the
event loop, and :meth:`NfcAdapter.taps` is the stream. The event loop never
blocks on the reader.

What the worker guarantees:

- **One tap per presentation.** ``on-connect`` returns True, so nfcpy waits for
  the tag to leave before it looks for the next one; a tag that comes back (or
  whose presence check blinked) within ``debounce`` seconds of leaving is the
  same tap, not a new one.
- **Bad NDEF is a reported tap, never a crash.** An empty, oversize or malformed
  message gives a tap with ``ndef=None`` and ``reject_reason``, is counted in
  :attr:`NfcAdapter.rejected` by problem (``oversize``, ``malformed``...) and
  logged with its reason.
- **A reader that goes away comes back.** A reader that cannot be opened, or
  fails during ``connect()`` (nfcpy turns a USB unplug into ``IOError``), is
  closed and opened again with exponential backoff, 0.5 s doubling to 10 s,
  logging ``nfc_reader_lost`` once and ``nfc_reader_back`` when it answers.
- **A bounded stop.** ``connect()`` polls the ``terminate`` callable between
  sense rounds and presence checks; :meth:`NfcAdapter.stop` sets it, so the
  worker ends within about one sense round (1 s on the UDP driver, less on USB).

A tag UID never leaves the worker: taps and log lines carry its keyed hash.
"""

from __future__ import annotations

import contextlib
import errno
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any, Protocol

import structlog

from proximity.adapters.nfc.ndef import DEFAULT_MAX_SIZE
from proximity.adapters.nfc.tap import NfcTap, TapDecoder
from proximity.adapters.threaded import ThreadedSource
from proximity.clock import Clock

log = structlog.get_logger(__name__)

ALL_TAG_TARGETS = ("106A", "106B", "212F")
"""What a real reader polls for: Type 1/2/4A (106A), Type 4B (106B), Type 3 (212F)."""
UDP_TARGETS = ("212F",)
"""What the UDP driver polls for: the emulator is a Type 3 tag, and every other
technology would wait out a one-second timeout on each round."""


class Frontend(Protocol):
    """The part of ``nfc.ContactlessFrontend`` the adapter uses."""

    def connect(self, **options: Any) -> Any: ...

    def close(self) -> None: ...


def open_nfcpy_frontend(path: str) -> Frontend:
    """nfcpy's ``ContactlessFrontend`` on ``path``; raises ``OSError`` if there is no reader."""
    import nfc

    frontend: Frontend = nfc.ContactlessFrontend(path)
    return frontend


def default_targets(path: str) -> tuple[str, ...]:
    """The technologies to poll for on a device path (see :data:`UDP_TARGETS`)."""
    return UDP_TARGETS if path.startswith("udp") else ALL_TAG_TARGETS


class NfcAdapter(ThreadedSource[NfcTap]):
    """One NFC reader as an async stream of :class:`NfcTap`.

    ``path`` is an nfcpy device path (``usb``, ``usb:054c:06c3``,
    ``tty:USB0:pn532``, ``udp:127.0.0.1:54321``); ``reader`` names the reader in
    taps; ``uid_key`` is the gateway's secret for hashing tag UIDs (16 bytes or
    more). ``open_frontend`` opens a reader (nfcpy's by default; tests and
    other drivers pass their own) and ``monotonic`` is the time source for the
    debounce window.
    """

    def __init__(
        self,
        path: str,
        reader: str,
        uid_key: bytes,
        clock: Clock,
        *,
        debounce: float = 2.0,
        max_ndef_size: int = DEFAULT_MAX_SIZE,
        targets: Sequence[str] | None = None,
        poll_interval: float = 0.05,
        backoff_initial: float = 0.5,
        backoff_max: float = 10.0,
        queue_size: int = 1024,
        open_frontend: Callable[[str], Frontend] = open_nfcpy_frontend,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if poll_interval < 0 or not 0 < backoff_initial <= backoff_max:
            raise ValueError("the poll interval and the backoff must be sensible durations")
        super().__init__(f"nfc-reader-{reader}", queue_size=queue_size)
        self.decoder = TapDecoder(
            reader,
            uid_key,
            clock,
            debounce=debounce,
            max_ndef_size=max_ndef_size,
            monotonic=monotonic,
        )
        self.path = path
        self.reader = reader
        self._targets = list(targets if targets is not None else default_targets(path))
        self._poll_interval = poll_interval
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._open_frontend = open_frontend
        self.reader_losses = 0
        """How many times the reader went away (or could not be opened)."""

    @property
    def rejected(self) -> Counter[str]:
        """Taps whose NDEF message was not used, by problem (``malformed``, ``oversize``...)."""
        return self.decoder.rejected

    @property
    def taps_read(self) -> int:
        """Taps reported (rejected ones included)."""
        return self.decoder.taps

    @property
    def debounced(self) -> int:
        """Presentations folded into an earlier tap of the same tag."""
        return self.decoder.debounced

    def taps(self) -> AsyncIterator[NfcTap]:
        """The taps, as they happen; ends when the adapter stops (within about one sense
        round: nfcpy polls ``terminate`` between rounds)."""
        return self.readings()

    # -- the worker thread -------------------------------------------------------------

    def _terminate(self) -> bool:
        """nfcpy's ``terminate`` callable; its short wait also paces the polling."""
        return self._stopping.wait(self._poll_interval)

    def _run(self) -> None:
        delay = self._backoff_initial
        lost_at: float | None = None  # when the current outage began, if there is one
        while not self._stopping.is_set():
            try:
                frontend = self._open_frontend(self.path)
            except Exception as exc:
                lost_at = self._lost(exc, lost_at, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self._backoff_max)
                continue
            if lost_at is None:
                log.info("nfc_reader_open", reader=self.reader, path=self.path)
            else:
                down = time.monotonic() - lost_at
                log.info(
                    "nfc_reader_back", reader=self.reader, path=self.path, down_s=round(down, 1)
                )
            opened = time.monotonic()
            try:
                error = self._session(frontend)
            finally:
                frontend.close()
            if error is None:
                return  # stopping
            if time.monotonic() - opened > self._backoff_max:
                delay = self._backoff_initial  # it had been working: back off afresh
            lost_at = self._lost(error, None, delay)
            self._stopping.wait(delay)
            delay = min(delay * 2, self._backoff_max)

    def _session(self, frontend: Frontend) -> Exception | None:
        """Read taps until stopped (None) or the reader fails (the error)."""
        options = {
            "targets": self._targets,
            "iterations": 1,
            "on-connect": self._on_connect,
            "on-release": self._on_release,
        }
        while not self._stopping.is_set():
            try:
                result = frontend.connect(rdwr=options, terminate=self._terminate)
            except Exception as exc:
                return exc
            if result is False:  # nfcpy caught an IOError (or an unsupported target) and gave up
                return OSError(errno.EIO, "the reader stopped answering")
        return None

    def _lost(self, error: Exception, lost_at: float | None, delay: float) -> float:
        """Log a reader that went away, or was not there (once per outage); when it began."""
        if lost_at is not None:
            return lost_at
        self.reader_losses += 1
        log.warning(
            "nfc_reader_lost",
            reader=self.reader,
            path=self.path,
            error=_describe(error),
            retry_in_s=delay,
        )
        return time.monotonic()

    def _on_connect(self, tag: Any) -> bool:
        """nfcpy's ``on-connect``: hand the tap over; True makes nfcpy wait for removal."""
        try:
            tap = self.decoder.to_tap(tag)
        except Exception as exc:  # nothing may escape into nfcpy's loop
            log.warning("nfc_tag_unreadable", reader=self.reader, error=_describe(exc))
        else:
            if tap is not None:
                self._emit(tap)
        return True

    def _on_release(self, tag: Any) -> bool:
        with contextlib.suppress(Exception):
            self.decoder.released(tag)
        return True


def _describe(error: BaseException) -> str:
    """An error for a log line: errno text for OS errors, the type otherwise (never tag data)."""
    if isinstance(error, OSError) and error.errno is not None:
        return f"{type(error).__name__}: {error.strerror or errno.errorcode.get(error.errno, '')}"
    return type(error).__name__
