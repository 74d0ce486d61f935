"""The NFC adapter reading the emulated Type 3 tag through the real nfcpy stack.

Both ends are unmodified nfcpy: the adapter opens ``udp:127.0.0.1:PORT`` with
``ContactlessFrontend`` and the emulator answers as a card on that port. A sense
round on the UDP driver lasts about a second when no tag answers, so every wait
here allows a few seconds.
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from structlog.testing import capture_logs

from firmware_sim.nfc import DEFAULT_IDM, TagEmulator
from proximity.adapters.nfc.adapter import Frontend, NfcAdapter, open_nfcpy_frontend
from proximity.adapters.nfc.ndef import build_ndef, text_record, uri_record
from proximity.adapters.nfc.tap import NfcTap, TapDecoder, hash_tag_uid
from proximity.clock import SystemClock, VirtualClock

pytestmark = pytest.mark.timeout(20)

KEY = b"gateway-secret-key-for-tests-0001"
OTHER_IDM = bytes.fromhex("03FEFFE0AABBCCDD")
PRODUCT_URL = "https://shop.example/p/4242"
WAIT = 6.0


def udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def wait_until(predicate: Callable[[], bool], within: float = WAIT) -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.02)


class Taps:
    """Everything an adapter yields, collected by a task."""

    def __init__(self, adapter: NfcAdapter) -> None:
        self.adapter = adapter
        self.items: list[NfcTap] = []
        self.task = asyncio.create_task(self._collect())

    async def _collect(self) -> None:
        async for tap in self.adapter.taps():
            self.items.append(tap)

    async def wait_for(self, count: int, within: float = WAIT) -> list[NfcTap]:
        await wait_until(lambda: len(self.items) >= count, within)
        return self.items


class Cable:
    """A USB cable between the adapter and the (UDP) reader that a test can pull.

    Unplugged, opening the reader fails the way nfcpy fails for a missing USB
    device (``IOError`` ENODEV); pulling it closes the open frontend, so the
    next nfcpy call in ``connect()`` raises ``IOError`` as an unplugged device does.
    """

    def __init__(self, plugged: bool) -> None:
        self.plugged = plugged
        self.opens = 0
        self._open: Frontend | None = None

    def open(self, path: str) -> Frontend:
        self.opens += 1
        if not self.plugged:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV))
        self._open = open_nfcpy_frontend(path)
        return self._open

    def unplug(self) -> None:
        self.plugged = False
        if self._open is not None:
            self._open.close()

    def plug(self) -> None:
        self.plugged = True


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    yield
    leftovers = [t.name for t in threading.enumerate() if t.name.startswith("nfc-")]
    assert leftovers == []


@pytest.fixture
def port() -> int:
    return udp_port()


@pytest.fixture
def emulators() -> Iterator[list[TagEmulator]]:
    made: list[TagEmulator] = []
    yield made
    for emulator in made:
        emulator.remove()


@pytest.fixture
def make_tag(port: int, emulators: list[TagEmulator]) -> Callable[..., TagEmulator]:
    def make(message: bytes, idm: bytes = DEFAULT_IDM) -> TagEmulator:
        emulator = TagEmulator(port, message, idm=idm)
        emulators.append(emulator)
        return emulator

    return make


@pytest.fixture
async def reader(port: int) -> AsyncIterator[Callable[..., NfcAdapter]]:
    made: list[NfcAdapter] = []

    def make(**options: Any) -> NfcAdapter:
        adapter = NfcAdapter(f"udp:127.0.0.1:{port}", "shelf-7", KEY, SystemClock(), **options)
        made.append(adapter)
        return adapter

    yield make
    for adapter in made:
        await adapter.stop()


async def test_a_uri_tag_gives_one_tap_with_its_ndef(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    tag = make_tag(build_ndef([uri_record(PRODUCT_URL), text_record("Espresso beans", "fr")]))
    tag.present()
    adapter = reader()
    before = SystemClock().now()
    with capture_logs() as logs:
        await adapter.start()
        taps = Taps(adapter)
        (tap,) = await taps.wait_for(1)
        await asyncio.sleep(0.5)  # the tag stays: nothing more arrives
    assert len(taps.items) == 1
    assert tap.reader == "shelf-7"
    assert tap.tag_uid_hash == hash_tag_uid(DEFAULT_IDM, KEY)
    assert tap.tag_type == "Type3Tag"
    assert tap.reject_reason is None
    assert tap.ndef is not None
    assert tap.ndef.uris == (PRODUCT_URL,)
    assert [(r.kind, r.text, r.language) for r in tap.ndef.records] == [
        ("uri", None, None),
        ("text", "Espresso beans", "fr"),
    ]
    assert before <= tap.at <= SystemClock().now()
    # the raw UID is nowhere: not in the reading, not in a log line
    uid = DEFAULT_IDM.hex()
    assert uid not in tap.model_dump_json().lower()
    assert not [e for e in logs if uid in str(e).lower()]
    assert [e["event"] for e in logs if e["event"].startswith("nfc_reader")] == ["nfc_reader_open"]
    assert tag.activations == 1


async def test_a_tag_left_on_the_reader_is_one_tap(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    tag = make_tag(build_ndef([uri_record(PRODUCT_URL)]))
    adapter = reader()
    await adapter.start()
    taps = Taps(adapter)
    tag.present()
    await taps.wait_for(1)
    await asyncio.sleep(2.2)  # held there, while nfcpy checks presence every ~0.2 s
    assert len(taps.items) == 1
    assert adapter.taps_read == 1
    assert tag.activations >= 1


async def test_a_tag_back_within_the_debounce_window_is_the_same_tap(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    tag = make_tag(build_ndef([uri_record(PRODUCT_URL)]))
    adapter = reader(debounce=3.0)
    await adapter.start()
    taps = Taps(adapter)
    tag.present()
    await taps.wait_for(1)
    tag.remove()
    await asyncio.sleep(0.5)  # long enough for nfcpy's presence check to see it go
    tag.present()
    await wait_until(lambda: adapter.debounced == 1)  # the reader connected to it again...
    assert len(taps.items) == 1  # ...and it was not a new tap
    assert adapter.taps_read == 1


async def test_a_tag_presented_again_after_the_debounce_window_is_a_new_tap(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    tag = make_tag(build_ndef([uri_record(PRODUCT_URL)]))
    adapter = reader(debounce=0.5)
    await adapter.start()
    taps = Taps(adapter)
    tag.present()
    await taps.wait_for(1)
    tag.remove()
    await asyncio.sleep(1.2)  # gone for longer than the window
    tag.set_message(build_ndef([uri_record(PRODUCT_URL + "?again")]))
    tag.present()
    first, second = await taps.wait_for(2)
    await asyncio.sleep(0.3)
    assert len(taps.items) == 2
    assert first.tag_uid_hash == second.tag_uid_hash
    assert first.ndef is not None
    assert first.ndef.uris == (PRODUCT_URL,)
    assert second.ndef is not None
    assert second.ndef.uris == (PRODUCT_URL + "?again",)
    assert second.at > first.at
    assert adapter.debounced == 0


async def test_bad_ndef_is_a_rejected_tap_and_the_reader_keeps_going(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    adapter = reader()
    await adapter.start()
    taps = Taps(adapter)
    malformed = make_tag(bytes.fromhex("d1010f55"))  # a URI record cut short
    with capture_logs() as logs:
        malformed.present()
        (bad,) = await taps.wait_for(1)
        malformed.remove()
    assert bad.ndef is None
    assert bad.reject_reason == "malformed NDEF: buffer underflow at reading PAYLOAD field"
    assert adapter.rejected == {"malformed": 1}
    rejections = [e for e in logs if e["event"] == "nfc_ndef_rejected"]
    assert [(e["reason"], e["tag"]) for e in rejections] == [
        (bad.reject_reason, hash_tag_uid(DEFAULT_IDM, KEY))
    ]

    oversize = make_tag(build_ndef([text_record("x" * 9000)]), idm=OTHER_IDM)
    oversize.present()
    _, big = await taps.wait_for(2)
    oversize.remove()
    assert big.ndef is None
    assert big.reject_reason is not None
    assert big.reject_reason.endswith("bytes is larger than the 8192-byte limit")
    assert big.tag_uid_hash == hash_tag_uid(OTHER_IDM, KEY)

    good = make_tag(build_ndef([uri_record(PRODUCT_URL)]), idm=bytes.fromhex("03FE000000000001"))
    good.present()
    *_, fine = await taps.wait_for(3)
    assert fine.ndef is not None
    assert fine.ndef.uris == (PRODUCT_URL,)
    assert fine.reject_reason is None
    assert adapter.rejected == {"malformed": 1, "oversize": 1}
    assert adapter.taps_read == 3


async def test_a_blank_tag_is_a_plain_tap(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    make_tag(b"").present()
    adapter = reader()
    await adapter.start()
    (tap,) = await Taps(adapter).wait_for(1)
    assert (tap.ndef, tap.reject_reason) == (None, None)
    assert not adapter.rejected


async def test_taps_arrive_once_the_tag_appears_on_a_silent_port(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    adapter = reader()
    await adapter.start()
    taps = Taps(adapter)
    await asyncio.sleep(1.5)  # nothing listens on the port: sense rounds time out
    assert taps.items == []
    assert adapter.running
    make_tag(build_ndef([uri_record(PRODUCT_URL)])).present()
    (tap,) = await taps.wait_for(1)
    assert tap.ndef is not None
    assert tap.ndef.uris == (PRODUCT_URL,)


async def test_a_reader_unplugged_and_back_recovers_without_a_restart(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    cable = Cable(plugged=False)
    adapter = reader(open_frontend=cable.open, debounce=0.3)
    tag = make_tag(build_ndef([uri_record(PRODUCT_URL)]))
    tag.present()
    with capture_logs() as logs:
        await adapter.start()
        taps = Taps(adapter)
        await wait_until(lambda: cable.opens >= 2)  # tried, backed off 0.5 s, tried again
        cable.plug()
        await taps.wait_for(1)

        cable.unplug()  # with the tag still on it
        await wait_until(lambda: adapter.reader_losses == 2)
        tag.remove()
        cable.plug()
        await wait_until(lambda: sum(e["event"] == "nfc_reader_back" for e in logs) == 2)
        tag.present()
        await taps.wait_for(2)
    events = [e["event"] for e in logs if e["event"].startswith("nfc_reader")]
    assert events == ["nfc_reader_lost", "nfc_reader_back", "nfc_reader_lost", "nfc_reader_back"]
    first_loss = next(e for e in logs if e["event"] == "nfc_reader_lost")
    assert first_loss["error"] == "OSError: No such device"
    assert first_loss["retry_in_s"] == 0.5
    assert adapter.running


async def test_stop_ends_the_worker_promptly(
    make_tag: Callable[..., TagEmulator], reader: Callable[..., NfcAdapter]
) -> None:
    tag = make_tag(build_ndef([uri_record(PRODUCT_URL)]))
    adapter = reader()
    await adapter.start()
    taps = Taps(adapter)
    tag.present()
    await taps.wait_for(1)  # the worker is now in nfcpy's presence-check loop
    started = time.monotonic()
    await adapter.stop()
    assert time.monotonic() - started < 2.0
    assert not adapter.running
    await asyncio.wait_for(taps.task, 1.0)  # taps() ended


class FakeTag:
    """What the decoder uses of an ``nfc.tag.Tag``."""

    type = "Type2Tag"

    def __init__(self, uid: bytes, octets: bytes | None = None, fail: bool = False) -> None:
        self.identifier = uid
        self._octets = octets
        self._fail = fail

    @property
    def ndef(self) -> Any:
        if self._fail:
            raise RuntimeError("tag gone mid-read: 04a1b2c3")
        return None if self._octets is None else type("Ndef", (), {"octets": self._octets})()


def test_the_decoder_debounces_by_tag_from_its_last_sighting() -> None:
    now = [100.0]
    clock = VirtualClock(SystemClock().now())
    decoder = TapDecoder("door", KEY, clock, debounce=2.0, monotonic=lambda: now[0])
    card, other = FakeTag(b"\x04\xa1\xb2\xc3"), FakeTag(b"\x04\xff\xff\xff")
    assert decoder.to_tap(card) is not None
    assert decoder.to_tap(other) is not None  # another tag is never debounced by the first
    now[0] = 105.0
    decoder.released(card)  # left the reader after five seconds on it
    now[0] = 106.9
    assert decoder.to_tap(card) is None
    now[0] = 108.9
    decoder.released(card)
    now[0] = 110.9  # exactly the window after it last left
    assert decoder.to_tap(card) is not None
    assert (decoder.taps, decoder.debounced) == (3, 1)


def test_the_decoder_reports_an_unreadable_tag_without_its_uid() -> None:
    decoder = TapDecoder("door", KEY, SystemClock())
    with capture_logs() as logs:
        tap = decoder.to_tap(FakeTag(b"\x04\xa1\xb2\xc3", fail=True))
    assert tap is not None
    assert tap.reject_reason == "NDEF read failed: RuntimeError"
    assert tap.tag_type == "Type2Tag"
    assert decoder.rejected == {"unreadable": 1}
    assert "04a1b2c3" not in tap.model_dump_json() + str(logs)


def test_the_key_must_be_long_enough() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        NfcAdapter("udp:127.0.0.1:1", "shelf-7", b"short", SystemClock())


def test_the_emulator_releases_its_port() -> None:
    port = udp_port()
    for _ in range(2):
        with TagEmulator(port, build_ndef([uri_record(PRODUCT_URL)])) as tag:
            assert tag.is_present
        assert not tag.is_present
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", port))  # free again
