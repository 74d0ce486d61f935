"""The addressing contract: topic names (property-tested) and broker URLs."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from proximity.delivery.topics import (
    TOPIC_VERSION,
    ParsedTopic,
    TopicKind,
    events_topic,
    feedback_filter,
    feedback_topic,
    offers_topic,
    parse_topic,
    signage_topic,
    status_topic,
)
from proximity.delivery.url import BrokerUrl

segments = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(
    lambda s: s not in (".", "..")
)
# anything with a level separator, a wildcard or a NUL somewhere in it
unsafe_segments = st.builds(
    lambda before, bad, after: before + bad + after,
    st.text(max_size=10),
    st.sampled_from(["/", "+", "#", "\x00"]),
    st.text(max_size=10),
)
TOPICS: dict[TopicKind, Callable[[str, str], str]] = {
    "offers": offers_topic,
    "feedback": feedback_topic,
    "signage": signage_topic,
    "status": status_topic,
}


def test_the_contract_topics() -> None:
    assert TOPIC_VERSION == "v1"
    assert offers_topic("s1", "tok") == "proximity/v1/s1/shoppers/tok/offers"
    assert feedback_topic("s1", "tok") == "proximity/v1/s1/shoppers/tok/feedback"
    assert signage_topic("s1", "coffee") == "proximity/v1/s1/zones/coffee/signage"
    assert events_topic("s1") == "proximity/v1/s1/events"
    assert status_topic("s1", "gw") == "proximity/v1/s1/gateways/gw/status"
    assert feedback_filter("s1") == "proximity/v1/s1/shoppers/+/feedback"


@pytest.mark.parametrize(
    "bad", ["", "a/b", "+", "#", "a+b", "x#", "a\x00", ".", "..", "x" * 65, "é", " ", "a b", "a\n"]
)
def test_unsafe_segments_are_refused_with_the_reason(bad: str) -> None:
    with pytest.raises(ValueError, match=r"shopper token .* is not allowed in a topic: use 1-64"):
        offers_topic("store", bad)


@given(segments, segments, st.sampled_from(list(TOPICS)))
def test_valid_segments_round_trip(store: str, subject: str, kind: TopicKind) -> None:
    topic = TOPICS[kind](store, subject)
    assert parse_topic(topic) == ParsedTopic(store, kind, subject)
    assert len(topic.split("/")) == (5 if kind == "events" else 6)


@given(segments)
def test_events_topics_round_trip(store: str) -> None:
    assert parse_topic(events_topic(store)) == ParsedTopic(store, "events")


@given(segments, unsafe_segments, st.sampled_from(list(TOPICS)), st.booleans())
def test_wildcards_separators_and_nul_never_reach_a_topic(
    good: str, bad: str, kind: TopicKind, bad_store: bool
) -> None:
    store, subject = (bad, good) if bad_store else (good, bad)
    with pytest.raises(ValueError, match="not allowed in a topic"):
        TOPICS[kind](store, subject)


@given(st.text(max_size=80))
def test_any_accepted_segment_is_exactly_one_safe_level(text: str) -> None:
    try:
        topic = offers_topic("store", text)
    except ValueError:
        return
    assert parse_topic(topic).subject == text
    assert not set(text) & {"/", "+", "#", "\x00"}
    assert 1 <= len(text) <= 64


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/s/events",
        "proximity/v2/s/events",
        "proximity/v1/s/shoppers/t/x",
        "proximity/v1/s/shoppers/+/feedback",  # a filter, not a topic
        "proximity/v1/s/zones/z/signage/extra",
        "proximity/v1/s",
        "proximity/v1/s/events/",
    ],
)
def test_parse_refuses_anything_outside_the_contract(topic: str) -> None:
    with pytest.raises(ValueError):
        parse_topic(topic)


# -- broker URLs -------------------------------------------------------------------------------


def test_broker_urls_with_defaults_and_credentials() -> None:
    url = BrokerUrl.parse("mqtts://gw:s3cret@broker.example:8884")
    assert (url.host, url.port, url.tls, url.username) == ("broker.example", 8884, True, "gw")
    assert url.password is not None
    assert url.password.get_secret_value() == "s3cret"
    assert str(url) == "mqtts://gw:***@broker.example:8884"
    assert "s3cret" not in repr(url)
    assert (BrokerUrl.parse("mqtt://127.0.0.1").port, BrokerUrl.parse("mqtt://h").tls) == (
        1883,
        False,
    )
    assert BrokerUrl.parse("mqtts://h").port == 8883
    assert BrokerUrl.parse("mqtt://u%40x:p%3Aw@h").username == "u@x"
    assert str(BrokerUrl.parse("mqtt://[::1]:1884")) == "mqtt://[::1]:1884"
    assert BrokerUrl.parse("mqtt://[::1]:1884").host == "::1"
    embedded = BrokerUrl.parse("embedded")
    assert embedded.is_embedded
    assert str(embedded) == "embedded"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://x", "must start with mqtt://"),
        ("mqtt://", "no host"),
        ("mqtt://h:0", "bad port"),
        ("mqtt://h:99999", "bad port"),
        ("mqtt://u:pw@h:x", "bad port"),
        ("mqtt://h:1883/path", "path"),
        ("mqtt://u:pw@h?q=1", "query"),
        ("mqtt://ho st", "bad host"),
        ("mqtt://u:pw@[::1", "malformed"),
        ("", "must start with mqtt://"),
    ],
)
def test_bad_broker_urls_say_why_and_hide_the_password(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        BrokerUrl.parse(text)
    assert "pw" not in str(info.value)


def test_a_broker_url_field_takes_text_and_hides_the_password_in_errors() -> None:
    class Settings(BaseModel):
        url: BrokerUrl

    assert Settings.model_validate({"url": "mqtt://h:1"}).url == BrokerUrl.tcp("h", 1)
    with pytest.raises(ValueError, match="must start with mqtt://") as info:
        BrokerUrl.model_validate("ftp://u:pw@h")
    assert "pw" not in str(info.value)
    with pytest.raises(ValueError, match="needs a host"):
        BrokerUrl(scheme="mqtt")
