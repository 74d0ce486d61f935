"""The simulator's JourneyFeed: the store's journey events as a subscriber sees them."""

from __future__ import annotations

import asyncio

import pytest

from firmware_sim.journey_feed import JourneyFeed
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from proximity.events import JourneyEvent
from tests.factories import make_event
from tests.mosquitto import Mosquitto, free_port
from tests.test_app_client import raw_publish

EVENTS = "proximity/v1/store-001/events"


async def test_events_arrive_in_order_and_garbage_is_counted(mosquitto: Mosquitto) -> None:
    first, second = make_event(visit="v-1"), make_event(visit="v-2")
    async with JourneyFeed(mosquitto.url, "store-001") as feed:
        # subscribed on entering: nothing published from here on is missed
        payloads = (
            first.model_dump_json().encode(),
            b"not an event",
            second.model_dump_json().encode(),
        )
        await asyncio.to_thread(raw_publish, mosquitto.port, EVENTS, *payloads)
        seen: list[JourneyEvent] = []

        async def take_two() -> None:
            async for event in feed.events():
                seen.append(event)
                if len(seen) == 2:
                    return

        await asyncio.wait_for(take_two(), 5)
    assert seen == [first, second]
    assert feed.rejected == 1


async def test_no_broker_is_a_clear_error() -> None:
    url = BrokerUrl.parse(f"mqtt://127.0.0.1:{free_port()}")
    with pytest.raises(BrokerUnavailable, match=r"cannot connect to mqtt://127\.0\.0\.1"):
        async with JourneyFeed(url, "store-001", timeout=2):
            pass
