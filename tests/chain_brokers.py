"""A chain's brokers for the tests and bench/chain_drill: a central mosquitto with the
shipped ACL (deploy/mosquitto/chain.acl) and store mosquittos bridged to it with the
shipped deploy/mosquitto/bridge.conf, filled in as an operator would; and a small paho
client that records what it receives."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from firmware_sim.mosquitto import Mosquitto, find_mosquitto

DEPLOY = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto"
BRIDGE = DEPLOY / "bridge.conf"
CHAIN_ACL = DEPLOY / "chain.acl"
PASSWORD = "s3cret-test"


def bridge_config(store: str, central_port: int) -> str:
    """The shipped bridge.conf for ``store``, as an operator fills it in (store id, address,
    password); only restart_timeout is shortened (1-2 s, not 2-30 s). A single constant
    (`restart_timeout 1`) waited about 5 s in mosquitto 2.0.11."""
    text = BRIDGE.read_text()
    replaced = {
        "store-001": store,
        "address central.chain.example:8883": f"address 127.0.0.1:{central_port}",
        "remote_password change-me": f"remote_password {PASSWORD}",
        "restart_timeout 2 30": "restart_timeout 1 2",
    }
    for old, new in replaced.items():
        if old not in text:
            raise AssertionError(
                f"bridge.conf no longer has {old!r}: update tests/chain_brokers.py"
            )
        text = text.replace(old, new)
    return text


@dataclass
class Chain:
    central: Mosquitto
    stores: dict[str, Mosquitto]


@contextmanager
def chain_brokers(tmp_path: Path, stores: list[str]) -> Iterator[Chain]:
    """A central mosquitto (the shipped ACL, a password for each store, hq and rollout)
    and one store mosquitto per store, bridged to it; yields once every bridge is up."""
    binary = find_mosquitto()
    if binary is None:
        raise RuntimeError("mosquitto is not installed: run `make test`")
    (tmp_path / "central").mkdir()
    passwd = tmp_path / "central" / "chain.passwd"
    acl = tmp_path / "central" / "chain.acl"  # the shipped ACL, and a test-only observer
    acl.write_text(CHAIN_ACL.read_text() + "\n# the test's observer\nuser observer\ntopic read #\n")
    for n, user in enumerate([*stores, "hq", "rollout", "observer"]):
        flags = ["-b", "-c"] if n == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(passwd), user, PASSWORD],
            check=True,
            capture_output=True,
        )
    central = Mosquitto(
        binary,
        tmp_path / "central",
        anonymous=False,
        persistent=True,
        extra_config=f"password_file {passwd}\nacl_file {acl}\n",
    )
    central.start()
    started: dict[str, Mosquitto] = {}
    try:
        for store in stores:
            (tmp_path / store).mkdir()
            broker = Mosquitto(
                binary, tmp_path / store, extra_config=bridge_config(store, central.port)
            )
            broker.start()
            started[store] = broker
        watch = Client(central.port, "proximity/v1/+/bridge/state", username="hq")
        try:
            up = until(lambda: {t.split("/")[2] for t in watch.got(b"1")} == set(stores))
            if not up:
                raise RuntimeError(f"bridges not up: {watch.messages}")
        finally:
            watch.close()
        yield Chain(central, started)
    finally:
        for broker in started.values():
            broker.stop()
        central.stop()


def until(condition: Callable[[], object], limit_s: float = 10.0) -> bool:
    """Poll ``condition`` (these tests are synchronous: paho's threads do the work)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class Client:
    """A paho client on one broker: publishes, and records what its subscription gets.
    ``session``: a persistent session under that client id (survives a broker restart
    when the broker persists)."""

    def __init__(
        self,
        port: int,
        topic: str | None = None,
        *,
        username: str | None = None,
        session: str | None = None,
    ) -> None:
        self.messages: list[tuple[str, bytes]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=session or "", protocol=mqtt.MQTTv5
        )
        self.client.reconnect_delay_set(1, 1)
        if username is not None:
            self.client.username_pw_set(username, PASSWORD)
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, bytes(m.payload)))
        self.client.on_subscribe = lambda *args: subscribed.set()
        properties = None
        if session is not None:
            properties = Properties(PacketTypes.CONNECT)
            properties.SessionExpiryInterval = 600
        self.client.connect("127.0.0.1", port, clean_start=session is None, properties=properties)
        self.client.loop_start()
        if topic is not None:
            self.client.subscribe(topic, qos=1)
            if not subscribed.wait(5):
                self.close()
                raise RuntimeError(f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def got(self, payload: bytes) -> list[str]:
        return [t for t, p in self.messages if p == payload]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()
