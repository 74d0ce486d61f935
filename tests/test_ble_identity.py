"""Shopper identity primitives: rotating identifiers and resolvable private addresses."""

import os
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from proximity.adapters.ble.rotating import (
    DEFAULT_PERIOD,
    RotatingResolver,
    rotating_id,
    window_at,
)
from proximity.adapters.ble.rpa import (
    AddressError,
    address_bytes,
    ah,
    is_rpa,
    make_rpa,
    resolve_rpa,
)
from proximity.errors import FrameError

# -- rotating identifiers --------------------------------------------------------------------

NEW_YEAR = datetime(2026, 1, 1, tzinfo=UTC)
NEW_YEAR_WINDOW = 1_963_584  # 1767225600 s // 900 s
MID_WINDOW = NEW_YEAR + timedelta(minutes=7, seconds=30)
KEY = bytes(range(16))


def shopper_keys(count: int) -> dict[str, bytes]:
    return {f"shopper-{n}": n.to_bytes(2, "big") * 8 for n in range(count)}


def test_window_counter_is_unix_time_over_the_period() -> None:
    assert window_at(NEW_YEAR) == NEW_YEAR_WINDOW
    assert window_at(NEW_YEAR - timedelta(seconds=1)) == NEW_YEAR_WINDOW - 1
    assert window_at(NEW_YEAR + DEFAULT_PERIOD - timedelta(microseconds=1)) == NEW_YEAR_WINDOW
    assert window_at(NEW_YEAR, timedelta(minutes=1)) == NEW_YEAR_WINDOW * 15
    with pytest.raises(ValueError, match="timezone-aware"):
        window_at(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="whole number of seconds"):
        window_at(NEW_YEAR, timedelta(milliseconds=1500))


def test_rotating_id_is_the_truncated_hmac_of_the_window_counter() -> None:
    # HMAC-SHA256(key, window as 8 bytes big-endian), first 8 bytes
    assert rotating_id(KEY, 0) == bytes.fromhex("c6b0c5d1fb645370")
    assert rotating_id(KEY, NEW_YEAR_WINDOW) == bytes.fromhex("caa5660d84b75849")
    assert rotating_id(KEY, NEW_YEAR_WINDOW + 1) != rotating_id(KEY, NEW_YEAR_WINDOW)


def test_rotating_id_refuses_short_keys_and_bad_windows() -> None:
    with pytest.raises(ValueError, match="at least 16 bytes"):
        rotating_id(b"short", 1)
    with pytest.raises(ValueError, match="64"):
        rotating_id(KEY, -1)
    with pytest.raises(ValueError, match="at least 16 bytes"):
        RotatingResolver({"x": b"short"})


@pytest.mark.parametrize(
    ("offset", "resolves"), [(-2, False), (-1, True), (0, True), (1, True), (2, False)]
)
def test_a_shopper_resolves_in_the_current_and_adjacent_windows_only(
    offset: int, resolves: bool
) -> None:
    resolver = RotatingResolver(shopper_keys(3))
    observed = rotating_id(shopper_keys(3)["shopper-1"], NEW_YEAR_WINDOW + offset)
    assert resolver.resolve(observed, MID_WINDOW) == ("shopper-1" if resolves else None)


def test_the_skew_and_the_period_are_configurable() -> None:
    keys = shopper_keys(2)
    strict = RotatingResolver(keys, skew_windows=0)
    assert (
        strict.resolve(rotating_id(keys["shopper-0"], NEW_YEAR_WINDOW), MID_WINDOW) == "shopper-0"
    )
    assert strict.resolve(rotating_id(keys["shopper-0"], NEW_YEAR_WINDOW + 1), MID_WINDOW) is None
    minutely = RotatingResolver(keys, period=timedelta(minutes=1))
    window = window_at(MID_WINDOW, timedelta(minutes=1))
    assert minutely.resolve(rotating_id(keys["shopper-1"], window + 1), MID_WINDOW) == "shopper-1"
    assert minutely.resolve(rotating_id(keys["shopper-1"], window + 2), MID_WINDOW) is None


def test_the_table_is_built_once_per_window_not_per_advertisement() -> None:
    keys = shopper_keys(50)
    resolver = RotatingResolver(keys)
    observed = rotating_id(keys["shopper-7"], NEW_YEAR_WINDOW)
    assert resolver.resolve(observed, MID_WINDOW) == "shopper-7"
    assert resolver.computations == 3 * 50
    for second in range(1000):
        # anywhere in the same window
        assert resolver.resolve(observed, NEW_YEAR + timedelta(seconds=second % 900)) == "shopper-7"
    assert resolver.computations == 3 * 50
    # the next window only tables the window that came into reach
    assert resolver.resolve(observed, MID_WINDOW + DEFAULT_PERIOD) == "shopper-7"
    assert resolver.computations == 4 * 50
    assert resolver.table_size == 3 * 50


def test_memory_stays_bounded_as_time_goes_by() -> None:
    keys = shopper_keys(20)
    resolver = RotatingResolver(keys)
    for hour in range(48):
        resolver.resolve(b"\x00" * 8, MID_WINDOW + timedelta(hours=hour, minutes=hour))
        assert resolver.table_size <= 3 * 20


def test_shoppers_can_be_registered_and_removed() -> None:
    keys = shopper_keys(2)
    resolver = RotatingResolver(keys)
    newcomer = os.urandom(32)
    assert resolver.resolve(rotating_id(newcomer, NEW_YEAR_WINDOW), MID_WINDOW) is None
    resolver.register("newcomer", newcomer)
    assert len(resolver) == 3
    assert resolver.resolve(rotating_id(newcomer, NEW_YEAR_WINDOW), MID_WINDOW) == "newcomer"
    resolver.unregister("shopper-0")
    assert resolver.resolve(rotating_id(keys["shopper-0"], NEW_YEAR_WINDOW), MID_WINDOW) is None
    assert (
        resolver.resolve(rotating_id(keys["shopper-1"], NEW_YEAR_WINDOW), MID_WINDOW) == "shopper-1"
    )
    assert resolver.table_size == 3 * 2


def test_many_shoppers_never_collide() -> None:
    keys = shopper_keys(2000)
    resolver = RotatingResolver(keys)
    for offset in (-1, 0, 1):
        for key_id, key in keys.items():
            assert (
                resolver.resolve(rotating_id(key, NEW_YEAR_WINDOW + offset), MID_WINDOW) == key_id
            )
    assert resolver.table_size == 3 * 2000  # every identifier distinct


@pytest.fixture(scope="module")
def hundred_shoppers() -> tuple[RotatingResolver[str], set[bytes]]:
    keys = shopper_keys(100)
    known = {rotating_id(key, NEW_YEAR_WINDOW + d) for key in keys.values() for d in (-1, 0, 1)}
    return RotatingResolver(keys), known


@given(st.binary(min_size=8, max_size=8))
def test_a_random_id_resolves_to_nobody(
    hundred_shoppers: tuple[RotatingResolver[str], set[bytes]], observed: bytes
) -> None:
    resolver, known = hundred_shoppers
    assume(observed not in known)
    assert resolver.resolve(observed, MID_WINDOW) is None


@given(
    st.lists(st.binary(min_size=16, max_size=32), min_size=2, max_size=8, unique=True),
    st.integers(0, 2**40),
)
def test_two_shoppers_never_share_an_identifier(keys: list[bytes], window: int) -> None:
    ids = [rotating_id(key, window) for key in keys]
    assert len(set(ids)) == len(ids)


# -- resolvable private addresses ------------------------------------------------------------

# Bluetooth Core spec, Vol 3 Part H, Appendix D.7 "ah random address hash functions":
# IRK ec0234a357c8ad05341010a60a397d9b, prand 0x708194 -> AES-128 159d5fb72ebe2311a48c1bdcc40dfbaa,
# ah = 0x0dfbaa
SPEC_IRK = bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")
SPEC_PRAND = bytes.fromhex("708194")
SPEC_HASH = bytes.fromhex("0dfbaa")


def test_ah_matches_the_core_specification_sample_data() -> None:
    assert ah(SPEC_IRK, SPEC_PRAND) == SPEC_HASH


def test_the_specification_address_resolves_to_its_irk() -> None:
    address = make_rpa(SPEC_IRK, SPEC_PRAND)
    assert address == "70:81:94:0D:FB:AA"
    assert is_rpa(address)
    irks = {"alice": bytes(16), "bob": SPEC_IRK}
    assert resolve_rpa(address, irks) == "bob"
    assert resolve_rpa(address.lower(), irks) == "bob"
    assert resolve_rpa(address_bytes(address), irks) == "bob"
    assert resolve_rpa(address, {"alice": bytes(16)}) is None
    # one bit off in the hash: nobody
    assert resolve_rpa("70:81:94:0D:FB:AB", irks) is None


@pytest.mark.parametrize(
    ("address", "resolvable"),
    [
        ("70:81:94:0D:FB:AA", True),  # 0b01...
        ("40:00:00:00:00:01", True),
        ("C0:11:22:33:44:55", False),  # static random, 0b11
        ("00:11:22:33:44:55", False),  # non-resolvable private, 0b00
        ("80:11:22:33:44:55", False),  # reserved, 0b10
    ],
)
def test_is_rpa_reads_the_top_two_bits(address: str, resolvable: bool) -> None:
    assert is_rpa(address) is resolvable


def test_a_malformed_address_is_a_frame_error() -> None:
    with pytest.raises(FrameError, match="AA:BB:CC:DD:EE:FF") as info:
        is_rpa("70:81:94:0D:FB")
    assert isinstance(info.value, AddressError)
    assert info.value.kind == "ble-address"


def test_a_non_resolvable_address_is_not_even_tried() -> None:
    assert resolve_rpa("C0:81:94:0D:FB:AA", {"bob": SPEC_IRK}) is None


def test_make_rpa_refuses_a_bad_prand() -> None:
    with pytest.raises(ValueError, match="0b01"):
        make_rpa(SPEC_IRK, bytes.fromhex("c08194"))
    with pytest.raises(ValueError, match="all zeros or all ones"):
        make_rpa(SPEC_IRK, bytes.fromhex("400000"))
    with pytest.raises(ValueError, match="all zeros or all ones"):
        make_rpa(SPEC_IRK, bytes.fromhex("7fffff"))
    with pytest.raises(ValueError, match="3 bytes"):
        make_rpa(SPEC_IRK, b"\x40\x01")
    with pytest.raises(ValueError, match="16 bytes"):
        ah(b"\x00" * 15, SPEC_PRAND)


irks = st.binary(min_size=16, max_size=16)
prands = st.integers(1, 0x3FFFFE).map(lambda r: (0x400000 | r).to_bytes(3, "big"))


@given(irks, irks, prands)
def test_make_then_resolve_round_trips(irk: bytes, other: bytes, prand: bytes) -> None:
    address = make_rpa(irk, prand)
    assert is_rpa(address)
    assert address_bytes(address)[:3] == prand
    assert resolve_rpa(address, {"mine": irk}) == "mine"
    expected = "other" if ah(other, prand) == ah(irk, prand) else None
    assert resolve_rpa(address, {"other": other}) == expected


@given(
    st.one_of(
        st.binary(max_size=8),
        st.text(max_size=20),
        st.from_regex(r"[0-9A-Fa-f:]{15,19}", fullmatch=True),
    )
)
def test_arbitrary_addresses_raise_only_its_parse_error(address: str | bytes) -> None:
    try:
        raw = address_bytes(address)
    except AddressError:
        return
    assert len(raw) == 6
    assert resolve_rpa(address, {"bob": SPEC_IRK}) in ("bob", None)
