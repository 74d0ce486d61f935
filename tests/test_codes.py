"""Signed codes: round trips, and every kind of bad code refused with its reason."""

from __future__ import annotations

import base64
from datetime import timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from proximity.clock import VirtualClock
from proximity.codes import (
    PREFIX,
    CodeError,
    CodeKind,
    NonceStore,
    Reject,
    Verifier,
    parse_key,
    read,
    sign,
)
from tests.factories import T0

KEY = b"k" * 32
OTHER = b"o" * 32
subjects = st.from_regex(r"[A-Za-z0-9_.:-]{1,64}", fullmatch=True)
kinds = st.sampled_from(list(CodeKind))


def coupon(subject: str = "o-coffee-1", **kw: object) -> str:
    args: dict[str, object] = {
        "key": KEY,
        "key_id": 1,
        "issued": T0,
        "expires": T0 + timedelta(days=7),
    }
    args.update(kw)
    return sign(CodeKind.COUPON, subject, **args)  # type: ignore[arg-type]


def verifier(clock: VirtualClock | None = None, **kw: object) -> Verifier:
    return Verifier({1: KEY, 2: OTHER}, clock or VirtualClock(T0 + timedelta(hours=1)), **kw)  # type: ignore[arg-type]


@given(kind=kinds, subject=subjects, ttl=st.integers(1, 10**7), key_id=st.sampled_from([1, 2]))
def test_sign_then_verify_round_trips(kind: CodeKind, subject: str, ttl: int, key_id: int) -> None:
    key = {1: KEY, 2: OTHER}[key_id]
    text = sign(
        kind, subject, key=key, key_id=key_id, issued=T0, expires=T0 + timedelta(seconds=ttl)
    )
    assert text.startswith(PREFIX)
    assert set(text[len(PREFIX) :]) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567")  # QR alphanumeric
    code = Verifier({1: KEY, 2: OTHER}, VirtualClock(T0)).verify(text)
    assert (code.kind, code.subject, code.key_id) == (kind, subject, key_id)
    assert code.issued == T0
    assert code.expires == T0 + timedelta(seconds=ttl)


@given(subject=subjects, data=st.data())
def test_any_single_bit_change_is_rejected(subject: str, data: st.DataObject) -> None:
    text = coupon(subject)
    encoded = text[len(PREFIX) :]
    raw = bytearray(base64.b32decode(encoded + "=" * (-len(encoded) % 8)))
    bit = data.draw(st.integers(0, len(raw) * 8 - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    tampered = PREFIX + base64.b32encode(bytes(raw)).decode().rstrip("=")
    with pytest.raises(CodeError) as caught:
        verifier().verify(tampered)
    assert caught.value.reason in {Reject.MALFORMED, Reject.UNKNOWN_KEY, Reject.BAD_SIGNATURE}


def _reason_or_none(call: object) -> Reject | None:
    try:
        call()  # type: ignore[operator]
    except CodeError as exc:
        assert str(exc)  # noqa: PT017 - every refusal says why
        return exc.reason
    return None


@given(st.text(max_size=300))
def test_any_text_is_a_code_or_a_code_error(text: str) -> None:
    assert _reason_or_none(lambda: read(text)) in {None, Reject.MALFORMED}


@given(st.binary(max_size=120))
def test_any_body_is_a_code_or_a_code_error(raw: bytes) -> None:
    text = PREFIX + base64.b32encode(raw).decode().rstrip("=")
    reason = _reason_or_none(lambda: verifier().verify(text))
    assert reason in {Reject.MALFORMED, Reject.UNKNOWN_KEY, Reject.BAD_SIGNATURE}


def test_forged_expired_early_replayed_and_foreign_codes_are_refused() -> None:
    check = verifier()
    forged = coupon(key=b"x" * 32)
    with pytest.raises(CodeError, match="forged") as caught:
        check.verify(forged)
    assert caught.value.reason is Reject.BAD_SIGNATURE

    with pytest.raises(CodeError, match="expired") as caught:
        check.verify(coupon(issued=T0 - timedelta(days=9), expires=T0 - timedelta(days=2)))
    assert caught.value.reason is Reject.EXPIRED

    with pytest.raises(CodeError, match="future") as caught:
        check.verify(coupon(issued=T0 + timedelta(days=1), expires=T0 + timedelta(days=2)))
    assert caught.value.reason is Reject.NOT_YET_VALID

    with pytest.raises(CodeError, match="unknown key 9") as caught:
        check.verify(coupon(key_id=9))
    assert caught.value.reason is Reject.UNKNOWN_KEY

    good = coupon()
    assert check.verify(good).subject == "o-coffee-1"
    with pytest.raises(CodeError, match="already used") as caught:
        check.verify(good)
    assert caught.value.reason is Reject.REPLAYED
    assert check.verify(coupon()).subject == "o-coffee-1"  # a new code for the same offer

    with pytest.raises(CodeError, match="no PX1: prefix"):
        check.verify("https://example.com/product/123")


def test_lower_case_and_whitespace_from_a_scanner_still_verify() -> None:
    assert verifier().verify("  " + coupon().lower() + "\r\n").kind is CodeKind.COUPON


def test_a_small_qr_holds_a_code() -> None:
    import qrcode
    import qrcode.constants

    text = coupon("o-0123456789abcdef")  # an offer id
    assert len(text) == 83
    qr = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M)
    qr.add_data(text, optimize=0)
    qr.make(fit=True)
    assert qr.version == 4  # 33x33 modules, alphanumeric mode


def test_replays_are_caught_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "used.sqlite"
    text = coupon()
    first = NonceStore(path)
    verifier(used=first).verify(text)
    first.close()
    with pytest.raises(CodeError) as caught:
        verifier(used=NonceStore(path)).verify(text)
    assert caught.value.reason is Reject.REPLAYED


def test_used_nonces_are_forgotten_once_their_codes_expired() -> None:
    store = NonceStore()
    assert store.use(b"12345678", T0 + timedelta(minutes=1), T0)
    assert not store.use(b"12345678", T0 + timedelta(minutes=1), T0)
    store.prune(T0 + timedelta(minutes=2))
    assert len(store) == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"subject": "has space"}, "subject"),
        ({"subject": ""}, "subject"),
        ({"key": b"short"}, "at least 16 bytes"),
        ({"key_id": 256}, "0-255"),
        ({"expires": T0}, "expire after"),
    ],
)
def test_codes_that_cannot_be_signed_say_why(kwargs: dict[str, object], message: str) -> None:
    subject = str(kwargs.pop("subject", "o-1"))
    with pytest.raises(ValueError, match=message):
        coupon(subject, **kwargs)


def test_keys_from_config() -> None:
    assert parse_key("hex:" + "ab" * 16) == b"\xab" * 16
    assert parse_key("base64:" + base64.b64encode(b"z" * 20).decode()) == b"z" * 20
    assert parse_key("a-long-enough-text-key") == b"a-long-enough-text-key"
    with pytest.raises(ValueError, match="16 bytes"):
        parse_key("hex:abcd")
    assert CodeKind.parse("Coupon") is CodeKind.COUPON
    with pytest.raises(ValueError, match="checkin, cart, coupon"):
        CodeKind.parse("voucher")


@given(st.text(max_size=400))
def test_any_scanned_text_gets_a_meaning_never_an_exception(text: str) -> None:
    from proximity.scanned import Meaning, interpret

    found = interpret(text, verifier())
    if found.meaning is Meaning.REFUSED:
        assert found.reason
        assert found.detail
    elif found.meaning is Meaning.PRODUCT:
        assert found.product is not None
        assert "?" not in found.product
        assert "#" not in found.product


def test_what_a_scanned_text_means() -> None:
    from proximity.scanned import Meaning, interpret

    check = verifier()
    signed = interpret(coupon(), check)
    assert signed.meaning is Meaning.SIGNED
    assert signed.code is not None
    assert signed.code.subject == "o-coffee-1"
    link = interpret("HTTPS://user:pw@Shop.Example/p/42?loyalty=123#top", check)
    assert (link.meaning, link.product) == (Meaning.PRODUCT, "https://shop.example/p/42")
    for text in ("hello", "ftp://shop.example/x", "https://", "javascript:alert(1)"):
        found = interpret(text, check)
        assert (found.meaning, found.reason) == (Meaning.REFUSED, "unsigned")
    forged = interpret(coupon(key=b"x" * 32), check)
    assert (forged.meaning, forged.reason) == (Meaning.REFUSED, "bad_signature")
