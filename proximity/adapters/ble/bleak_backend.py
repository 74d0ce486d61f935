"""The real radio: bleak's ``BleakScanner`` on a local BlueZ adapter, kept scanning.

The detection callback only fills a queue; :meth:`BleakBackend.advertisements`
drains it. A supervisor task owns the scanner and keeps it alive in a store:

- **watchdog**: no advertisement for ``silence_s`` (a radio that silently
  stopped, the classic BlueZ failure) → stop and start the scan again;
- **errors** on start or stop (``org.bluez.Error.InProgress``, ``NotReady``,
  any ``BleakError``, a broken D-Bus connection) are logged with their name,
  counted in :attr:`BleakBackend.errors`, and retried;
- **adapter gone and back**: a small D-Bus watch on BlueZ's object manager sees
  the adapter disappear (unplugged, reset, bluetoothd restarted, powered off)
  and come back, so the scan stops and restarts at once instead of waiting for
  the watchdog or the backoff.

Attempts are spaced by an exponential backoff (``backoff_initial_s`` doubling up
to ``backoff_max_s``) that resets once an advertisement arrives, so an empty
store at night does not spin. Nothing leaves :meth:`advertisements` but
advertisements; :meth:`stop` ends it. Logs never carry a device address.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from enum import StrEnum
from typing import Any, Final

import structlog
from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern, OrPatternLike
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.bluezdbus.utils import get_dbus_authenticator
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData
from bleak.exc import BleakBluetoothNotAvailableError, BleakDBusError, BleakError
from dbus_fast import BusType, Message, MessageType
from dbus_fast.aio import MessageBus

from proximity.adapters.base import Advertisement, BleBackend
from proximity.clock import Clock

log = structlog.get_logger(__name__)


class ScanMode(StrEnum):
    ACTIVE = "active"
    """Scan requests sent: more data per device, more airtime and power."""
    PASSIVE = "passive"
    """Listen only, through BlueZ advertisement monitors (needs or-patterns)."""


#: Passive scanning reports only advertisements matching one of these: Apple manufacturer data
#: (company id 0x004C, little-endian) that starts an iBeacon frame (type 0x02, length 0x15).
#: Matching the frame header, not just the company, keeps the many other Apple advertisements
#: (phones, earbuds, Find My) in a store out of the pipeline.
IBEACON_OR_PATTERNS: Final = (
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00\x02\x15"),
)

_BLUEZ: Final = "org.bluez"
_ADAPTER_IFACE: Final = "org.bluez.Adapter1"
_OBJECT_MANAGER: Final = "org.freedesktop.DBus.ObjectManager"
#: D-Bus errors that mean "the adapter (or bluetoothd) is not there", not "the call failed"
_GONE_ERRORS: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.UnknownMethod",
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NoReply",
    }
)
_ADDRESS = re.compile(r"(?:[0-9A-Fa-f]{2}[:_-]){5}[0-9A-Fa-f]{2}")
_STOP = object()


def error_name(exc: BaseException) -> str:
    """The D-Bus error name of a BlueZ error (``org.bluez.Error.InProgress``), else the type."""
    if isinstance(exc, BleakDBusError):
        return exc.dbus_error
    return type(exc).__name__


def _detail(exc: BaseException) -> str:
    """The error's message, with any device address taken out (it may name an object path)."""
    return _ADDRESS.sub("<address>", str(exc))[:200]


def _looks_gone(exc: BaseException) -> bool:
    if isinstance(exc, BleakBluetoothNotAvailableError):
        return True
    if isinstance(exc, BleakDBusError):
        return exc.dbus_error in _GONE_ERRORS
    if isinstance(exc, BleakError):
        return "not found" in str(exc)
    return isinstance(exc, (OSError, EOFError))  # the D-Bus socket itself broke


class BleakBackend(BleBackend):
    """Advertisements heard by bleak on one BlueZ adapter (``adapter=None``: the default one).

    Each advertisement names ``scanner`` as the scanner that heard it (default: the
    adapter's name): the id a rule file's zone lists, so a gateway with one radio per
    zone names each radio after its zone's scanner.

    Counters for the metrics endpoint: :attr:`restarts` (successful scan restarts),
    :attr:`errors` (failed BlueZ operations by error name), :attr:`adapter_losses`
    and :attr:`dropped` (advertisements that found the queue full).
    """

    def __init__(
        self,
        clock: Clock,
        adapter: str | None = None,
        *,
        scanner: str | None = None,
        mode: ScanMode = ScanMode.ACTIVE,
        or_patterns: Sequence[OrPattern] = IBEACON_OR_PATTERNS,
        silence_s: float = 30.0,
        backoff_initial_s: float = 1.0,
        backoff_max_s: float = 30.0,
        operation_timeout_s: float = 10.0,
        queue_size: int = 4096,
    ) -> None:
        if mode is ScanMode.PASSIVE and not or_patterns:
            raise ValueError("passive scanning needs at least one BlueZ or-pattern")
        if silence_s <= 0 or backoff_initial_s <= 0 or backoff_max_s < backoff_initial_s:
            raise ValueError("silence and backoff must be positive, backoff_max >= initial")
        self._clock = clock
        self._adapter = adapter
        self._mode = mode
        self._or_patterns = list(or_patterns)
        self._silence_s = silence_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._op_timeout_s = operation_timeout_s
        self._queue_size = queue_size
        self._scanner_name = scanner or adapter or "default"
        # what logs name: the radio, and the scanner it stands for when that differs
        self._where = {"adapter": adapter or "default"}
        if scanner is not None and scanner != adapter:
            self._where["scanner"] = scanner
        self._queue: asyncio.Queue[Advertisement | object] = asyncio.Queue(queue_size)
        self._scanner: BleakScanner | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._watch = _AdapterWatch(adapter, self._on_adapter_change)
        self._wake = asyncio.Event()
        self._stopping = False
        self._lost = False
        self._restart_reason: str | None = None
        self._backoff_s = backoff_initial_s
        self._scan_generation = 0
        self._heard = False
        self._last_heard = clock.now()
        self.restarts = 0
        self.errors: Counter[str] = Counter()
        self.adapter_losses = 0
        self.dropped = 0

    @property
    def scanning(self) -> bool:
        """A scan is running right now (false while lost or between restarts)."""
        return self._scanner is not None

    @property
    def adapter_lost(self) -> bool:
        return self._lost

    # -- BleBackend ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Start scanning; returns once the first attempt is made.

        A missing adapter or a BlueZ error does not raise: it is logged and retried, so a
        gateway that boots before its dongle is plugged in starts scanning when it is.
        """
        if self._supervisor is not None:
            return
        if self._stopping:  # started again after stop(): a fresh stream
            self._queue = asyncio.Queue(self._queue_size)
            self._stopping = False
        self._wake = asyncio.Event()
        await self._watch.open()
        if not self._watch.present:
            self._mark_lost("adapter absent")
        else:
            await self._start_scanner()
        self._supervisor = asyncio.create_task(self._supervise(), name="ble-supervisor")

    async def stop(self) -> None:
        """Stop scanning: the stream ends at once, the scanner is stopped before this returns."""
        if self._stopping:
            return
        self._stopping = True
        self._wake.set()
        self._end_stream()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            await supervisor
        await self._stop_scanner()
        await self._watch.close()

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        while True:
            item = await self._queue.get()
            if item is _STOP:
                self._queue.put_nowait(_STOP)  # a later reader ends too
                return
            assert isinstance(item, Advertisement)
            yield item

    # -- the radio ------------------------------------------------------------------------------

    def _on_detection(self, device: BLEDevice, data: AdvertisementData) -> None:
        now = self._clock.now()
        self._last_heard = now
        self._heard = True
        try:
            self._queue.put_nowait(Advertisement(device, data, self._scanner_name, now))
        except asyncio.QueueFull:
            self.dropped += 1

    def _end_stream(self) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(_STOP)

    def _make_scanner(self) -> BleakScanner:
        bluez: BlueZScannerArgs = {}
        if self._adapter is not None:
            bluez["adapter"] = self._adapter
        if self._mode is ScanMode.PASSIVE:
            patterns: list[OrPatternLike] = [*self._or_patterns]
            bluez["or_patterns"] = patterns
            return BleakScanner(self._on_detection, scanning_mode="passive", bluez=bluez)
        return BleakScanner(self._on_detection, scanning_mode="active", bluez=bluez)

    async def _start_scanner(self) -> bool:
        scanner = self._make_scanner()
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await scanner.start()
        except Exception as exc:  # every BlueZ/D-Bus failure is retried, never raised
            self._failed("start", exc)
            return False
        self._scanner = scanner
        self._scan_generation = self._watch.generation
        self._heard = False
        self._last_heard = self._clock.now()
        if self._lost:
            self._lost = False
            log.info("ble_adapter_back", **self._where)
        if self._restart_reason is not None:
            self.restarts += 1
            log.info(
                "ble_scanner_restarted",
                **self._where,
                reason=self._restart_reason,
                restarts=self.restarts,
            )
            self._restart_reason = None
        return True

    async def _stop_scanner(self) -> None:
        scanner, self._scanner = self._scanner, None
        if scanner is None:
            return
        try:
            async with asyncio.timeout(self._op_timeout_s):
                await scanner.stop()
        except Exception as exc:  # the scan is abandoned either way
            self._failed("stop", exc)

    def _failed(self, operation: str, exc: Exception) -> None:
        name = error_name(exc)
        self.errors[name] += 1
        gone = _looks_gone(exc) or not self._watch.present
        if gone and self._lost:
            return  # already reported: the adapter is away, every attempt fails alike
        log.warning(
            "ble_scanner_error",
            **self._where,
            operation=operation,
            error=name,
            detail=_detail(exc),
        )
        if gone and operation == "start":
            self._mark_lost(name)

    def _mark_lost(self, reason: str) -> None:
        if self._lost:
            return
        self._lost = True
        self.adapter_losses += 1
        log.warning("ble_adapter_lost", **self._where, reason=reason)

    def _on_adapter_change(self, present: bool) -> None:
        if not present:
            self._mark_lost("adapter removed")
        self._wake.set()

    # -- the supervisor -------------------------------------------------------------------------

    async def _supervise(self) -> None:
        while not self._stopping:
            try:
                await self._step()
            except Exception as exc:  # a bug here must not end the stream: log, back off, go on
                self._failed("supervise", exc)
                await self._pause(self._next_backoff())

    async def _step(self) -> None:
        if not self._watch.connected:
            await self._watch.open()
        if self._scanner is None:
            if self._watch.present and await self._start_scanner():
                return
            await self._pause(self._next_backoff())
            return
        reason = await self._watch_scan()
        if reason is None:
            return
        if self._heard:
            self._backoff_s = self._backoff_initial_s
        await self._stop_scanner()
        self._restart_reason = reason
        if reason == "silence":
            await self._pause(self._next_backoff())

    async def _watch_scan(self) -> str | None:
        """Wait while the scan is healthy; why it needs a restart, or None when stopping."""
        while True:
            self._wake.clear()
            if self._stopping:
                return None
            if self._watch.generation != self._scan_generation or not self._watch.present:
                # gone, or gone and back already: BlueZ ended our discovery session either way
                return "adapter_lost"
            quiet = (self._clock.now() - self._last_heard).total_seconds()
            if quiet >= self._silence_s:
                log.info("ble_scanner_silent", **self._where, silent_s=round(quiet, 1))
                return "silence"
            await self._sleep(self._silence_s - quiet)

    def _next_backoff(self) -> float:
        delay = self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self._backoff_max_s)
        return delay

    async def _pause(self, seconds: float) -> None:
        """Wait ``seconds``, or less if stopping or the adapter came back."""
        self._wake.clear()
        if not self._stopping:
            await self._sleep(seconds)

    async def _sleep(self, seconds: float) -> None:
        """The injected clock's sleep, cut short by :attr:`_wake`."""
        sleeper = asyncio.ensure_future(self._clock.sleep(seconds))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)


class _AdapterWatch:
    """Whether our BlueZ adapter is there and powered, told as it changes.

    Its own D-Bus connection listens to BlueZ's object manager (adapters added and
    removed), to adapter ``Powered`` changes and to bluetoothd leaving the bus. A
    watch that cannot connect reports the adapter as present and the supervisor
    falls back on its watchdog.
    """

    def __init__(self, adapter: str | None, on_change: Callable[[bool], None]) -> None:
        self._path = None if adapter is None else f"/org/bluez/{adapter}"
        self._on_change = on_change
        self._bus: MessageBus | None = None
        self._powered: dict[str, bool] = {}
        self.generation = 0
        """Counts the times our adapter went away (removed, powered off, bluetoothd gone)."""

    @property
    def connected(self) -> bool:
        return self._bus is not None and self._bus.connected

    @property
    def present(self) -> bool:
        if not self.connected:
            return True  # unknown: let the scanner find out
        return any(self._powered.values())

    async def open(self) -> None:
        await self.close()
        prefix = self._path or "/org/bluez/"
        rules = (
            f"type='signal',interface='{_OBJECT_MANAGER}',member='InterfacesAdded',"
            f"arg0path='{prefix}'",
            f"type='signal',interface='{_OBJECT_MANAGER}',member='InterfacesRemoved',"
            f"arg0path='{prefix}'",
            "type='signal',interface='org.freedesktop.DBus.Properties',"
            f"member='PropertiesChanged',arg0='{_ADAPTER_IFACE}'",
            "type='signal',sender='org.freedesktop.DBus',member='NameOwnerChanged',"
            f"arg0='{_BLUEZ}'",
        )
        try:
            bus = await MessageBus(bus_type=BusType.SYSTEM, auth=get_dbus_authenticator()).connect()
        except Exception as exc:  # no D-Bus at all: the scanner will say so too
            log.warning("ble_scanner_error", operation="watch", error=error_name(exc))
            return
        try:
            bus.add_message_handler(self._on_message)
            for rule in rules:
                await self._call(
                    bus,
                    "org.freedesktop.DBus",
                    "/org/freedesktop/DBus",
                    "org.freedesktop.DBus",
                    "AddMatch",
                    "s",
                    [rule],
                )
            reply = await bus.call(
                Message(
                    destination=_BLUEZ,
                    path="/",
                    interface=_OBJECT_MANAGER,
                    member="GetManagedObjects",
                )
            )
        except Exception as exc:
            bus.disconnect()
            log.warning("ble_scanner_error", operation="watch", error=error_name(exc))
            return
        self._powered = {}
        if reply.message_type is MessageType.METHOD_RETURN:  # an error: bluetoothd is not running
            for path, interfaces in reply.body[0].items():
                self._interfaces_added(path, interfaces, notify=False)
        self._bus = bus

    async def close(self) -> None:
        bus, self._bus = self._bus, None
        if bus is not None:
            bus.disconnect()
            # dbus_fast leaves this one unannotated; it returns once the socket is closed
            wait_for_disconnect: Callable[[], Awaitable[None]] = bus.wait_for_disconnect
            with contextlib.suppress(Exception):
                await wait_for_disconnect()

    @staticmethod
    async def _call(
        bus: MessageBus, dest: str, path: str, iface: str, member: str, sig: str, body: list[Any]
    ) -> None:
        reply = await bus.call(
            Message(
                destination=dest,
                path=path,
                interface=iface,
                member=member,
                signature=sig,
                body=body,
            )
        )
        if reply.message_type is MessageType.ERROR:
            raise BleakDBusError(reply.error_name or "unknown", reply.body)

    def _mine(self, path: str) -> bool:
        return path == self._path if self._path is not None else path.startswith("/org/bluez/")

    def _interfaces_added(self, path: str, interfaces: dict[str, Any], *, notify: bool) -> None:
        adapter = interfaces.get(_ADAPTER_IFACE)
        if adapter is None or not self._mine(path):
            return
        powered = adapter.get("Powered")
        self._update(path, bool(powered.value) if powered is not None else True, notify=notify)

    def _update(self, path: str, powered: bool, *, notify: bool) -> None:
        before = any(self._powered.values())
        went_away = self._powered.get(path, False) and not powered
        if went_away:
            self.generation += 1
        self._powered[path] = powered
        after = any(self._powered.values())
        if notify and (before != after or went_away):
            self._on_change(after)

    def _on_message(self, msg: Message) -> None:
        if msg.message_type is not MessageType.SIGNAL:
            return
        match msg.member:
            case "InterfacesAdded":
                path, interfaces = msg.body
                self._interfaces_added(path, interfaces, notify=True)
            case "InterfacesRemoved":
                path, names = msg.body
                if _ADAPTER_IFACE in names and path in self._powered:
                    del self._powered[path]
                    self.generation += 1
                    self._on_change(any(self._powered.values()))
            case "PropertiesChanged":
                _, changed, _ = msg.body
                powered = changed.get("Powered")
                if powered is not None and msg.path is not None and msg.path in self._powered:
                    self._update(msg.path, bool(powered.value), notify=True)
            case "NameOwnerChanged":
                _, _, new_owner = msg.body
                if not new_owner and any(self._powered.values()):
                    self._powered.clear()
                    self.generation += 1
                    self._on_change(False)
