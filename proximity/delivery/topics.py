"""The versioned MQTT topic contract (see the README's "MQTT contract").

Every segment is validated: no wildcards, no separators, nothing that could
make one shopper's topic match another's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

TOPIC_VERSION = "v1"
ROOT = "proximity"
_SEGMENT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def segment(value: str, what: str = "topic segment") -> str:
    if not _SEGMENT.fullmatch(value) or value in (".", ".."):
        raise ValueError(
            f"{what} {value!r} is not allowed in a topic: use 1-64 letters, digits, '_', '.', '-'"
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
    kind: str
    """offers, feedback, signage, events or status."""
    subject: str | None = None
    """The shopper token, zone or gateway the topic is about."""


def parse_topic(topic: str) -> ParsedTopic:
    """The parts of a contract topic; ValueError for anything else."""
    parts = topic.split("/")
    if len(parts) < 4 or parts[0] != ROOT or parts[1] != TOPIC_VERSION:
        raise ValueError(f"not a {ROOT}/{TOPIC_VERSION} topic: {topic!r}")
    store = segment(parts[2], "store id")
    rest = parts[3:]
    match rest:
        case ["events"]:
            return ParsedTopic(store, "events")
        case ["shoppers", token, ("offers" | "feedback") as kind]:
            return ParsedTopic(store, kind, segment(token, "shopper token"))
        case ["zones", zone, "signage"]:
            return ParsedTopic(store, "signage", segment(zone, "zone id"))
        case ["gateways", gateway, "status"]:
            return ParsedTopic(store, "status", segment(gateway, "gateway id"))
    raise ValueError(f"unknown {ROOT}/{TOPIC_VERSION} topic: {topic!r}")
