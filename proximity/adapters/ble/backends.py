"""Choosing the BLE backend: the one place a backend is picked by its kind.

:class:`BleBackends` maps each :class:`~proximity.config.BleBackendKind` to the
factory that builds it. The product registers its own backends
(:meth:`BleBackends.standard`: bleak, replay), each factory importing its
library itself so a gateway without a radio never imports bleak's BlueZ code.
Other backends plug in from outside: the hardware simulator registers ``sim``
itself, through its ``register()`` that the wiring calls when the config asks
for the simulator, so the adapters never know it exists. A registry is a value made
for one gateway, not a global.

Remote scanner nodes (``[[nodes]]``) need the whole config (the store, its broker),
not only ``[ble]``: :func:`nodes_backend` builds them, and the wiring registers it as
the ``nodes`` backend or merges it with the local radios (:func:`with_nodes`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from proximity.adapters.base import BleBackend
from proximity.clock import Clock
from proximity.config import BleBackendKind, BleSettings, NodeSettings, Settings
from proximity.errors import ConfigError

if TYPE_CHECKING:
    from proximity.delivery.url import BrokerUrl

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


def nodes_backend(settings: Settings, clock: Clock) -> BleBackend:
    """The remote scanner nodes of ``settings.nodes``: one connection per broker and
    credentials they publish to (default: the gateway's own broker)."""
    from proximity.adapters.nodes.backend import NodeBackend, NodeBroker
    from proximity.adapters.nodes.ingest import NodeSpec
    from proximity.delivery._bridge import TlsFiles
    from proximity.delivery.url import BrokerUrl

    broker = settings.broker
    groups: dict[tuple[object, ...], tuple[BrokerUrl, list[NodeSpec]]] = {}
    for node in settings.nodes:
        url = node.broker or broker.url
        if url.is_embedded:  # the settings make sure its port is a fixed one
            url = BrokerUrl.tcp(broker.embedded_host, broker.embedded_port)
        url = _with_credentials(url, node)
        key = (str(url), url.password.get_secret_value() if url.password else None)
        spec = NodeSpec(
            source=node.source.value,
            node=node.node,
            scanner=node.scanner_id,
            max_rate=node.max_rate,
            silence_s=node.silence_after.total_seconds(),
        )
        groups.setdefault(key, (url, []))[1].append(spec)
    protocol = broker.protocol if broker.protocol != "auto" else None
    tls = TlsFiles(
        ca_file=_text(broker.ca_file),
        cert_file=_text(broker.client_cert),
        key_file=_text(broker.client_key),
    )
    brokers = []
    for i, (url, specs) in enumerate(groups.values()):
        brokers.append(
            NodeBroker(
                url,
                tuple(specs),
                # auto: MQTT 3.1.1 (amqtt speaks nothing else). The readings use nothing
                # of MQTT 5, whose properties paho builds and decodes for every message
                # it receives (15-20 us each: about a tenth of the gateway's time per
                # ESPresense or OpenMQTTGateway reading, one message each)
                protocol=protocol or "3.1.1",
                tls=tls if url.tls else None,
                client_id=f"proximity-{settings.store.gateway}-nodes{f'-{i}' if i else ''}",
            )
        )
    return NodeBackend(settings.store.id, brokers, clock)


def with_nodes(backend: BleBackend, settings: Settings, clock: Clock) -> BleBackend:
    """``backend`` (local radios) and the remote nodes of ``settings``, read as one stream."""
    from proximity.adapters.ble.merged import MergedBackend

    return MergedBackend([backend, nodes_backend(settings, clock)])


def _with_credentials(url: BrokerUrl, node: NodeSettings) -> BrokerUrl:
    if node.username is None and node.password is None:
        return url
    return url.model_copy(
        update={"username": node.username or url.username, "password": node.password}
    )


def _text(path: object) -> str | None:
    return None if path is None else str(path)
