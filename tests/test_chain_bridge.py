"""Store brokers bridged to a central mosquitto with the shipped deploy/mosquitto/bridge.conf
(and the central broker's shipped ACL, deploy/mosquitto/chain.acl): each store's up tree
reaches the centre once, each store's down tree comes back to that store only, nothing
loops, and a central outage is bridged by the stores' queues."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chain_brokers import Chain, Client, chain_brokers, until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    with chain_brokers(tmp_path, ["store-a", "store-b"]) as brokers:
        yield brokers


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
