"""The store's readers in the live mode: a till's code scanner, a cart dock's NFC pad, for real.

The store file says where shoppers act: its ``[[readers]]`` (the example store's
``till-1``, a code scanner at the checkout, and ``cart-dock``, an NFC reader by the
door). The live mode gives the daemon each of them through the interface a store's
hardware uses, under the reader's id:

- **a code scanner** (``kind = "qr"``) is a serial line: a pseudo-terminal whose
  slave path is the daemon's ``[[scanners]] serial``. The daemon opens it with
  pyserial, as it would ``/dev/ttyACM0``; :meth:`Readers.scan` writes a code on the
  master side with the CR LF a scanner ends each code with;
- **an NFC reader** (``kind = "nfc"``) is nfcpy's UDP frontend: the daemon's
  ``[[nfc]] path`` is ``udp:127.0.0.1:PORT`` and :meth:`Readers.tap` brings an
  emulated Type 3 tag (:class:`firmware_sim.nfc.TagEmulator`) onto that port: a phone,
  or a cart's tag, held on the pad.

The codes are signed with a key made for the run, which the daemon gets in
``[codes] keys``: the daemon refuses the demo code key as soon as readers are
configured, rightly, since anyone could sign with it.

What shoppers do at the readers is :func:`firmware_sim.acts.plan_acts`, the plan the
in-process run plays: the live run plays the same acts, at the same store seconds.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

from firmware_sim.nfc import TagEmulator
from firmware_sim.store import ReaderKind, Store

CODE_KEY_ID = 1
HOLD_S = 3.0
"""Real seconds a phone (or a cart's tag) is held on a pad, at most, waiting for the beep.
nfcpy's UDP driver senses about once a second (a round without a tag waits 1 s for an
answer, see bench/nfc_tap.py), so a tap is read within about 1.2 s: this is that
twice, with room for a loaded machine. It is real time whatever the run's --speed."""
SETTLE_S = 0.3
"""Real seconds between one tag leaving a pad and the next: the reader notices a
removal at its next presence check (about 0.1 s)."""


class TillError(Exception):
    """A reader could not be set up or driven (the message says why)."""


@dataclass(frozen=True, slots=True)
class LiveReader:
    """One of the store's ``[[readers]]``, as the live run gives it to the daemon."""

    id: str
    kind: ReaderKind
    role: str
    zone: str


def store_readers(store: Store) -> list[LiveReader]:
    """The store file's readers, in its order, each with its zone."""
    return [LiveReader(r.id, r.kind, str(r.role), store.reader_zone(r)) for r in store.readers]


def phone_idm(shopper: int) -> bytes:
    """The NFC identifier a shopper's phone answers with: stable per shopper, 02FE...
    (never 01FE, which announces NFC-DEP rather than a tag)."""
    return b"\x02\xfe" + hashlib.sha256(f"firmware-sim phone {shopper}".encode()).digest()[:6]


def cart_idm(number: int) -> bytes:
    """The NFC identifier of cart ``number``'s tag (02FE..., as :func:`phone_idm`)."""
    return b"\x02\xfe" + hashlib.sha256(f"firmware-sim cart {number}".encode()).digest()[:6]


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class _Line:
    """A code scanner's serial line: a pseudo-terminal."""

    def __init__(self) -> None:
        try:
            self.master, self.slave = os.openpty()
        except OSError as exc:  # a chroot or container without devpts
            raise OSError(
                exc.errno,
                f"no pseudo-terminal for a scanner line ({exc.strerror}; is /dev/pts mounted?)",
            ) from exc
        # the slave stays open here too: the line keeps its settings while the daemon
        # reopens it, and a write never fails for want of a reader
        self.path = os.ttyname(self.slave)
        os.set_blocking(self.master, False)

    def close(self) -> None:
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class Readers:
    """The store's readers: a serial line per code scanner, a UDP pad per NFC reader.

    :meth:`open` before writing the daemon's config (it makes the ptys and picks the
    ports), :meth:`close` at the end. :meth:`scan` and :meth:`tap` are blocking and
    meant for one worker thread per reader: a reader serves one shopper at a time, and
    the next tag goes on a pad :data:`SETTLE_S` after the last one left.
    """

    def __init__(self, readers: Sequence[LiveReader], key: bytes) -> None:
        self.readers = {r.id: r for r in readers}
        self.key = key
        self._lines: dict[str, _Line] = {}
        self._ports: dict[str, int] = {}

    def path(self, reader: str) -> str:
        """Where the daemon reads ``reader``: a serial line, or an nfcpy path."""
        if reader in self._lines:
            return self._lines[reader].path
        return f"udp:127.0.0.1:{self._ports[reader]}"

    def open(self) -> None:
        for reader in self.readers.values():
            if reader.kind is ReaderKind.QR:
                self._lines[reader.id] = _Line()
            else:
                self._ports[reader.id] = free_udp_port()

    def close(self) -> None:
        for line in self._lines.values():
            line.close()
        self._lines.clear()

    def config(self) -> list[str]:
        """The daemon's config for these readers (TOML lines; strings written as JSON)."""
        q = json.dumps
        lines = [
            "[codes]",
            f"keys = {{ {CODE_KEY_ID} = {q('hex:' + self.key.hex())} }}",
            f"sign_with = {CODE_KEY_ID}",
        ]
        for reader in self.readers.values():
            if reader.kind is ReaderKind.QR:
                lines += [
                    "[[scanners]]",
                    f"id = {q(reader.id)}",
                    f"serial = {q(self.path(reader.id))}",
                ]
            else:
                lines += ["[[nfc]]", f"id = {q(reader.id)}", f"path = {q(self.path(reader.id))}"]
        return lines

    def scan(self, reader: str, code: str) -> None:
        """``reader``'s scanner reads ``code``: one line, CR LF, as a 2D scanner types it."""
        line = self._lines[reader]
        data = code.encode() + b"\r\n"
        try:
            written = os.write(line.master, data)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                raise TillError(
                    f"the scanner line {line.path} is full: the daemon is not reading it"
                ) from None
            raise TillError(f"the scanner line {line.path} failed: {exc}") from None
        if written != len(data):
            raise TillError(f"the scanner line {line.path} took only part of a code")

    def tap(self, reader: str, ndef: bytes, idm: bytes, hold_s: float = HOLD_S) -> bool:
        """A tag answering with ``idm`` and holding the NDEF message ``ndef`` is held on
        ``reader``'s pad until the reader has read it (True) or ``hold_s`` real seconds
        went by (False).

        Raises TillError if the pad's port could not be taken (the emulator says why).
        """
        tag = TagEmulator(self._ports[reader], ndef, idm=idm)
        tag.present()
        try:
            read = tag.wait_read(hold_s)
            if read:
                time.sleep(0.05)  # the phone leaves a moment after the beep
        finally:
            tag.remove()
        if tag.error is not None:
            raise TillError(f"the NFC pad on {self.path(reader)} failed: {tag.error}")
        return read
