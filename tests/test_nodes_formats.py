"""The node message parsers: our batches, ESPresense, OpenMQTTGateway/Theengs.

Every format is read into advertisements the gateway's own decoder turns into the
same sightings a local radio's would give; anything else is refused with a
problem from the fixed set, and no payload makes a parser raise anything else.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, get_args
from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proximity.adapters.ble.adapter import BeaconDecoder
from proximity.adapters.ble.altbeacon import AltBeacon, build_altbeacon
from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon
from proximity.adapters.ble.rpa import is_rpa
from proximity.adapters.nodes.formats import (
    Batch,
    NodeMessageError,
    NodeProblem,
    Status,
    parse_espresense,
    parse_omg,
    parse_ours,
)
from proximity.adapters.nodes.ingest import NodeIngest, NodeSpec, advertisement
from proximity.readings import BeaconSighting
from tests.factories import APP_UUID

T = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
FRAME = build_ibeacon(IBeacon(APP_UUID, 1, 0x8001, -59))
PROBLEMS = frozenset(get_args(NodeProblem))


def batch(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "seq": 7,
        "sent": T.timestamp(),
        "readings": [
            {"addr": "AA:BB:CC:DD:EE:01", "rssi": -61, "dt": 0.25, "mfr": {"76": FRAME.hex()}}
        ],
    }
    body.update(overrides)
    return body


def ours(body: Any, kind: str = "readings") -> Batch | Status:
    return parse_ours("pi-1", kind, json.dumps(body).encode())


def sighting(batch_: Batch | Status, scanner: str = "s") -> BeaconSighting:
    """What the gateway's decoder makes of the batch's one reading."""
    assert isinstance(batch_, Batch)
    assert len(batch_.readings) == 1
    found = BeaconDecoder().to_sighting(advertisement(batch_.readings[0], scanner, T))
    assert isinstance(found, BeaconSighting), found
    return found


# -- ours --------------------------------------------------------------------------------------


def test_our_batch_is_read_field_by_field() -> None:
    body = batch(
        boot="b1",
        dropped=3,
        readings=[
            {"addr": "aa:bb:cc:dd:ee:01", "rssi": -61, "dt": 0.25, "mfr": {"0x004c": FRAME.hex()}},
            {
                "addr": "AA:BB:CC:DD:EE:02",
                "rssi": -80,
                "svc": {"feaa": "00e7" + "11" * 16},
                "tx": -4,
            },
        ],
    )
    parsed = ours(body)
    assert isinstance(parsed, Batch)
    assert (parsed.seq, parsed.sent, parsed.boot, parsed.dropped) == (7, T.timestamp(), "b1", 3)
    first, second = parsed.readings
    assert first.address == "AA:BB:CC:DD:EE:01"  # upper case, as bleak gives addresses
    assert (first.rssi, first.age, first.manufacturer) == (-61, 0.25, {0x004C: FRAME})
    assert second.service == {
        "0000feaa-0000-1000-8000-00805f9b34fb": bytes.fromhex("00e7" + "11" * 16)
    }
    assert (second.age, second.tx_power) == (0.0, -4)


def test_our_batch_reads_as_the_same_sighting_as_a_radio() -> None:
    found = sighting(ours(batch()))
    assert (found.uuid, found.major, found.minor, found.rssi) == (APP_UUID, 1, 0x8001, -61)


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ([1, 2], "wrong_type"),
        (batch(seq=None), "missing_field"),
        (batch(seq="7"), "wrong_type"),
        (batch(seq=-1), "out_of_range"),
        (batch(seq=True), "wrong_type"),
        (batch(sent=float("inf")), "out_of_range"),  # Python's json reads Infinity
        (batch(sent=-5), "out_of_range"),
        (batch(readings=None), "missing_field"),
        (batch(readings={"addr": "x"}), "wrong_type"),
        (batch(readings=["x"]), "wrong_type"),
        (batch(readings=[{"rssi": -60}]), "missing_field"),
        (batch(readings=[{"addr": "AA:BB:CC:DD:EE", "rssi": -60}]), "bad_address"),
        (batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": 50}]), "out_of_range"),
        (batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": "-60"}]), "wrong_type"),
        (batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "dt": -1}]), "out_of_range"),
        (
            batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "mfr": {"76": "zz"}}]),
            "bad_hex",
        ),
        (
            batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "mfr": {"76": "a"}}]),
            "bad_hex",
        ),
        (
            batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "mfr": {"x": "00"}}]),
            "wrong_type",
        ),
        (
            batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "mfr": {"70000": "00"}}]),
            "out_of_range",
        ),
        (
            batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "mfr": {"76": "00" * 300}}]),
            "bad_hex",
        ),
        (
            batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60, "svc": {"nope": "00"}}]),
            "wrong_type",
        ),
        (batch(readings=[{"addr": "AA:BB:CC:DD:EE:FF", "rssi": -60}] * 1025), "too_many_readings"),
        (batch(boot=[1]), "wrong_type"),
    ],
)
def test_a_malformed_batch_says_what_is_wrong(body: Any, problem: str) -> None:
    with pytest.raises(NodeMessageError) as caught:
        ours(body)
    assert caught.value.problem == problem


def test_oversized_and_non_json_batches() -> None:
    with pytest.raises(NodeMessageError, match="oversized"):
        parse_ours("pi-1", "readings", b" " * (512 * 1024 + 1))
    for payload in (b"\xff\xfe", b"{", b"", b"nan"):
        with pytest.raises(NodeMessageError) as caught:
            parse_ours("pi-1", "readings", payload)
        assert caught.value.problem == "bad_json"


@pytest.mark.parametrize(
    ("payload", "online", "boot"),
    [
        (b"online", True, None),
        (b"offline", False, None),
        (b'{"state": "offline"}', False, None),
        (b'{"state": "online", "boot": 17, "version": "1.2", "dropped": 4}', True, "17"),
    ],
)
def test_status_as_text_or_json(payload: bytes, online: bool, boot: str | None) -> None:
    status = parse_ours("pi-1", "status", payload)
    assert isinstance(status, Status)
    assert (status.online, status.boot) == (online, boot)


def test_a_bad_status_is_refused() -> None:
    for payload, problem in (
        (b"maybe", "bad_json"),
        (b'{"state": 1}', "wrong_type"),
        (b"{}", "missing_field"),
    ):
        with pytest.raises(NodeMessageError) as caught:
            parse_ours("pi-1", "status", payload)
        assert caught.value.problem == problem


# -- ESPresense --------------------------------------------------------------------------------


def espresense(device_id: str, body: dict[str, Any], room: str = "coffee") -> Batch | Status:
    return parse_espresense(["espresense", "devices", device_id, room], json.dumps(body).encode())


def test_an_espresense_ibeacon_id_reads_as_the_beacon_it_names() -> None:
    ident = f"iBeacon:{APP_UUID}-1-32769"
    parsed = espresense(
        ident, {"id": ident, "rssi@1m": -62, "rssi": -70.6, "distance": 2.1, "mac": "4a1b2c3d4e5f"}
    )
    assert isinstance(parsed, Batch)
    assert parsed.node == "coffee"
    assert parsed.readings[0].address == "4A:1B:2C:3D:4E:5F"
    found = sighting(parsed)
    assert (found.kind, found.uuid, found.major, found.minor) == ("ibeacon", APP_UUID, 1, 0x8001)
    assert (found.rssi, found.tx_power) == (-71, -62)


def test_espresense_altbeacon_and_eddystone_ids() -> None:
    uuid = UUID("2f234454-cf6d-4a0f-adf2-f4911ba9ffa6")
    alt = espresense(f"altBeacon:{uuid}-5-6", {"id": f"altBeacon:{uuid}-5-6", "rssi": -60})
    assert (sighting(alt).kind, sighting(alt).uuid, sighting(alt).minor) == ("altbeacon", uuid, 6)
    ident = "eddy:0102030405060708090a-0b0c0d0e0f10"
    eddy = sighting(espresense(ident, {"id": ident, "rssi": -60, "rssi@1m": -59}))
    assert eddy.kind == "eddystone_uid"
    assert eddy.uuid == UUID("01020304-0506-0708-090a-0b0c0d0e0f10")


def test_an_espresense_device_without_a_beacon_id_keeps_its_address_or_gets_a_stable_one() -> None:
    with_mac = espresense(
        "apple:1005:9", {"id": "apple:1005:9", "rssi": -60, "mac": "5b0102030405"}
    )
    assert isinstance(with_mac, Batch)
    assert with_mac.readings[0].address == "5B:01:02:03:04:05"  # an RPA: our IRKs can resolve it
    assert not with_mac.readings[0].manufacturer
    a = espresense("tile:x", {"id": "tile:x", "rssi": -60})
    b = espresense("tile:x", {"id": "tile:x", "rssi": -65})
    assert isinstance(a, Batch)
    assert isinstance(b, Batch)
    assert a.readings[0].address == b.readings[0].address
    assert not is_rpa(a.readings[0].address)  # static random: never resolved as a phone


def test_espresense_room_status() -> None:
    status = parse_espresense(["espresense", "rooms", "coffee", "status"], b"offline")
    assert isinstance(status, Status)
    assert (status.node, status.online) == ("coffee", False)


@pytest.mark.parametrize(
    ("parts", "body", "problem"),
    [
        (["espresense", "devices", "x", "coffee"], {"id": "x"}, "missing_field"),
        (["espresense", "devices", "x", "coffee"], {"id": 5, "rssi": -60}, "wrong_type"),
        (
            ["espresense", "devices", "x", "coffee"],
            {"id": "x", "rssi": -60, "mac": "zz"},
            "bad_address",
        ),
        (
            ["espresense", "devices", "x", "coffee"],
            {"id": "x", "rssi": -60, "rssi@1m": "x"},
            "wrong_type",
        ),
        (
            ["espresense", "devices", "x", "coffee"],
            {"id": f"iBeacon:{APP_UUID}-70000-1", "rssi": -60},
            "out_of_range",
        ),
        (["espresense", "settings", "x"], {}, "bad_topic"),
    ],
)
def test_malformed_espresense_messages(
    parts: list[str], body: dict[str, Any], problem: str
) -> None:
    with pytest.raises(NodeMessageError) as caught:
        parse_espresense(parts, json.dumps(body).encode())
    assert caught.value.problem == problem


# -- OpenMQTTGateway / Theengs -----------------------------------------------------------------


def omg(body: dict[str, Any], device: str = "AABBCCDDEEFF") -> Batch | Status:
    return parse_omg(["home", "omg-1", "BTtoMQTT", device], json.dumps(body).encode())


def test_omg_raw_manufacturer_data_is_preferred_to_its_decoded_fields() -> None:
    raw = "4c00" + FRAME.hex()
    parsed = omg(
        {
            "id": "aa:bb:cc:dd:ee:ff",
            "mac_type": 1,
            "rssi": -72,
            "manufacturerdata": raw,
            "uuid": "00000000000000000000000000000000",  # a decoder's view: not used
            "major": 9,
            "minor": 9,
            "txpower": -59,
        }
    )
    assert isinstance(parsed, Batch)
    assert parsed.node == "omg-1"
    assert parsed.readings[0].address == "AA:BB:CC:DD:EE:FF"
    found = sighting(parsed)
    assert (found.uuid, found.major, found.minor, found.rssi) == (APP_UUID, 1, 0x8001, -72)


def test_omg_decoded_ibeacon_fields_without_raw_data_and_beacon_uuid_topics() -> None:
    body = {
        "id": APP_UUID.hex,
        "mac": "60:87:57:4C:9B:C2",
        "rssi": -78,
        "uuid": APP_UUID.hex,
        "major": 2,
        "minor": 3,
        "txpower": -66,
    }
    parsed = omg(body, device=APP_UUID.hex)
    assert isinstance(parsed, Batch)
    assert parsed.readings[0].address == "60:87:57:4C:9B:C2"
    found = sighting(parsed)
    assert (found.major, found.minor, found.tx_power) == (2, 3, -66)


def test_omg_service_data_and_altbeacon() -> None:
    svc = omg(
        {
            "id": "AA:BB:CC:DD:EE:FF",
            "rssi": -60,
            "servicedata": "00e7" + "ab" * 16,
            "servicedatauuid": "0xfeaa",
        }
    )
    assert sighting(svc).kind == "eddystone_uid"
    alt = build_altbeacon(AltBeacon(APP_UUID, 4, 5, -60)).hex()
    found = sighting(
        omg({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "manufacturerdata": "1801" + alt})
    )
    assert (found.kind, found.major, found.minor) == ("altbeacon", 4, 5)


def test_omg_lwt() -> None:
    status = parse_omg(["home", "omg-1", "LWT"], b"online")
    assert isinstance(status, Status)
    assert status.online


@pytest.mark.parametrize(
    ("body", "problem"),
    [
        ({"id": "AA:BB:CC:DD:EE:FF"}, "missing_field"),
        ({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "manufacturerdata": 76}, "wrong_type"),
        ({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "manufacturerdata": "4c0"}, "bad_hex"),
        ({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "servicedata": "00"}, "missing_field"),
        (
            {"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "uuid": "x", "major": 1, "minor": 1},
            "wrong_type",
        ),
        ({"id": "AA:BB:CC:DD:EE:FF", "rssi": -60, "txpower": 300}, "out_of_range"),
        ({"rssi": -60}, "missing_field"),
    ],
)
def test_malformed_omg_messages(body: dict[str, Any], problem: str) -> None:
    with pytest.raises(NodeMessageError) as caught:
        omg(body, device="not-a-mac")
    assert caught.value.problem == problem


# -- properties: nothing a node sends makes a parser raise anything else -----------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
field_names = st.sampled_from(
    [
        "seq",
        "sent",
        "boot",
        "dropped",
        "readings",
        "addr",
        "rssi",
        "dt",
        "mfr",
        "svc",
        "tx",
        "uuids",
        "name",
        "id",
        "mac",
        "rssi@1m",
        "manufacturerdata",
        "servicedata",
        "servicedatauuid",
        "uuid",
        "major",
        "minor",
        "txpower",
        "state",
    ]
)
objects = st.dictionaries(field_names, json_values, max_size=8)
reading_like = st.fixed_dictionaries(
    {
        "addr": st.sampled_from(["AA:BB:CC:DD:EE:FF", "aa:bb", "", "00:00:00:00:00:00"]),
        "rssi": json_values,
    },
    optional={
        "dt": json_values,
        "mfr": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
        "svc": st.dictionaries(st.text(max_size=6), json_values, max_size=3),
        "tx": json_values,
    },
)
payloads = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    objects.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda r, s: json.dumps({"seq": s, "sent": 1.7e9, "readings": r}).encode(),
        st.lists(reading_like, max_size=4),
        json_values,
    ),
)
topics = st.sampled_from(
    [
        "proximity/v1/store-001/nodes/pi-1/readings",
        "proximity/v1/store-001/nodes/pi-1/status",
        "proximity/v1/store-001/nodes/pi-1/other",
        "proximity/v1/other-store/nodes/pi-1/readings",
        "espresense/devices/iBeacon:x/coffee",
        "espresense/rooms/coffee/status",
        "espresense/devices/x",
        "home/omg-1/BTtoMQTT/AABBCCDDEEFF",
        "home/omg-1/LWT",
        "home/omg-1/other",
        "elsewhere/x",
    ]
)


@given(topic=topics, payload=payloads)
def test_any_payload_on_any_topic_is_read_or_refused_with_a_known_problem(
    topic: str, payload: bytes
) -> None:
    parts = topic.split("/")
    problem = None
    try:
        if parts[0] == "proximity":
            parse_ours(parts[4], parts[5], payload)
        elif parts[0] == "espresense":
            parse_espresense(parts, payload)
        else:
            parse_omg(parts, payload)
    except NodeMessageError as exc:
        problem = exc.problem
    assert problem is None or problem in PROBLEMS


@given(messages=st.lists(st.tuples(topics, payloads), max_size=10))
def test_the_ingest_never_raises_and_counts_only_known_reasons(
    messages: list[tuple[str, bytes]],
) -> None:
    nodes = [
        NodeSpec("ours", "pi-1", "a"),
        NodeSpec("espresense", "coffee", "b"),
        NodeSpec("omg", "omg-1", "c"),
    ]
    ingest = NodeIngest("store-001", nodes, monotonic=lambda: 0.0)
    decoder = BeaconDecoder()
    for topic, payload in messages:
        for adv in ingest.handle(topic, payload, T):
            decoder.to_sighting(adv)  # what the ingest hands over, the decoder takes
    sources = {"ours", "espresense", "omg"}
    for key in ingest.rejected:
        source, _, problem = key.partition(":")
        assert source in sources
        assert problem in PROBLEMS
    assert set(ingest.dropped) <= {
        "duplicate_batch",
        "rate_limited",
        "stale",
        "unknown_node",
        "not_ours",
    }


def test_the_documented_batch_is_read_as_documented() -> None:
    """docs/nodes.md's example batch parses, and its readings are what the table says."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "nodes.md").read_text()
    section = text[text.index("## Our format") :]
    example = section[
        section.index("```json") + len("```json") : section.index(
            "```\n", section.index("```json") + 7
        )
    ]
    parsed = parse_ours("pi-1", "readings", example.encode())
    assert isinstance(parsed, Batch)
    assert (parsed.boot, parsed.seq, parsed.dropped) == ("5f1c", 1042, 0)
    phone, beacon = parsed.readings
    assert sighting(Batch("ours", "pi-1", (phone,))).uuid == APP_UUID
    assert beacon.uuids == ("0000feaa-0000-1000-8000-00805f9b34fb",)
    assert sighting(Batch("ours", "pi-1", (beacon,))).kind == "eddystone_uid"
