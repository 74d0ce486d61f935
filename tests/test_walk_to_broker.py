"""The walking skeleton end to end: a scripted beacon walk becomes offers on a real mosquitto.

The daemon runs on a virtual clock (the simulator drives time), so the walk,
the journey events and the offers — ids included — are the same on every run.
A paho subscriber of our own, independent of Proximity's client code, checks
what the broker carried.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties

from firmware_sim.walk import Walk, builtin_walk
from proximity.clock import VirtualClock
from proximity.config import BleSettings, Settings, SimSettings
from proximity.engine.decide import Decision
from proximity.events import EventKind, JourneyEvent
from proximity.identity.resolver import CONSENT_BIT
from proximity.offers import offer_id
from proximity.wiring import build_runtime
from tests.factories import T0
from tests.mosquitto import Mosquitto


class Subscriber:
    """A plain paho MQTT 5 subscriber on proximity/#, collecting (topic, payload, properties)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, bytes, Properties | None]] = []
        self._subscribed = threading.Event()
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self._client.on_message = lambda c, u, m: self.messages.append(
            (m.topic, m.payload, getattr(m, "properties", None))
        )
        self._client.on_subscribe = lambda *a: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.loop_start()
        self._client.subscribe("proximity/#", qos=1)
        assert self._subscribed.wait(5), "no SUBACK from mosquitto"

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()

    def offers(self) -> list[tuple[str, dict[str, Any], Properties | None]]:
        return [(t, json.loads(p), props) for t, p, props in self.messages if t.endswith("/offers")]


def expected_offers(events: list[JourneyEvent]) -> dict[str, tuple[str, JourneyEvent]]:
    """The offers rules/example-store.toml must produce for these events, by rule id."""
    want = {}
    for e in events:
        if e.kind is EventKind.ZONE_ENTER and e.zone == "entrance":
            want["welcome-directions"] = ("go", e)
        if e.kind is EventKind.ZONE_DWELL and e.zone == "coffee" and e.threshold_s == 30:
            want["coffee-coupon"] = ("buy", e)
        if e.kind is EventKind.ZONE_DWELL and e.zone == "bakery" and e.threshold_s == 20:
            want["bakery-fresh-bread"] = ("know", e)
    return want


async def test_the_demo_walk_becomes_the_exact_offers_on_mosquitto(mosquitto: Mosquitto) -> None:
    settings = Settings().with_broker(str(mosquitto.url))
    clock = VirtualClock(T0)
    runtime = build_runtime(settings, clock)
    decisions: list[Decision] = []
    subscriber = Subscriber(mosquitto.port)
    try:
        async with runtime.publisher(settings.broker.url) as publisher:
            daemon = runtime.daemon(publisher, on_decision=decisions.append)
            stats = await daemon.run()
        assert stats.offers_published == 3
        assert stats.publish_failures == 0
        assert stats.offers_waiting == 0
        events = [d.event for d in decisions]
        kinds = [str(e.kind) for e in events]
        assert kinds[0] == "visit.start"
        assert kinds[-1] == "visit.end"
        assert [e.zone for e in events if e.kind is EventKind.ZONE_ENTER] == [
            "entrance",
            "coffee",
            "bakery",
            "checkout",
        ]
        assert kinds.count("zone.exit") == 4

        want = expected_offers(events)
        assert set(want) == {"welcome-directions", "coffee-coupon", "bakery-fresh-bread"}
        await _wait_for(lambda: len(subscriber.offers()) >= 3)
        got = subscriber.offers()
        assert len(got) == 3
        token = events[0].shopper.token
        for topic, payload, props in got:
            moment, event = want[payload["rule"]]
            assert topic == f"proximity/v1/store-001/shoppers/{token}/offers"
            assert payload["moment"] == moment
            assert payload["id"] == offer_id(payload["rule"], token, event.visit, "n0")
            assert payload["issued_at"] == event.at.isoformat().replace("+00:00", "Z")
            ttl = runtime.table.ttl_for(runtime.table.rule(payload["rule"]))
            assert payload["expires_at"] == (event.at + ttl).isoformat().replace("+00:00", "Z")
            assert {"format", "title"} <= payload["cta"].keys()
            assert props is not None
            # the remaining lifetime when it was published: virtual time runs ahead of I/O
            assert 1 <= props.MessageExpiryInterval <= ttl.total_seconds()
        coupon = next(p for _, p, _ in got if p["rule"] == "coffee-coupon")
        assert coupon["coupon"] == "COFFEE-20"
        # journey events reached the analytics topic too
        await _wait_for(lambda: len(subscriber.messages) >= 3 + len(events))
        event_msgs = [m for m in subscriber.messages if m[0] == "proximity/v1/store-001/events"]
        assert [json.loads(p)["kind"] for _, p, _ in event_msgs] == kinds
    finally:
        subscriber.close()


async def test_a_shopper_without_consent_gets_no_offer(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    walk = builtin_walk()
    phone = walk.phone.model_copy(update={"minor": walk.phone.minor & ~CONSENT_BIT})
    walk_file = tmp_path / "walk.toml"
    walk_file.write_text(_walk_toml(walk.model_copy(update={"phone": phone})))
    settings = Settings(ble=BleSettings(sim=SimSettings(walk=walk_file))).with_broker(
        str(mosquitto.url)
    )
    clock = VirtualClock(T0)
    runtime = build_runtime(settings, clock)
    decisions: list[Decision] = []
    async with runtime.publisher(settings.broker.url) as publisher:
        stats = await runtime.daemon(publisher, on_decision=decisions.append).run()
    assert stats.events > 0
    assert stats.offers_published == 0
    suppressed = {rule for d in decisions for rule, why in d.suppressed if why == "no_consent"}
    assert suppressed == {"welcome-directions", "coffee-coupon", "bakery-fresh-bread"}


def _walk_toml(walk: Walk) -> str:
    p = walk.phone
    lines = [
        f'name = "{walk.name}"',
        "scanners = [" + ", ".join(f'"{s}"' for s in walk.scanners) + "]",
        "[phone]",
        f'uuid = "{p.uuid}"',
        f"major = {p.major}",
        f"minor = {p.minor}",
    ]
    for leg in walk.legs:
        lines.append("[[legs]]")
        if leg.scanner is not None:
            lines.append(f'scanner = "{leg.scanner}"')
        lines.append(f"duration = {leg.duration}")
    return "\n".join(lines) + "\n"


async def _wait_for(condition: Callable[[], bool], limit: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit
    while not condition() and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.02)
