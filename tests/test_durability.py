"""What a decision leaves on disk, in which order, and what a restart makes of it.

The rule (proximity/daemon.py, docs/durability.md): an offer is in the outbox, with its
journal row, before anything can block; caps and funnel facts are written after that
commit, and a restart reconciles them and the feedback desk from the journal.
"""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

from proximity.adapters.qr.scan import CodeScan
from proximity.clock import VirtualClock
from proximity.config import Settings
from proximity.delivery.outbox import Issued, Kind, Outbox
from proximity.engine.controls import Sent
from proximity.events import EventKind, JourneyEvent
from proximity.measurement.store import MeasurementStore, Stage
from proximity.offers import Offer
from proximity.recovery import recover
from proximity.wiring import build_runtime
from tests.factories import T0
from tests.test_publisher import make_offer

CODE_KEY = "durability-test-code-key-0123456"


def settings(tmp_path: Path) -> Settings:
    return Settings.model_validate(
        {
            "delivery": {
                "outbox": tmp_path / "outbox.sqlite",
                "state": tmp_path / "state.sqlite",
            },
            "measurement": {"store": tmp_path / "funnel.sqlite"},
            "codes": {"keys": {1: CODE_KEY}, "used": tmp_path / "used.sqlite"},
        }
    )


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as db:
        return list(db.execute(sql))


class HangingEvents:
    """A broker that takes offers but never acknowledges a journey event (a QoS 1 event
    publish to a frozen broker) until ``release`` is set."""

    def __init__(self) -> None:
        self.offers: list[Offer] = []
        self.events: list[JourneyEvent] = []
        self.release = asyncio.Event()

    async def publish_offer(
        self, shopper_token: str, offer: Offer, payload: str | None = None
    ) -> bool:
        self.offers.append(offer)
        return True

    async def publish_event(self, event: JourneyEvent, qos: int = 0) -> None:
        await self.release.wait()
        self.events.append(event)

    async def publish_signage(self, offer: Offer, payload: str | None = None) -> bool:
        return True


def issued(offer: Offer, shopper: str = "s-token-1", visit: str = "v-1") -> Issued:
    return Issued(
        offer=offer.id,
        shopper=shopper,
        rule=offer.rule,
        variant=offer.variant,
        visit=visit,
        issued_at=offer.issued_at,
        keep_until=offer.expires_at + timedelta(days=1),
    )


async def test_an_offer_and_its_journal_row_are_written_in_one_transaction(
    tmp_path: Path,
) -> None:
    path = tmp_path / "outbox.sqlite"
    box = Outbox(path)
    offer = make_offer(id="o-journal", expires_at=T0 + timedelta(minutes=10))
    box.put(Kind.OFFER, "s-token-1", offer, issued(offer))
    assert rows(path, "SELECT count(*) FROM outbox") == [(0,)]
    assert rows(path, "SELECT count(*) FROM issued") == [(0,)]
    await asyncio.sleep(0)  # the end of the turn: one commit for both
    assert rows(path, "SELECT id FROM outbox") == [("o-journal",)]
    assert rows(path, "SELECT id, shopper, rule FROM issued") == [
        ("o-journal", "s-token-1", offer.rule)
    ]
    item = box.peek()
    assert item is not None
    box.done(item)  # the broker has it: the outbox forgets it, the journal does not
    box.close()
    assert rows(path, "SELECT count(*) FROM outbox") == [(0,)]
    again = Outbox(path)
    assert [i.offer for i in again.issued(T0)] == ["o-journal"]
    # a day after it expired, nothing may name it any more: pruned
    assert again.issued(T0 + timedelta(minutes=10, days=1, seconds=1)) == []
    assert rows(path, "SELECT count(*) FROM issued") == [(0,)]
    again.close()


async def test_offers_are_durable_and_sent_while_journey_events_hang(tmp_path: Path) -> None:
    """The first crash drill, in process: a frozen broker holds every journey event; the
    offers decided meanwhile are in the outbox with their caps, and go out all the same."""
    clock = VirtualClock(T0)
    rt = build_runtime(settings(tmp_path), clock)
    sink = HangingEvents()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    daemon = rt.daemon(sink, outbox=outbox, measure=measure)
    run = asyncio.create_task(daemon.run())
    for _ in range(2000):
        if len(sink.offers) == 3:
            break
        await asyncio.sleep(0.005)
    assert [o.rule for o in sink.offers] == [
        "welcome-directions",
        "coffee-coupon",
        "bakery-fresh-bread",
    ]
    assert sink.events == []  # not one journey event got through meanwhile
    # a kill now finds every spent cap with its offer, and every offer with its facts
    caps = rows(tmp_path / "state.sqlite", "SELECT rule FROM sent ORDER BY at")
    journal = rows(tmp_path / "outbox.sqlite", "SELECT rule FROM issued ORDER BY issued_at")
    assert caps == journal == [(o.rule,) for o in sink.offers]
    decided = rows(tmp_path / "funnel.sqlite", "SELECT offer FROM facts WHERE stage='decided'")
    assert sorted(decided) == sorted((o.id,) for o in sink.offers)
    sink.release.set()
    stats = await asyncio.wait_for(run, 10)
    assert stats.offers_published == 3
    assert stats.events == len(sink.events) > 0
    outbox.close()
    measure.close()
    rt.close()


async def test_a_coupon_issued_before_a_restart_is_redeemed_after_it(tmp_path: Path) -> None:
    clock = VirtualClock(T0)
    first = build_runtime(settings(tmp_path), clock)
    sink = HangingEvents()
    sink.release.set()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    await first.daemon(sink, outbox=outbox, measure=measure).run()
    outbox.close()
    measure.close()
    first.close()
    coupon = next(o for o in sink.offers if o.coupon is not None)
    assert coupon.redeem_code is not None

    # a new process on the same files: the coupon's offer is known again
    second = build_runtime(settings(tmp_path), clock)
    assert second.feedback.lookup(coupon.id) is None
    outbox = Outbox(tmp_path / "outbox.sqlite")
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    recovered = recover(second, outbox, measure)
    assert recovered.journalled == 3
    assert recovered.known_again == 3
    assert (recovered.caps_restored, recovered.facts_restored) == (0, 0)  # nothing was cut
    scan = CodeScan(at=clock.now(), scanner="till-1", text=coupon.redeem_code, source="scanner")
    decisions = second.pipeline.on_scan(scan)
    assert [d.event.kind for d in decisions] == [EventKind.OFFER_REDEEMED]
    assert decisions[0].event.offer == coupon.id
    # and only once: the used code is remembered across the restart too
    again = scan.model_copy(update={"at": clock.now() + timedelta(seconds=5)})
    assert second.pipeline.on_scan(again) == []
    assert second.pipeline.acts is not None
    assert second.pipeline.acts.refused == {"replayed": 1}
    outbox.close()
    measure.close()
    second.close()


def test_a_crash_after_the_outbox_commit_is_reconciled_from_the_journal(
    tmp_path: Path,
) -> None:
    """The journal has an offer whose cap row and ``decided`` fact a kill cut off."""
    clock = VirtualClock(datetime(2026, 12, 2, 10, 0, tzinfo=UTC))
    rt = build_runtime(settings(tmp_path), clock)
    offer = make_offer(
        id="o-cut-off",
        rule="coffee-coupon",
        issued_at=clock.now() - timedelta(minutes=1),
        expires_at=clock.now() + timedelta(minutes=9),
    )
    gone = make_offer(
        id="o-gone",
        rule="welcome-directions",
        issued_at=clock.now() - timedelta(minutes=2),
        expires_at=clock.now() + timedelta(minutes=8),
    )
    outbox = Outbox(tmp_path / "outbox.sqlite")
    outbox.put(Kind.OFFER, "s-token-9", offer, issued(offer, "s-token-9", "v-9"))  # no loop
    outbox.put(Kind.OFFER, "s-token-8", gone, issued(gone, "s-token-8", "v-8"))
    [_, left] = outbox.head(2)
    outbox.done(left)  # PUBACK, and the kill came before its "published" fact
    outbox.close()
    outbox = Outbox(tmp_path / "outbox.sqlite")
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    recovered = recover(rt, outbox, measure)
    assert recovered.caps_restored == 2
    assert recovered.facts_restored == 3  # two decided, one published
    local = rt.table.local_time(offer.issued_at)
    assert Sent("coffee-coupon", "v-9", local) in rt.pipeline.decider.state.history("s-token-9")
    assert sorted(rows(tmp_path / "state.sqlite", "SELECT shopper, rule, visit FROM sent")) == [
        ("s-token-8", "welcome-directions", "v-8"),
        ("s-token-9", "coffee-coupon", "v-9"),
    ]
    funnel = {f.rule: f.stages for f in measure.funnel()}
    assert funnel["coffee-coupon"] == {Stage.DECIDED: 1}
    assert funnel["welcome-directions"] == {Stage.DECIDED: 1, Stage.PUBLISHED: 1}
    # twice is the same as once
    again = recover(rt, outbox, measure)
    assert (again.caps_restored, again.facts_restored) == (0, 0)
    assert rows(tmp_path / "state.sqlite", "SELECT count(*) FROM sent") == [(2,)]
    outbox.close()
    measure.close()
    rt.close()
