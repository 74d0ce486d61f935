"""The store's checkout in the live mode: the till's 2D scanner and NFC pad, for real.

The rule file says where acts happen: the zone that lists ``readers`` (the
example store's ``checkout``, with ``till-1``). The live mode gives the daemon
that till through the same interfaces a store's hardware uses:

- **the 2D scanner** is a serial line: a pseudo-terminal whose slave path is the
  daemon's ``[[scanners]] serial``. The daemon opens it with pyserial, as it
  would ``/dev/ttyACM0``; :meth:`Till.scan` writes a code on the master side
  with the CR LF a scanner ends each code with;
- **the NFC pad** is nfcpy's UDP frontend: the daemon's ``[[nfc]] path`` is
  ``udp:127.0.0.1:PORT`` and :meth:`Till.tap` brings an emulated Type 3 tag
  (:class:`firmware_sim.nfc.TagEmulator`) onto that port: a phone held on the pad.

Both report under the till's reader id (a till with a scanner and an NFC pad is
one reader to the rule file; a zone listing two readers gives the pad the
second id). The codes are signed with a key made for the run, which the daemon
gets in ``[codes] keys``: the daemon refuses the demo code key as soon as
readers are configured, rightly, since anyone could sign with it.

What a shopper does at the till is :func:`till_visits`: from the simulator's
ground truth, the moment each shopper reaches the checkout zone. The live run
then scans the coupons their app received and has them tap their check-in code.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import socket
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from firmware_sim.crowd import Stay
from firmware_sim.nfc import TagEmulator
from proximity.adapters.nfc.ndef import build_ndef, text_record
from proximity.codes import CodeKind, sign
from proximity.engine.loader import load_rule_files
from proximity.errors import RuleFileError

CODE_KEY_ID = 1
REACH_S = 3.0
"""Store seconds from entering the checkout zone to standing at the till (at most a
quarter of the stay)."""
HOLD_S = 3.0
"""Real seconds a shopper holds the phone on the pad, at most, waiting for the beep.
nfcpy's UDP driver senses about once a second (a round without a tag waits 1 s for an
answer, see bench/nfc_tap.py), so a tap is read within about 1.2 s: this is that
twice, with room for a loaded machine. It is real time whatever the run's --speed."""
SETTLE_S = 0.3
"""Real seconds between one phone leaving the pad and the next: the reader notices a
removal at its next presence check (about 0.1 s)."""


class TillError(Exception):
    """The till could not be set up or driven (the message says why)."""


@dataclass(frozen=True, slots=True)
class Checkout:
    """Where acts happen: a zone of the rule file that lists readers."""

    zone: str
    scanner: str
    """The reader id the till's 2D scanner reports as."""
    pad: str
    """The reader id the till's NFC pad reports as (the scanner's, unless the zone lists
    a second reader)."""


def find_checkout(rules: Sequence[Path], store_zones: Mapping[str, object]) -> Checkout | None:
    """The first zone of the rule files that lists readers and is on the store's floor;
    None if there is none (then the live run has no till).

    Raises TillError if the rule files do not load (the daemon would refuse them too).
    """
    try:
        ruleset = load_rule_files(rules)
    except RuleFileError as exc:  # it lists every problem, one file:line:column each
        raise TillError(f"the rule files do not load:\n{exc}") from None
    for zone_id, zone in ruleset.zones.items():
        if zone.readers and zone_id in store_zones:
            readers = zone.readers
            return Checkout(zone_id, readers[0], readers[1] if len(readers) > 1 else readers[0])
    return None


@dataclass(frozen=True, slots=True)
class TillVisit:
    """A shopper at the till: from ``at_s`` until they leave the zone at ``leaves_s``
    (store seconds into the run)."""

    shopper: int
    at_s: float
    leaves_s: float


def till_visits(truth: Mapping[int, Sequence[Stay]], zone: str) -> list[TillVisit]:
    """Every stay in ``zone`` of every shopper, as a visit to its till, in time order."""
    visits = [
        TillVisit(shopper, stay.start + min(REACH_S, (stay.end - stay.start) / 4), stay.end)
        for shopper, stays in truth.items()
        for stay in stays
        if stay.zone == zone
    ]
    return sorted(visits, key=lambda v: (v.at_s, v.shopper))


def phone_idm(shopper: int) -> bytes:
    """The NFC identifier a shopper's phone answers with: stable per shopper, 02FE...
    (never 01FE, which announces NFC-DEP rather than a tag)."""
    return b"\x02\xfe" + hashlib.sha256(f"firmware-sim phone {shopper}".encode()).digest()[:6]


def free_udp_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


class Till:
    """The checkout's till: a scanner line on a pseudo-terminal and an NFC pad on UDP.

    :meth:`open` before writing the daemon's config (it makes the pty and picks the
    port), :meth:`close` at the end. :meth:`scan` and :meth:`tap` are blocking and
    meant for one worker thread: a till serves one shopper at a time, and the next
    phone goes on the pad :data:`SETTLE_S` after the last one left.
    """

    def __init__(self, checkout: Checkout, key: bytes) -> None:
        self.checkout = checkout
        self.key = key
        self.port = 0
        self.serial_path = ""
        self._master = -1
        self._slave = -1

    @property
    def nfc_path(self) -> str:
        return f"udp:127.0.0.1:{self.port}"

    def open(self) -> None:
        self._master, self._slave = os.openpty()
        # the slave stays open here too: the line keeps its settings while the daemon
        # reopens it, and a write never fails for want of a reader
        self.serial_path = os.ttyname(self._slave)
        os.set_blocking(self._master, False)
        self.port = free_udp_port()

    def close(self) -> None:
        for fd in (self._master, self._slave):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._master = self._slave = -1

    def config(self) -> list[str]:
        """The daemon's config for this till (TOML lines; strings written as JSON)."""
        q = json.dumps
        return [
            "[codes]",
            f"keys = {{ {CODE_KEY_ID} = {q('hex:' + self.key.hex())} }}",
            f"sign_with = {CODE_KEY_ID}",
            "[[scanners]]",
            f"id = {q(self.checkout.scanner)}",
            f"serial = {q(self.serial_path)}",
            "[[nfc]]",
            f"id = {q(self.checkout.pad)}",
            f"path = {q(self.nfc_path)}",
        ]

    def scan(self, code: str) -> None:
        """The till's scanner reads ``code``: one line, CR LF, as a 2D scanner types it."""
        data = code.encode() + b"\r\n"
        try:
            written = os.write(self._master, data)
        except OSError as exc:
            if exc.errno == errno.EAGAIN:
                raise TillError(
                    f"the scanner line {self.serial_path} is full: the daemon is not reading it"
                ) from None
            raise TillError(f"the scanner line {self.serial_path} failed: {exc}") from None
        if written != len(data):
            raise TillError(f"the scanner line {self.serial_path} took only part of a code")

    def checkin_code(self, token: str, issued: datetime, expires: datetime) -> str:
        """The check-in code the store app shows for ``token`` (its pseudonymous shopper
        token, which the app knows)."""
        return sign(
            CodeKind.CHECKIN,
            token,
            key=self.key,
            key_id=CODE_KEY_ID,
            issued=issued,
            expires=expires,
        )

    def tap(self, shopper: int, code: str, hold_s: float = HOLD_S) -> bool:
        """The shopper holds their phone, showing ``code`` as an NDEF Text record, on the
        pad until the reader has read it (True) or ``hold_s`` real seconds went by (False).

        Raises TillError if the pad's port could not be taken (the emulator says why).
        """
        tag = TagEmulator(self.port, build_ndef([text_record(code)]), idm=phone_idm(shopper))
        tag.present()
        try:
            read = tag.wait_read(hold_s)
            if read:
                time.sleep(0.05)  # the phone leaves a moment after the beep
        finally:
            tag.remove()
        if tag.error is not None:
            raise TillError(f"the NFC pad on {self.nfc_path} failed: {tag.error}")
        return read
