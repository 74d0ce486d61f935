"""An emulated NFC Forum Type 3 tag, answering nfcpy readers over the UDP frontend.

nfcpy's ``udp:host:port`` driver carries the radio frames as UDP datagrams, so a
reader opened on ``udp:127.0.0.1:PORT`` talks to whatever listens on that port
as if it were a card in the field. :class:`TagEmulator` is that card: nfcpy's
own :class:`nfc.tag.tt3.Type3TagEmulation` answering from a tag memory that
holds an attribute block and a configured NDEF message (the layout of the NFC
Forum Type 3 Tag mapping, as nfcpy's ``tagtool emulate tt3`` builds it). The
reader side stays the unmodified nfcpy stack.

The card runs in a background thread owned by the emulator. :meth:`present`
puts it in the field (it starts answering), :meth:`remove` takes it out (its
socket closes, so a reader's presence check fails), and the NDEF message can be
changed at any time with :meth:`set_message`; a reader sees the new message at
its next activation. The tag is read-only. :meth:`wait_read` tells when a reader
has read the whole message since the last :meth:`present` (the moment a phone
held on a till's pad would beep), so a caller can take the tag away then instead
of guessing how long nfcpy's sense round takes.

Run one from a shell with ``python -m firmware_sim.nfc --port 54321 --uri URL``.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import struct
import threading
import time
from types import TracebackType
from typing import Any, Self

import nfc
import nfc.clf
import nfc.clf.udp
import nfc.tag
import nfc.tag.tt3
import structlog

from proximity.adapters.nfc.ndef import build_ndef, text_record, uri_record

log = structlog.get_logger(__name__)

DEFAULT_IDM = bytes.fromhex("03FEFFE011223344")
"""Manufacture ID (IDm): the tag's UID as a reader sees it."""
DEFAULT_PMM = bytes.fromhex("01E0000000FFFF00")
"""Manufacture parameters (as nfcpy's tagtool emulates): a FeliCa Plug IC code and
generous response times, which nfcpy readers use as their command timeouts."""
NDEF_SYSTEM_CODE = bytes.fromhex("12FC")
"""The system code of an NFC Forum Type 3 tag."""

_BLOCK = 16
_NDEF_READ_WRITE_SERVICE = 0x0009
_NDEF_READ_ONLY_SERVICE = 0x000B
_MAX_BLOCKS_PER_READ = 8
_LISTEN_TIMEOUT = 1.0
"""How long one listen lasts (a removal ends it at once)."""
_POLL = 0.05
"""How often a waiting card checks whether it was removed, seconds."""


def tt3_memory(message: bytes) -> bytes:
    """Type 3 tag memory holding ``message``: one attribute block, then the data blocks.

    The attribute block says: mapping version 1.0, up to 8 blocks per read, no
    write, read-only, the message length (3 bytes) and the checksum of the first
    14 bytes.
    """
    if len(message) > 0xFFFFFF:
        raise ValueError("a Type 3 tag holds at most 16 MiB of NDEF data")
    blocks = max(1, -(-len(message) // _BLOCK))
    attributes = bytearray(_BLOCK)
    attributes[0] = 0x10  # mapping version 1.0
    attributes[1] = _MAX_BLOCKS_PER_READ  # Nbr
    attributes[2] = 0  # Nbw: the tag takes no writes
    attributes[3:5] = struct.pack(">H", blocks)  # Nmaxb
    attributes[9] = 0x00  # WriteF: no write in progress
    attributes[10] = 0x00  # RWFlag: read-only
    attributes[11:14] = struct.pack(">I", len(message))[1:]
    attributes[14:16] = struct.pack(">H", sum(attributes[:14]))
    return bytes(attributes) + message + bytes(blocks * _BLOCK - len(message))


class _CardDevice(nfc.clf.udp.Device):  # type: ignore[misc]
    """nfcpy's UDP driver, made to go quiet at once when the tag is removed.

    Two narrow changes to the stock driver: every wait for a datagram is cut
    into short slices that end as a timeout once ``removed`` is set (nfcpy's
    listen otherwise lasts at least half a second and an exchange waits for
    ever), and the listening socket binds the configured host, not every
    interface.
    """

    def __init__(self, host: str, port: int, removed: threading.Event) -> None:
        super().__init__(host, port)
        self.removed = removed
        self._vendor_name = "Proximity"
        self._device_name = "Type 3 tag emulator"
        self._chipset_name = "UDP"

    def _recv_data(self, timeout: float | None, *brty_list: str) -> Any:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.removed.is_set():
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            if wait <= 0:
                break
            try:
                return super()._recv_data(wait, *brty_list)
            except nfc.clf.TimeoutError:
                continue
        raise nfc.clf.TimeoutError("no data received")

    def _bind_socket(self, time_to_return: float) -> bool:
        self.socket.bind(self.addr)  # an address in use raises: the emulator reports it
        return True


class TagEmulator:
    """A Type 3 tag carrying an NDEF message, on ``udp:host:port``.

    ``message`` is sent as-is (it may be deliberately malformed); use
    :func:`proximity.adapters.nfc.ndef.build_ndef` to make a valid one. Use it
    as a context manager, or call :meth:`present` and :meth:`remove`; both are
    idempotent and may be called from any thread.
    """

    def __init__(
        self,
        port: int,
        message: bytes = b"",
        *,
        host: str = "127.0.0.1",
        idm: bytes = DEFAULT_IDM,
        pmm: bytes = DEFAULT_PMM,
    ) -> None:
        if len(idm) != 8 or len(pmm) != 8:
            raise ValueError("idm and pmm are 8 bytes each")
        if idm[:2] == b"\x01\xfe":
            raise ValueError("an IDm starting 01FE announces NFC-DEP, not a tag")
        self.host = host
        self.port = port
        self.idm = idm
        self.pmm = pmm
        self._memory = tt3_memory(message)
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._removed = threading.Event()
        self.error: Exception | None = None
        """Why the card stopped answering on its own (an address in use...), if it did."""
        self.activations = 0
        """How many times a reader activated the tag and read it (a reader that only
        polls, as nfcpy's presence check does, is answered without activating)."""
        self._read_through = threading.Event()
        """Set when a reader has read the last block of the message since :meth:`present`."""

    @property
    def path(self) -> str:
        """The nfcpy device path a reader opens to reach this tag."""
        return f"udp:{self.host}:{self.port}"

    @property
    def is_present(self) -> bool:
        """Whether the tag is in the field and answering."""
        return self._thread is not None and self._thread.is_alive()

    def wait_read(self, timeout: float) -> bool:
        """Block until a reader has read the whole message since :meth:`present` (True),
        or ``timeout`` seconds went by, or the tag stopped answering (False)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if self._read_through.wait(max(0.0, min(_POLL, left))):
                return True
            if left <= 0 or not self.is_present:
                return self._read_through.is_set()

    def set_message(self, message: bytes) -> None:
        """Carry ``message`` from the next activation on."""
        memory = tt3_memory(message)
        with self._lock:
            self._memory = memory

    def present(self) -> None:
        """Bring the tag into the field: it answers readers until :meth:`remove`.

        Raises :class:`OSError` if the host does not resolve.
        """
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            removed = threading.Event()
            frontend = nfc.ContactlessFrontend()
            frontend.device = _CardDevice(self.host, self.port, removed)
            self._removed = removed
            self._read_through.clear()
            self.error = None
            self._thread = threading.Thread(
                target=self._run,
                args=(frontend, removed),
                name=f"nfc-tag-{self.port}",
                daemon=True,
            )
            self._thread.start()
        log.debug("nfc_tag_presented", port=self.port)

    def remove(self) -> None:
        """Take the tag out of the field: it stops answering and releases its port."""
        with self._lock:
            thread, self._thread = self._thread, None
            self._removed.set()
        if thread is None:
            return
        thread.join()
        log.debug("nfc_tag_removed", port=self.port)

    # a tag has no other life than being in the field
    start = present
    stop = remove

    def __enter__(self) -> Self:
        self.present()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.remove()

    def _run(self, frontend: Any, removed: threading.Event) -> None:
        try:
            while not removed.is_set():
                local = nfc.clf.LocalTarget("212F")
                local.sensf_res = b"\x01" + self.idm + self.pmm + NDEF_SYSTEM_CODE
                target = frontend.listen(local, _LISTEN_TIMEOUT)
                if target is None or removed.is_set():
                    continue
                tag = nfc.tag.emulate(frontend, target)
                if isinstance(tag, nfc.tag.tt3.Type3TagEmulation):
                    self._serve(tag, removed)
        except Exception as exc:  # a simulator thread must not die silently
            self.error = exc
            log.exception("nfc_tag_emulator_failed", port=self.port)
        finally:
            frontend.close()

    def _serve(self, tag: Any, removed: threading.Event) -> None:
        """Answer one reader's commands until it switches the field off or we are removed."""
        with self._lock:
            memory = self._memory
        self.activations += 1
        last = len(memory) // _BLOCK - 1
        read_through = self._read_through

        def read_block(block: int, _rb: bool, _re: bool) -> bytes | None:
            start = block * _BLOCK
            if block == last:
                read_through.set()  # answered just below: the reader has it all
            return memory[start : start + _BLOCK] if start < len(memory) else None

        tag.add_service(_NDEF_READ_WRITE_SERVICE, read_block, None)
        tag.add_service(_NDEF_READ_ONLY_SERVICE, read_block, None)
        response = _answer(tag, tag.cmd)
        while not removed.is_set():
            try:
                command = tag.send_response(response, _LISTEN_TIMEOUT)
            except nfc.clf.BrokenLinkError:
                return  # the reader switched its field off
            except nfc.clf.CommunicationError:
                response = None  # nothing (valid) arrived; keep listening, say nothing
                continue
            response = _answer(tag, command)


def _answer(tag: Any, command: Any) -> Any:
    """nfcpy's answer to one command; silence (None) for a garbled one, as a card does."""
    try:
        return tag.process_command(command)
    except (IndexError, ValueError):
        return None


def main(argv: list[str] | None = None) -> int:
    """Emulate one tag until interrupted (Ctrl-C) or terminated (SIGTERM)."""
    parser = argparse.ArgumentParser(
        prog="python -m firmware_sim.nfc",
        description="Emulate an NFC Forum Type 3 tag for nfcpy readers on udp:HOST:PORT.",
    )
    parser.add_argument("--port", type=int, default=54321)
    parser.add_argument("--host", default="127.0.0.1")
    content = parser.add_mutually_exclusive_group(required=True)
    content.add_argument("--uri", help="carry one URI record")
    content.add_argument("--text", help="carry one Text record")
    content.add_argument("--hex", help="carry these NDEF bytes, as hex (may be malformed)")
    parser.add_argument("--idm", default=DEFAULT_IDM.hex(), help="the tag UID, 8 bytes hex")
    args = parser.parse_args(argv)
    if args.uri is not None:
        message = build_ndef([uri_record(args.uri)])
    elif args.text is not None:
        message = build_ndef([text_record(args.text)])
    else:
        message = bytes.fromhex(args.hex)
    emulator = TagEmulator(args.port, message, host=args.host, idm=bytes.fromhex(args.idm))
    print(f"emulating a Type 3 tag on {emulator.path}; Ctrl-C to stop")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    with emulator, contextlib.suppress(KeyboardInterrupt):
        stop.wait()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
