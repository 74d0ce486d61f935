"""Shoppers' acts in the in-process simulation: readers in the store file, check-ins,
carts bound at the dock, coupons redeemed at the till, all through the real pipeline."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import random
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest

from firmware_sim.__main__ import main
from firmware_sim.acts import DOCK_TURN_S, ActKind, PlannedAct, plan_acts
from firmware_sim.beacons import CART_UUID, CartBeacon
from firmware_sim.crowd import Crowd, CrowdParams, SimShopper, scripted_shopper
from firmware_sim.harness import (
    SCENARIO_START,
    RunResult,
    demo_resolver,
    load_table,
    run_in_process,
    run_scenario,
    scenario_acts,
    scenario_crowd,
)
from firmware_sim.radio import RadioModel, RadioParams
from firmware_sim.scenarios import SCENARIOS, Scenario
from firmware_sim.store import ReaderKind, ReaderRole, Store, StoreError, builtin_store, load_store
from proximity.adapters.base import Advertisement, BleBackend
from proximity.events import EventKind
from proximity.identity.resolver import IdentityResolver
from proximity.readings import BeaconSighting

pytestmark = pytest.mark.timeout(60)

QUIET = RadioParams(
    shadowing_db=0.0, fading=False, body_probability=0.0, packet_loss=0.0, device_spread_db=0.0
)
ACTS = {"cart_share": 0.5, "checkin_share": 0.7, "redeem_share": 1.0}


def _scenario(**changes: object) -> Scenario:
    return SCENARIOS["sparse"].with_crowd(shoppers=30, arrival_window_s=900, **changes)


def _run(scenario: Scenario, seed: int = 5, store: Store | None = None) -> RunResult:
    store = store or builtin_store()
    return asyncio.run(run_scenario(store, scenario, seed, load_table(), demo_resolver()))


def _token(resolver: IdentityResolver, shopper: SimShopper) -> str:
    phone = shopper.phone
    return resolver.token_for(phone.uuid, phone.major, phone.install)


# -- the store file's readers ----------------------------------------------------------------

STORE = """\
name = "tiny"
width = 10.0
depth = 8.0
door = [5.0, 0.0]

[zones.front]
circle = { center = [5.0, 2.0], radius = 1.5 }

[zones.back]
polygon = [[1.0, 5.0], [4.0, 5.0], [4.0, 7.0], [1.0, 7.0]]

[[scanners]]
id = "gw-front"
position = [5.0, 2.0]

[[readers]]
id = "dock"
kind = "nfc"
role = "cart-dock"
position = [5.5, 2.0]

[[readers]]
id = "till-1"
kind = "qr"
zone = "back"
position = [2.0, 6.0]
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "store.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_readers_parse_with_their_zone(tmp_path: Path) -> None:
    store = load_store(_write(tmp_path, STORE))
    dock, till = store.readers
    assert (dock.kind, dock.role, store.reader_zone(dock)) == (
        ReaderKind.NFC,
        ReaderRole.CART_DOCK,
        "front",
    )
    assert (till.kind, till.role, store.reader_zone(till)) == (
        ReaderKind.QR,
        ReaderRole.TILL,
        "back",
    )


def test_the_example_store_has_the_rule_files_till() -> None:
    store = builtin_store()
    table = load_table()
    tills = [r for r in store.readers if r.role is ReaderRole.TILL]
    assert [r.id for r in tills] == ["till-1"]
    assert table.zone_for_reader("till-1") == store.reader_zone(tills[0]) == "checkout"


@pytest.mark.parametrize(
    ("old", "new", "line", "column", "message"),
    [
        (
            'zone = "back"',
            'zone = "front"',
            26,
            12,
            "readers.1.position: reader 'till-1' at (2, 6) is in zone 'back', not in 'front'",
        ),
        (
            'zone = "back"',
            'zone = "bakery"',
            25,
            8,
            "readers.1.zone: reader 'till-1': no zone 'bakery' in this store (front, back)",
        ),
        (
            "position = [5.5, 2.0]",
            "position = [8.0, 7.5]",
            20,
            12,
            "readers.0.position: reader 'dock' at (8, 7.5) is in no zone",
        ),
        (
            "position = [5.5, 2.0]",
            "position = [12.0, 2.0]",
            20,
            12,
            "reader 'dock' at (12, 2) is outside the 10 × 8 m floor",
        ),
        ('kind = "qr"', 'kind = "rfid"', 24, 8, "readers.1.kind: Input should be 'nfc' or 'qr'"),
        ('role = "cart-dock"', 'role = "door"', 19, 8, "readers.0.role"),
        ('id = "till-1"', 'id = "dock"', 23, 6, "readers.1.id: reader 'dock' is listed twice"),
        ('kind = "nfc"\n', "", 16, 1, "readers.0.kind: Field required"),
    ],
)
def test_reader_problems_are_located(
    tmp_path: Path, old: str, new: str, line: int, column: int, message: str
) -> None:
    assert STORE.count(old) == 1
    path = _write(tmp_path, STORE.replace(old, new))
    with pytest.raises(StoreError) as caught:
        load_store(path)
    assert message in str(caught.value)
    assert (caught.value.line, caught.value.column) == (line, column)
    assert str(caught.value).startswith(f"{path}:{line}:{column}: ")


# -- planning ---------------------------------------------------------------------------------


def test_no_shares_plan_nothing() -> None:
    store = builtin_store()
    crowd = scenario_crowd(store, _scenario(cart_share=0.5), 5)
    assert scenario_acts(store, _scenario(cart_share=0.5), 5, crowd) == []


def test_the_same_seed_plans_the_same_acts() -> None:
    store = builtin_store()
    scenario = _scenario(**ACTS)
    crowd = scenario_crowd(store, scenario, 5)
    first = scenario_acts(store, scenario, 5, crowd)
    assert first == scenario_acts(store, scenario, 5, scenario_crowd(store, scenario, 5))
    assert first != scenario_acts(store, scenario, 6, scenario_crowd(store, scenario, 6))


def test_who_acts_where() -> None:
    store = builtin_store()
    scenario = _scenario(**ACTS)
    crowd = scenario_crowd(store, scenario, 5)
    acts = scenario_acts(store, scenario, 5, crowd)
    assert acts == sorted(acts)
    carts = {i for i, s in crowd.shoppers.items() if s.cart is not None}
    docked = {a.shopper for a in acts if a.kind is ActKind.CART}
    assert docked
    assert docked <= carts
    for act in acts:
        if act.kind is ActKind.CART:
            assert act.reader == "cart-dock"
        elif act.kind is ActKind.REDEEM:
            assert act.reader == "till-1"
        elif act.shopper in docked:  # cart holders check in at the dock, once
            assert act.reader == "cart-dock"
        else:
            assert act.reader == "till-1"
    checkins = [a.shopper for a in acts if a.kind is ActKind.CHECKIN]
    assert len(checkins) == len(set(checkins))
    # every act happens while the shopper is in the store
    for act in acts:
        assert crowd.shoppers[act.shopper].itinerary.position(act.t) is not None


def test_one_shopper_at_a_time_at_the_dock() -> None:
    """The daemon pairs a cart code with the next check-in at the reader, whoever shows
    it: shoppers must not interleave at one dock."""
    store = builtin_store()
    scenario = SCENARIOS["crowded"].with_crowd(cart_share=0.6, checkin_share=1.0)
    crowd = scenario_crowd(store, scenario, 7)
    dock = [a for a in scenario_acts(store, scenario, 7, crowd) if a.reader == "cart-dock"]
    assert len(dock) > 40
    for cart, checkin in zip(dock[::2], dock[1::2], strict=True):
        assert (cart.kind, checkin.kind) == (ActKind.CART, ActKind.CHECKIN)
        assert cart.shopper == checkin.shopper
    for before, after in zip(dock[1::2], dock[2::2], strict=False):
        assert after.t - before.t >= DOCK_TURN_S - 1e-9


def test_planning_draws_from_its_own_stream_only() -> None:
    store = builtin_store()
    shoppers = list(scenario_crowd(store, _scenario(cart_share=0.5), 5).shoppers.values())
    rng = random.Random(1)
    plan_acts(store, shoppers, CrowdParams(**ACTS), rng)
    after = rng.random()
    rng = random.Random(1)
    plan_acts(store, shoppers, CrowdParams(checkin_share=0.1, redeem_share=0.2), rng)
    assert rng.random() == after


# -- through the pipeline -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def acted() -> RunResult:
    return _run(_scenario(**ACTS))


def test_carts_are_bound_at_the_dock(acted: RunResult) -> None:
    assert acted.bindings > 0
    assert acted.bindings == acted.acts.cart_codes
    assert acted.refused == {}
    assert acted.acts.taps == 2 * acted.bindings  # the dock is an NFC reader: cart, phone


def test_a_bound_cart_is_its_shoppers_presence() -> None:
    store = builtin_store()
    scenario = _scenario(**ACTS)
    crowd = scenario_crowd(store, scenario, 5)
    acts = scenario_acts(store, scenario, 5, crowd)
    resolver = demo_resolver()
    result = asyncio.run(
        run_in_process(crowd, load_table(), resolver, start=SCENARIO_START, acts=acts)
    )
    bound = [a for a in acts if a.kind is ActKind.CART]
    assert result.bindings == len(bound) > 0
    for act in bound:
        shopper = crowd.shoppers[act.shopper]
        assert shopper.cart is not None
        uuid, major, minor = shopper.cart.beacon_key
        mid_visit = SCENARIO_START + timedelta(seconds=act.t + 60)
        sighting = BeaconSighting(
            at=mid_visit,
            uuid=uuid,
            major=major,
            minor=minor,
            tx_power=-59,
            rssi=-60,
            scanner="gw-coffee",
        )
        resolved = resolver.resolve(sighting)
        assert resolved is not None
        assert resolved.token == _token(resolver, shopper)  # its own shopper, no other


def test_redeemed_coupons_are_offer_redeemed_events(acted: RunResult) -> None:
    redeemed = [e for e in acted.events if e.kind is EventKind.OFFER_REDEEMED]
    assert len(redeemed) == acted.redemptions == acted.acts.coupons > 0
    assert all(e.zone == "checkout" and e.reader == "till-1" for e in redeemed)
    assert len({e.offer for e in redeemed}) == len(redeemed)  # one redemption per offer
    visits = set(acted.visits)
    assert {e.shopper.token for e in redeemed} <= visits


def test_checkins_at_the_till_are_the_shoppers_scans(acted: RunResult) -> None:
    scans = [e for e in acted.events if e.kind is EventKind.QR_SCAN]
    assert scans
    assert all(not e.shopper.anonymous and e.shopper.token in acted.visits for e in scans)
    assert all(e.zone == "checkout" for e in scans)


def test_the_same_seed_gives_the_same_acts(acted: RunResult) -> None:
    again = _run(_scenario(**ACTS))

    def summary(r: RunResult) -> tuple[object, ...]:
        events = [(e.kind, e.at, e.shopper.token, e.zone, e.offer) for e in r.events]
        return events, r.acts.to_json(), r.bindings, r.redemptions, r.score().to_json()

    assert summary(again) == summary(acted)


def test_no_acts_change_nothing() -> None:
    """Readers in the store file, and acts at 0 %, leave a run exactly as it was."""
    store = builtin_store()
    plain = _run(_scenario(), store=store.model_copy(update={"readers": []}))
    with_readers = _run(_scenario(), store=store)
    assert with_readers.acts.taps == with_readers.acts.scans == with_readers.bindings == 0
    assert [e.model_dump() for e in with_readers.events] == [e.model_dump() for e in plain.events]
    assert with_readers.score().to_json() == plain.score().to_json()


# -- only the cart is heard -----------------------------------------------------------------------


class _Without(BleBackend):
    """The crowd with one device's advertisements lost (a phone in a bag, its app asleep)."""

    def __init__(self, inner: BleBackend, address: str) -> None:
        self._inner = inner
        self._address = address

    async def start(self) -> None:
        await self._inner.start()

    async def stop(self) -> None:
        await self._inner.stop()

    async def advertisements(self) -> AsyncIterator[Advertisement]:
        async for advertisement in self._inner.advertisements():
            if advertisement.device.address != self._address:
                yield advertisement


def test_zone_events_carry_the_shopper_while_only_the_cart_is_heard() -> None:
    store = builtin_store()
    walker = scripted_shopper(
        store, [("entrance", 20), ("coffee", 60), ("bakery", 45), ("checkout", 30)], consent=True
    )
    cart = CartBeacon.numbered(0, walker.phone.index, "C0:CA:27:00:00:01")
    shopper = SimShopper(walker.phone, walker.itinerary, cart)
    crowd = Crowd(store, [shopper], RadioModel(QUIET, random.Random(1)), random.Random(2))
    acts = plan_acts(store, [shopper], CrowdParams(checkin_share=1.0), random.Random(3))
    assert [a.kind for a in acts] == [ActKind.CART, ActKind.CHECKIN]
    resolver = demo_resolver()
    token = _token(resolver, shopper)
    result = asyncio.run(
        run_in_process(
            crowd,
            load_table(),
            resolver,
            start=SCENARIO_START,
            tee=lambda backend: _Without(backend, shopper.phone.address),
            acts=acts,
        )
    )
    assert result.bindings == 1
    bound_at = SCENARIO_START + timedelta(seconds=acts[-1].t)
    theirs = [e for e in result.events if e.shopper.token == token]
    zones = {e.zone for e in theirs if e.kind is EventKind.ZONE_ENTER}
    assert {"coffee", "bakery", "checkout"} <= zones
    assert all(e.at >= bound_at for e in theirs if e.kind is EventKind.ZONE_ENTER)
    # before the check-in the cart was anonymous presence: nobody's, and not scored
    anonymous = [e for e in result.events if e.shopper.anonymous]
    assert anonymous
    assert all(e.shopper.token != token for e in anonymous)
    assert result.score().kinds["enter"].matched >= 3


def test_the_cart_uuid_is_anonymous_presence_to_the_demo_resolver() -> None:
    sighting = BeaconSighting(
        at=SCENARIO_START,
        uuid=CART_UUID,
        major=1,
        minor=1,
        tx_power=-59,
        rssi=-60,
        scanner="gw-entrance",
    )
    shopper = demo_resolver().resolve(sighting)
    assert shopper is not None
    assert shopper.anonymous


# -- the command line ---------------------------------------------------------------------------


def test_run_prints_the_acts() -> None:
    out = io.StringIO()
    argv = ["run", "--shoppers", "30", "--duration", "15m", "--seed", "5"]
    assert main([*argv, "--carts", "0.5", "--checkins", "0.7", "--redeem", "1"], out) == 0
    text = out.getvalue()
    assert "acts: NFC taps" in text
    assert "carts bound" in text
    out = io.StringIO()
    assert main([*argv, "--carts", "0.5", "--checkins", "0.7", "--redeem", "1", "--json"], out) == 0
    acts = json.loads(out.getvalue())["acts"]
    assert acts["bindings"] > 0
    assert acts["redemptions"] == acts["coupons"] > 0
    assert acts["taps"] + acts["scans"] == sum(acts["by_reader"].values())
    assert acts["unlisted_readers"] == ["cart-dock"]  # the example rules list only the till


def test_a_run_without_acts_prints_no_acts_line() -> None:
    out = io.StringIO()
    assert main(["run", "--shoppers", "5", "--duration", "5m"], out) == 0
    assert "acts:" not in out.getvalue()


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--checkins", "1.5"],
        ["run", "--walk", "demo", "--carts", "0.5"],
    ],
)
def test_bad_act_flags_are_refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    refused_by_argparse = argv[1] == "--checkins"  # not a share: a usage error
    with pytest.raises(SystemExit) if refused_by_argparse else contextlib.nullcontext():
        assert main(argv, io.StringIO()) == 2
    assert "error" in capsys.readouterr().err


def test_planned_acts_order_by_time() -> None:
    early = PlannedAct(1.0, 9, ActKind.REDEEM, "till-1")
    late = PlannedAct(2.0, 0, ActKind.CART, "cart-dock")
    assert sorted([late, early]) == [early, late]
