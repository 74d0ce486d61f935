"""hq.toml: the settings of ``proximity hq`` (and of ``proximity rollout``), one frozen model.

    [hq]
    broker = "mqtts://hq:secret@central.example.net"   # the central broker
    database = "postgresql://hq@db.example.net/proximity"
    stale_after = "5m"

    [groups]
    north = ["store-001", "store-002"]

    [rollout]
    signing_key = "keys/ops-2026.pem"
    key_id = "ops-2026"

    [console]                # the chain's console on metrics_host:metrics_port/console/
    token = "..."            # required when metrics_host is not loopback

See ``deploy/hq.example.toml`` for every key with its default and meaning.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from proximity.config import Duration, Segment, load_toml_model
from proximity.console.settings import ConsoleSettings
from proximity.delivery.url import BrokerUrl
from proximity.errors import ConfigError


class _Section(BaseModel):
    # a validation error must not echo its input: the DSN and broker URL may hold passwords
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class HqServiceSettings(_Section):
    broker: BrokerUrl = Field(default_factory=lambda: BrokerUrl.tcp("127.0.0.1", 1883))
    """The central broker every store bridges its uplink to (mqtt:// or mqtts://)."""
    database: str = Field(default="postgresql:///proximity", repr=False)
    """A libpq connection string or URI (``postgresql://user@host:5432/db``)."""
    client_id: str = "proximity-hq"
    """hq's MQTT client id: its persistent session keeps what arrives while it is down."""
    share_group: str = Field(default="hq", pattern=r"^[A-Za-z0-9_.-]{0,64}$")
    """Subscribe as ``$share/{group}/...`` so several hq processes split the load; "" subscribes
    plainly."""
    session_expiry: Duration = timedelta(days=1)
    """How long the broker keeps hq's session (and queues its messages) while hq is away."""
    stale_after: Duration = timedelta(minutes=5)
    """A store whose gateway has not reported for this long is stale on /metrics."""
    metrics_host: str = "127.0.0.1"
    metrics_port: int = Field(default=9465, ge=0, le=65535)
    """0 picks a free port (logged as metrics_listening)."""
    batch_rows: int = Field(default=5000, ge=1)
    """Commit when this many fact rows are buffered ..."""
    flush_every: Duration = timedelta(milliseconds=200)
    """... or when the oldest buffered batch has waited this long."""
    ca_file: Path | None = None
    """mqtts:// only: the CA that signed the broker's certificate (none: the system's CAs)."""
    client_cert: Path | None = None
    """mqtts:// only: hq's certificate, for brokers that require one."""
    client_key: Path | None = None
    username: str | None = None
    """Broker user name; overrides one written in the broker URL."""
    password: SecretStr | None = None

    @field_validator("database")
    @classmethod
    def _dsn(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("database needs a PostgreSQL connection string")
        return value

    def broker_url(self) -> BrokerUrl:
        """The broker URL with ``username``/``password`` applied."""
        update: dict[str, Any] = {}
        if self.username is not None:
            update["username"] = self.username
        if self.password is not None:
            update["password"] = self.password
        return self.broker.model_copy(update=update) if update else self.broker


class RolloutSettings(_Section):
    signing_key: Path | None = None
    """The Ed25519 private key (PEM) ``proximity rollout publish`` signs bundles with."""
    key_id: str = ""
    """The name gateways know the key's public half by (docs/chain.md: ``key``)."""
    canary_watch: Duration = timedelta(seconds=60)
    """How long a canary store is watched before the rest of a rollout goes."""


class HqSettings(_Section):
    hq: HqServiceSettings = Field(default_factory=HqServiceSettings)
    groups: dict[str, list[Segment]] = Field(default_factory=dict)
    """Named sets of store ids, for reports (``--group``) and rollouts."""
    rollout: RolloutSettings = Field(default_factory=RolloutSettings)
    console: ConsoleSettings = Field(default_factory=ConsoleSettings)
    """The chain's console (proximity/console/chain.py) on hq's /metrics server: ``enabled``,
    ``token`` (required off loopback), ``subscriber_queue``, ``max_subscribers``."""

    @field_validator("groups")
    @classmethod
    def _groups(cls, groups: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, stores in groups.items():
            if not stores:
                raise ValueError(f"group {name!r} has no stores")
            if len(set(stores)) != len(stores):
                raise ValueError(f"group {name!r} lists a store twice")
        return groups

    def group(self, name: str) -> list[str]:
        """The stores of group ``name``; ConfigError naming the known groups if none."""
        try:
            return list(self.groups[name])
        except KeyError:
            known = ", ".join(sorted(self.groups)) or "none"
            raise ConfigError(f"no group {name!r} in [groups] (known: {known})") from None


def load_hq_settings(path: Path) -> HqSettings:
    """Read and validate hq.toml; relative paths in it are taken from its folder.

    Raises ConfigError listing every problem, one ``path:line:column: key: message`` line each.
    """
    settings = load_toml_model(path, HqSettings, "deploy/hq.example.toml")
    return _resolve_paths(settings, path.parent)


def _resolve_paths(settings: HqSettings, base: Path) -> HqSettings:
    hq = settings.hq
    for key in ("ca_file", "client_cert", "client_key"):
        value = getattr(hq, key)
        if value is not None and not value.is_absolute():
            hq = hq.model_copy(update={key: base / value})
    rollout = settings.rollout
    if rollout.signing_key is not None and not rollout.signing_key.is_absolute():
        rollout = rollout.model_copy(update={"signing_key": base / rollout.signing_key})
    return settings.model_copy(update={"hq": hq, "rollout": rollout})
