"""deploy/mosquitto's ACL, on a real mosquitto: a shopper reads only their own offers."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from proximity.clock import VirtualClock
from proximity.delivery.app_client import ShopperApp
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from tests.factories import T0
from tests.mosquitto import Mosquitto, secured_broker
from tests.test_app_client import collect
from tests.test_publisher import make_offer

ROOT = Path(__file__).resolve().parent.parent
USERS = {"gw-store-001": "gw-secret", "s-alice": "alice-pw", "s-bob": "bob-pw"}


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Mosquitto]:
    with secured_broker(tmp_path, USERS) as broker:
        yield broker


def url(broker: Mosquitto, user: str, password: str | None = None) -> BrokerUrl:
    return BrokerUrl.parse(f"mqtt://{user}:{password or USERS[user]}@127.0.0.1:{broker.port}")


async def test_shopper_a_cannot_read_shopper_b(secured: Mosquitto) -> None:
    async with (
        ShopperApp(url(secured, "s-alice"), store="store-001", token="s-alice") as alice,
        ShopperApp(url(secured, "s-bob"), store="store-001", token="s-bob") as bob,
        # Alice, with her own credentials, tries to listen to Bob's offers: mosquitto
        # grants the subscription but the ACL never delivers a message on it
        ShopperApp(
            url(secured, "s-alice"), store="store-001", token="s-bob", client_id="alice-snooping"
        ) as snoop,
        MqttPublisher(
            url(secured, "gw-store-001"),
            store="store-001",
            gateway="gw-1",
            client_id="gw",
            clock=VirtualClock(T0),
        ) as gateway,
    ):
        await gateway.publish_offer("s-alice", make_offer(id="o-alice"))
        await gateway.publish_offer("s-bob", make_offer(id="o-bob"))
        (for_alice,) = await collect(alice, 1)
        (for_bob,) = await collect(bob, 1)
        await asyncio.sleep(0.3)
        assert (for_alice.offer.id, for_bob.offer.id) == ("o-alice", "o-bob")
        assert alice.pending == 0
        assert snoop.pending == 0  # Bob's offer never reached Alice's snooping client


async def test_wrong_passwords_and_foreign_stores_are_refused(secured: Mosquitto) -> None:
    with pytest.raises(BrokerUnavailable, match="refused"):
        async with MqttPublisher(
            url(secured, "gw-store-001", "wrong"),
            store="store-001",
            gateway="gw-1",
            client_id="gw-x",
        ):
            pass
    # the store-001 gateway may not publish as another store (its status is refused first)
    with pytest.raises(BrokerUnavailable, match="refused the publish: Not authorized"):
        async with MqttPublisher(
            url(secured, "gw-store-001"),
            store="store-002",
            gateway="gw-1",
            client_id="gw-y",
            publish_timeout=2,
        ):
            pass
