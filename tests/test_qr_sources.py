"""Code readers through their real libraries: pyserial on a pseudo-terminal, OpenCV on a video."""

from __future__ import annotations

import asyncio
import os
import pty
from pathlib import Path

import cv2
import numpy as np
import structlog

from proximity.adapters.qr.render import qr_image
from proximity.adapters.qr.scan import CodeScan, Deduper, ScanMaker
from proximity.adapters.qr.sources import Camera, CodeReader, SerialScanner
from proximity.clock import VirtualClock
from tests.factories import T0


async def take(reader: CodeReader, n: int, limit_s: float = 8.0) -> list[CodeScan]:
    out: list[CodeScan] = []

    async def run() -> None:
        async for scan in reader.scans():
            out.append(scan)
            if len(out) == n:
                return

    try:
        await asyncio.wait_for(run(), limit_s)
    except TimeoutError:
        raise AssertionError(f"{len(out)} of {n} scans in {limit_s:g}s: {out}") from None
    return out


class Pty:
    """A pseudo-terminal standing in for a USB-serial scanner; ``link`` is its stable path."""

    def __init__(self, link: Path) -> None:
        self.link = link
        self.master, slave = pty.openpty()
        self.name = os.ttyname(slave)
        os.close(slave)
        if link.is_symlink():
            link.unlink()
        link.symlink_to(self.name)

    def type(self, data: bytes) -> None:
        os.write(self.master, data)

    def unplug(self) -> None:
        os.close(self.master)


async def test_a_serial_scanner_gives_one_scan_per_code(tmp_path: Path) -> None:
    device = Pty(tmp_path / "scanner")
    reader = SerialScanner(str(device.link), "checkout-1", VirtualClock(T0), window=1.0)
    try:
        async with reader:
            await asyncio.sleep(0.3)
            device.type(b"PX1:AAAA\r\n")
            device.type(b"PX1:AAAA\r\n")  # continuous mode read it twice: one scan
            device.type(b"\xff\xfe\r")  # line noise
            device.type(b"https://shop.example/p/123\n")
            scans = await take(reader, 2)
            await asyncio.sleep(0.2)
    finally:
        device.unplug()
    assert [(s.text, s.scanner, s.source) for s in scans] == [
        ("PX1:AAAA", "checkout-1", "scanner"),
        ("https://shop.example/p/123", "checkout-1", "scanner"),
    ]
    assert reader.maker.deduper.duplicates == 1
    assert reader.rejected["not_text"] == 1


async def test_a_scanner_unplugged_and_back_is_read_again(tmp_path: Path) -> None:
    first = Pty(tmp_path / "scanner")
    reader = SerialScanner(str(first.link), "kiosk", VirtualClock(T0))
    with structlog.testing.capture_logs() as logs:
        async with reader:
            await asyncio.sleep(0.3)
            first.type(b"one\r\n")
            assert [s.text for s in await take(reader, 1)] == ["one"]
            first.unplug()
            await asyncio.sleep(0.5)
            second = Pty(tmp_path / "scanner")  # plugged in again, a new tty behind the link
            try:
                for _ in range(40):
                    await asyncio.sleep(0.25)
                    if any(e["event"] == "code_reader_back" for e in logs):
                        break
                second.type(b"two\r\n")
                assert [s.text for s in await take(reader, 1)] == ["two"]
            finally:
                second.unplug()
    events = [e["event"] for e in logs]
    assert "code_reader_lost" in events
    assert "code_reader_back" in events
    assert reader.losses >= 1


def _video(path: Path, texts: list[str | None], frames_each: int = 6) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (640, 480))
    assert writer.isOpened()
    for text in texts:
        frame = np.full((480, 640, 3), 140, np.uint8)
        if text is not None:
            code = np.asarray(qr_image(text, box=5).convert("RGB"))
            h, w = code.shape[:2]
            frame[100 : 100 + h, 200 : 200 + w] = code
        for _ in range(frames_each):
            writer.write(frame)
    writer.release()


async def test_a_camera_sees_each_code_once_however_many_frames_it_stays(tmp_path: Path) -> None:
    video = tmp_path / "aisle.avi"
    _video(video, ["PX1:FIRST", "PX1:FIRST", None, "https://shop.example/p/9"])
    camera = Camera(str(video), "aisle-cam", VirtualClock(T0), window=30.0)
    async with camera:
        scans = [s async for s in camera.scans()]  # the stream ends with the video
    assert [(s.text, s.source) for s in scans] == [
        ("PX1:FIRST", "camera"),
        ("https://shop.example/p/9", "camera"),
    ]
    assert camera.finished
    assert camera.frames == 24
    assert camera.maker.deduper.duplicates == 16  # 18 frames with a code in view, 2 scans


async def test_a_camera_that_is_not_there_is_retried_not_fatal() -> None:
    with structlog.testing.capture_logs() as logs:
        camera = Camera("/dev/video-none", "cam", VirtualClock(T0))
        async with camera:
            await asyncio.sleep(0.8)
            assert camera.losses == 1  # logged once, retried quietly with backoff
    assert [e["event"] for e in logs].count("code_reader_lost") == 1


def test_scan_texts_are_checked_and_deduplicated() -> None:
    now = [0.0]
    maker = ScanMaker("s", "scanner", VirtualClock(T0), window=2.0, monotonic=lambda: now[0])
    assert maker.make("  ") is None
    assert maker.make("x" * 3000) is None
    assert maker.make("bad\x07bell") is None
    scan = maker.make(" PX1:AB ")
    assert scan is not None
    assert scan.text == "PX1:AB"
    now[0] = 1.5
    assert maker.make("PX1:AB") is None  # still in view
    now[0] = 3.0
    assert maker.make("PX1:AB") is None  # seen 1.5 s ago: the window runs from the last sighting
    now[0] = 5.5
    assert maker.make("PX1:AB") is not None  # gone for 2.5 s, then shown again
    assert dict(maker.rejected) == {"empty": 1, "too_long": 1, "not_text": 1}


def test_the_deduper_forgets_codes_long_gone() -> None:
    now = [0.0]
    dedupe = Deduper(1.0, monotonic=lambda: now[0])
    for n in range(300):
        assert dedupe.fresh(f"code-{n}")
    now[0] = 10.0
    assert dedupe.fresh("code-0")
    assert len(dedupe._last) < 300
