"""Signed rule rollout: the gateway's applier, and ``proximity rollout`` against mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import paho.mqtt.client as mqtt
import psycopg
import pytest
import structlog
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion

from proximity.chain.bundle import load_public_key, sign_bundle, verify_bundle
from proximity.chain.bundledir import BundleDir, startup_rule_paths
from proximity.chain.messages import RolloutReport, parse_uplink
from proximity.chain.pgstore import PgStore
from proximity.chain.rollout import BundleApplier, applier_for, store_check
from proximity.cli.main import main
from proximity.clock import VirtualClock
from proximity.config import Settings
from proximity.engine.loader import load_rule_files
from proximity.engine.reload import RuleWatcher
from proximity.engine.table import RuleTable
from proximity.wiring import build_runtime
from tests.factories import T0
from tests.mosquitto import Mosquitto, Subscriber

ROOT = Path(__file__).resolve().parent.parent
GROCERY = ROOT / "rules" / "grocery"
STORE = "grocery-042"
KEY = Ed25519PrivateKey.generate()
KEYS = {"ops-2026": KEY.public_key()}


def grocery_files(**changes: tuple[str, str]) -> dict[str, str]:
    """The grocery rules as a bundle's files; ``name=(old, new)`` edits one file."""
    files = {p.name: p.read_text() for p in sorted(GROCERY.glob("*.toml"))}
    for name, (old, new) in changes.items():
        key = f"{name}.toml"
        assert old in files[key]
        files[key] = files[key].replace(old, new, 1)
    return files


def payload(
    number: int = 7,
    files: Mapping[str, str] | None = None,
    store: str = STORE,
    key: Ed25519PrivateKey = KEY,
    key_id: str = "ops-2026",
) -> bytes:
    return sign_bundle(
        store=store,
        bundle=number,
        files=files if files is not None else grocery_files(),
        key_id=key_id,
        private_key=key,
        created_at=T0,
    ).payload()


class Gateway:
    """A gateway's rules: a real watcher on the config's rule files, and an applier."""

    def __init__(self, root: Path, fail_swap: bool = False, accept: object = None) -> None:
        self.bundles = root / "bundles"
        self.clock = VirtualClock(T0)
        start = startup_rule_paths(self.bundles)
        paths = start[1] if start else [GROCERY]
        self.table = RuleTable.from_ruleset(load_rule_files(paths))
        self.swaps: list[RuleTable] = []

        async def on_reload(table: RuleTable) -> None:
            if fail_swap:
                raise RuntimeError("the pipeline said no")
            self.table = table
            self.swaps.append(table)

        self.watcher = RuleWatcher(paths, self.clock, on_reload)
        self.applier = BundleApplier(
            STORE,
            "gw-1",
            KEYS,
            self.bundles,
            rules_version=lambda: self.table.version,
            swap=self.watcher.adopt,
            clock=self.clock,
            accept=accept,  # type: ignore[arg-type]
        )

    def written(self) -> list[str]:
        return sorted(p.name for p in self.bundles.iterdir()) if self.bundles.exists() else []


async def test_a_bundle_is_applied_and_survives_a_restart(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    before = gw.table.version
    files = grocery_files(rules=('"COFFEE', '"BEANS'))
    with structlog.testing.capture_logs() as logs:
        report = await gw.applier.apply(payload(7, files))
    assert report == {
        "v": 1,
        "store": STORE,
        "gateway": "gw-1",
        "bundle": 7,
        "outcome": "applied",
        "reason": "",
        "rules_version": gw.table.version,
        "at": T0.isoformat(),
    }
    assert gw.table.version != before
    assert len(gw.swaps) == 1
    assert gw.applier.running == 7
    current = gw.bundles / "current"
    assert os.readlink(current) == "7"
    assert {p.name: p.read_text() for p in current.glob("*.toml")} == files
    assert gw.watcher.paths == [gw.bundles / "7"]
    assert [e["event"] for e in logs if e["event"].startswith(("bundle_", "rules_"))] == [
        "rules_adopted",
        "bundle_applied",
    ]
    # an edit on the gateway is picked up from the bundle's files (the watcher follows them)
    (gw.bundles / "7" / "rules.toml").write_text(files["rules.toml"].replace("BEANS", "BEANZ"))
    assert await gw.watcher.check() is not None

    # restart: the bundle's rules, not the config's; the retained bundle again is no error
    again = Gateway(tmp_path)
    assert again.table.ruleset.files[0].parent == gw.bundles / "7"
    assert again.applier.running == 7
    report = await again.applier.apply(payload(7, files))
    assert (report["outcome"], report["reason"]) == ("applied", "already running")
    assert again.applier.refused == 0
    assert again.swaps == []


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: b"{not json", "not a bundle: not UTF-8 JSON"),
        (lambda: b'{"v": 1, "store": "grocery-042"}', "not a bundle: bundle: Field required"),
        (lambda: payload(key_id="ops-2025"), "unknown key ops-2025"),
        (lambda: payload(key=Ed25519PrivateKey.generate()), "bad signature"),
        (lambda: payload(store="store-002"), "for store store-002"),
        (
            lambda: payload(files={**grocery_files(), "../evil.toml": ""}),
            "unsafe file name '../evil.toml': plain *.toml names only, no folders",
        ),
        (
            lambda: payload(files=grocery_files(rules=('zone = "coffee"', 'zone = "cofee"'))),
            'rules.toml:38:8: rule "tasting-come-back" uses unknown zone "cofee"',
        ),
        (
            lambda: payload(files=grocery_files(tests=('expect = ["welcome-map"]', "expect = []"))),
            "test 'a shopper walking in gets the map' failed: expected offers: none; "
            "got: welcome-map",
        ),
    ],
)
async def test_refusals_keep_the_rules_and_write_nothing(
    tmp_path: Path, make: object, reason: str
) -> None:
    gw = Gateway(tmp_path)
    before = gw.table.version
    with structlog.testing.capture_logs() as logs:
        report = await gw.applier.apply(make())  # type: ignore[operator]
    assert report["outcome"] == "refused"
    assert report["reason"].startswith(reason), report["reason"]
    # hq takes it (proximity/chain/messages.py)
    parsed = parse_uplink(f"proximity/v1/{STORE}/up/rollout", json.dumps(report).encode())
    assert isinstance(parsed, RolloutReport)
    assert report["rules_version"] == before
    assert gw.swaps == []
    assert gw.written() == []
    assert gw.applier.refused == 1
    assert [e["reason"] for e in logs if e["event"] == "bundle_refused"] == [report["reason"]]


async def test_only_newer_bundles_and_a_failing_test_keeps_the_old_bundle(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    assert (await gw.applier.apply(payload(7)))["outcome"] == "applied"
    serving = gw.table.version
    for number in (6, 7):  # older, and the same number with other bytes
        report = await gw.applier.apply(
            payload(number, grocery_files(rules=("COFFEE-20", "COFFEE-21")))
        )
        assert report["reason"] == f"bundle {number} is not newer than 7"
    broken = grocery_files(tests=('expect = ["welcome-map"]', 'expect = ["coffee-coupon"]'))
    report = await gw.applier.apply(payload(8, broken))
    assert report["bundle"] == 8
    assert report["reason"].startswith("test 'a shopper walking in gets the map' failed")
    assert (gw.applier.running, gw.table.version, report["rules_version"]) == (7, serving, serving)
    assert gw.written() == ["7", "current"]
    assert (await gw.applier.apply(payload(9)))["outcome"] == "applied"
    assert gw.applier.running == 9


async def test_the_store_and_its_floor_plan_must_accept_the_rules(tmp_path: Path) -> None:
    zones = ["entrance", "produce", "bakery", "coffee", "deli", "wine", "pharmacy", "checkout"]
    table = RuleTable.from_ruleset(load_rule_files([GROCERY]))
    assert sorted(table.ruleset.zones) == sorted(zones)  # the check below is the only reason
    gw = Gateway(tmp_path, accept=store_check(lambda t: None, [z for z in zones if z != "wine"]))
    report = await gw.applier.apply(payload())
    assert report["reason"].startswith("zone 'wine' is not in the store's floor plan")
    assert gw.written() == []


async def test_a_failed_swap_or_a_crash_leaves_the_old_bundle_whole(tmp_path: Path) -> None:
    gw = Gateway(tmp_path)
    await gw.applier.apply(payload(7))
    # the swap in memory fails after current was switched: current is switched back
    failing = Gateway(tmp_path, fail_swap=True)
    report = await failing.applier.apply(payload(8, grocery_files(rules=("DELI-10", "DELI-11"))))
    assert report["outcome"] == "refused"
    assert report["reason"] == "could not switch to the new rules: the pipeline said no"
    assert os.readlink(tmp_path / "bundles" / "current") == "7"
    # a crash after bundle 9's folder was renamed into place, before current moved
    crashed = BundleDir(tmp_path / "bundles")
    staged = crashed.stage(grocery_files(), b"{}")
    crashed.install(staged, 9)
    restarted = Gateway(tmp_path)
    assert restarted.applier.running == 7
    assert restarted.table.ruleset.files[0].parent.name == "7"
    # bundle 9 for real replaces the leftover; old folders are tidied, staging leftovers gone
    crashed.stage({"x.toml": ""}, b"{}")
    assert (await restarted.applier.apply(payload(9)))["outcome"] == "applied"
    assert restarted.written() == ["7", "8", "9", "current"]
    assert json.loads((tmp_path / "bundles" / "9" / "bundle.json").read_text())["bundle"] == 9


async def test_a_gateway_restarted_after_a_bundle_starts_on_its_rules(tmp_path: Path) -> None:
    public = tmp_path / "ops-2026.pub.pem"
    public.write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    config = Settings.model_validate(
        {
            "store": {"id": STORE},
            "rules": {"paths": [str(GROCERY)]},
            "chain": {"rollout_keys": {"ops-2026": str(public)}, "bundles": str(tmp_path / "b")},
        }
    )
    runtime = build_runtime(config, VirtualClock(T0))
    watcher = runtime.watcher()
    applier = applier_for(runtime, watcher, VirtualClock(T0))
    assert applier is not None
    files = grocery_files(store=("rue des Halles", "rue Neuve"))
    report = await applier.apply(payload(3, files))
    assert report["outcome"] == "applied"
    version = runtime.pipeline.table.version  # the pipeline serves the bundle's rules
    assert version == report["rules_version"] != runtime.table.version
    runtime.close()

    with structlog.testing.capture_logs() as logs:
        restarted = build_runtime(config, VirtualClock(T0))
    assert restarted.table.version == version
    assert restarted.watcher().paths == [tmp_path / "b" / "3"]
    assert {
        "event": "rules_from_bundle",
        "bundle": 3,
        "path": str(tmp_path / "b" / "3"),
        "log_level": "info",
    } in logs
    restarted.close()
    # the bundle's files broken by hand on the gateway: the config's rules serve, said once
    (tmp_path / "b" / "3" / "rules.toml").write_text("[[rules]\n")
    with structlog.testing.capture_logs() as logs:
        fallback = build_runtime(config, VirtualClock(T0))
    assert fallback.rule_paths == (GROCERY,)
    assert [e["bundle"] for e in logs if e["event"] == "rules_bundle_unusable"] == [3]
    fallback.close()


@settings(max_examples=60, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.dictionaries(
            st.sampled_from(["v", "store", "bundle", "files", "key", "signature", "created_at"]),
            st.one_of(st.integers(), st.text(max_size=10), st.none()),
        ).map(lambda d: json.dumps(d).encode()),
    )
)
def test_arbitrary_payloads_only_ever_give_a_refusal(tmp_path_factory: object, data: bytes) -> None:
    root = tmp_path_factory.mktemp("gw")  # type: ignore[attr-defined]

    async def swap(paths: object, table: RuleTable) -> None:
        raise AssertionError("nothing may be swapped")

    clock = VirtualClock(T0)
    applier = BundleApplier(
        STORE, "gw-1", KEYS, root, rules_version=lambda: "v0", swap=swap, clock=clock
    )
    report = asyncio.run(applier.apply(data))
    assert report["outcome"] == "refused"
    assert report["reason"]
    topic = f"proximity/v1/{STORE}/up/rollout"
    assert isinstance(parse_uplink(topic, json.dumps(report).encode()), RolloutReport)
    assert list(root.iterdir()) == []


# --- proximity rollout, against a real mosquitto ---------------------------------------


def chain_rules(tmp_path: Path, **changes: tuple[str, str]) -> Path:
    """The grocery rules without their store id: fit for any store."""
    folder = tmp_path / "rules"
    folder.mkdir(parents=True)
    files = grocery_files(store=('id = "grocery-042"\n', ""), **changes)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def hq_config(
    tmp_path: Path,
    port: int,
    watch: str = "1s",
    database: str = "postgresql://nobody@127.0.0.1:1/none",  # unreachable: not recorded
) -> Path:
    assert main(["rollout", "keygen", "--out", str(tmp_path / "keys"), "--key-id", "ops-2026"]) == 0
    config = tmp_path / "hq.toml"
    config.write_text(
        f'[hq]\nbroker = "mqtt://127.0.0.1:{port}"\n'
        f'database = "{database}"\n'
        '[groups]\nnorth = ["store-002", "store-001"]\n'
        f'[rollout]\nsigning_key = "keys/ops-2026.pem"\nkey_id = "ops-2026"\n'
        f'canary_watch = "{watch}"\n'
    )
    return config


def retained(port: int, topic: str, wait_s: float = 0.5) -> dict[str, bytes]:
    sub = Subscriber(port, topic)
    time.sleep(wait_s)
    sub.close()
    return {m.topic: bytes(m.payload) for m in sub.messages}


def test_publish_puts_a_verifiable_bundle_on_each_store(
    mosquitto: Mosquitto, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = hq_config(tmp_path, mosquitto.port)
    rules = chain_rules(tmp_path)
    args = ["rollout", "publish", "--config", str(config), "--rules", str(rules)]
    assert main([*args, "--group", "north", "--bundle", "5"]) == 0
    out = capsys.readouterr().out
    assert "rules ok: 3 file(s), checked and tested" in out
    assert "published bundle 5 to store-001\n" in out
    assert "not recorded in the database: database not reachable" in out
    keys = {"ops-2026": load_public_key(tmp_path / "keys" / "ops-2026.pub.pem")}
    found = retained(mosquitto.port, "proximity/v1/+/down/rules")
    assert sorted(found) == [f"proximity/v1/store-00{n}/down/rules" for n in (1, 2)]
    for topic, data in found.items():
        bundle = verify_bundle(data, keys)
        assert bundle.store == topic.split("/")[2]
        assert bundle.bundle == 5
        assert bundle.files == {p.name: p.read_text() for p in sorted(rules.glob("*.toml"))}

    # a broken rule file or a failing test: nothing leaves
    broken = chain_rules(tmp_path / "b", tests=('expect = ["welcome-map"]', "expect = []"))
    argv = ["rollout", "publish", "--config", str(config), "--rules", str(broken)]
    assert main([*argv, "--stores", "store-003"]) == 1
    err = capsys.readouterr().err
    assert "test 'a shopper walking in gets the map' failed" in err
    assert "nothing published" in err
    # rules naming a store go to that store only
    argv = ["rollout", "publish", "--config", str(config), "--rules", str(GROCERY)]
    assert main([*argv, "--stores", "grocery-042,store-003"]) == 1
    assert "would be refused by store-003" in capsys.readouterr().err
    assert "proximity/v1/store-003/down/rules" not in retained(mosquitto.port, "proximity/#", 0.3)


class FakeCanary:
    """A gateway for store-001 on the broker: a real BundleApplier behind a paho client.
    ``mode``: applied (it trusts the key), refused (it does not), errors (applies, then
    its status errors rise), silent (says nothing)."""

    def __init__(self, port: int, public_key: Path, mode: str, tmp_path: Path) -> None:
        self.mode = mode
        keys = {"ops-2026": load_public_key(public_key)} if mode != "refused" else {}

        async def swap(paths: object, table: RuleTable) -> None:
            pass

        self.applier = BundleApplier(
            "store-001",
            "gw-1",
            keys,
            tmp_path / "canary-bundles",
            rules_version=lambda: "old",
            swap=swap,
            clock=VirtualClock(T0),
        )
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.client.on_message = self._message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self._status(0)
        self.client.subscribe("proximity/v1/store-001/down/rules", qos=1)
        assert subscribed.wait(5)  # and the status before it is on the broker

    def _status(self, errors: int) -> None:
        status = {"v": 1, "store": "store-001", "gateway": "gw-1", "online": True, "errors": errors}
        self.client.publish("proximity/v1/store-001/up/status", json.dumps(status), 1, True)

    def _message(self, client: object, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if self.mode == "silent":
            return
        report = asyncio.run(self.applier.apply(bytes(msg.payload)))
        self.client.publish("proximity/v1/store-001/up/rollout", json.dumps(report), 1, True)
        if self.mode == "errors":
            self._status(1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize(
    ("mode", "halt"),
    [
        ("applied", None),
        ("refused", "halted at canary store-001: refused bundle 9: unknown key ops-2026"),
        ("errors", "halted at canary store-001: its errors rose from 0 to 1 during the watch"),
        ("silent", "halted at canary store-001: no report of bundle 9 applied within 0.6s"),
    ],
)
def test_canary_first_and_a_failing_canary_halts(
    mosquitto: Mosquitto,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mode: str,
    halt: str | None,
) -> None:
    config = hq_config(tmp_path, mosquitto.port, watch="0.6s")
    canary = FakeCanary(mosquitto.port, tmp_path / "keys" / "ops-2026.pub.pem", mode, tmp_path)
    try:
        argv = [
            "rollout",
            "publish",
            "--config",
            str(config),
            "--rules",
            str(chain_rules(tmp_path)),
        ]
        code = main([*argv, "--stores", "store-002,store-001", "--canary", "50%", "--bundle", "9"])
    finally:
        canary.close()
    out, err = capsys.readouterr()
    assert "published bundle 9 to store-001 (canary)" in out
    rest = retained(mosquitto.port, "proximity/v1/store-002/down/rules", 0.3)
    if halt is None:
        assert code == 0, err
        assert "canary ok: store-001 applied bundle 9" in out
        assert out.index("canary ok") < out.index("published bundle 9 to store-002")
        assert list(rest) == ["proximity/v1/store-002/down/rules"]
        assert canary.applier.running == 9
        # status, from the retained messages
        argv = ["rollout", "status", "--config", str(config), "--group", "north"]
        assert main([*argv, "--format", "json", "--source", "broker"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["source"] == "broker"
        first, second = shown["stores"]
        assert (first["store"], first["bundle"], first["outcome"]) == ("store-001", 9, "applied")
        assert (second["store"], second["outcome"]) == ("store-002", None)
    else:
        assert code == 1
        assert halt in err
        assert "the other stores were not published to" in err
        assert rest == {}


def test_publish_records_in_the_database_and_status_reads_it(
    mosquitto: Mosquitto, pg_dsn: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = PgStore(pg_dsn)
    schema.migrate()
    schema.close()
    with psycopg.connect(pg_dsn, autocommit=True) as conn:  # an earlier, higher bundle
        conn.execute(
            "INSERT INTO bundles_published (store, bundle, stage, key)"
            " VALUES ('store-009', 4000000000, 'all', 'ops-2025')"
        )
    config = hq_config(tmp_path, mosquitto.port, database=pg_dsn)
    argv = ["rollout", "publish", "--config", str(config), "--rules", str(chain_rules(tmp_path))]
    assert main([*argv, "--group", "north"]) == 0
    assert "bundle 4000000001 for 2 store(s): store-001, store-002" in capsys.readouterr().out
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT store, bundle, stage, key FROM bundles_published ORDER BY store"
        ).fetchall()
        assert rows == [
            ("store-001", 4000000001, "all", "ops-2026"),
            ("store-002", 4000000001, "all", "ops-2026"),
            ("store-009", 4000000000, "all", "ops-2025"),
        ]
        conn.execute(  # what hq writes from store-001's report and status
            "INSERT INTO rollout_reports (store, gateway, bundle, outcome, reason, at)"
            " VALUES ('store-001', 'gw-1', 4000000001, 'refused', 'bad signature', now())"
        )
        conn.execute(
            "INSERT INTO fleet (store, gateway, last_seen, online, bundle, status)"
            " VALUES ('store-001', 'gw-1', now(), true, 7, '{}')"
        )
    assert main(["rollout", "status", "--config", str(config), "--group", "north"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "from the database"
    header, first, second = lines[1:]
    assert header.split()[:5] == ["store", "gateway", "runs", "last", "bundle"]
    assert first.split()[:5] == ["store-001", "gw-1", "7", "4000000001", "refused"]
    assert first.split()[5].startswith("20")  # the report's time
    assert first.endswith("  bad signature")
    assert second.split() == ["store-002", "no", "report"]
