"""The versioned MQTT topic contract (DESIGN.md, "MQTT contract").

    proximity/v1/{store}/shoppers/{token}/offers      daemon -> app       QoS 1, MQTT 5 expiry
    proximity/v1/{store}/shoppers/{token}/feedback    app -> daemon       QoS 1
    proximity/v1/{store}/zones/{zone}/signage         daemon -> screens   QoS 1
    proximity/v1/{store}/events                       daemon -> analytics
    proximity/v1/{store}/gateways/{gateway}/status    daemon, retained, last will "offline"

Every segment is validated: 1-64 of ``A-Z a-z 0-9 _ . -``, not ``.`` or ``..``.
So no wildcard (``+``, ``#``), separator (``/``) or NUL can reach a topic, and
no shopper's topic can ever match another's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

ROOT = "proximity"
TOPIC_VERSION = "v1"
MAX_SEGMENT = 64
_SEGMENT = re.compile(rf"[A-Za-z0-9_.-]{{1,{MAX_SEGMENT}}}")

TopicKind = Literal["offers", "feedback", "signage", "events", "status"]


def segment(value: str, what: str = "topic segment") -> str:
    """``value`` if it is safe as one topic level; ValueError saying why not otherwise."""
    if not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} is not allowed in a topic: "
            f"use 1-{MAX_SEGMENT} letters, digits, '_', '.', '-'"
        )
    return value


def _base(store: str) -> str:
    return f"{ROOT}/{TOPIC_VERSION}/{segment(store, 'store id')}"


def offers_topic(store: str, token: str) -> str:
    return f"{_base(store)}/shoppers/{segment(token, 'shopper token')}/offers"


def feedback_topic(store: str, token: str) -> str:
    return f"{_base(store)}/shoppers/{segment(token, 'shopper token')}/feedback"


def feedback_filter(store: str) -> str:
    """The subscription that receives every app's feedback in the store."""
    return f"{_base(store)}/shoppers/+/feedback"


def signage_topic(store: str, zone: str) -> str:
    return f"{_base(store)}/zones/{segment(zone, 'zone id')}/signage"


def events_topic(store: str) -> str:
    return f"{_base(store)}/events"


def status_topic(store: str, gateway: str) -> str:
    return f"{_base(store)}/gateways/{segment(gateway, 'gateway id')}/status"


@dataclass(frozen=True, slots=True)
class ParsedTopic:
    store: str
    kind: TopicKind
    subject: str | None = None
    """The shopper token (offers, feedback), zone (signage) or gateway (status)."""


def parse_topic(topic: str) -> ParsedTopic:
    """The parts of a contract topic; ValueError for anything else (filters included)."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or parts[1] != TOPIC_VERSION:
        raise ValueError(f"not a {ROOT}/{TOPIC_VERSION} topic: {topic!r}")
    store = segment(parts[2], "store id")
    match parts[3:]:
        case ["events"]:
            return ParsedTopic(store, "events")
        case ["shoppers", token, "offers"]:
            return ParsedTopic(store, "offers", segment(token, "shopper token"))
        case ["shoppers", token, "feedback"]:
            return ParsedTopic(store, "feedback", segment(token, "shopper token"))
        case ["zones", zone, "signage"]:
            return ParsedTopic(store, "signage", segment(zone, "zone id"))
        case ["gateways", gateway, "status"]:
            return ParsedTopic(store, "status", segment(gateway, "gateway id"))
    raise ValueError(f"unknown {ROOT}/{TOPIC_VERSION} topic: {topic!r}")
