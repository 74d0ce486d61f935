"""App feedback: validated, matched to an offer this gateway sent, then counted.

A feedback message is ``{"offer": ID, "action": "delivered|opened|clicked|dismissed",
"at": ISO time}`` on ``.../shoppers/{token}/feedback``. It is rejected, with a
counted reason, when it is not that JSON, names an offer this gateway does not
know, or comes from another shopper's topic than the offer went to (the ACL
should already prevent that; the gateway does not rely on it).
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

import structlog

from proximity.delivery.topics import parse_topic

log = structlog.get_logger(__name__)


class Action(StrEnum):
    DELIVERED = "delivered"
    OPENED = "opened"
    CLICKED = "clicked"
    DISMISSED = "dismissed"


@dataclass(frozen=True, slots=True)
class Sent:
    token: str
    rule: str
    variant: str | None


@dataclass(frozen=True, slots=True)
class Feedback:
    offer: str
    action: Action
    sent: Sent


class FeedbackDesk:
    """Knows the offers sent (bounded), judges each feedback message."""

    def __init__(self, store: str, remember: int = 200_000) -> None:
        self._store = store
        self._sent: OrderedDict[str, Sent] = OrderedDict()
        self._remember = remember
        self._seen: set[tuple[str, Action]] = set()
        self.rejected: Counter[str] = Counter()
        self.duplicates = 0

    def sent(self, offer_id: str, token: str, rule: str, variant: str | None) -> None:
        self._sent[offer_id] = Sent(token, rule, variant)
        while len(self._sent) > self._remember:
            old, _ = self._sent.popitem(last=False)
            self._seen = {k for k in self._seen if k[0] != old}

    def restore(self, sent: Iterable[tuple[str, Sent]]) -> int:
        """Remember offers sent before a restart (the outbox's journal); how many."""
        count = 0
        for offer_id, record in sent:
            if offer_id not in self._sent:
                self.sent(offer_id, record.token, record.rule, record.variant)
                count += 1
        return count

    def lookup(self, offer_id: str) -> Sent | None:
        """The offer sent under ``offer_id`` (the most recent ``remember`` offers)."""
        return self._sent.get(offer_id)

    def judge(self, topic: str, payload: bytes) -> Feedback | None:
        """The feedback, or None (rejected and counted, or a duplicate)."""
        try:
            parsed = parse_topic(topic)
        except ValueError:
            self._reject("bad_topic", topic)
            return None
        if parsed.kind != "feedback" or parsed.store != self._store or parsed.subject is None:
            self._reject("bad_topic", topic)
            return None
        try:
            data = json.loads(payload)
            offer = str(data["offer"])
            action = Action(data["action"])
        except (ValueError, KeyError, TypeError):
            self._reject("malformed", topic)
            return None
        sent = self._sent.get(offer)
        if sent is None:
            self._reject("unknown_offer", topic)
            return None
        if sent.token != parsed.subject:
            self._reject("not_this_shoppers_offer", topic)
            return None
        if (offer, action) in self._seen:
            self.duplicates += 1  # at-least-once delivery: count each action once
            return None
        self._seen.add((offer, action))
        return Feedback(offer, action, sent)

    def _reject(self, reason: str, topic: str) -> None:
        """Count (and log once per reason) a rejected message."""
        self.rejected[reason] += 1
        if self.rejected[reason] == 1:
            log.warning("feedback_rejected", reason=reason, topic=topic)
        return
