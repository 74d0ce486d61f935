"""Store brokers bridged to a central mosquitto with the shipped deploy/mosquitto/bridge.conf
(and the central broker's shipped ACL, deploy/mosquitto/chain.acl): each store's up tree
reaches the centre once, each store's down tree comes back to that store only, nothing
loops, and a central outage is bridged by the stores' queues."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.mosquitto import Mosquitto, find_mosquitto

pytestmark = pytest.mark.timeout(60)

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
        assert old in text, f"bridge.conf no longer has {old!r}: update this test"
        text = text.replace(old, new)
    return text


@dataclass
class Chain:
    central: Mosquitto
    stores: dict[str, Mosquitto]


def make_chain(tmp_path: Path, stores: list[str]) -> Iterator[Chain]:
    """A central mosquitto (the shipped ACL, a password for each store, hq and rollout)
    and one store mosquitto per store, bridged to it; yields once every bridge is up."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
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
            assert up, f"bridges not up: {watch.messages}"
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
            assert subscribed.wait(5), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def got(self, payload: bytes) -> list[str]:
        return [t for t, p in self.messages if p == payload]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    yield from make_chain(tmp_path, ["store-a", "store-b"])


def test_up_reaches_the_centre_once_and_down_reaches_its_store_only(chain: Chain) -> None:
    a, b = chain.stores["store-a"], chain.stores["store-b"]
    hq = Client(chain.central.port, "proximity/v1/#", username="hq")
    seen = Client(chain.central.port, "proximity/#", username="observer")
    on_a = Client(a.port, "proximity/#")
    on_b = Client(b.port, "proximity/#")
    try:
        on_a.publish("proximity/v1/store-a/up/facts", b"batch-a")
        on_b.publish("proximity/v1/store-b/up/status", b"status-b")
        # what stays in the store: not bridged (offers, events, another store's tree)
        on_a.publish("proximity/v1/store-a/shoppers/tok/offers", b"offer-a")
        on_a.publish("proximity/v1/store-b/up/facts", b"forged-b")
        hq.publish("proximity/v1/store-a/down/acks", b"ack-a")
        rollout = Client(chain.central.port, username="rollout")
        rollout.publish("proximity/v1/store-b/down/rules", b"bundle-b")
        rollout.close()
        assert until(lambda: on_a.got(b"ack-a") and on_b.got(b"bundle-b") and hq.got(b"status-b"))
        time.sleep(0.5)  # room for a duplicate or a loop to show
        assert hq.got(b"batch-a") == ["proximity/v1/store-a/up/facts"]
        assert hq.got(b"status-b") == ["proximity/v1/store-b/up/status"]
        assert hq.got(b"offer-a") == []
        assert hq.got(b"forged-b") == []
        assert on_a.got(b"ack-a") == ["proximity/v1/store-a/down/acks"]
        assert on_b.got(b"ack-a") == []
        assert on_a.got(b"bundle-b") == []
        assert hq.got(b"ack-a") == []  # hq reads only the up trees (chain.acl)
        assert seen.got(b"ack-a") == ["proximity/v1/store-a/down/acks"]  # not echoed back
        assert seen.got(b"batch-a") == ["proximity/v1/store-a/up/facts"]
        assert on_a.got(b"batch-a") == ["proximity/v1/store-a/up/facts"]  # nor back down
        assert on_b.got(b"batch-a") == []
    finally:
        for client in (hq, seen, on_a, on_b):
            client.close()


def test_the_central_acl_keeps_each_store_to_its_own_trees(chain: Chain) -> None:
    hq = Client(chain.central.port, "proximity/v1/#", username="hq")
    spy = Client(chain.central.port, "proximity/v1/store-b/down/#", username="store-a")
    forger = Client(chain.central.port, username="store-a")
    try:
        forger.publish("proximity/v1/store-b/up/facts", b"forged")  # accepted, not delivered
        forger.publish("proximity/v1/store-a/up/facts", b"own")
        hq.publish("proximity/v1/store-b/down/acks", b"ack-b")
        assert until(lambda: hq.got(b"own"))
        time.sleep(0.3)
        assert hq.got(b"forged") == []
        assert spy.got(b"ack-b") == []
    finally:
        for client in (hq, spy, forger):
            client.close()


def test_a_central_outage_is_queued_by_the_store_and_delivered_once(chain: Chain) -> None:
    a = chain.stores["store-a"]
    hq = Client(chain.central.port, "proximity/v1/+/up/#", username="hq", session="hq-test")
    on_a = Client(a.port)
    try:
        on_a.publish("proximity/v1/store-a/up/facts", b"before")
        assert until(lambda: hq.got(b"before"))
        chain.central.stop()  # persists hq's session
        for n in range(20):
            on_a.publish("proximity/v1/store-a/up/facts", b"during-%d" % n)
        time.sleep(0.5)
        chain.central.start()
        wanted = [b"during-%d" % n for n in range(20)]
        assert until(lambda: all(hq.got(w) for w in wanted), 15)
        time.sleep(0.5)
        assert all(len(hq.got(w)) == 1 for w in wanted)  # once each, whatever the bridge did
    finally:
        hq.close()
        on_a.close()
