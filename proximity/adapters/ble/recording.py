"""Raw BLE readings as JSON lines: what the radio heard, recorded so it can be replayed.

A recording lets a developer or an ops person take a store's (or the simulator's)
radio traffic home and run it again through the real decoder, identity,
presence and rules — with other settings, other rules, or a fixed bug — and get
the journey events the gateway would have produced. Journey logs
(:mod:`proximity.journey.record`) replay *decisions*; readings replay *presence*.

Format (version 2; version 1 files, which hold advertisements only, still read).
Each recording session starts with a header line; a file that is appended to (a
daemon restarted) holds several sessions::

    {"format": "proximity.ble-readings", "v": 2, "started": "2026-11-28T10:00:00+00:00"}
    {"at": "2026-11-28T10:00:00.410000+00:00", "scanner": "entrance", "addr": "dev-1c9a0e77b2f4",
     "rssi": -67, "mfr": {"0x004c": "0215f7826da6..."}}
    {"at": "2026-11-28T10:00:04.5+00:00", "tap": "cart-dock", "uid": "3f0c...", "tag": "Type2Tag",
     "texts": ["PX1:..."]}
    {"at": "2026-11-28T10:09:12.5+00:00", "scan": "till-1", "source": "scanner", "text": "PX1:..."}

Shoppers' acts at the store's readers are lines too (version 2), so a run's cart
bindings, check-ins and redemptions replay with it: a **tap line** is one NFC tap
(``tap``: the reader, ``uid``: the tag UID's keyed hash as the NFC adapter makes it,
never the UID; ``tag``: nfcpy's tag type; ``texts``: what the gateway reads in its
NDEF message, in record order; ``unreadable``: why the message could not be read,
if it could not), a **scan line** one code read by a scanner or camera (``scan``,
``source``, ``text``). A text is written only when the gateway acts on it: a signed
code (``PX1:``, which names a pseudonymous token, an offer or a cart beacon) or a
product link (as the gateway reads it: scheme, host and path). Anything else, such
as a loyalty card's number shown to the till's scanner, is written as
:data:`WITHHELD`, which the gateway refuses as ``unsigned`` just as it refused the
text itself.

A reading line is one advertisement as one scanner heard it: ``at`` (ISO 8601
with its offset), ``scanner``, ``addr`` (an alias, below), ``rssi``, and when
present ``tx`` (tx power), ``mfr`` (manufacturer data, hex, keyed by company id),
``svc`` (service data, hex, keyed by service UUID), ``uuids`` (service UUIDs)
and ``name`` (local name, only when asked for: a phone's name is often its
owner's name). ``started`` is the recording clock's time when the session began:
a replay starts its clock there, so its ticks (exit and dwell timeouts) fall on
the same instants as the live run's.

**Device addresses are never written.** The flood defence counts identities per
address, so a replay needs address *identity*, not the address. Each session
draws a fresh secret key (kept in memory, never written) and writes
``dev-`` + 12 hex digits of HMAC-SHA256(key, address): the same address gets
the same alias within the session, distinct addresses distinct aliases (46
bits: a collision needs millions of devices), and with the key gone the alias
cannot be linked back to an address or to another recording. A replay turns
the alias back into an address-shaped value with the top two bits 0b00 (a
non-resolvable private address), so it can never be mistaken for an RPA.

**Resolvable private addresses.** An alias of an RPA cannot be resolved with
the shopper's IRK, so phones known only by their RPA would vanish from a
replay. When the recorder is given the gateway's IRKs (the daemon passes
``shopper_keys``), an address that resolves is written as ``rpa-`` + a *new*
RPA made under the same IRK from a keyed-hash prand: it resolves to the same
shopper with the same keys, but only for whoever holds the IRK, who could
resolve the real address anyway; to anyone else it is random, and it never
matches what was on the air. An RPA that resolves with no IRK is a plain
``dev-`` alias (it would be ignored live, too).

A recording still holds what the shopper's app advertises (beacon identifiers,
which the pseudonym key turns into shopper tokens): it is personal data. The
file is created readable by its owner only (0600); keep it as long as a journey
log, no longer.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import structlog

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.rpa import (
    RPA_MARKER,
    AddressError,
    ah,
    format_address,
    resolve_rpa,
)
from proximity.adapters.nfc.tap import NfcTap
from proximity.adapters.qr.scan import CodeScan
from proximity.clock import Clock
from proximity.codes import PREFIX
from proximity.scanned import product_url

log = structlog.get_logger(__name__)

FORMAT = "proximity.ble-readings"
VERSION = 2
READABLE_VERSIONS = (1, 2)
"""Format versions this code reads: 1 (advertisements only) and 2 (with taps and scans)."""
WITHHELD = "-"
"""What a recording writes for a text the gateway does not act on (see the module)."""
ALIAS_HEX = 12
_ALIAS_CACHE = 20_000
"""Addresses whose alias is remembered (the RPA ones cost an AES block per IRK)."""


def header_line(started: datetime) -> str:
    """The first line of a recording session."""
    return json.dumps({"format": FORMAT, "v": VERSION, "started": started.isoformat()})


def reading_line(adv: Advertisement, alias: str, local_name: bool = False) -> str:
    """One advertisement as a JSON line (without its newline); ``alias`` replaces the address."""
    data = adv.data
    line: dict[str, Any] = {
        "at": adv.at.isoformat(),
        "scanner": adv.scanner,
        "addr": alias,
        "rssi": data.rssi,
    }
    if data.tx_power is not None:
        line["tx"] = data.tx_power
    if data.manufacturer_data:
        line["mfr"] = {f"0x{cid:04x}": raw.hex() for cid, raw in data.manufacturer_data.items()}
    if data.service_data:
        line["svc"] = {uuid: raw.hex() for uuid, raw in data.service_data.items()}
    if data.service_uuids:
        line["uuids"] = list(data.service_uuids)
    if local_name and data.local_name is not None:
        line["name"] = data.local_name
    return json.dumps(line, separators=(",", ":"))


def act_line(reading: NfcTap | CodeScan) -> str:
    """One tap or scan as a JSON line (without its newline); texts the gateway does not
    act on are :data:`WITHHELD`."""
    line: dict[str, Any] = {"at": reading.at.isoformat()}
    if isinstance(reading, CodeScan):
        line |= {"scan": reading.scanner, "source": reading.source, "text": kept(reading.text)}
        return json.dumps(line, separators=(",", ":"))
    texts = []
    for record in reading.ndef.records if reading.ndef is not None else ():
        text = record.uri or record.text  # what the gateway reads, in its order
        if text:
            texts.append(kept(text))
    line |= {"tap": reading.reader, "uid": reading.tag_uid_hash, "tag": reading.tag_type}
    line["texts"] = texts
    if reading.reject_reason is not None:
        line["unreadable"] = reading.reject_reason
    return json.dumps(line, separators=(",", ":"))


def kept(text: str) -> str:
    """``text`` as a recording keeps it: a signed code as it is, a product link as the
    gateway reads it, anything else :data:`WITHHELD`."""
    stripped = text.strip()
    if stripped.upper().startswith(PREFIX):
        return stripped
    return product_url(stripped) or WITHHELD


class AddressAliases:
    """Per-session aliases of device addresses (see the module docstring)."""

    def __init__(self, key: bytes | None = None, irks: Mapping[str, bytes] | None = None) -> None:
        """``key``: the session's alias key (default: fresh random bytes; the simulator
        passes a seed-derived one so the same seed writes the same file); ``irks``:
        key id -> IRK, to keep resolvable private addresses resolvable."""
        self._key = key if key is not None else secrets.token_bytes(32)
        self._irks = dict(irks or {})
        self._cache: OrderedDict[str, str] = OrderedDict()

    def alias(self, address: str) -> str:
        cached = self._cache.get(address)
        if cached is not None:
            self._cache.move_to_end(address)
            return cached
        alias = self._make(address)
        self._cache[address] = alias
        if len(self._cache) > _ALIAS_CACHE:
            self._cache.popitem(last=False)
        return alias

    def _make(self, address: str) -> str:
        digest = hmac.new(self._key, address.encode(), hashlib.sha256).digest()
        if self._irks:
            rpa = self._resolvable(address, digest)
            if rpa is not None:
                return rpa
        raw = bytes([digest[0] & 0x3F]) + digest[1 : ALIAS_HEX // 2]
        return f"dev-{raw.hex()}"

    def _resolvable(self, address: str, digest: bytes) -> str | None:
        try:
            key_id = resolve_rpa(address, self._irks)
        except AddressError:  # not address-shaped (bleak on macOS gives UUIDs)
            return None
        if key_id is None:
            return None
        prand = bytearray(digest[6:9])
        prand[0] = (RPA_MARKER << 6) | (prand[0] & 0x3F)
        if int.from_bytes(prand, "big") & 0x3FFFFF in (0, 0x3FFFFF):
            prand[2] ^= 0x01  # the spec forbids an all-zeros or all-ones random part
        raw = bytes(prand) + ah(self._irks[key_id], bytes(prand))
        return f"rpa-{raw.hex()}"


def alias_address(alias: str) -> str:
    """The address a replay gives the device with ``alias`` (``AA:BB:CC:DD:EE:FF``)."""
    return format_address(bytes.fromhex(alias[4:]))


class ReadingRecorder(BleBackend):
    """A tee: passes every advertisement of ``backend`` on, and appends it to ``path``.

    Wraps any backend, so the daemon (``[ble] record``) and the simulator
    (``python -m firmware_sim run --record-readings``) record the same way. Each
    line is flushed as it is written, so a killed daemon loses at most the line
    being written. A failing disk never stops the radio: the error is logged once
    and recording stops; the advertisements keep flowing.
    """

    def __init__(
        self,
        backend: BleBackend,
        path: Path,
        clock: Clock,
        *,
        key: bytes | None = None,
        irks: Mapping[str, bytes] | None = None,
        local_names: bool = False,
    ) -> None:
        self.backend = backend
        self.path = path
        self._clock = clock
        self._key = key
        self._irks = irks
        self._local_names = local_names
        self._file: IO[str] | None = None
        self._aliases = AddressAliases(key, irks)
        self.written = 0
        self.acts_written = 0
        self.failed: str | None = None
        """Why recording stopped early (an OSError's text), or None."""

    async def start(self) -> None:
        # a new session: a new alias key (unless one was given), a new header
        self._aliases = AddressAliases(self._key, self._irks)
        self.failed = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            self._file = os.fdopen(fd, "a", encoding="utf-8")
            self._write(header_line(self._clock.now()))
        except OSError as exc:
            self._fail(exc)
        if self._file is not None:
            log.info("ble_recording", path=str(self.path))
        await self.backend.start()

    async def stop(self) -> None:
        try:
            await self.backend.stop()
        finally:
            self._close()

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        async for adv in self.backend.advertisements():
            if self._file is not None:
                alias = self._aliases.alias(adv.device.address)
                try:
                    self._write(reading_line(adv, alias, self._local_names))
                    self.written += 1
                except OSError as exc:
                    self._fail(exc)
            yield adv

    def record_act(self, reading: NfcTap | CodeScan) -> None:
        """Append a shopper's tap or scan (the simulator's acts; see the module for what
        of it is written), while the recording is open."""
        if self._file is None:
            return
        try:
            self._write(act_line(reading))
            self.acts_written += 1
        except OSError as exc:
            self._fail(exc)

    def _write(self, line: str) -> None:
        assert self._file is not None
        self._file.write(line + "\n")
        self._file.flush()

    def _fail(self, exc: OSError) -> None:
        self.failed = exc.strerror or str(exc)
        log.error("ble_recording_failed", path=str(self.path), error=self.failed)
        self._close()

    def _close(self) -> None:
        if self._file is not None:
            try:
                self._file.close()
            except OSError as exc:  # the last flush can fail too (a full disk)
                if self.failed is None:
                    self.failed = exc.strerror or str(exc)
                    log.error("ble_recording_failed", path=str(self.path), error=self.failed)
            self._file = None
