from pathlib import Path
from uuid import UUID

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from proximity.identity.resolver import CONSENT_BIT, IdentityResolver
from proximity.identity.segments import load_segments
from tests.factories import APP_UUID, KEY, make_sighting


def resolver() -> IdentityResolver:
    return IdentityResolver([APP_UUID], KEY)


def test_beacons_of_other_uuids_are_not_shoppers() -> None:
    assert resolver().resolve(make_sighting(uuid=UUID(int=1))) is None


def test_consent_bit_and_token_do_not_depend_on_each_other() -> None:
    r = resolver()
    with_consent = r.resolve(make_sighting(minor=7 | CONSENT_BIT))
    without = r.resolve(make_sighting(minor=7))
    assert with_consent is not None
    assert without is not None
    assert with_consent.consent
    assert not without.consent
    assert with_consent.token == without.token


def test_the_token_depends_on_the_key() -> None:
    a = IdentityResolver([APP_UUID], KEY).resolve(make_sighting())
    b = IdentityResolver([APP_UUID], KEY[::-1]).resolve(make_sighting())
    assert a is not None
    assert b is not None
    assert a.token != b.token


@given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFF))
def test_tokens_never_carry_the_raw_identifiers(major: int, minor: int) -> None:
    shopper = resolver().resolve(make_sighting(major=major, minor=minor))
    assert shopper is not None
    assert shopper.token.startswith("s")
    assert APP_UUID.hex not in shopper.token
    assert f"{major}-{minor}" not in shopper.token


def test_short_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        IdentityResolver([APP_UUID], b"short")


def test_anonymous_beacons_are_present_but_never_known() -> None:
    cart = UUID("0000cafe-0000-0000-0000-000000000001")
    r = IdentityResolver([APP_UUID], KEY, anonymous_uuids=[cart])
    shopper = r.resolve(make_sighting(uuid=cart, minor=5 | CONSENT_BIT))
    assert shopper is not None
    assert shopper.anonymous
    assert not shopper.consent  # whatever the beacon says
    assert shopper.token.startswith("a")


def test_segments_come_from_the_crm_file_keyed_by_token(tmp_path: Path) -> None:
    r = IdentityResolver([APP_UUID], KEY)
    token = r.token_for(APP_UUID, 1, 7)
    path = tmp_path / "segments.csv"
    path.write_text(f"# token,segments\n{token},loyal;coffee-lover\nnot a line\nsx,UPPER\n")
    with structlog.testing.capture_logs() as logs:
        segments = load_segments(path)
    assert segments == {token: frozenset({"loyal", "coffee-lover"})}
    assert [e["line"] for e in logs] == [3, 4]
    resolver = IdentityResolver([APP_UUID], KEY, segments=segments)
    shopper = resolver.resolve(make_sighting(major=1, minor=7 | CONSENT_BIT))
    assert shopper is not None
    assert shopper.segments == {"loyal", "coffee-lover"}


def test_shopper_keys_load_and_bad_lines_are_refused_with_their_line(tmp_path: Path) -> None:
    from proximity.errors import ConfigError
    from proximity.identity.keys import load_shopper_keys

    good = tmp_path / "keys.csv"
    good.write_text(
        "# token,kind,key,consent\n"
        f"s-alice-token,rotating,{'ab' * 32},yes\n\n"
        "s-bob-token,irk,ec0234a357c8ad05341010a60a397d9b,no\n"
    )
    keys = load_shopper_keys(good)
    assert keys.rotating == {"s-alice-token": b"\xab" * 32}
    assert keys.irks == {"s-bob-token": bytes.fromhex("ec0234a357c8ad05341010a60a397d9b")}
    assert keys.consent == {"s-alice-token": True, "s-bob-token": False}
    bad = tmp_path / "bad.csv"
    bad.write_text(
        f"s-alice-token,rotating,{'ab' * 4},yes\n"
        "s-bob-token,irk,zz,no\n"
        "x,irk,00,no\n"
        f"s-carol-token,eid,{'ab' * 16},yes\n"
        f"s-dave-token,irk,{'ab' * 16},maybe\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_shopper_keys(bad)
    assert str(caught.value).splitlines() == [
        f"{bad}:1: a rotating-identifier key needs at least 16 bytes",
        f"{bad}:2: the key is not hexadecimal",
        f"{bad}:3: token 'x' is not 4-64 of A-Z a-z 0-9 _ -",
        f"{bad}:4: kind 'eid' is not rotating or irk",
        f"{bad}:5: consent 'maybe' is not yes or no",
    ]
