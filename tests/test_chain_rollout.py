"""Signed rule rollout: the gateway's applier, and ``proximity rollout`` against mosquitto."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping
from pathlib import Path

import pytest
import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings
from hypothesis import strategies as st

from proximity.chain.bundle import sign_bundle
from proximity.chain.bundledir import BundleDir, startup_rule_paths
from proximity.chain.rollout import BundleApplier, store_check
from proximity.clock import VirtualClock
from proximity.engine.loader import load_rule_files
from proximity.engine.reload import RuleWatcher
from proximity.engine.table import RuleTable
from tests.factories import T0

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
    gw = Gateway(root)
    report = asyncio.run(gw.applier.apply(data))
    assert report["outcome"] == "refused"
    assert report["reason"]
    assert gw.written() == []
