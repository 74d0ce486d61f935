"""The node ingest's state: duplicates, clock skew, staleness, rate, liveness, privacy."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from hypothesis import given
from hypothesis import strategies as st

from proximity.adapters.ble.ibeacon import IBeacon, build_ibeacon
from proximity.adapters.nodes.ingest import NodeIngest, NodeOrigin, NodeSpec
from tests.factories import APP_UUID

T = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
FRAME = build_ibeacon(IBeacon(APP_UUID, 1, 0x8001, -59)).hex()
TOPIC = "proximity/v1/store-001/nodes/pi-1/readings"
STATUS = "proximity/v1/store-001/nodes/pi-1/status"
ADDRESS = "C4:7C:8D:6A:11:22"


class Ticks:
    """The gateway's monotonic clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_ingest(ticks: Ticks | None = None, **spec: Any) -> NodeIngest:
    nodes = [
        NodeSpec("ours", "pi-1", "aisle-1", **spec),
        NodeSpec("ours", "pi-2", "aisle-2"),
        NodeSpec("espresense", "coffee", "gw-coffee"),
    ]
    return NodeIngest("store-001", nodes, monotonic=ticks or Ticks())


def payload(seq: int, sent: float, *, n: int = 1, dt: float = 0.0, **more: Any) -> bytes:
    readings = [{"addr": ADDRESS, "rssi": -60, "dt": dt, "mfr": {"76": FRAME}}] * n
    return json.dumps({"seq": seq, "sent": sent, "readings": readings, **more}).encode()


def test_a_batch_redelivered_is_dropped_once_and_counted() -> None:
    ingest = make_ingest()
    first = ingest.handle(TOPIC, payload(1, T.timestamp(), n=3), T)
    again = ingest.handle(TOPIC, payload(1, T.timestamp(), n=3), T)
    later = ingest.handle(TOPIC, payload(2, T.timestamp(), n=3), T)
    assert (len(first), len(again), len(later)) == (3, 0, 3)
    assert ingest.dropped["duplicate_batch"] == 1
    assert ingest.nodes[("ours", "pi-1")].readings == 6


def test_a_restarted_node_starts_its_sequence_again() -> None:
    ingest = make_ingest()
    assert ingest.handle(TOPIC, payload(0, T.timestamp(), boot="a"), T)
    assert ingest.handle(TOPIC, payload(0, T.timestamp(), boot="b"), T)  # a new boot
    assert not ingest.handle(TOPIC, payload(0, T.timestamp(), boot="b"), T)
    # without a boot id: a sequence far behind the window is a restart, not a duplicate
    ingest = make_ingest()
    assert ingest.handle(TOPIC, payload(100_000, T.timestamp()), T)
    assert ingest.handle(TOPIC, payload(0, T.timestamp()), T)


def test_readings_are_timed_on_the_gateway_clock_whatever_the_node_clock_says() -> None:
    """A node 100 s behind, with 20-300 ms of delay: its readings land within the least
    delay of when they were heard, by the gateway's clock."""
    ticks = Ticks()
    ingest = make_ingest(ticks)
    delays = [0.3, 0.02, 0.15, 0.25, 0.05, 0.1]
    for seq, delay in enumerate(delays):
        heard = T + timedelta(seconds=seq)  # when the node heard it, gateway time
        sent_gateway = heard + timedelta(seconds=0.5)
        arrived = sent_gateway + timedelta(seconds=delay)
        ticks.now += 1
        advs = ingest.handle(TOPIC, payload(seq, sent_gateway.timestamp() - 100, dt=0.5), arrived)
        assert len(advs) == 1
        error = (advs[0].at - heard).total_seconds()
        least = min(delays[: seq + 1])
        assert 0 <= error <= least + 1e-6, (seq, error)
        assert advs[0].at <= arrived
    skew = ingest.nodes[("ours", "pi-1")].skew_s
    assert skew is not None
    assert abs(skew - 100.02) < 1e-6


def test_a_node_clock_stepped_back_is_followed_after_a_few_batches() -> None:
    ingest = make_ingest()
    for seq in range(3):
        ingest.handle(TOPIC, payload(seq, T.timestamp() + seq), T + timedelta(seconds=seq))
    # the node's clock jumps 30 s back; its batches now look 30 s late
    times = []
    for seq in range(3, 8):
        arrived = T + timedelta(seconds=seq)
        advs = ingest.handle(TOPIC, payload(seq, T.timestamp() + seq - 30), arrived)
        times.append([(arrived - a.at).total_seconds() for a in advs])
    assert times[0] == []  # 30 s old by the old estimate: stale
    assert times[-1] == [0.0]  # re-estimated: on time again
    assert ingest.dropped["stale"] >= 1


def test_old_readings_are_dropped_as_stale() -> None:
    ingest = make_ingest()
    advs = ingest.handle(TOPIC, payload(1, T.timestamp(), dt=30.0), T)
    assert advs == []
    assert ingest.dropped["stale"] == 1


def test_a_flooding_node_is_throttled_and_the_others_are_not() -> None:
    ticks = Ticks()
    ingest = make_ingest(ticks, max_rate=100.0)  # pi-1: 100/s, a burst of 200
    taken = 0
    for seq in range(20):  # 20 x 100 readings in 1 s
        ticks.now += 0.05
        taken += len(ingest.handle(TOPIC, payload(seq, T.timestamp(), n=100), T))
    assert 200 <= taken <= 310  # the burst, and 1 s at 100/s
    assert ingest.dropped["rate_limited"] == 2000 - taken
    other = "proximity/v1/store-001/nodes/pi-2/readings"
    assert len(ingest.handle(other, payload(1, T.timestamp(), n=100), T)) == 100


def test_liveness_follows_the_will_messages_and_silence() -> None:
    ticks = Ticks()
    ingest = make_ingest(ticks, silence_s=5.0)
    assert ingest.alive("aisle-1") is False
    assert ingest.alive("nowhere") is None
    with structlog.testing.capture_logs() as logs:
        ingest.handle(STATUS, b'{"state": "online", "boot": 1}', T)
        assert ingest.alive("aisle-1")
        ingest.handle(STATUS, b"offline", T)  # its will: the broker says it vanished
        assert ingest.alive("aisle-1") is False
        ingest.handle(TOPIC, payload(1, T.timestamp()), T)  # back: readings resume
        assert ingest.alive("aisle-1")
        ticks.now += 6
        assert [spec.node for spec in ingest.check_silence()] == ["pi-1"]
        assert ingest.alive("aisle-1") is False
    events = [(e["event"], e.get("node")) for e in logs if e["event"].startswith("node_")]
    assert events == [
        ("node_online", "pi-1"),
        ("node_offline", "pi-1"),
        ("node_online", "pi-1"),
        ("node_silent", "pi-1"),
    ]


def test_espresense_readings_say_they_are_node_filtered() -> None:
    ingest = make_ingest()
    ident = f"iBeacon:{APP_UUID}-1-32769"
    body = json.dumps({"id": ident, "rssi": -70, "rssi@1m": -59}).encode()
    (adv,) = ingest.handle(f"espresense/devices/{ident}/coffee", body, T)
    assert adv.device.details == NodeOrigin("espresense", "coffee", filtered=True)
    assert (adv.scanner, adv.at) == ("gw-coffee", T)
    assert ingest.filtered_scanners() == frozenset({"gw-coffee"})
    (raw,) = ingest.handle(TOPIC, payload(1, T.timestamp()), T)
    assert raw.device.details == NodeOrigin("ours", "pi-1", filtered=False)


def test_unknown_nodes_and_other_stores_are_counted_not_read() -> None:
    ingest = make_ingest()
    assert not ingest.handle("proximity/v1/store-001/nodes/pi-9/readings", payload(1, 0), T)
    assert not ingest.handle("proximity/v1/store-002/nodes/pi-1/readings", payload(1, 0), T)
    assert not ingest.handle("home/omg-9/BTtoMQTT/AABBCCDDEEFF", b'{"id":"x","rssi":-1}', T)
    assert ingest.dropped == {"unknown_node": 2, "not_ours": 1}


def test_no_device_address_reaches_a_log_line_or_a_counter() -> None:
    """Whatever the nodes send, their addresses (and address-like topic levels) stay out of
    the logs and the counters."""
    ingest = make_ingest()
    mac_topic_node = "C47C8D6A1122"
    messages = [
        (TOPIC, payload(1, T.timestamp())),
        (TOPIC, b'{"seq": 2, "sent": 1, "readings": [{"addr": "C4:7C:8D:6A:11:22", "rssi": 99}]}'),
        (f"proximity/v1/store-001/nodes/{mac_topic_node}/readings", payload(1, 0)),
        (f"home/{ADDRESS}/BTtoMQTT/{mac_topic_node}", b'{"id": "C4:7C:8D:6A:11:22", "rssi": -5}'),
        ("espresense/devices/x/coffee", b'{"id": "x", "rssi": -60, "mac": "c47c8d6a1122zz"}'),
    ]
    with structlog.testing.capture_logs(processors=[]) as logs:
        for topic, body in messages:
            ingest.handle(topic, body, T)
    shown = json.dumps(logs, default=str) + json.dumps([ingest.rejected, ingest.dropped])
    for form in (ADDRESS, ADDRESS.lower(), mac_topic_node, mac_topic_node.lower()):
        assert form not in shown
    assert ingest.rejected["ours:out_of_range"] == 1
    assert ingest.rejected["espresense:bad_address"] == 1


@given(
    offset=st.floats(-1e5, 1e5),
    batches=st.lists(
        st.tuples(st.floats(0.0, 1.9), st.floats(0.0, 1.0), st.floats(0.0, 5.0)),
        min_size=1,
        max_size=30,
    ),
)
def test_a_reading_is_timed_between_when_it_was_heard_and_when_it_arrived(
    offset: float, batches: list[tuple[float, float, float]]
) -> None:
    """Whatever the node's clock offset and the delays (under the step threshold): a
    reading lands no earlier than it was heard and no later than its batch's own delay
    after (or its device's previous reading, so time never goes back), and never after
    it arrived."""
    ingest = make_ingest()
    sent = T
    previous = arrived = T - timedelta(days=1)
    slack = timedelta(microseconds=50)  # float seconds of the Unix epoch
    for seq, (delay, dt, gap) in enumerate(batches):
        sent += timedelta(seconds=gap)
        heard = sent - timedelta(seconds=dt)
        arrived = max(arrived, sent + timedelta(seconds=delay))  # handled in arrival order
        body = payload(seq, sent.timestamp() - offset, dt=dt)
        (adv,) = ingest.handle(TOPIC, body, arrived)
        assert heard - slack <= adv.at <= max(arrived, previous) + slack
        assert adv.at <= max(heard + (arrived - sent) + slack, previous)
        assert previous <= adv.at <= arrived
        previous = adv.at


def test_a_message_without_a_node_name_is_an_unknown_node() -> None:
    ingest = make_ingest()
    assert not ingest.handle("proximity/v1/store-001/nodes//readings", payload(1, 0), T)
    assert not ingest.handle("espresense/devices/x/", b'{"id": "x", "rssi": -60}', T)
    assert ingest.dropped == {"unknown_node": 2}


def test_heartbeats_keep_a_quiet_node_alive() -> None:
    """ESPresense's telemetry and OpenMQTTGateway's system report say a node is there
    even when it hears nobody: it is not silent, and a silent one is back."""
    ticks = Ticks()
    nodes = [
        NodeSpec("espresense", "coffee", "gw-coffee", silence_s=5),
        NodeSpec("omg", "omg-1", "gw-bakery", silence_s=5),
    ]
    ingest = NodeIngest("store-001", nodes, monotonic=ticks)
    for _ in range(3):
        ticks.now += 4
        ingest.handle("espresense/rooms/coffee/telemetry", b'{"uptime": 5}', T)
        assert ingest.check_silence() == []
    assert ingest.alive("gw-coffee")
    assert ingest.alive("gw-bakery") is False  # never heard
    ingest.handle("home/omg-1/SYStoMQTT", b'{"uptime": 120}', T)
    assert ingest.alive("gw-bakery")


def test_what_a_node_dropped_itself_is_a_counter_across_its_restarts() -> None:
    ingest = make_ingest()
    health = ingest.nodes[("ours", "pi-1")]
    ingest.handle(TOPIC, payload(1, T.timestamp(), boot="a", dropped=3), T)
    ingest.handle(STATUS, b'{"state": "online", "boot": "a", "dropped": 3}', T)  # the same 3
    ingest.handle(TOPIC, payload(2, T.timestamp(), boot="a", dropped=5), T)
    assert health.node_dropped == 5
    ingest.handle(TOPIC, payload(0, T.timestamp(), boot="b", dropped=2), T)  # restarted
    assert health.node_dropped == 7


def test_a_node_flooding_garbage_is_throttled_before_parsing_and_its_will_still_counts() -> None:
    ticks = Ticks()
    nodes = [NodeSpec("espresense", "coffee", "gw-coffee", max_rate=10.0)]
    ingest = NodeIngest("store-001", nodes, monotonic=ticks)
    ingest.handle("espresense/rooms/coffee/status", b"online", T)
    for _ in range(100):  # at one instant: the burst (20) is parsed, the rest is not
        ingest.handle("espresense/devices/x/coffee", b"{garbage", T)
    assert ingest.rejected["espresense:bad_json"] == 20
    assert ingest.dropped["rate_limited"] == 80
    ingest.handle("espresense/rooms/coffee/status", b"offline", T)  # the will gets through
    assert ingest.alive("gw-coffee") is False


def test_a_device_heard_by_two_nodes_never_goes_back_in_time() -> None:
    """pi-2 heard the phone 80 ms before pi-1 did, but its batch came in later: the
    reading keeps its place after pi-1's (re-timed to it), never before it."""
    ingest = make_ingest()
    one = ingest.handle(TOPIC, payload(1, T.timestamp(), dt=0.02), T)
    other = "proximity/v1/store-001/nodes/pi-2/readings"
    two = ingest.handle(other, payload(1, T.timestamp(), dt=0.10), T)
    assert one[0].at == T - timedelta(seconds=0.02)
    assert two[0].at == one[0].at  # not T - 0.10: that would be before pi-1's reading
    assert ingest.reordered == 1
    later = ingest.handle(TOPIC, payload(2, T.timestamp() + 1, dt=0.0), T + timedelta(seconds=1))
    assert later[0].at == T + timedelta(seconds=1)
