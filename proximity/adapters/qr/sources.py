"""Code readers: a 2D scanner on a serial line, and a camera whose frames are decoded.

Both are blocking (pyserial, OpenCV), so each is a
:class:`~proximity.adapters.threaded.ThreadedSource`: one worker thread hands
:class:`CodeScan` readings to the event loop; :meth:`CodeReader.scans` is the
async stream. A reader that goes away (a scanner unplugged, a camera
that stops giving frames) is reopened with backoff, 0.5 s doubling to 10 s,
logged once when lost and once when back, without a daemon restart.
"""

from __future__ import annotations

import abc
import contextlib
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

import structlog

from proximity.adapters.qr.decode import MAX_PIXELS, DecoderKind, decode
from proximity.adapters.qr.scan import MAX_TEXT, CodeScan, ScanMaker
from proximity.adapters.threaded import ThreadedSource
from proximity.clock import Clock

log = structlog.get_logger(__name__)

BACKOFF_START_S = 0.5
BACKOFF_MAX_S = 10.0


class ReaderLost(Exception):
    """The device went away; the worker reopens it."""


class CodeReader(ThreadedSource[CodeScan]):
    source: Literal["camera", "scanner"]

    def __init__(
        self,
        scanner: str,
        clock: Clock,
        *,
        window: float = 2.0,
        queue_size: int = 1024,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(f"{self.source}-{scanner}", queue_size=queue_size)
        self.scanner = scanner
        self.maker = ScanMaker(scanner, self.source, clock, window, monotonic)
        self.losses = 0
        """How many times the device went away (or could not be opened)."""
        self.finished = False
        """The source ended for good (a video file played to its end)."""

    @property
    def rejected(self) -> Counter[str]:
        return self.maker.rejected

    # -- what a device does ---------------------------------------------------------------

    @abc.abstractmethod
    def _open(self) -> None:
        """Open the device; OSError (or ReaderLost) if it is not there."""

    @abc.abstractmethod
    def _read(self) -> list[str] | None:
        """The texts read since the last call ([] if none); None when the source ended
        for good; raises ReaderLost or OSError when the device went away."""

    @abc.abstractmethod
    def _close(self) -> None: ...

    def scans(self) -> AsyncIterator[CodeScan]:
        """The scans as they happen; ends when the reader stops or its source ends."""
        return self.readings()

    # -- the worker thread ----------------------------------------------------------------

    def _run(self) -> None:
        backoff = BACKOFF_START_S
        lost = False
        while not self._stopping.is_set():
            try:
                self._open()
            except (OSError, ReaderLost) as exc:
                if not lost:
                    self.losses += 1
                    log.warning("code_reader_lost", scanner=self.scanner, error=str(exc))
                lost = True
                self._stopping.wait(backoff)
                backoff = min(backoff * 2, BACKOFF_MAX_S)
                continue
            if lost:
                log.info("code_reader_back", scanner=self.scanner)
            else:
                log.info("code_reader_open", scanner=self.scanner, source=self.source)
            lost, backoff = False, BACKOFF_START_S
            try:
                ended = self._pump()
            except (OSError, ReaderLost) as exc:
                self.losses += 1
                lost = True
                log.warning("code_reader_lost", scanner=self.scanner, error=str(exc))
                ended = False
            finally:
                with contextlib.suppress(Exception):
                    self._close()
            if ended:
                self.finished = True
                log.info("code_reader_ended", scanner=self.scanner)
                return

    def _pump(self) -> bool:
        """Read until stopped (False) or the source ended (True)."""
        while not self._stopping.is_set():
            texts = self._read()
            if texts is None:
                return True
            for text in texts:
                scan = self.maker.make(text)
                if scan is not None:
                    self._emit(scan)
        return False


class SerialScanner(CodeReader):
    """A 2D scanner that types each code as a line on a serial port (USB-CDC/ACM,
    USB-serial, or a pseudo-terminal). Lines end with CR, LF or both."""

    source = "scanner"
    _EOL = re.compile(rb"\r\n|\r|\n")

    def __init__(
        self, port: str, scanner: str, clock: Clock, *, baudrate: int = 9600, **kw: Any
    ) -> None:
        super().__init__(scanner, clock, **kw)
        self.port = port
        self.baudrate = baudrate
        self._serial: Any = None
        self._buffer = b""

    def _open(self) -> None:
        import serial

        try:
            self._serial = serial.serial_for_url(self.port, baudrate=self.baudrate, timeout=0.1)
        except serial.SerialException as exc:
            raise ReaderLost(str(exc)) from None
        self._buffer = b""

    def _read(self) -> list[str]:
        import serial

        try:
            chunk: bytes = self._serial.read(max(1, self._serial.in_waiting))
        except (serial.SerialException, OSError) as exc:
            raise ReaderLost(str(exc)) from None
        if not chunk:
            return []
        self._buffer += chunk
        *lines, self._buffer = self._EOL.split(self._buffer)
        if len(self._buffer) > MAX_TEXT * 4:  # no end of line in sight: not a scanner
            self._buffer = b""
            self.maker.rejected["too_long"] += 1
        texts: list[str] = []
        for line in lines:
            try:
                texts.append(line.decode("utf-8"))
            except UnicodeDecodeError:
                self.maker.rejected["not_text"] += 1
        return [t for t in texts if t.strip()]  # a CR LF split across reads: no scan

    def _close(self) -> None:
        if self._serial is not None:
            self._serial.close()
            self._serial = None


class Camera(CodeReader):
    """Frames from a camera (V4L2/USB, or a Raspberry Pi camera through its V4L2
    driver) or a video file or stream, read with OpenCV and decoded.

    ``device``: a camera index (``0``), a device path (``/dev/video0``), a file or
    a stream URL. At most ``max_fps`` frames a second are decoded; the others are
    read and dropped, so the camera's buffer never holds stale frames. A frame of
    more than ``max_pixels`` pixels, or one the decoder fails on, is skipped and
    counted in :attr:`rejected` (``too_large``, ``bad_frame``), logged the first time.
    """

    source = "camera"

    def __init__(
        self,
        device: str | int,
        scanner: str,
        clock: Clock,
        *,
        decoder: DecoderKind = DecoderKind.ZXING,
        max_fps: float = 10.0,
        max_pixels: int = MAX_PIXELS,
        **kw: Any,
    ) -> None:
        super().__init__(scanner, clock, **kw)
        self.device = int(device) if isinstance(device, str) and device.isdigit() else device
        self.decoder = decoder
        self.max_pixels = max_pixels
        self._interval = 1.0 / max_fps if max_fps > 0 else 0.0
        self._capture: Any = None
        self._last_decode = 0.0
        self.frames = 0
        self.decoded_frames = 0

    @property
    def _is_file(self) -> bool:
        return isinstance(self.device, str) and not self.device.startswith("/dev/")

    def _open(self) -> None:
        import cv2

        capture = cv2.VideoCapture(self.device)
        if not capture.isOpened():
            capture.release()
            raise ReaderLost(f"cannot open camera {self.device!r}")
        self._capture = capture

    def _read(self) -> list[str] | None:
        ok, frame = self._capture.read()
        if not ok:
            if self._is_file:
                return None  # the video ended
            raise ReaderLost(f"camera {self.device!r} gave no frame")
        self.frames += 1
        now = time.monotonic()
        if self._interval and now - self._last_decode < self._interval and not self._is_file:
            return []
        self._last_decode = now
        if frame.shape[0] * frame.shape[1] > self.max_pixels:
            self._skip("too_large", f"{frame.shape[1]}×{frame.shape[0]}")
            return []
        import cv2

        try:
            gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
            found = decode(gray, self.decoder)
        except Exception as exc:  # one odd frame must not end the camera
            self._skip("bad_frame", f"{type(exc).__name__}: {exc}")
            return []
        self.decoded_frames += 1
        return [f.text for f in found]

    def _skip(self, reason: str, detail: str) -> None:
        """A frame not decoded: counted by reason, logged the first time for each reason."""
        if not self.rejected[reason]:
            log.warning("code_frame_skipped", scanner=self.scanner, reason=reason, detail=detail)
        self.rejected[reason] += 1

    def _close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None
