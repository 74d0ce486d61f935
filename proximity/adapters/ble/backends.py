"""Choosing the BLE backend: the one place a backend is picked by its kind.

:class:`BleBackends` maps each :class:`~proximity.config.BleBackendKind` to the
factory that builds it. The product registers its own backends
(:meth:`BleBackends.standard`: bleak, replay), each factory importing its
library itself so a gateway without a radio never imports bleak's BlueZ code.
Other backends plug in from outside: the hardware simulator registers ``sim``
itself, through its ``register()`` that the wiring calls when the config asks
for the simulator, so the adapters never know it exists. A registry is a value made
for one gateway, not a global.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from proximity.adapters.base import BleBackend
from proximity.clock import Clock
from proximity.config import BleBackendKind, BleSettings
from proximity.errors import ConfigError

BleBackendFactory = Callable[[BleSettings, Clock], BleBackend]
"""Builds a backend from the ``[ble]`` settings and the gateway's clock."""


class BleBackends:
    """Which factory builds the backend of each kind."""

    def __init__(self, factories: Mapping[BleBackendKind, BleBackendFactory] | None = None) -> None:
        self._factories: dict[BleBackendKind, BleBackendFactory] = dict(factories or {})

    @classmethod
    def standard(cls) -> BleBackends:
        """The product's own backends: a bleak radio (or several), and a recording replayed."""
        return cls({BleBackendKind.BLEAK: bleak_backend, BleBackendKind.REPLAY: replay_backend})

    def register(self, kind: BleBackendKind, factory: BleBackendFactory) -> None:
        """Add the backend of ``kind``; ValueError if that kind already has one."""
        if kind in self._factories:
            raise ValueError(f"a {kind.value!r} BLE backend is already registered")
        self._factories[kind] = factory

    @property
    def kinds(self) -> frozenset[BleBackendKind]:
        return frozenset(self._factories)

    def make(self, settings: BleSettings, clock: Clock) -> BleBackend:
        """The backend ``settings.backend`` names; ConfigError if none is registered for it."""
        factory = self._factories.get(settings.backend)
        if factory is None:
            known = ", ".join(sorted(kind.value for kind in self._factories)) or "none"
            raise ConfigError(
                f"ble.backend = {settings.backend.value!r}: no such backend is available "
                f"here (registered: {known})"
            )
        return factory(settings, clock)


def make_ble_backend(settings: BleSettings, clock: Clock) -> BleBackend:
    """The backend the settings name, from the product's own (:meth:`BleBackends.standard`)."""
    return BleBackends.standard().make(settings, clock)


def bleak_backend(settings: BleSettings, clock: Clock) -> BleBackend:
    """One bleak scan per radio; several radios (``ble.adapters``) read as one stream."""
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


def replay_backend(settings: BleSettings, clock: Clock) -> BleBackend:
    """A readings recording played back (``ble.replay.file``)."""
    from proximity.adapters.ble.replay import ReplayBleBackend

    assert settings.replay.file is not None  # the settings' validator says so
    return ReplayBleBackend(settings.replay.file, clock, linger=settings.replay.linger)
