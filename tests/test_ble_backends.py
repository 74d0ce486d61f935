"""The BLE backend registry: the product's backends, and the simulator plugged in from outside."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from firmware_sim.ble import SimulatedBleBackend
from firmware_sim.crowd_backend import CrowdBleBackend
from proximity.adapters.base import Advertisement, BleBackend
from proximity.adapters.ble.backends import BleBackends
from proximity.clock import Clock, SystemClock, VirtualClock
from proximity.config import BleBackendKind, BleSettings, Settings
from proximity.errors import ConfigError
from proximity.wiring import ble_backends
from tests.factories import T0

ADAPTERS = Path(__file__).parent.parent / "proximity" / "adapters"


def test_the_products_adapters_do_not_know_the_simulator() -> None:
    assert [
        str(path)
        for path in ADAPTERS.rglob("*.py")
        if "import firmware_sim" in (text := path.read_text()) or "from firmware_sim" in text
    ] == []


def test_the_product_registers_bleak_and_replay_and_nothing_else() -> None:
    assert BleBackends.standard().kinds == {BleBackendKind.BLEAK, BleBackendKind.REPLAY}


def test_a_backend_nobody_registered_is_a_config_error_naming_what_is_there() -> None:
    with pytest.raises(ConfigError, match=r"ble.backend = 'sim': .*\(registered: bleak, replay\)"):
        BleBackends.standard().make(BleSettings(backend=BleBackendKind.SIM), SystemClock())
    with pytest.raises(ConfigError, match=r"\(registered: none\)"):
        BleBackends().make(BleSettings(backend=BleBackendKind.BLEAK), SystemClock())


class Fake(BleBackend):
    def __init__(self, settings: BleSettings, clock: Clock) -> None:
        self.settings, self.clock = settings, clock

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        return
        yield


def test_a_registered_factory_builds_from_the_settings_and_the_clock() -> None:
    backends = BleBackends()
    backends.register(BleBackendKind.SIM, Fake)
    settings, clock = BleSettings(backend=BleBackendKind.SIM), VirtualClock(T0)
    made = backends.make(settings, clock)
    assert isinstance(made, Fake)
    assert (made.settings, made.clock) == (settings, clock)
    with pytest.raises(ValueError, match="'sim' BLE backend is already registered"):
        backends.register(BleBackendKind.SIM, Fake)


def test_the_wiring_adds_the_simulator_only_when_the_config_asks_for_it() -> None:
    bleak = Settings.model_validate({"ble": {"backend": "bleak"}})
    assert BleBackendKind.SIM not in ble_backends(bleak).kinds
    assert BleBackendKind.SIM in ble_backends(Settings()).kinds


def test_the_simulator_registers_a_walk_or_a_crowd_as_the_settings_say() -> None:
    clock = VirtualClock(T0)
    walk = Settings().ble
    assert isinstance(ble_backends(Settings()).make(walk, clock), SimulatedBleBackend)
    crowd = BleSettings.model_validate({"backend": "sim", "sim": {"scenario": "quiet"}})
    made = ble_backends(Settings()).make(crowd, clock)
    assert isinstance(made, CrowdBleBackend)
