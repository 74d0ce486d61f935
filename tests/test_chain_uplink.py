"""The gateway's chain uplink (docs/chain.md): sealing facts into batches in the measurement
store's file, sending them to a real mosquitto, deleting them on hq's acks, re-sending
what is not acknowledged (after a reconnect, after a crash), and its downlink."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
import structlog
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from proximity.chain.uplink import ChainUplink, DownlinkError, parse_ack
from proximity.clock import SystemClock
from proximity.config import ChainSettings, Settings
from proximity.measurement.store import MeasurementStore, Stage
from proximity.metrics import Metrics
from tests.mosquitto import Mosquitto, Subscriber, eventually

pytestmark = pytest.mark.timeout(60)
ROOT = Path(__file__).resolve().parent.parent
FAST_DIR = "/dev/shm" if os.path.isdir("/dev/shm") else None
"""The property test's many small SQLite files, in memory when the system has a tmpfs."""

T0 = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
STORE, GATEWAY = "store-001", "gw-1"
FAST = ChainSettings(
    enabled=True, seal_every=0.1, resend_after=0.6, status_interval=5, max_batch_rows=50
)


class Acker:
    """The centre's side, played by a plain paho client: records every batch that comes
    up and (while ``acking``) acknowledges it on down/acks, as hq does."""

    def __init__(self, port: int, store: str = STORE) -> None:
        self.batches: list[dict[str, Any]] = []
        self.others: dict[str, list[bytes]] = {}
        self.acking = True
        self.store = store
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(f"proximity/v1/{store}/up/#", qos=1)
        assert subscribed.wait(5)

    def _message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if not msg.topic.endswith("/up/facts"):
            self.others.setdefault(msg.topic.rsplit("/", 1)[1], []).append(bytes(msg.payload))
            return
        batch = json.loads(msg.payload)
        self.batches.append(batch)
        if self.acking:
            self.ack(batch["gateway"], [batch["seq"]])

    def ack(self, gateway: str, seqs: list[int]) -> None:
        self.send("acks", json.dumps({"v": 1, "gateway": gateway, "seqs": seqs}).encode())

    def send(self, leaf: str, payload: bytes, retain: bool = False) -> None:
        self.client.publish(f"proximity/v1/{self.store}/down/{leaf}", payload, 1, retain)

    def seqs(self) -> list[int]:
        return [b["seq"] for b in self.batches]

    def status(self) -> dict[str, Any]:
        return dict(json.loads(self.others["status"][-1]))

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


def add_facts(measure: MeasurementStore, n: int, start: datetime = T0) -> None:
    for i in range(n):
        stage = [Stage.DECIDED, Stage.PUBLISHED, Stage.HELD_OUT, Stage.SUPPRESSED][i % 4]
        measure.add(
            stage,
            "welcome" if i % 3 else "coffee",
            start + timedelta(seconds=7 * i),
            variant="b" if i % 5 == 0 else None,
            reason="cooldown" if stage is Stage.SUPPRESSED else "",
            offer=f"offer-secret-{i}",
        )


def uplink_for(broker: Mosquitto, measure: MeasurementStore, **kwargs: Any) -> ChainUplink:
    return ChainUplink(
        broker.url,
        store=STORE,
        gateway=GATEWAY,
        measure=measure,
        clock=SystemClock(),
        settings=kwargs.pop("settings", FAST),
        status=kwargs.pop("status", lambda: {"rules_version": "r1", "outbox_depth": 0}),
        **kwargs,
    )


def counted(rows: list[dict[str, Any]]) -> Counter[tuple[str, ...]]:
    out: Counter[tuple[str, ...]] = Counter()
    for r in rows:
        out[(r["minute"], r["rule"], r["variant"], r["arm"], r["stage"], r["reason"])] += r["count"]
    return out


def expected(measure: MeasurementStore) -> Counter[tuple[str, ...]]:
    """Every fact in the file, counted per batch key (what the centre must end up with)."""
    assert measure._db is not None
    out: Counter[tuple[str, ...]] = Counter()
    for at, stage, rule, variant, reason in measure._db.query(
        "SELECT at, stage, rule, variant, reason FROM facts"
    ):
        minute = datetime.fromisoformat(at).replace(second=0, microsecond=0).isoformat()
        arm = "holdout" if stage.startswith("held_out") else "treatment"
        out[(minute, rule, variant, arm, stage, reason)] += 1
    return out


# -- sealing, in the file -------------------------------------------------------------------


def test_sealing_groups_per_minute_and_numbers_batches_without_gaps(tmp_path: Path) -> None:
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    assert measure.seal(T0) == []  # nothing recorded: no batch
    add_facts(measure, 120)
    assert measure.seal(T0, max_facts=50) == [1, 2, 3]  # 50 + 50 + 20 facts
    assert measure.seal(T0) == []  # each fact sealed once
    batches = measure.pending()
    assert [b.facts for b in batches] == [50, 50, 20]
    assert sum((counted(b.rows) for b in batches), Counter()) == expected(measure)
    row = batches[0].rows[0]
    assert set(row) == {"minute", "rule", "variant", "arm", "stage", "reason", "count"}
    assert {r["arm"] for r in batches[0].rows if r["stage"] == "held_out"} == {"holdout"}
    assert measure.acknowledge([2, 99]) == {2}
    assert [b.seq for b in measure.pending()] == [1, 3]
    measure.close()
    reopened = MeasurementStore(tmp_path / "funnel.sqlite")  # numbering goes on after a restart
    add_facts(reopened, 3)
    assert reopened.seal(T0) == [4]
    assert reopened.acknowledge([1, 3, 4]) == {1, 3, 4}
    assert reopened.seal(T0) == []
    assert reopened.pending() == []
    assert reopened.last_seq == 4  # seqs are never reused, even once all are deleted
    add_facts(reopened, 40)  # a batch stays far below the broker's packet limit
    small = [reopened.pending(after=s - 1)[0] for s in reopened.seal(T0, max_bytes=1500)]
    assert len(small) > 1
    assert all(len(json.dumps(b.rows)) <= 1700 for b in small)
    assert sum(b.facts for b in small) == 40
    reopened.close()


def test_facts_recorded_while_the_file_failed_are_counted_as_unsealable(tmp_path: Path) -> None:
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    add_facts(measure, 4)
    assert measure._db is not None
    measure._db.fail("write_failed", OSError("disk full"))  # as FallbackDb does on an error
    add_facts(measure, 3)
    assert measure.unsealable == 3
    assert measure.seal(T0) == []
    assert not measure.sealable
    assert sum(f.stages.total() for f in measure.funnel()) == 3  # still in the report


facts = st.tuples(
    st.integers(0, 400),  # seconds after T0
    st.sampled_from(list(Stage)),
    st.sampled_from(["welcome", "coffee"]),
    st.sampled_from(["", "a"]),
)
steps = st.lists(
    st.one_of(
        st.lists(facts, min_size=1, max_size=20).map(lambda f: ("add", f)),
        st.tuples(st.integers(1, 15), st.sampled_from([400, 100_000])).map(lambda n: ("seal", n)),
        st.just(("reopen", 0)),
        st.lists(st.integers(1, 12), max_size=4).map(lambda s: ("ack", s)),
    ),
    max_size=14,
)


@given(steps)
@hsettings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_fact_is_in_exactly_one_batch(plan: list[tuple[str, Any]]) -> None:
    """For any facts, seal points (with any batch size), restarts and acks: the batches'
    rows, summed, are the facts counted per key — none missing, none in two batches."""
    with tempfile.TemporaryDirectory(dir=FAST_DIR) as folder:
        path = Path(folder) / "funnel.sqlite"
        measure = MeasurementStore(path)
        seen: dict[int, Counter[tuple[str, ...]]] = {}
        sealed: list[int] = []
        for op, arg in plan:
            if op == "add":
                for seconds, stage, rule, variant in arg:
                    measure.add(stage, rule, T0 + timedelta(seconds=seconds), variant)
            elif op == "seal":
                sealed += measure.seal(T0, max_facts=arg[0], max_bytes=arg[1])
            elif op == "reopen":
                measure.close()
                measure = MeasurementStore(path)
            else:
                measure.acknowledge(arg)
            for batch in measure.pending():  # a batch never changes once it has a number
                assert seen.setdefault(batch.seq, counted(batch.rows)) == counted(batch.rows)
        sealed += measure.seal(T0, max_facts=7)
        for batch in measure.pending():
            seen.setdefault(batch.seq, counted(batch.rows))
        assert sealed == list(range(1, len(sealed) + 1))  # 1, 2, 3... no gaps, none twice
        assert sorted(seen) == sealed
        assert sum(seen.values(), Counter()) == expected(measure)
        measure.close()


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 2**40), st.text(max_size=8), st.just([])
)
_answers = st.lists(
    st.one_of(
        _values,
        st.fixed_dictionaries({"seq": _values, "reason": _values}),
        st.fixed_dictionaries({"seq": st.integers(1, 99), "reason": st.text(max_size=300)}),
    ),
    max_size=4,
)
_acks = st.fixed_dictionaries(
    {"v": st.sampled_from([1, 1, 2]), "gateway": st.sampled_from(["gw-1", "", 7])},
    optional={
        "seqs": st.lists(st.one_of(st.integers(-1, 99), _values), max_size=4),
        "refused": st.one_of(_answers, _values),
    },
).map(lambda ack: json.dumps(ack).encode())


@given(st.binary(max_size=80) | st.text(max_size=80).map(str.encode) | _acks)
@hsettings(max_examples=300)
def test_an_ack_parses_or_is_refused_with_a_reason(payload: bytes) -> None:
    reasons = {"not_json", "not_an_object", "wrong_version", "bad_field"}
    try:
        ack = parse_ack(payload)
    except DownlinkError as exc:
        refused: DownlinkError | None = exc
    else:
        refused = None
    if refused is not None:
        assert refused.reason in reasons
        return
    assert ack.gateway
    assert all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in ack.seqs)
    assert all(
        isinstance(seq, int) and not isinstance(seq, bool) and seq > 0 and len(why) <= 200
        for seq, why in ack.refused
    )


def test_a_refused_batch_moves_aside_in_one_step_and_is_never_pending_again(
    tmp_path: Path,
) -> None:
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    add_facts(measure, 120)
    assert measure.seal(T0, max_facts=50) == [1, 2, 3]
    rows = measure.pending()[1].rows
    assert measure.refuse([(2, "duplicate key"), (9, "never sealed")], T0) == {2}
    assert [b.seq for b in measure.pending()] == [1, 3]
    assert measure.refused() == [(2, "duplicate key", T0.isoformat())]
    assert measure.refuse([(2, "again")], T0) == set()  # already aside
    measure.close()
    reopened = MeasurementStore(tmp_path / "funnel.sqlite")  # it survives a restart
    assert [b.seq for b in reopened.pending()] == [1, 3]
    assert reopened._db is not None
    kept = reopened._db.query("SELECT rows FROM uplink_refused WHERE seq = 2")
    assert json.loads(kept[0][0]) == rows  # the facts are kept for ops, not lost
    reopened.close()


def test_chain_enabled_needs_a_measurement_file_and_an_external_broker() -> None:
    with pytest.raises(ValueError, match=r"needs \[measurement\] store"):
        Settings.model_validate(
            {"broker": {"url": "mqtt://127.0.0.1:1883"}, "chain": {"enabled": True}}
        )
    with pytest.raises(ValueError, match="external store broker"):
        Settings.model_validate(
            {"measurement": {"store": "/tmp/f.sqlite"}, "chain": {"enabled": True}}
        )
    with pytest.raises(ValueError, match="longer than 0"):
        ChainSettings(resend_after=0)
    ok = Settings.model_validate(
        {
            "broker": {"url": "mqtt://127.0.0.1:1883"},
            "measurement": {"store": "/tmp/f.sqlite"},
            "chain": {"enabled": True, "seal_every": "10s"},
        }
    )
    assert ok.chain.seal_every == timedelta(seconds=10)


# -- through mosquitto ----------------------------------------------------------------------


async def test_batches_go_up_are_acked_and_deleted_and_carry_nothing_personal(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    acker = Acker(mosquitto.port)
    uplink = uplink_for(mosquitto, measure)
    try:
        await uplink.start()
        add_facts(measure, 130)  # three batches of at most 50 facts
        await eventually(lambda: uplink.acked == 3 and not measure.pending())
        assert acker.seqs() == [1, 2, 3]  # oldest first
        assert sum(map(counted, (b["rows"] for b in acker.batches)), Counter()) == expected(measure)
        status = acker.status()
        assert status["online"]
        assert status["rules_version"] == "r1"
        assert status["store"] == STORE
        assert status["gateway"] == GATEWAY
        add_facts(measure, 5, T0 + timedelta(hours=1))
        await eventually(lambda: uplink.acked == 4)
        # hq's duplicate acks, acks for another gateway, unknown seqs: ignored, counted
        acker.ack(GATEWAY, [1, 2])
        acker.ack("gw-2", [1])
        acker.ack(GATEWAY, [999])
        await eventually(lambda: sum(uplink.acks_ignored.values()) == 4)
        assert uplink.acks_ignored == {"already_acked": 2, "other_gateway": 1, "unknown_seq": 1}
        metrics = Metrics()
        metrics.watch_uplink(uplink)
        text = metrics.render().decode()
        for line in (
            "proximity_uplink_pending_batches 0.0",
            "proximity_uplink_acked_total 4.0",
            f"proximity_uplink_sent_total {float(uplink.sent)}",  # 4, or more if re-sent
            "proximity_uplink_oldest_pending_age_seconds 0.0",
            'proximity_uplink_acks_ignored_total{reason="other_gateway"} 1.0',
            "proximity_uplink_connected 1.0",
        ):
            assert line in text
    finally:
        await uplink.stop()
        acker.close()
    everything = b"".join(
        [*acker.others["status"], *(json.dumps(b).encode() for b in acker.batches)]
    )
    assert b"offer-secret" not in everything  # offer ids stay in the store
    assert json.loads(acker.others["status"][-1])["online"] is False  # a clean stop says so
    measure.close()


async def test_malformed_downlink_messages_are_refused_and_counted(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    acker = Acker(mosquitto.port)
    bundles: list[bytes] = []

    async def on_bundle(payload: bytes) -> None:
        bundles.append(payload)

    uplink = uplink_for(mosquitto, measure, on_bundle=on_bundle)
    try:
        await uplink.start()
        await eventually(lambda: "status" in acker.others)
        for bad in (b"{not json", b"[1]", b'{"v": 2}', b'{"v":1,"gateway":"gw-1","seqs":[0]}'):
            acker.send("acks", bad)
        acker.send("surprise", b"{}")
        acker.send("rules", b'{"v": 1, "bundle": 7}', retain=True)
        await eventually(lambda: sum(uplink.rejected.values()) == 5 and bundles)
        assert uplink.rejected == {
            "not_json": 1,
            "not_an_object": 1,
            "wrong_version": 1,
            "bad_field": 1,
            "unknown_topic": 1,
        }
        assert bundles == [b'{"v": 1, "bundle": 7}']
        await uplink.report_rollout({"bundle": 7, "outcome": "refused", "reason": "bad signature"})
        await eventually(lambda: "rollout" in acker.others)
        report = json.loads(acker.others["rollout"][-1])
        assert report["outcome"] == "refused"
        assert report["store"] == STORE
        add_facts(measure, 3)  # and it still does its job
        await eventually(lambda: uplink.acked == 1)
    finally:
        await uplink.stop()
        acker.close()
        measure.close()


async def test_a_batch_hq_s_database_refused_is_kept_aside_and_not_sent_again(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """hq answers that PostgreSQL refused batch 1: the gateway moves it to uplink_refused,
    logs it, counts it, and does not send it again (it would be refused for ever); the
    next batch goes up and is acknowledged as usual."""
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    acker = Acker(mosquitto.port)
    acker.acking = False
    uplink = uplink_for(mosquitto, measure)  # resend_after 0.6 s
    try:
        with structlog.testing.capture_logs() as logs:
            await uplink.start()
            add_facts(measure, 5)
            await eventually(lambda: acker.seqs() == [1])
            refusal = {"v": 1, "gateway": GATEWAY, "seqs": [], "refused": []}
            refusal["refused"] = [{"seq": 1, "reason": "new row violates check constraint"}]
            acker.send("acks", json.dumps(refusal).encode())
            await eventually(lambda: uplink.refused == 1)
            sent = len(acker.batches)
            await asyncio.sleep(1.5)  # more than twice resend_after
            assert len(acker.batches) == sent  # not sent again
            acker.acking = True
            add_facts(measure, 3, T0 + timedelta(hours=1))
            await eventually(lambda: uplink.acked == 1)
        assert acker.seqs()[-1] == 2
        assert [seq for seq, _, _ in measure.refused()] == [1]
        assert not measure.pending()
        errors = [e for e in logs if e["event"] == "uplink_batch_refused"]
        assert [(e["seq"], e["reason"]) for e in errors] == [
            (1, "new row violates check constraint")
        ]
        metrics = Metrics()
        metrics.watch_uplink(uplink)
        assert "proximity_uplink_refused_total 1.0" in metrics.render().decode()
    finally:
        await uplink.stop()
        acker.close()
        measure.close()


async def test_unacknowledged_batches_are_sent_again_after_a_reconnect_and_in_time(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    acker = Acker(mosquitto.port)
    acker.acking = False  # hq is away
    slow = FAST.model_copy(update={"resend_after": timedelta(seconds=30)})
    uplink = uplink_for(mosquitto, measure, settings=slow)
    try:
        await uplink.start()
        add_facts(measure, 60)
        await eventually(lambda: acker.seqs() == [1, 2])
        acker.close()
        mosquitto.stop()  # the store broker restarts
        add_facts(measure, 10, T0 + timedelta(hours=1))
        await asyncio.sleep(0.3)
        mosquitto.start()
        acker = Acker(mosquitto.port)
        await eventually(lambda: sorted(acker.seqs()) == [1, 2, 3], limit_s=8)
        acker.acking = True
        acker.ack(GATEWAY, [1, 2, 3])
        await eventually(lambda: not measure.pending())
    finally:
        await uplink.stop()
        acker.close()
    # without a reconnect, resend_after: hq lost an ack
    measure2 = MeasurementStore(tmp_path / "other.sqlite")
    acker = Acker(mosquitto.port)
    acker.acking = False
    uplink = uplink_for(mosquitto, measure2)
    try:
        await uplink.start()
        add_facts(measure2, 5)
        await eventually(lambda: acker.seqs() == [1])
        await eventually(lambda: acker.seqs() == [1, 1], limit_s=3)  # after resend_after
        assert acker.batches[0] == acker.batches[1]  # the same batch, unchanged
        acker.ack(GATEWAY, [1])
        await eventually(lambda: uplink.acked == 1)
        assert uplink.resent >= 1
    finally:
        await uplink.stop()
        acker.close()
        measure.close()
        measure2.close()


_CRASHING_GATEWAY = """
import asyncio, sys
from pathlib import Path
from proximity.clock import SystemClock
from proximity.config import ChainSettings
from proximity.delivery.url import BrokerUrl
from proximity.measurement.store import MeasurementStore
from proximity.chain.uplink import ChainUplink
from tests.test_chain_uplink import add_facts

async def main() -> None:
    measure = MeasurementStore(Path(sys.argv[2]))
    uplink = ChainUplink(BrokerUrl.tcp("127.0.0.1", int(sys.argv[1])), store="store-001",
        gateway="gw-1", measure=measure, clock=SystemClock(),
        settings=ChainSettings(enabled=True, seal_every=0.1, resend_after=60))
    await uplink.start()
    add_facts(measure, 40)
    while uplink.sent < 1:
        await asyncio.sleep(0.01)
    print("sent", flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


async def test_a_gateway_killed_between_seal_and_ack_sends_the_same_batch_again(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    path = tmp_path / "funnel.sqlite"
    acker = Acker(mosquitto.port)
    acker.acking = False
    root = ROOT
    proc = subprocess.Popen(
        [sys.executable, "-c", _CRASHING_GATEWAY, str(mosquitto.port), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []  # structlog's default output (stdout) comes first
        while not lines or lines[-1] not in ("sent\n", ""):
            lines.append(await asyncio.to_thread(proc.stdout.readline))
        assert lines[-1] == "sent\n", lines
        await eventually(lambda: acker.seqs() == [1])
        proc.send_signal(signal.SIGKILL)
        proc.wait(5)
        # the broker says so for it: the will
        await eventually(lambda: acker.status()["online"] is False, limit_s=65)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
        assert proc.stdout is not None
        proc.stdout.close()
    measure = MeasurementStore(path)
    acker.acking = True
    uplink = uplink_for(mosquitto, measure)
    try:
        await uplink.start()
        await eventually(lambda: uplink.acked == 1)
        assert acker.batches[1] == acker.batches[0]  # same seq, same rows
        assert counted(acker.batches[0]["rows"]) == expected(measure)
    finally:
        await uplink.stop()
        acker.close()
        measure.close()


async def test_a_store_broker_that_is_down_blocks_nothing(tmp_path: Path) -> None:
    from proximity.delivery.url import BrokerUrl
    from tests.mosquitto import free_port

    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    uplink = ChainUplink(
        BrokerUrl.tcp("127.0.0.1", free_port()),
        store=STORE,
        gateway=GATEWAY,
        measure=measure,
        clock=SystemClock(),
        settings=FAST,
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    await uplink.start()
    assert loop.time() - started < 0.5
    add_facts(measure, 10)
    await eventually(lambda: measure.pending_summary()[0] == 1)  # sealed, kept in the file
    assert uplink.pending()[0] == 1
    assert not uplink.connected
    await uplink.stop()
    measure.close()


def test_proximity_run_sends_its_funnel_and_status_up_and_nothing_personal(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    """A real `proximity run` (a small simulated crowd, 3000x time) with [chain] enabled:
    every fact it recorded goes up in acknowledged batches, its status is retained, and
    no shopper token or offer id is in anything it sent up."""
    (tmp_path / "config.toml").write_text(
        f'[broker]\nurl = "mqtt://127.0.0.1:{mosquitto.port}"\n'
        '[ble.sim]\nscenario = "quiet"\nshoppers = 3\nspeed = 3000\nseed = 3\n'
        'arrival_window = "2m"\n'
        '[measurement]\nstore = "funnel.sqlite"\n'
        "[chain]\nenabled = true\n"
        '[metrics]\nenabled = false\n[logging]\nformat = "json"\n'
    )
    acker = Acker(mosquitto.port)
    offers = Subscriber(mosquitto.port, "proximity/v1/store-001/shoppers/+/offers")
    try:
        run = subprocess.run(
            [sys.executable, "-m", "proximity", "run", "--config", str(tmp_path / "config.toml")],
            capture_output=True,
            text=True,
            timeout=50,
            cwd=tmp_path,
            check=False,
        )
    finally:
        offers.close()
        acker.close()
    assert run.returncode == 0, run.stderr[-2000:]
    measure = MeasurementStore(tmp_path / "funnel.sqlite")
    try:
        assert measure.pending() == []  # all acknowledged before it stopped
        sent = Counter[tuple[str, ...]]()
        for seq in sorted(set(acker.seqs())):
            sent += counted(next(b for b in acker.batches if b["seq"] == seq)["rows"])
        assert sent == expected(measure)
        assert sent.total() > 0
    finally:
        measure.close()
    statuses = [json.loads(p) for p in acker.others["status"]]
    assert statuses[0]["online"] is True
    assert statuses[-1]["online"] is False
    assert set(statuses[0]) >= {"rules_version", "outbox_depth", "scanners", "nodes", "errors"}
    up = b"".join([*acker.others["status"], *(json.dumps(b).encode() for b in acker.batches)])
    offered = [json.loads(p) for p in offers.payloads()]
    assert offered  # there were offers, with ids and tokens, on the store broker
    for offer in offered:
        assert offer["id"].encode() not in up
    for message in offers.messages:
        assert message.topic.split("/")[4].encode() not in up
