"""After a restart: what the outbox's journal says was decided, made true everywhere else.

An offer's outbox row and its journal row are committed in one transaction, before
the caps' rows (the delivery state file) and the funnel's facts (the measurement
file) are written, so a crash can leave an offer whose cap or ``decided`` fact is
missing — never a spent cap or a counted offer that does not exist. At start the
daemon reads the journal and fills those gaps, and teaches the feedback desk every
offer a redemption or app feedback may still name (a coupon issued before the
restart redeems after it).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import structlog

from proximity.delivery.outbox import Outbox
from proximity.engine.controls import Sent as CapRecord
from proximity.measurement.feedback import Sent as FeedbackRecord
from proximity.measurement.store import MeasurementStore, Stage
from proximity.wiring import Runtime

log = structlog.get_logger(__name__)

_LEFT = {"published": Stage.PUBLISHED, "expired": Stage.EXPIRED, "unpublishable": Stage.EXPIRED}
"""The funnel stage of each way an offer leaves the outbox."""


@dataclass(frozen=True, slots=True)
class Recovered:
    journalled: int
    """Offers in the journal that a redemption or feedback may still name."""
    known_again: int
    """Of those, offers the feedback desk learnt again (all of them, after a restart)."""
    caps_restored: int
    """Offers whose cap row a crash had cut off, written now."""
    facts_restored: int
    """Funnel facts a crash had cut off (an offer's ``decided``, or how it left the
    outbox: ``published`` or ``expired``), counted now."""


def recover(runtime: Runtime, outbox: Outbox, measure: MeasurementStore) -> Recovered:
    """Reconcile caps, funnel and the feedback desk with the outbox's journal."""
    issued = outbox.issued(runtime.clock.now())
    known = runtime.feedback.restore(
        (i.offer, FeedbackRecord(i.shopper, i.rule, i.variant)) for i in issued
    )
    local = runtime.table.local_time
    caps = runtime.pipeline.decider.state.reconcile(
        (i.shopper, CapRecord(i.rule, i.visit, local(i.issued_at))) for i in issued
    )
    facts = 0
    if issued and measure.path is not None:
        since: datetime = min(i.issued_at for i in issued)
        now = runtime.clock.now()
        counted = {stage: measure.counted_offers(stage, since) for stage in _LEFT.values()}
        decided = measure.counted_offers(Stage.DECIDED, since)
        for i in issued:
            if i.offer not in decided:
                measure.add(Stage.DECIDED, i.rule, i.issued_at, i.variant, offer=i.offer)
                facts += 1
            left = _LEFT.get(i.outcome) if i.outcome is not None else None
            if left is not None and not any(i.offer in ids for ids in counted.values()):
                measure.add(left, i.rule, now, i.variant, offer=i.offer)
                facts += 1
    recovered = Recovered(len(issued), known, caps, facts)
    if issued:
        log.info(
            "decisions_recovered",
            journalled=recovered.journalled,
            caps_restored=caps,
            facts_restored=facts,
        )
    return recovered
