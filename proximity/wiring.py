"""Settings in, a ready runtime out: rules, identity, pipeline, adapter, broker, publisher.

Shared by ``proximity run`` and ``proximity demo`` so both wire the same way.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import structlog

from proximity.adapters.ble.adapter import BeaconDecoder, BleAdapter
from proximity.adapters.ble.backends import BleBackends, nodes_backend, with_nodes
from proximity.adapters.ble.rotating import RotatingResolver
from proximity.adapters.nfc.adapter import NfcAdapter
from proximity.adapters.qr.decode import DecoderKind
from proximity.adapters.qr.sources import Camera, CodeReader, SerialScanner
from proximity.chain.bundledir import startup_rule_paths
from proximity.clock import Clock
from proximity.codes import NonceStore, Verifier
from proximity.config import BleBackendKind, Settings
from proximity.daemon import Daemon, Sink
from proximity.delivery._bridge import TlsFiles
from proximity.delivery.broker import EmbeddedBroker
from proximity.delivery.outbox import Outbox
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.engine.controls import DeliveryState, memory_horizon
from proximity.engine.decide import Decision
from proximity.engine.loader import load_rule_files
from proximity.engine.reload import RuleWatcher
from proximity.engine.state import StateStore
from proximity.engine.table import RuleTable
from proximity.errors import ConfigError, DeliveryError, RuleFileError
from proximity.identity.keys import ShopperKeys, load_shopper_keys
from proximity.identity.resolver import IdentityResolver
from proximity.identity.segments import load_segments
from proximity.measurement.feedback import FeedbackDesk
from proximity.measurement.store import MeasurementStore
from proximity.pipeline import Pipeline

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    clock: Clock
    table: RuleTable
    resolver: IdentityResolver
    pipeline: Pipeline
    adapter: BleAdapter
    feedback: FeedbackDesk
    used_codes: NonceStore
    nfc: tuple[NfcAdapter, ...] = ()
    scanners: tuple[CodeReader, ...] = ()
    rule_paths: tuple[Path, ...] = ()
    """Where ``table`` came from (the running bundle's folder, or ``[rules] paths``)."""

    def publisher(
        self, url: BrokerUrl, client_id: str | None = None, require_connection: bool = True
    ) -> MqttPublisher:
        settings = self.settings
        return MqttPublisher(
            url,
            store=settings.store.id,
            gateway=settings.store.gateway,
            client_id=client_id
            or settings.broker.client_id
            or f"proximity-{settings.store.gateway}",
            protocol=settings.mqtt_protocol(),
            publish_timeout=settings.broker.publish_timeout.total_seconds(),
            rules_version=self.table.version,
            clock=self.clock,
            require_connection=require_connection,
            tls=TlsFiles(
                ca_file=_path(settings.broker.ca_file),
                cert_file=_path(settings.broker.client_cert),
                key_file=_path(settings.broker.client_key),
            ),
        )

    def watcher(self, publisher: MqttPublisher | None = None) -> RuleWatcher:
        """Hot reload: valid new rules replace the table; broken ones are reported and skipped."""

        async def swap(table: RuleTable) -> None:
            self.pipeline.replace_table(table)
            if publisher is not None:
                with contextlib.suppress(DeliveryError):
                    await publisher.set_rules_version(table.version)

        return RuleWatcher(
            self.rule_paths or self.settings.rules.paths,
            self.clock,
            swap,
            interval=self.settings.rules.watch_interval.total_seconds(),
            accept=lambda table: check_store(self.settings, table),
        )

    def daemon(
        self,
        sink: Sink,
        on_decision: Callable[[Decision], None] | None = None,
        outbox: Outbox | None = None,
        measure: MeasurementStore | None = None,
    ) -> Daemon:
        return Daemon(
            self.adapter,
            self.pipeline,
            sink,
            self.clock,
            tick=self.settings.presence.tick,
            publish_events=self.settings.events.publish,
            events_qos=self.settings.events.qos,
            on_decision=on_decision,
            outbox=outbox,
            measure=measure,
            feedback=self.feedback,
            nfc=self.nfc,
            scanners=self.scanners,
            coupons=self.settings.codes.coupon_signer(),
        )

    def close(self) -> None:
        self.used_codes.close()


def _path(path: Path | None) -> str | None:
    return str(path) if path is not None else None


@contextlib.asynccontextmanager
async def broker_for(settings: Settings, any_port: bool = False) -> AsyncIterator[BrokerUrl]:
    """The broker to publish to, starting the embedded one when the config says so.

    ``any_port`` starts the embedded broker on a free port (the demo), so it never
    collides with a daemon already running on this machine.
    """
    if not settings.broker.url.is_embedded:
        yield settings.broker.url
        return
    port = 0 if any_port else settings.broker.embedded_port
    async with EmbeddedBroker(host=settings.broker.embedded_host, port=port) as broker:
        log.info("embedded_broker_started", url=str(broker.url))
        yield broker.url


def load_table(settings: Settings) -> RuleTable:
    """The compiled rules; raises RuleFileError with every problem found."""
    return load_rules(settings)[0]


def load_rules(settings: Settings) -> tuple[RuleTable, list[Path]]:
    """The compiled rules and the paths they came from: the running rule bundle's
    (``[chain] bundles``, docs/chain.md) when the gateway applied one, else ``[rules]
    paths``. A bundle's rules that no longer load (edited by hand on the gateway) are
    logged and the config's rules serve; RuleFileError with every problem found in those."""
    start = startup_rule_paths(settings.chain.bundles)
    if start is not None:
        bundle, paths = start
        try:
            table = RuleTable.from_ruleset(load_rule_files(paths))
            check_store(settings, table)
        except (RuleFileError, ConfigError) as exc:
            log.error("rules_bundle_unusable", bundle=bundle, error=str(exc).splitlines()[0])
        else:
            log.info("rules_from_bundle", bundle=bundle, path=str(paths[0]))
            return table, paths
    table = RuleTable.from_ruleset(load_rule_files(settings.rules.paths))
    check_store(settings, table)
    return table, list(settings.rules.paths)


def check_store(settings: Settings, table: RuleTable) -> None:
    """Rules written for another store are refused (ConfigError)."""
    rules_store = table.store.id if table.store is not None else None
    if rules_store is not None and rules_store != settings.store.id:
        raise ConfigError(
            f"the rules are for store {rules_store!r} but this gateway serves store "
            f"{settings.store.id!r} (store.id in the config)"
        )


def _segments(settings: Settings) -> dict[str, frozenset[str]]:
    path = settings.identity.segments
    if path is None:
        return {}
    try:
        return load_segments(path)
    except OSError as exc:
        raise ConfigError(f"identity.segments: cannot read {path}: {exc.strerror}") from exc


def ble_backends(settings: Settings) -> BleBackends:
    """The BLE backends this gateway can build: the product's own, and the simulator's
    when the config asks for it (only then is ``firmware_sim`` imported)."""
    backends = BleBackends.standard()
    if settings.ble.backend is BleBackendKind.SIM:
        try:
            import firmware_sim.ble
        except ModuleNotFoundError as exc:
            if exc.name != "firmware_sim":
                raise
            raise ConfigError(
                f'ble.backend = "sim" needs the simulator (firmware_sim), which is not '
                f"installed here: {exc}"
            ) from exc
        firmware_sim.ble.register(backends)
    if settings.nodes:
        # remote scanner nodes need the whole config (store, broker), not only [ble]
        backends.register(BleBackendKind.NODES, lambda ble, clock: nodes_backend(settings, clock))
    return backends


def build_runtime(settings: Settings, clock: Clock, backends: BleBackends | None = None) -> Runtime:
    """Everything the daemon runs with. ``backends``: where the BLE backend comes from
    (default :func:`ble_backends`)."""
    table, rule_paths = load_rules(settings)
    identity = settings.identity
    keys = load_shopper_keys(identity.shopper_keys) if identity.shopper_keys else ShopperKeys()
    resolver = IdentityResolver(
        identity.app_uuids,
        identity.pseudonym_key.get_secret_value().encode(),
        anonymous_uuids=identity.anonymous_uuids,
        segments=_segments(settings),
        anonymous_namespaces=[bytes.fromhex(n) for n in identity.anonymous_namespaces],
        consent=keys.consent,
    )
    decoder = BeaconDecoder(
        rotating=RotatingResolver(keys.rotating, period=identity.rotating_period)
        if keys.rotating
        else None,
        irks=keys.irks,
        max_ids_per_address=identity.max_ids_per_address,
        ban_for=identity.ban_for,
        new_ids_per_second=identity.new_ids_per_second,
        # the daemon's own clock: with the simulator sped up, the limits speed up with it
        monotonic=lambda: clock.now().timestamp(),
    )
    state = None
    if settings.delivery.state is not None:
        state = DeliveryState(store=StateStore(settings.delivery.state))
        restored = state.restore(
            table.local_time(clock.now()), memory_horizon(table.rules, table.ruleset.defaults)
        )
        log.info("delivery_state_restored", offers=restored, path=str(settings.delivery.state))
    feedback = FeedbackDesk(settings.store.id)
    used_codes = NonceStore(settings.codes.used)
    verifier = Verifier(
        settings.codes.key_bytes(), clock, used=used_codes, skew=settings.codes.skew
    )
    pipeline = Pipeline.for_presence(
        settings.store.id,
        table,
        resolver,
        settings.presence,
        state=state,
        verifier=verifier,
        sent_offer=feedback.lookup,
    )
    backends = backends if backends is not None else ble_backends(settings)
    backend = backends.make(settings.ble, clock)
    if settings.nodes and settings.ble.backend is not BleBackendKind.NODES:
        backend = with_nodes(backend, settings, clock)  # local radios and remote nodes
    scanners_down = getattr(backend, "scanners_down", None)
    if callable(scanners_down):  # scanner nodes: a dead one's zones hold their shoppers
        pipeline.watch_scanners(scanners_down)
    if settings.ble.record is not None:
        from proximity.adapters.ble.recording import ReadingRecorder

        backend = ReadingRecorder(backend, settings.ble.record, clock, irks=keys.irks)
    adapter = BleAdapter(backend, decoder)
    return Runtime(
        settings,
        clock,
        table,
        resolver,
        pipeline,
        adapter,
        feedback,
        used_codes,
        nfc=tuple(_nfc_readers(settings, clock)),
        scanners=tuple(_scanners(settings, clock)),
        rule_paths=tuple(rule_paths),
    )


def tag_uid_key(settings: Settings) -> bytes:
    """The key tag UIDs are hashed with: derived from the pseudonym key, never stored."""
    secret = settings.identity.pseudonym_key.get_secret_value().encode()
    return hmac.new(secret, b"proximity nfc tag uid", hashlib.sha256).digest()


def _nfc_readers(settings: Settings, clock: Clock) -> list[NfcAdapter]:
    return [
        NfcAdapter(
            reader.path,
            reader.id,
            tag_uid_key(settings),
            clock,
            debounce=reader.debounce.total_seconds(),
        )
        for reader in settings.nfc
    ]


def _scanners(settings: Settings, clock: Clock) -> list[CodeReader]:
    out: list[CodeReader] = []
    for scanner in settings.scanners:
        window = scanner.window.total_seconds()
        if scanner.serial is not None:
            out.append(
                SerialScanner(
                    scanner.serial, scanner.id, clock, baudrate=scanner.baudrate, window=window
                )
            )
        elif scanner.camera is not None:
            out.append(
                Camera(
                    scanner.camera,
                    scanner.id,
                    clock,
                    decoder=DecoderKind(scanner.decoder),
                    max_fps=scanner.max_fps,
                    window=window,
                )
            )
    return out
