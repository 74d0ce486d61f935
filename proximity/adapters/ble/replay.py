"""Playing a readings recording back as a BLE backend (the format: :mod:`.recording`).

:class:`ReplayBleBackend` is a :class:`BleBackend` like the radio and the
simulator, so a recording goes through the same decoder, flood defence,
identity, presence and rules as live traffic — in the daemon (``[ble] backend =
"replay"``) or in process (``python -m firmware_sim replay``).

Pacing follows the clock: on a :class:`VirtualClock` the replay *drives* time,
advancing it to each reading (as fast as the pipeline goes, and exactly: the
daemon's ticker wakes on the same instants as in the live run); on any other
clock it sleeps until each reading is due (a :class:`ScaledClock` started at the
recording's start replays ``speed`` times faster than it was heard). Readings
are played in file order, as they were heard; one stamped earlier than the one
before (a wall clock stepped back) is played at once, with its own time.

Tap and scan lines (version 2) are shoppers' acts, not radio: this backend passes
them over (counting them, :attr:`ReplayBleBackend.acts`); :func:`recorded_acts` reads
them as the :class:`NfcTap` and :class:`CodeScan` readings the NFC and scanner
adapters hand over, for a replay that plays them (``python -m firmware_sim replay``).

Reading is forgiving: a line that is not a reading is rejected with
``file:line: reason``, counted and logged (the first few), and the replay goes on,
so a recording cut short by a crash still plays.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import structlog
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from pydantic import (
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
)

from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.recording import FORMAT, READABLE_VERSIONS, alias_address
from proximity.adapters.nfc.ndef import NdefError, build_ndef, parse_ndef, text_record
from proximity.adapters.nfc.tap import NfcTap
from proximity.adapters.qr.scan import MAX_TEXT, CodeScan
from proximity.clock import Clock, ScaledClock, VirtualClock
from proximity.errors import ConfigError

log = structlog.get_logger(__name__)

LOGGED_REJECTIONS = 10
"""Rejected lines logged one by one; the rest are counted (and summed up at the end)."""
KEPT_REJECTIONS = 100
"""Rejected lines kept with their reason on :attr:`ReplayBleBackend.rejections`."""


def _hex(value: Any) -> Any:
    if isinstance(value, str):
        try:
            return bytes.fromhex(value)
        except ValueError:
            raise ValueError("not hex") from None
    raise ValueError("not a hex string")


Hex = Annotated[bytes, BeforeValidator(_hex)]


class Header(BaseModel):
    """The first line of a recording session."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    format: str
    v: int
    started: AwareDatetime

    @field_validator("format")
    @classmethod
    def _ours(cls, value: str) -> str:
        if value != FORMAT:
            raise ValueError(f"not a readings recording ({FORMAT!r} expected)")
        return value

    @field_validator("v")
    @classmethod
    def _supported(cls, value: int) -> int:
        if value not in READABLE_VERSIONS:
            readable = ", ".join(str(v) for v in READABLE_VERSIONS)
            raise ValueError(f"format version {value} is not supported (this reads {readable})")
        return value


class RecordedReading(BaseModel):
    """One advertisement as one scanner heard it (a reading line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    scanner: str = Field(min_length=1)
    addr: str = Field(pattern=r"^(dev|rpa)-[0-9a-f]{12}$")
    rssi: int = Field(ge=-128, le=127)
    tx: int | None = Field(default=None, ge=-128, le=127)
    mfr: dict[int, Hex] = Field(default_factory=dict)
    svc: dict[str, Hex] = Field(default_factory=dict)
    uuids: list[str] = Field(default_factory=list)
    name: str | None = None

    @field_validator("mfr", mode="before")
    @classmethod
    def _company_ids(cls, value: Any) -> Any:
        if not isinstance(value, dict):
            return value
        out: dict[int, Any] = {}
        for key, raw in value.items():
            try:
                company = int(key, 0) if isinstance(key, str) else -1
            except ValueError:
                company = -1
            if not 0 <= company <= 0xFFFF:
                raise ValueError(f"company id {key!r} is not 0x0000-0xffff")
            out[company] = raw
        return out

    def advertisement(self) -> Advertisement:
        return Advertisement(
            device=_device(self.addr),
            data=AdvertisementData(
                local_name=self.name,
                manufacturer_data=dict(self.mfr),
                service_data=dict(self.svc),
                service_uuids=list(self.uuids),
                tx_power=self.tx,
                rssi=self.rssi,
                platform_data=(),
            ),
            scanner=self.scanner,
            at=self.at,
        )


class RecordedTap(BaseModel):
    """One NFC tap at one reader (a tap line; the format: :mod:`.recording`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    tap: str = Field(min_length=1)
    uid: str = Field(pattern=r"^[0-9a-f]{16}$")
    tag: str = Field(min_length=1)
    texts: list[str] = Field(default_factory=list, max_length=16)
    unreadable: str | None = Field(default=None, min_length=1)

    @field_validator("texts")
    @classmethod
    def _texts(cls, texts: list[str]) -> list[str]:
        if any(not t or len(t) > MAX_TEXT for t in texts):
            raise ValueError(f"a text is empty or longer than {MAX_TEXT} characters")
        if texts:
            try:
                parse_ndef(build_ndef([text_record(t) for t in texts]))
            except NdefError as exc:
                raise ValueError(f"not an NDEF message a tag holds: {exc}") from None
        return texts

    def reading(self) -> NfcTap:
        """The tap as the NFC adapter hands it over: its texts as NDEF text records."""
        ndef = parse_ndef(build_ndef([text_record(t) for t in self.texts])) if self.texts else None
        return NfcTap(
            at=self.at,
            reader=self.tap,
            tag_uid_hash=self.uid,
            tag_type=self.tag,
            ndef=ndef,
            reject_reason=self.unreadable,
        )


class RecordedScan(BaseModel):
    """One code read by one scanner or camera (a scan line)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    at: AwareDatetime
    scan: str = Field(min_length=1)
    source: Literal["camera", "scanner"]
    text: str = Field(min_length=1, max_length=MAX_TEXT)

    def reading(self) -> CodeScan:
        return CodeScan(at=self.at, scanner=self.scan, text=self.text, source=self.source)


RecordedAct = RecordedTap | RecordedScan


@lru_cache(maxsize=65_536)
def _device(alias: str) -> BLEDevice:
    return BLEDevice(alias_address(alias), None, {"replayed": True})


class LineError(ValueError):
    """A line that is neither a header nor a reading; ``reason`` says why."""

    def __init__(self, reason: str, header: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.header = header
        """The line meant to be a header (it has a ``format`` key)."""


def parse_line(text: str) -> Header | RecordedReading | RecordedAct:
    """A header, a reading, a tap or a scan; raises :class:`LineError` with a short
    reason otherwise."""
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):  # ValueError: also an integer of 5,000 digits
        raise LineError("not JSON") from None
    if not isinstance(raw, dict):
        raise LineError("not a JSON object")
    header = "format" in raw
    model: type[Header | RecordedReading | RecordedTap | RecordedScan]
    if header:
        model = Header
    elif "tap" in raw:
        model = RecordedTap
    elif "scan" in raw:
        model = RecordedScan
    else:
        model = RecordedReading
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "line"
        message = str(first["msg"]).removeprefix("Value error, ")
        raise LineError(f"{where}: {message}", header=header) from None


@dataclass(frozen=True, slots=True)
class Rejected:
    line: int
    reason: str


def read_recording(path: Path) -> Iterator[Header | RecordedReading | RecordedAct | Rejected]:
    """Every line of a recording in file order, parsed; blank lines are skipped.

    Lines after a header this version cannot read are rejected too (their
    meaning is unknown), until the next good header.
    """
    unreadable_session = False
    with path.open(encoding="utf-8", errors="replace", newline="\n") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                item = parse_line(line)
            except LineError as exc:
                unreadable_session = unreadable_session or exc.header
                yield Rejected(number, exc.reason)
                continue
            if isinstance(item, Header):
                unreadable_session = False
            elif unreadable_session:
                yield Rejected(number, "in a session of an unsupported format version")
                continue
            yield item


def recorded_acts(path: Path) -> list[NfcTap | CodeScan]:
    """The taps and scans of a recording, in file order (rejected lines are reported by
    the :class:`ReplayBleBackend` playing the same file)."""
    out: list[NfcTap | CodeScan] = []
    for item in read_recording(path):
        if isinstance(item, RecordedTap | RecordedScan):
            out.append(item.reading())  # texts validated: they make an NDEF message
    return out


def recording_start(path: Path) -> datetime:
    """Where a replay's clock starts: the first session's start, else the first reading.

    Raises :class:`ConfigError` for a file that cannot be read or holds no reading.
    """
    try:
        for item in read_recording(path):
            if isinstance(item, Header):
                return item.started
            if isinstance(item, RecordedReading | RecordedTap | RecordedScan):
                return item.at
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the recording: {exc.strerror or exc}") from None
    raise ConfigError(f"{path}: no readings in this file")


def replay_clock(path: Path, speed: float) -> Clock:
    """The clock a replay of ``path`` runs on: virtual time for ``speed`` 0 (as fast as
    possible, exact), else ``speed`` times real time; both start at the recording's start."""
    start = recording_start(path)
    return VirtualClock(start) if speed == 0 else ScaledClock(start, speed)


class ReplayBleBackend(BleBackend):
    """The advertisements of a recording, on ``clock``, then ``linger`` of quiet.

    ``linger``: how long the stream stays open after the last reading, so exit
    and visit timeouts run out as they did live (the daemon stops when the
    stream ends).
    """

    def __init__(self, path: Path, clock: Clock, linger: timedelta = timedelta(0)) -> None:
        self.path = path
        self._clock = clock
        self._linger = linger
        self._stopped = asyncio.Event()
        self.replayed = 0
        self.acts = 0
        """Tap and scan lines passed over (they are not radio)."""
        self.sessions = 0
        self.rejected = 0
        self.rejections: list[str] = []
        """``file:line: reason`` of the first :data:`KEPT_REJECTIONS` rejected lines."""
        self.reasons: Counter[str] = Counter()
        self.last: datetime | None = None
        """The time of the last reading played."""

    async def start(self) -> None:
        self._stopped.clear()

    async def stop(self) -> None:
        self._stopped.set()

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        try:
            for item in read_recording(self.path):
                if self._stopped.is_set():
                    return
                if isinstance(item, Rejected):
                    self._reject(item)
                    continue
                if isinstance(item, Header):
                    self.sessions += 1
                    continue
                if isinstance(item, RecordedTap | RecordedScan):
                    self.acts += 1
                    continue
                await self._wait_until(item.at)
                if self._stopped.is_set():
                    return
                self.replayed += 1
                self.last = item.at
                yield item.advertisement()
            if self.last is not None and self._linger > timedelta(0):
                await self._wait_until(self.last + self._linger)
        finally:
            log.info(
                "ble_replay_finished",
                path=str(self.path),
                readings=self.replayed,
                acts=self.acts or None,
                sessions=self.sessions,
                rejected=self.rejected,
                reasons=dict(self.reasons) or None,
            )

    def _reject(self, item: Rejected) -> None:
        self.rejected += 1
        self.reasons[item.reason.split(":", 1)[0]] += 1
        where = f"{self.path}:{item.line}: {item.reason}"
        if len(self.rejections) < KEPT_REJECTIONS:
            self.rejections.append(where)
        if self.rejected <= LOGGED_REJECTIONS:
            log.warning("ble_replay_line_rejected", line=where)

    async def _wait_until(self, when: datetime) -> None:
        if when <= self._clock.now():
            return
        if isinstance(self._clock, VirtualClock):
            await self._clock.advance_to(when)
            return
        await self._clock.sleep((when - self._clock.now()).total_seconds())
