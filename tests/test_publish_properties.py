"""The packed PUBLISH properties are byte for byte what paho's own Properties packs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from proximity.delivery.publisher import PublishProperties

# any text MQTT allows in a UTF-8 string: no surrogates, no U+0000
texts = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=80)


@given(
    expiry=st.integers(min_value=0, max_value=0xFFFFFFFF),
    user=st.lists(st.tuples(texts, texts), max_size=4),
)
def test_packs_as_paho_does(expiry: int, user: list[tuple[str, str]]) -> None:
    theirs = Properties(PacketTypes.PUBLISH)
    theirs.MessageExpiryInterval = expiry
    if user:
        theirs.UserProperty = list(user)
    ours = PublishProperties(expiry, user)
    assert ours.pack() == theirs.pack()
    # and it reads back as properties do
    back = Properties(PacketTypes.PUBLISH)
    back.unpack(ours.pack())
    assert back.MessageExpiryInterval == expiry
    assert getattr(back, "UserProperty", []) == list(user)
    assert str(ours) == str(theirs)


def test_values_mqtt_cannot_carry_are_refused() -> None:
    with pytest.raises(ValueError, match="out of range"):
        PublishProperties(2**32, [])
    with pytest.raises(ValueError, match="longer than MQTT allows"):
        PublishProperties(60, [("offer_id", "x" * 70_000)])
    with pytest.raises(ValueError, match="U\\+0000"):
        PublishProperties(60, [("rule", "a\x00b")])
