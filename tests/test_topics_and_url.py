import pytest
from hypothesis import given
from hypothesis import strategies as st

from proximity.delivery.topics import (
    ParsedTopic,
    events_topic,
    feedback_topic,
    offers_topic,
    parse_topic,
    signage_topic,
    status_topic,
)
from proximity.delivery.url import BrokerUrl

segments = st.from_regex(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,63}", fullmatch=True)


def test_the_contract_topics() -> None:
    assert offers_topic("s1", "tok") == "proximity/v1/s1/shoppers/tok/offers"
    assert feedback_topic("s1", "tok") == "proximity/v1/s1/shoppers/tok/feedback"
    assert signage_topic("s1", "coffee") == "proximity/v1/s1/zones/coffee/signage"
    assert events_topic("s1") == "proximity/v1/s1/events"
    assert status_topic("s1", "gw") == "proximity/v1/s1/gateways/gw/status"


@pytest.mark.parametrize("bad", ["", "a/b", "+", "#", "a+b", "x#", "a\x00", "..", "x" * 65, "é"])
def test_unsafe_segments_are_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="not allowed in a topic"):
        offers_topic("store", bad)


@given(segments, segments)
def test_offer_topics_round_trip(store: str, token: str) -> None:
    assert parse_topic(offers_topic(store, token)) == ParsedTopic(store, "offers", token)


@given(segments, st.text(max_size=8), st.sampled_from("/+#"), st.text(max_size=8))
def test_wildcards_and_separators_never_reach_a_topic(
    store: str, before: str, bad: str, after: str
) -> None:
    with pytest.raises(ValueError):
        offers_topic(store, before + bad + after)


def test_parse_refuses_foreign_topics() -> None:
    for topic in ("other/v1/s/events", "proximity/v2/s/events", "proximity/v1/s/shoppers/t/x"):
        with pytest.raises(ValueError):
            parse_topic(topic)


def test_broker_urls() -> None:
    url = BrokerUrl.parse("mqtts://gw:s3cret@broker.example:8884")
    assert (url.host, url.port, url.tls, url.username) == ("broker.example", 8884, True, "gw")
    assert url.password is not None
    assert url.password.get_secret_value() == "s3cret"
    assert "s3cret" not in str(url)
    assert "s3cret" not in repr(url)
    assert BrokerUrl.parse("mqtt://127.0.0.1").port == 1883
    assert BrokerUrl.parse("embedded").is_embedded


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("http://x", "must start with mqtt://"),
        ("mqtt://", "no host"),
        ("mqtt://h:99999", "bad port"),
        ("mqtt://h:1883/path", "path"),
        ("mqtt://u:pw@h:x", "bad port"),
    ],
)
def test_bad_broker_urls(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        BrokerUrl.parse(text)
    assert "pw@" not in str(info.value)
