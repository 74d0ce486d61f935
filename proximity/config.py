"""The daemon's settings: one frozen model, loaded from TOML, overridden by CLI flags.

See ``config.example.toml`` for every field with its default and meaning.
"""

from __future__ import annotations

import tomllib
from datetime import timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar
from uuid import UUID

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from proximity.codes import CouponSigner, parse_key
from proximity.console.settings import ConsoleSettings
from proximity.delivery.url import BrokerUrl
from proximity.engine.durations import parse_duration
from proximity.engine.tomlpos import locate, syntax_error
from proximity.errors import ConfigError
from proximity.presence.machine import PresenceConfig

#: The demo app's proximity UUID (used by the simulator's shopper phones).
DEMO_APP_UUID = UUID("f7826da6-4fa2-4e98-8024-bc5b71e0893e")
#: A key that is fine for the demo and refused for a real store (see ``run``).
DEMO_PSEUDONYM_KEY = "demo-only-pseudonym-key-change-me"


def _duration(value: Any) -> Any:
    if isinstance(value, str):
        return parse_duration(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration)]
Segment = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StoreSettings(_Section):
    id: Segment = "store-001"
    gateway: Segment = "gw-1"


class BrokerSettings(_Section):
    url: BrokerUrl = Field(default_factory=lambda: BrokerUrl.parse("embedded"))
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    """auto: MQTT 5 for an external broker, 3.1.1 for the embedded one (amqtt)."""
    client_id: str | None = None
    embedded_host: str = "127.0.0.1"
    embedded_port: int = Field(default=1883, ge=0, le=65535)
    """0 picks a free port."""
    publish_timeout: Duration = timedelta(seconds=10)
    ca_file: Path | None = None
    """mqtts:// only: the CA that signed the broker's certificate (none: the system's CAs)."""
    client_cert: Path | None = None
    """mqtts:// only: this gateway's certificate, for brokers that require one."""
    client_key: Path | None = None


class BleBackendKind(StrEnum):
    SIM = "sim"
    BLEAK = "bleak"
    REPLAY = "replay"
    NODES = "nodes"
    """Remote scanner nodes only (``[[nodes]]``), no local radio."""


class SimSettings(_Section):
    walk: Path | None = None
    """A walk script (TOML); none means the built-in demo walk."""
    seed: int = 7
    repeat: bool = False
    scenario: Literal["sparse", "crowded", "noisy", "quiet"] | None = None
    """Instead of one scripted walk, a seeded crowd (firmware_sim's scenarios) in a store."""
    store: Path | None = None
    """The simulated store (firmware_sim/stores/*.toml); none means the example store."""
    shoppers: int | None = Field(default=None, ge=1)
    """With a scenario: how many shoppers arrive (default: the scenario's)."""
    arrival_window: Duration | None = None
    """With a scenario: over how long they arrive (default: the scenario's hour);
    "12h" makes a trading day."""
    speed: float = Field(default=1.0, gt=0)
    """`proximity run` with the simulator: how many times faster than real time the whole
    daemon's clock runs (60: a store hour in a minute)."""


class ReplaySettings(_Section):
    """``backend = "replay"``: a readings recording (``[ble] record``, or
    ``python -m firmware_sim run --record-readings``) played into the daemon."""

    file: Path | None = None
    speed: float = Field(default=1.0, ge=0)
    """How many times faster than it was heard (1: real time); 0: virtual time, as fast as
    the daemon goes, with every tick on the recorded instants (the same journey events)."""
    linger: Duration = timedelta(minutes=2)
    """After the last reading, keep the clock running this long so exit and visit timeouts
    run out (at least presence.exit_timeout + visit_timeout); then the daemon stops."""


#: A BlueZ adapter name (hci0): one element of a D-Bus object path.
AdapterName = Annotated[str, Field(pattern=r"^[A-Za-z0-9_]{1,64}$")]


class BleSettings(_Section):
    backend: BleBackendKind = BleBackendKind.SIM
    adapter: AdapterName | None = None
    """BlueZ adapter for the bleak backend, e.g. hci0; none means the default. Its
    advertisements carry the adapter's name as their scanner."""
    adapters: dict[Segment, AdapterName] | None = None
    """bleak backend, several radios in one gateway: scanner id (as a rule file's zones
    list it) -> BlueZ adapter, e.g. { "gw-coffee" = "hci0", "gw-bakery" = "hci1" }. Each
    adapter is scanned on its own and its advertisements carry that scanner id."""
    mode: Literal["active", "passive"] = "active"
    """bleak backend: passive listens only (BlueZ advertisement monitors, iBeacon pattern)."""
    silence: Duration = timedelta(seconds=30)
    """bleak backend: no advertisement for this long restarts the scan (the watchdog)."""
    sim: SimSettings = Field(default_factory=SimSettings)
    record: Path | None = None
    """Append every advertisement heard (any backend) to this JSON-lines file, device
    addresses replaced by per-session aliases, for ``backend = "replay"``."""
    replay: ReplaySettings = Field(default_factory=ReplaySettings)

    @model_validator(mode="after")
    def _replay_has_a_file(self) -> Self:
        if self.backend is BleBackendKind.REPLAY and self.replay.file is None:
            raise ValueError('backend = "replay" needs the recording: set ble.replay.file')
        return self

    @model_validator(mode="after")
    def _one_way_to_name_adapters(self) -> Self:
        if self.adapters is None:
            return self
        if self.adapter is not None:
            raise ValueError(
                "give ble.adapter (one radio) or ble.adapters (scanner id -> adapter), not both"
            )
        if not self.adapters:
            raise ValueError("ble.adapters is empty: map at least one scanner id to an adapter")
        seen: dict[str, str] = {}
        for scanner, adapter in self.adapters.items():
            if adapter in seen:
                # one radio cannot be two scanners: each advertisement would count twice
                raise ValueError(
                    f"ble.adapters: adapter {adapter!r} is given to both {seen[adapter]!r} "
                    f"and {scanner!r}"
                )
            seen[adapter] = scanner
        return self

    def scanners(self) -> dict[str, str | None]:
        """Scanner id -> BlueZ adapter (None: the default adapter) the bleak backend scans."""
        if self.adapters is not None:
            return dict(self.adapters)
        return {self.adapter or "default": self.adapter}


class IdentitySettings(_Section):
    app_uuids: list[UUID] = Field(default_factory=lambda: [DEMO_APP_UUID], min_length=1)
    anonymous_uuids: list[UUID] = Field(default_factory=list)
    """Beacons that show presence without identity (e.g. cart beacons): zone signage only."""
    segments: Path | None = None
    """A CSV of pseudonymous token → segments (token,seg1;seg2), for when.segment."""
    pseudonym_key: SecretStr = SecretStr(DEMO_PSEUDONYM_KEY)
    anonymous_namespaces: list[Annotated[str, Field(pattern=r"^[0-9a-fA-F]{20}$")]] = Field(
        default_factory=list
    )
    """Eddystone-UID namespaces (20 hex digits) of cart and basket beacons: anonymous."""
    shopper_keys: Path | None = None
    """CSV of registered shoppers' keys (token,rotating|irk,hex key,yes|no consent), for
    phones advertising rotating identifiers or resolvable private addresses."""
    rotating_period: Duration = timedelta(minutes=15)
    """How long one rotating identifier lasts (the app's setting)."""
    max_ids_per_address: int = Field(default=10, ge=1)
    """A device address advertising more beacon identities than this is banned."""
    ban_for: Duration = timedelta(hours=1)
    new_ids_per_second: float = Field(default=50.0, gt=0)
    """New beacon identities admitted per second at most (a burst of 200 first):
    a flood of spoofed identities cannot push real shoppers out of the tracked set."""

    @field_validator("pseudonym_key")
    @classmethod
    def _long_enough(cls, value: SecretStr) -> SecretStr:
        if len(value.get_secret_value().encode()) < 16:
            raise ValueError("pseudonym_key must be at least 16 bytes")
        return value


#: A code-signing key that is fine for the demo and refused for a real store (see ``run``).
DEMO_CODE_KEY = "demo-only-code-key-change-me-0000"


class CodeSettings(_Section):
    """Signed codes (check-in, cart binding, coupon): the keys and the replay memory."""

    keys: dict[int, SecretStr] = Field(default_factory=lambda: {1: SecretStr(DEMO_CODE_KEY)})
    """Key id -> key (``hex:...``, ``base64:...`` or text, 16 bytes or more). Codes signed
    with any of them are accepted; keep an old key here until its codes have expired."""
    sign_with: int = 1
    """The key id `proximity qr make` signs with."""
    used: Path | None = None
    """SQLite file of the codes already used, so a replay fails after a restart too."""
    skew: Duration = timedelta(seconds=60)
    """Clock difference tolerated between whoever issued a code and this gateway."""
    coupon_validity: Duration = timedelta(days=1)
    """How long the code of an offer with a coupon can be redeemed (at least the offer's
    own lifetime)."""

    @field_validator("keys")
    @classmethod
    def _valid_keys(cls, keys: dict[int, SecretStr]) -> dict[int, SecretStr]:
        for key_id, key in keys.items():
            if not 0 <= key_id <= 255:
                raise ValueError(f"key id {key_id} is not in 0-255")
            parse_key(key.get_secret_value())
        return keys

    @model_validator(mode="after")
    def _signing_key_known(self) -> Self:
        if self.sign_with not in self.keys:
            raise ValueError(f"codes.sign_with = {self.sign_with} is not one of codes.keys")
        return self

    def key_bytes(self) -> dict[int, bytes]:
        return {i: parse_key(k.get_secret_value()) for i, k in self.keys.items()}

    def coupon_signer(self) -> CouponSigner:
        return CouponSigner(self.key_bytes()[self.sign_with], self.sign_with, self.coupon_validity)


class NfcReaderSettings(_Section):
    id: Segment
    """The reader's name: what a rule file's zones list under ``readers``."""
    path: str
    """nfcpy device path: ``usb``, ``usb:054c:06c3``, ``tty:USB0:pn532``, ``udp:host:port``."""
    debounce: Duration = timedelta(seconds=2)
    """A tag back on the reader within this time of leaving is the same tap."""


class ScannerSettings(_Section):
    id: Segment
    """The scanner's or camera's name: what a rule file's zones list under ``readers``."""
    serial: str | None = None
    """A 2D scanner on a serial line: ``/dev/ttyACM0``, ``/dev/ttyUSB0``..."""
    baudrate: int = Field(default=9600, gt=0)
    camera: str | None = None
    """A camera: an index (``0``), ``/dev/video0``, a video file or a stream URL."""
    decoder: Literal["cascade", "zxing", "zbar"] = "zxing"
    """zxing: fast, reads the most on its own; cascade: adds zbar on frames without a
    code (a few more real photos, ten times the cost of an empty frame)."""
    max_fps: float = Field(default=10.0, gt=0)
    """Camera frames decoded per second at most."""
    window: Duration = timedelta(seconds=2)
    """The same code again within this time of its last sighting is the same scan."""

    @model_validator(mode="after")
    def _one_source(self) -> Self:
        if (self.serial is None) == (self.camera is None):
            raise ValueError(f"scanner {self.id!r}: give exactly one of serial or camera")
        return self


class ZonePresenceSettings(_Section):
    """One zone's own thresholds (a small zone near a busy aisle wants a stronger signal)."""

    enter_rssi: float | None = Field(default=None, ge=-127, le=20)
    exit_rssi: float | None = Field(default=None, ge=-127, le=20)
    exit_timeout: Duration | None = None


class PresenceSettings(_Section):
    enter_rssi: float = Field(default=-75.0, ge=-127, le=20)
    exit_rssi: float = Field(default=-85.0, ge=-127, le=20)
    exit_timeout: Duration = timedelta(seconds=15)
    rssi_window: Duration = timedelta(seconds=5)
    filter: Literal["trimmed_mean", "asymmetric"] = "trimmed_mean"
    """trimmed_mean over rssi_window, or asymmetric: rises trusted (rise), drops less (fall)."""
    rise: float = Field(default=0.5, gt=0, le=1)
    fall: float = Field(default=0.15, gt=0, le=1)
    exit_after_missed: int = Field(default=0, ge=0)
    """0: exit after exit_timeout. N: after N of the phone's advertising intervals (learned)
    without a sample, between min_exit_timeout and exit_timeout."""
    min_exit_timeout: Duration = timedelta(seconds=3)
    visit_timeout: Duration = timedelta(seconds=60)
    tick: Duration = timedelta(seconds=1)
    max_visits: int = Field(default=10_000, ge=1)
    exclusive: bool = True
    """A shopper is in one zone at a time: the one heard strongest. False when zones nest
    (a department and the aisles in it) and a shopper can be in several at once."""
    switch_margin: float = Field(default=4.0, ge=0, le=40)
    """dB another zone must be heard stronger than the shopper's zone to take over
    (exclusive zones): RSSI noise between two neighbouring zones does not flap."""
    zones: dict[str, ZonePresenceSettings] = Field(default_factory=dict)
    """Per-zone thresholds, by the rule file's zone id."""
    method: Literal["threshold", "fused", "nearest", "multilateration"] = "threshold"
    """threshold: each zone's scanners and the RSSI thresholds above. With a floor plan:
    fused (a Bayesian filter over the plan's zones, every scanner at once) or nearest (the
    nearest scanner's zone, with hysteresis: the comparator), or multilateration (a
    least-squares position, Kalman-filtered, in the zone containing it: the comparator)."""
    floor_plan: Path | None = None
    """The store's floor plan (the simulator's store format: zones, scanners, reference
    beacons); needed by the floor-plan methods (fused, nearest, multilateration)."""
    scanner_silence: Duration = timedelta(seconds=10)
    """Floor-plan methods: a scanner nobody is heard by for this long is down (its silence
    says nothing about where shoppers are)."""

    @model_validator(mode="after")
    def _plan_for_method(self) -> Self:
        if self.method != "threshold" and self.floor_plan is None:
            raise ValueError(
                f'presence.method = "{self.method}" needs the store\'s floor plan: '
                "set presence.floor_plan"
            )
        return self

    @model_validator(mode="after")
    def _hysteresis(self) -> Self:
        if self.exit_rssi > self.enter_rssi:
            raise ValueError("presence.exit_rssi must not be above presence.enter_rssi")
        for zone, own in self.zones.items():
            enter = own.enter_rssi if own.enter_rssi is not None else self.enter_rssi
            exit_ = own.exit_rssi if own.exit_rssi is not None else self.exit_rssi
            if exit_ > enter:
                raise ValueError(
                    f"presence.zones.{zone}: exit_rssi {exit_:g} is above enter_rssi {enter:g}"
                )
        return self

    def machine_config(self, zone: str | None = None) -> PresenceConfig:
        own = self.zones.get(zone) if zone is not None else None
        return PresenceConfig(
            enter_rssi=own.enter_rssi if own and own.enter_rssi is not None else self.enter_rssi,
            exit_rssi=own.exit_rssi if own and own.exit_rssi is not None else self.exit_rssi,
            exit_timeout=(
                own.exit_timeout if own and own.exit_timeout is not None else self.exit_timeout
            ),
            window=self.rssi_window,
            filter=self.filter,
            rise=self.rise,
            fall=self.fall,
            exit_after_missed=self.exit_after_missed,
            min_exit_timeout=self.min_exit_timeout,
        )

    def zone_configs(self) -> dict[str, PresenceConfig]:
        return {zone: self.machine_config(zone) for zone in self.zones}

    @property
    def zone_switch_margin(self) -> float | None:
        """What the journey tracker takes: None when zones are not exclusive."""
        return self.switch_margin if self.exclusive else None


class NodeSource(StrEnum):
    """Which firmware a remote scanner node runs: the MQTT format it publishes."""

    OURS = "ours"
    """``proximity/v1/{store}/nodes/{node}/readings``: batches of raw advertisements."""
    ESPRESENSE = "espresense"
    """``espresense/devices/{id}/{room}``: one node-filtered reading per device."""
    OMG = "omg"
    """OpenMQTTGateway or Theengs Gateway: ``home/{gateway}/BTtoMQTT/{device}``."""


NODE_SILENCE = {
    NodeSource.OURS: timedelta(seconds=15),
    NodeSource.ESPRESENSE: timedelta(seconds=60),
    NodeSource.OMG: timedelta(minutes=5),
}
"""How long each kind of node may say nothing before it is taken for dead."""


class NodeSettings(_Section):
    """One remote scanner node: which firmware, its name in topics, which scanner it is."""

    source: NodeSource
    node: Segment
    """The node's name as its topics carry it: ours ``nodes/{node}/``, ESPresense the room
    (``espresense/devices/+/{room}``), OpenMQTTGateway the gateway (``home/{gateway}/``)."""
    scanner: Segment | None = None
    """The scanner id of the floor plan and the rule files (default: the node name)."""
    broker: BrokerUrl | None = None
    """Where the node publishes (default: the gateway's [broker]; embedded: its host and
    port). Nodes on one broker with the same credentials share one connection."""
    username: str | None = None
    """Credentials the gateway reads this node's topics with (instead of the URL's)."""
    password: SecretStr | None = None
    max_rate: float = Field(default=5000.0, gt=0)
    """Readings per second taken from this node at most (a burst of twice as many first):
    a flooding node is throttled and counted, the others go on."""
    silence: Duration | None = None
    """No message from the node for this long: it is marked dead (as on its will). Default
    by source, from how often each speaks when it hears nothing: ours 15s (an empty batch
    every 5s), espresense 60s (its telemetry), omg 5m (its system report, every 2 minutes)."""

    @property
    def scanner_id(self) -> str:
        return self.scanner or self.node

    @property
    def filtered(self) -> bool:
        """Its readings are node-filtered (ESPresense), not raw advertisements."""
        return self.source is NodeSource.ESPRESENSE

    @property
    def silence_after(self) -> timedelta:
        return self.silence if self.silence is not None else NODE_SILENCE[self.source]


class ScanSettings(_Section):
    """``proximity scan``: this machine as a remote scanner node of ours (docs/nodes.md). It
    reads ``[ble]`` and publishes to ``[broker]`` as node ``node`` of ``store.id``."""

    node: Segment | None = None
    """The node's name in its topics (``--node`` overrides it); the gateway's [[nodes]]
    entry names it too."""
    window: Duration = timedelta(milliseconds=100)
    """A batch goes out this long after its first reading at most..."""
    batch: int = Field(default=256, ge=1, le=1024)
    """...or once it holds this many readings."""
    buffer: int = Field(default=10_000, ge=1)
    """Readings kept while the broker is away; the oldest are dropped beyond it (counted)."""
    heartbeat: Duration = timedelta(seconds=5)
    """An empty batch after this long without a reading: the gateway knows the node is up."""


#: The demo store's rules, in the source tree beside the package (editable installs).
EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "rules" / "example-store.toml"


class RulesSettings(_Section):
    paths: list[Path] = Field(default_factory=lambda: [EXAMPLE_RULES])
    watch: bool = True
    """Reload the rules when the files change (a broken change is reported and skipped)."""
    watch_interval: Duration = timedelta(seconds=2)


class EventsSettings(_Section):
    publish: bool = True
    qos: Literal[0, 1] = 0
    record: Path | None = None
    """Append every journey event to this JSON-lines file, for `proximity replay`."""


class DeliverySettings(_Section):
    outbox: Path | None = None
    """SQLite file where offers wait until the broker acknowledges them (none: memory)."""
    state: Path | None = None
    """SQLite file where caps, cooldowns and budgets are kept across restarts (none: memory)."""


class MeasurementSettings(_Section):
    store: Path | None = None
    """SQLite file of the funnel's facts, read by `proximity report` (none: memory only)."""


class MetricsSettings(_Section):
    enabled: bool = True
    """Serve /metrics, /healthz and /readyz while `proximity run` runs."""
    host: str = "127.0.0.1"
    """Keep it on loopback (or a management network): the endpoint has no authentication."""
    port: int = Field(default=9464, ge=0, le=65535)
    """0 picks a free port (logged as metrics_listening)."""


class LoggingSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["auto", "json", "console"] = "auto"


class ChainSettings(_Section):
    """The gateway's uplink to the chain's central tier (docs/chain.md)."""

    enabled: bool = False
    """Seal the funnel's facts into numbered batches and send them, with the gateway's
    status, on proximity/v1/{store}/up/; needs [measurement] store (the batches are kept
    in that file until hq acknowledges them) and a store broker bridged to the centre."""
    seal_every: Duration = timedelta(seconds=60)
    """How often the facts recorded since the last batch are sealed into the next one."""
    resend_after: Duration = timedelta(seconds=30)
    """A batch hq has not acknowledged within this is sent again."""
    status_interval: Duration = timedelta(seconds=30)
    """How often the retained status on up/status is refreshed."""
    max_batch_rows: int = Field(default=5000, ge=1, le=50_000)
    """At most this many facts per batch: a bigger backlog is split over several batches."""
    rollout_keys: dict[Segment, Path] = Field(default_factory=dict)
    """Rule bundle signing keys this gateway trusts: key id -> Ed25519 public key (PEM)."""
    bundles: Path | None = None
    """Folder where applied rule bundles are kept."""

    @field_validator("seal_every", "resend_after", "status_interval")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be longer than 0 s")
        return value


class Settings(_Section):
    store: StoreSettings = Field(default_factory=StoreSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    ble: BleSettings = Field(default_factory=BleSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    presence: PresenceSettings = Field(default_factory=PresenceSettings)
    codes: CodeSettings = Field(default_factory=CodeSettings)
    nfc: list[NfcReaderSettings] = Field(default_factory=list)
    scanners: list[ScannerSettings] = Field(default_factory=list)
    nodes: list[NodeSettings] = Field(default_factory=list)
    """Remote scanner nodes read over MQTT (docs/nodes.md)."""
    scan: ScanSettings = Field(default_factory=ScanSettings)
    rules: RulesSettings = Field(default_factory=RulesSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)
    delivery: DeliverySettings = Field(default_factory=DeliverySettings)
    measurement: MeasurementSettings = Field(default_factory=MeasurementSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    logging: LoggingSettings = Field(default_factory=LoggingSettings)
    chain: ChainSettings = Field(default_factory=ChainSettings)

    @field_validator("nodes")
    @classmethod
    def _one_scanner_per_node(cls, nodes: list[NodeSettings]) -> list[NodeSettings]:
        names: set[tuple[NodeSource, str]] = set()
        scanners: dict[str, str] = {}
        for node in nodes:
            key = (node.source, node.node)
            if key in names:
                raise ValueError(f"{node.source} node {node.node!r} is listed twice")
            names.add(key)
            scanner = node.scanner_id
            if scanner in scanners:
                # two nodes as one scanner: each would seem to hear what the other heard
                raise ValueError(
                    f"scanner {scanner!r} is given to both {scanners[scanner]} and "
                    f"{node.source} node {node.node!r}"
                )
            scanners[scanner] = f"{node.source} node {node.node!r}"
        return nodes

    @model_validator(mode="after")
    def _nodes_with_backend(self) -> Self:
        backend = self.ble.backend
        if backend is BleBackendKind.NODES and not self.nodes:
            raise ValueError('ble.backend = "nodes" needs at least one [[nodes]] table')
        if self.nodes and backend in (BleBackendKind.SIM, BleBackendKind.REPLAY):
            raise ValueError(
                'nodes: [[nodes]] are read with ble.backend = "nodes" (nodes only) or '
                f'"bleak" (local radios and nodes), not "{backend}"'
            )
        embedded = [n for n in self.nodes if (n.broker or self.broker.url).is_embedded]
        if embedded and self.broker.embedded_port == 0:
            raise ValueError(
                f"nodes: {embedded[0].source} node {embedded[0].node!r} publishes to the "
                "embedded broker, which needs a fixed broker.embedded_port (not 0)"
            )
        if backend is BleBackendKind.BLEAK:
            radios = set(self.ble.scanners())
            for node in self.nodes:
                if node.scanner_id in radios:
                    raise ValueError(
                        f"nodes: scanner {node.scanner_id!r} of {node.source} node "
                        f"{node.node!r} is also a local radio (ble.adapters)"
                    )
        return self

    @model_validator(mode="after")
    def _chain_needs_a_file(self) -> Self:
        if not self.chain.enabled:
            return self
        if self.measurement.store is None:
            raise ValueError(
                "chain: enabled needs [measurement] store (a file): the uplink seals the "
                "facts into batches kept in that file until hq acknowledges them, so a "
                "crash or a central outage loses nothing"
            )
        if self.broker.url.is_embedded:
            raise ValueError(
                "chain: enabled needs an external store broker (broker.url): the embedded "
                "broker cannot bridge to the chain's central broker (deploy/mosquitto/"
                "bridge.conf)"
            )
        return self

    def with_broker(self, url: str | None) -> Settings:
        """These settings with ``--broker`` applied."""
        if url is None:
            return self
        broker = self.broker.model_copy(update={"url": BrokerUrl.parse(url)})
        return self.model_copy(update={"broker": broker})

    def mqtt_protocol(self) -> Literal["5", "3.1.1"]:
        if self.broker.protocol != "auto":
            return self.broker.protocol
        return "3.1.1" if self.broker.url.is_embedded else "5"


def load_settings(path: Path) -> Settings:
    """Read and validate a config file; relative paths in it are taken from its folder.

    Raises ConfigError listing every problem, one ``path:line:column: key: message``
    line each.
    """
    return _resolve_paths(load_toml_model(path, Settings, "config.example.toml"), path.parent)


M = TypeVar("M", bound=BaseModel)


def load_toml_model(path: Path, model: type[M], example: str) -> M:
    """``path`` read as TOML and validated as ``model``; ConfigError listing every problem
    as ``path:line:column: key: message`` (an unknown key points at ``example``)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read config: {reason or exc}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_toml_error(path, exc)) from None
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        positions = locate(text)
        lines = []
        for err in exc.errors():
            loc = tuple(p for p in err["loc"] if not isinstance(p, str) or p not in _UNION_TAGS)
            at = positions.lookup(loc, prefer_key=err["type"] == "extra_forbidden")
            key = ".".join(str(p) for p in loc) or "(file)"
            lines.append(f"{path}:{at.line}:{at.column}: {key}: {_message(err, example)}")
        # not chained: the validation error holds the raw input, a broker password included
        raise ConfigError("\n".join(lines)) from None


#: Names pydantic puts in error locations for the member of a union; not config keys.
_UNION_TAGS = frozenset({"function-after[_complete(), BrokerUrl]", "str"})


def _message(err: Any, example: str) -> str:
    if err["type"] == "extra_forbidden":
        return f"unknown key (see {example} for every key)"
    return str(err["msg"]).removeprefix("Value error, ")


def _toml_error(path: Path, exc: tomllib.TOMLDecodeError) -> str:
    """tomllib's "msg (at line L, column C)" as "path:L:C: TOML syntax error: msg"."""
    message, at = syntax_error(exc)
    if at is None:
        return f"{path}: TOML syntax error: {message}"
    return f"{path}:{at.line}:{at.column}: TOML syntax error: {message}"


def _resolve_paths(settings: Settings, base: Path) -> Settings:
    rules = settings.rules.model_copy(
        update={"paths": [p if p.is_absolute() else base / p for p in settings.rules.paths]}
    )
    sim = settings.ble.sim
    if sim.walk is not None and not sim.walk.is_absolute():
        sim = sim.model_copy(update={"walk": base / sim.walk})
    if sim.store is not None and not sim.store.is_absolute():
        sim = sim.model_copy(update={"store": base / sim.store})
    ble = settings.ble.model_copy(update={"sim": sim})
    if ble.record is not None and not ble.record.is_absolute():
        ble = ble.model_copy(update={"record": base / ble.record})
    replay = ble.replay
    if replay.file is not None and not replay.file.is_absolute():
        replay = replay.model_copy(update={"file": base / replay.file})
        ble = ble.model_copy(update={"replay": replay})
    events = settings.events
    if events.record is not None and not events.record.is_absolute():
        events = events.model_copy(update={"record": base / events.record})
    broker = settings.broker
    for key in ("ca_file", "client_cert", "client_key"):
        value = getattr(broker, key)
        if value is not None and not value.is_absolute():
            broker = broker.model_copy(update={key: base / value})
    measurement = settings.measurement
    if measurement.store is not None and not measurement.store.is_absolute():
        measurement = measurement.model_copy(update={"store": base / measurement.store})
    identity = settings.identity
    if identity.segments is not None and not identity.segments.is_absolute():
        identity = identity.model_copy(update={"segments": base / identity.segments})
    if identity.shopper_keys is not None and not identity.shopper_keys.is_absolute():
        identity = identity.model_copy(update={"shopper_keys": base / identity.shopper_keys})
    delivery = settings.delivery
    for key in ("state", "outbox"):
        value = getattr(delivery, key)
        if value is not None and not value.is_absolute():
            delivery = delivery.model_copy(update={key: base / value})
    presence = settings.presence
    if presence.floor_plan is not None and not presence.floor_plan.is_absolute():
        presence = presence.model_copy(update={"floor_plan": base / presence.floor_plan})
    chain = settings.chain
    keys = {k: p if p.is_absolute() else base / p for k, p in chain.rollout_keys.items()}
    chain = chain.model_copy(update={"rollout_keys": keys})
    if chain.bundles is not None and not chain.bundles.is_absolute():
        chain = chain.model_copy(update={"bundles": base / chain.bundles})
    codes = settings.codes
    if codes.used is not None and not codes.used.is_absolute():
        codes = codes.model_copy(update={"used": base / codes.used})
    return settings.model_copy(
        update={
            "chain": chain,
            "codes": codes,
            "presence": presence,
            "rules": rules,
            "ble": ble,
            "events": events,
            "delivery": delivery,
            "identity": identity,
            "measurement": measurement,
            "broker": broker,
        }
    )
