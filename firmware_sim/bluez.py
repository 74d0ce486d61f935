"""A mocked BlueZ on a private D-Bus: the real bleak stack, with no radio and no root.

The simulator's live mode (``python -m firmware_sim run --via bluez``) and the
bleak tests both use it:

- :class:`PrivateBus` runs ``dbus-daemon`` with its own configuration (allow
  everything, listen on a socket in a temporary folder) and reads its address
  from ``--print-address``. It never touches the machine's system bus: the
  caller points ``DBUS_SYSTEM_BUS_ADDRESS`` at :attr:`PrivateBus.address` for
  whatever should see it (bleak in this process, or a ``proximity run`` child).
- :class:`MockBlueZ` runs python-dbusmock's ``bluez5`` template on that bus (as
  ``org.bluez``), and wraps the template's own methods (``AddAdapter``,
  ``AddDevice``, ``RemoveAdapter``) plus what a simulation needs on top:
  a device that *advertises* (``UpdateProperties`` on ``org.bluez.Device1``,
  which is how BlueZ reports an advertisement to a scanning client), many
  devices advertising in one D-Bus call (:meth:`MockBlueZ.advertise_many`), and
  an adapter whose next discovery calls fail with a given BlueZ error.

The template declares ManufacturerData with the wrong D-Bus type, so it is set
here as an ``a{qv}`` dictionary, the type real BlueZ uses.

python-dbusmock and dbus-python are developer dependencies (``pip install -e
'.[dev]'``, which ``make test`` runs); importing this module without them raises
an ImportError that says so.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from firmware_sim.processes import find_tool, spawn

try:
    import dbus
    import dbus.bus
    import dbus.exceptions
    import dbus.proxies
    from dbusmock import MOCK_IFACE
    from dbusmock.testcase import BusType, SpawnedMock
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        f"the mocked BlueZ needs python-dbusmock and dbus-python ({exc.name} is missing): "
        "install the developer extras with `pip install -e '.[dev]'` (or run `make test`, "
        "which also installs dbus-daemon)"
    ) from exc

START_TIMEOUT_S = 5.0
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
_MOCK_MAIN_IFACE = "org.bluez.Mock"
#: A method added to the template: UpdateProperties on many devices in one D-Bus call.
#: One call per device costs a round trip each (about 1,000 a second on a 2-core
#: laptop); one call for a batch of 40 carries about 6,000 updates a second.
_BATCH_METHOD = "ProximityAdvertise"
_BATCH_CODE = (
    f"for path, props in args[0]:\n    objects[path].UpdateProperties({DEVICE_IFACE!r}, props)\n"
)

_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <keep_umask/>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
    <allow user="*"/>
  </policy>
</busconfig>
"""


def find_dbus_daemon() -> str | None:
    return find_tool("dbus-daemon")


@dataclass(frozen=True, slots=True)
class Update:
    """One advertisement heard by one adapter: what BlueZ updates on the device's object."""

    path: str
    """The device's object path under the adapter that heard it."""
    rssi: int
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)
    service_data: Mapping[str, bytes] = field(default_factory=dict)
    """Service UUID (128-bit text form) -> data, as Eddystone beacons send it."""


class PrivateBus:
    """One ``dbus-daemon`` on a unix socket in ``workdir``, for one test or one simulation."""

    def __init__(self, binary: str, workdir: Path) -> None:
        self.binary = binary
        self.config = workdir / "bus.conf"
        self.socket = workdir / "bus.socket"
        self.config.write_text(_CONFIG.format(socket=self.socket))
        self.log = workdir / "dbus-daemon.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_file: IO[bytes] | None = None
        self.address = ""

    def start(self) -> None:
        self._log_file = self.log.open("wb")
        self._proc = spawn(
            [self.binary, f"--config-file={self.config}", "--nofork", "--print-address=1"],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
        )
        assert self._proc.stdout is not None
        # the daemon prints its address once it listens, so the first line means "ready"
        self.address = self._proc.stdout.readline().decode().strip()
        self._proc.stdout.close()
        if not self.address:
            self.stop()
            raise RuntimeError(f"dbus-daemon did not start (config {self.config})")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(START_TIMEOUT_S)
        self._proc = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None


class MockBlueZ:
    """python-dbusmock's ``bluez5`` template, serving ``org.bluez`` on a :class:`PrivateBus`.

    :meth:`start` needs ``DBUS_SYSTEM_BUS_ADDRESS`` to point at the private bus
    already: dbusmock, started with ``--system``, connects to whatever it names.
    """

    def __init__(self, bus: PrivateBus, workdir: Path) -> None:
        self.bus = bus
        self.log = workdir / "dbusmock.log"
        self._mock: SpawnedMock | None = None
        self._conn: dbus.bus.BusConnection | None = None
        self._log_file: IO[bytes] | None = None
        self._injections = 0
        self._batch_ready = False

    def start(self) -> None:
        if os.environ.get("DBUS_SYSTEM_BUS_ADDRESS") != self.bus.address:
            raise RuntimeError("set DBUS_SYSTEM_BUS_ADDRESS to the private bus first")
        self._log_file = self.log.open("wb")
        self._mock = SpawnedMock.spawn_with_template(
            "bluez5", bustype=BusType.SYSTEM, stdout=self._log_file, stderr=subprocess.STDOUT
        )
        self._conn = dbus.bus.BusConnection(self.bus.address)

    def stop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._mock is not None:
            self._mock.terminate()
            self._mock.process.wait(START_TIMEOUT_S)
            self._mock = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # the template's own methods

    def _main(self) -> dbus.proxies.ProxyObject:
        assert self._conn is not None, "call start() first"
        return self._conn.get_object("org.bluez", "/")

    def _object(self, path: str) -> dbus.proxies.ProxyObject:
        assert self._conn is not None, "call start() first"
        return self._conn.get_object("org.bluez", path)

    def add_adapter(self, name: str = "hci0", system_name: str = "proximity-gateway") -> str:
        """``AddAdapter``: a powered adapter ``/org/bluez/<name>``; returns its path."""
        return str(self._main().AddAdapter(name, system_name, dbus_interface=_MOCK_MAIN_IFACE))

    def remove_adapter(self, name: str = "hci0") -> None:
        """``RemoveAdapter``: the adapter object goes (its devices stay, as after a crash)."""
        self._main().RemoveAdapter(name, dbus_interface=_MOCK_MAIN_IFACE)

    def add_device(self, adapter: str, address: str, alias: str = "beacon") -> str:
        """``AddDevice``: a device known to ``adapter``; returns its object path."""
        return str(self._main().AddDevice(adapter, address, alias, dbus_interface=_MOCK_MAIN_IFACE))

    def advertise(
        self, device_path: str, manufacturer_data: Mapping[int, bytes], rssi: int
    ) -> None:
        """The device is heard: BlueZ updates its advertising properties, which is
        what a scanning client sees as an advertisement."""
        props = _advertising_properties(Update(device_path, rssi, manufacturer_data))
        self._object(device_path).UpdateProperties(DEVICE_IFACE, props, dbus_interface=MOCK_IFACE)

    def advertise_many(self, updates: Sequence[Update]) -> None:
        """Several advertisements heard at once, in one D-Bus call: what a simulation of
        a whole store needs to keep up (see :data:`_BATCH_METHOD`)."""
        if not updates:
            return
        if not self._batch_ready:
            self._main().AddMethod(
                _MOCK_MAIN_IFACE,
                _BATCH_METHOD,
                "a(oa{sv})",
                "",
                _BATCH_CODE,
                dbus_interface=MOCK_IFACE,
            )
            self._batch_ready = True
        batch = dbus.Array(
            [dbus.Struct((dbus.ObjectPath(u.path), _advertising_properties(u))) for u in updates],
            signature="(oa{sv})",
        )
        getattr(self._main(), _BATCH_METHOD)(batch, dbus_interface=_MOCK_MAIN_IFACE)

    def fail_discovery(self, adapter: str, method: str, errors: Sequence[str]) -> None:
        """The adapter's next ``method`` calls (StartDiscovery, StopDiscovery) fail
        with the given BlueZ error names, one each, then succeed again."""
        if method not in {"StartDiscovery", "StopDiscovery"}:
            raise ValueError(f"cannot inject failures into {method}")
        discovering = method == "StartDiscovery"
        self._injections += 1
        state = f"_proximity_failures_{self._injections}"
        code = (
            f"self.{state} = getattr(self, {state!r}, {list(errors)!r})\n"
            f"if self.{state}:\n"
            f"    name = self.{state}.pop(0)\n"
            "    raise dbus.exceptions.DBusException('injected by the test', name=name)\n"
            f"self.UpdateProperties({ADAPTER_IFACE!r}, "
            f"{{'Discovering': dbus.Boolean({discovering})}})\n"
        )
        self._object(f"/org/bluez/{adapter}").AddMethod(
            ADAPTER_IFACE, method, "", "", code, dbus_interface=MOCK_IFACE
        )

    def method_calls(self, path: str, method: str) -> list[list[Any]]:
        """The arguments of each logged call of a mocked ``method`` on ``path``."""
        calls = self._object(path).GetMethodCalls(method, dbus_interface=MOCK_IFACE)
        return [list(args) for _, args in calls]

    def exported_properties(self, path: str, interface: str) -> dict[str, Any]:
        """The properties of an object some *client* exported on the bus (bleak's monitor).

        Blocking: when that client runs in the caller's event loop, call this from a thread.
        """
        assert self._conn is not None, "call start() first"
        me = self._conn.get_unique_name()
        # newest connections first: the client under test connected after this helper did,
        # and older connections of this process (dbusmock's own helpers) never answer
        owners = sorted(
            (name for name in self._conn.list_names() if name.startswith(":") and name != me),
            key=lambda name: [int(part) for part in name[1:].split(".")],
            reverse=True,
        )
        for owner in owners:
            try:
                obj = self._conn.get_object(owner, path, introspect=False)
                props = obj.GetAll(interface, dbus_interface=dbus.PROPERTIES_IFACE, timeout=2)
            except dbus.exceptions.DBusException:
                continue
            return dict(props)
        raise LookupError(f"nobody exports {path}")


def _bytes(payload: bytes) -> Any:
    return dbus.Array([dbus.Byte(b) for b in payload], signature="y")


def _advertising_properties(update: Update) -> Any:
    """Device1 properties of one advertisement, in the D-Bus types real BlueZ uses."""
    manufacturer = dbus.Dictionary(
        {dbus.UInt16(k): _bytes(v) for k, v in update.manufacturer_data.items()}, signature="qv"
    )
    # declared as an array by the template, which bleak cannot read: a dict as in BlueZ
    service = dbus.Dictionary(
        {dbus.String(k): _bytes(v) for k, v in update.service_data.items()}, signature="sv"
    )
    return dbus.Dictionary(
        {
            "ManufacturerData": manufacturer,
            "ServiceData": service,
            "UUIDs": dbus.Array(list(update.service_data), signature="s"),
            "RSSI": dbus.Int16(update.rssi),
        },
        signature="sv",
    )
