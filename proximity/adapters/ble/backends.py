"""Choosing the BLE backend: the one place that knows every backend.

Each arm imports its library itself, so a gateway without a radio never
imports bleak's BlueZ code and a store never imports the simulator.
"""

from __future__ import annotations

import random

from proximity.adapters.base import BleBackend
from proximity.clock import Clock
from proximity.config import BleBackendKind, BleSettings


def make_ble_backend(settings: BleSettings, clock: Clock) -> BleBackend:
    match settings.backend:
        case BleBackendKind.SIM if settings.sim.scenario is not None:
            from firmware_sim.crowd_backend import CrowdBleBackend
            from firmware_sim.harness import scenario_crowd
            from firmware_sim.scenarios import SCENARIOS
            from firmware_sim.store import EXAMPLE_STORE, load_store

            sim = settings.sim
            assert sim.scenario is not None
            scenario = SCENARIOS[sim.scenario]
            if sim.shoppers is not None:
                scenario = scenario.with_crowd(shoppers=sim.shoppers)
            if sim.arrival_window is not None:
                window = sim.arrival_window.total_seconds()
                scenario = scenario.with_crowd(arrival_window_s=window)
            store = load_store(sim.store or EXAMPLE_STORE)
            return CrowdBleBackend(scenario_crowd(store, scenario, sim.seed), clock)
        case BleBackendKind.SIM:
            from firmware_sim.ble import SimulatedBleBackend
            from firmware_sim.walk import builtin_walk, load_walk

            walk = builtin_walk() if settings.sim.walk is None else load_walk(settings.sim.walk)
            return SimulatedBleBackend(
                walk, clock, random.Random(settings.sim.seed), repeat=settings.sim.repeat
            )
        case BleBackendKind.BLEAK:
            from proximity.adapters.ble.bleak_backend import BleakBackend, ScanMode
            from proximity.adapters.ble.radios import Radios

            radios = [
                BleakBackend(
                    clock,
                    adapter=adapter,
                    scanner=scanner,
                    mode=ScanMode(settings.mode),
                    silence_s=settings.silence.total_seconds(),
                )
                for scanner, adapter in settings.scanners().items()
            ]
            return radios[0] if settings.adapters is None else Radios(radios)
        case BleBackendKind.REPLAY:
            from proximity.adapters.ble.replay import ReplayBleBackend

            assert settings.replay.file is not None  # the settings' validator says so
            return ReplayBleBackend(settings.replay.file, clock, linger=settings.replay.linger)
