"""AltBeacon and Eddystone: the specifications' layouts, malformed frames, property tests."""

import functools
from uuid import UUID

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from proximity.adapters.ble.altbeacon import (
    AltBeacon,
    AltBeaconError,
    build_altbeacon,
    parse_altbeacon,
)
from proximity.adapters.ble.eddystone import (
    URL_EXPANSIONS,
    URL_MAX_ENCODED,
    URL_SCHEMES,
    EddystoneEid,
    EddystoneError,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    EncryptedTlm,
    build_eddystone,
    build_encrypted_tlm,
    decode_url,
    encode_url,
    parse_eddystone,
)
from proximity.errors import FrameError
from tests.strategies import eddystone_encoded_urls, url_texts

# -- AltBeacon -------------------------------------------------------------------------------

# AltBeacon spec v1.0 field table, after the company id: beacon code 0xBEAC, 20-byte id
# (id1 UUID, id2, id3), reference RSSI -59 dBm (0xC5), manufacturer reserved byte.
ALTBEACON_FRAME = bytes.fromhex("beac2f234454cf6d4a0fadf2f4911ba9ffa600010002c5a7")


def test_altbeacon_parses_the_specification_layout() -> None:
    beacon = parse_altbeacon(ALTBEACON_FRAME)
    assert beacon == AltBeacon(UUID("2f234454-cf6d-4a0f-adf2-f4911ba9ffa6"), 1, 2, -59, 0xA7)
    assert beacon.beacon_id == ALTBEACON_FRAME[2:22]


@pytest.mark.parametrize(
    ("frame", "reason", "problem"),
    [
        (b"", "too short", "too_short"),
        (b"\xbe", "too short", "too_short"),
        (ALTBEACON_FRAME[:-2], "22 bytes, expected at least 23", "too_short"),
        (b"\x02\x15" + ALTBEACON_FRAME[2:], "not an AltBeacon", "not_this_format"),
        (b"\xac\xbe" + ALTBEACON_FRAME[2:], "not an AltBeacon", "not_this_format"),
    ],
)
def test_altbeacon_rejects_malformed_frames_with_a_reason(
    frame: bytes, reason: str, problem: str
) -> None:
    with pytest.raises(AltBeaconError, match=reason) as info:
        parse_altbeacon(frame)
    assert (info.value.kind, info.value.problem) == ("altbeacon", problem)


def test_altbeacon_without_the_reserved_byte_reads_it_as_zero() -> None:
    # the Android library's layout ends "p:24-24,d:25-25": a data field past the PDU reads 0
    beacon = parse_altbeacon(ALTBEACON_FRAME[:-1])
    assert beacon == AltBeacon(UUID("2f234454-cf6d-4a0f-adf2-f4911ba9ffa6"), 1, 2, -59, 0)


@pytest.mark.parametrize("extra", [b"\x00", b"\x01\x02\x03"])
def test_altbeacon_bytes_past_the_layout_are_ignored(extra: bytes) -> None:
    assert parse_altbeacon(ALTBEACON_FRAME + extra) == parse_altbeacon(ALTBEACON_FRAME)


altbeacons = st.builds(
    AltBeacon,
    st.uuids(),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFF),
    st.integers(-128, 127),
    st.integers(0, 0xFF),
)


@given(altbeacons)
def test_altbeacon_build_then_parse_round_trips(beacon: AltBeacon) -> None:
    assert parse_altbeacon(build_altbeacon(beacon)) == beacon


@given(
    st.one_of(st.binary(max_size=40), st.binary(min_size=22, max_size=26).map(b"\xbe\xac".__add__))
)
def test_altbeacon_arbitrary_bytes_raise_only_its_parse_error(data: bytes) -> None:
    try:
        beacon = parse_altbeacon(data)
    except AltBeaconError:
        assert len(data) < 23 or data[:2] != b"\xbe\xac"
        return
    # a frame without the reserved byte builds with it, 0; bytes past the layout are dropped
    assert build_altbeacon(beacon) == (data + b"\x00")[:24]


def test_altbeacon_builder_refuses_values_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="16 bits"):
        build_altbeacon(AltBeacon(UUID(int=0), 0, 0x10000, -59))
    with pytest.raises(ValueError, match="signed byte"):
        build_altbeacon(AltBeacon(UUID(int=0), 0, 0, 128))


# -- Eddystone: the specification's frames ----------------------------------------------------

# Eddystone-UID's "elided version 4 UUID" example: 8b0ca750-e7a7-4e14-bd99-095477cb3e77
NAMESPACE = bytes.fromhex("8b0ca750095477cb3e77")
INSTANCE = bytes.fromhex("0000000004d2")


def test_uid_frame() -> None:
    frame = bytes.fromhex("00ee") + NAMESPACE + INSTANCE + b"\x00\x00"
    assert parse_eddystone(frame) == EddystoneUid(NAMESPACE, INSTANCE, -18)
    assert build_eddystone(EddystoneUid(NAMESPACE, INSTANCE, -18)) == frame


def test_uid_frame_without_the_reserved_bytes_is_accepted() -> None:
    frame = bytes.fromhex("0012") + NAMESPACE + INSTANCE
    uid = parse_eddystone(frame)
    assert uid == EddystoneUid(NAMESPACE, INSTANCE, 18, with_rfu=False)
    assert build_eddystone(uid) == frame


@pytest.mark.parametrize(
    ("frame", "url", "tx_power"),
    [
        # the Eddystone-URL README's tx power examples: 0x12 is +18 dBm, 0xEE is -18 dBm
        (bytes.fromhex("1012") + b"\x03goo.gl/S6zT6P", "https://goo.gl/S6zT6P", 18),
        (bytes.fromhex("10ee") + b"\x00example\x00", "http://www.example.com/", -18),
        (bytes.fromhex("10ee") + b"\x01example\x07", "https://www.example.com", -18),
        (b"\x10\x00\x02go\x0dx\x06y", "http://go.govx.gov/y", 0),
        (b"\x10\x00\x03a\x04b\x0bc\x05d\x0c", "https://a.info/b.infoc.biz/d.biz", 0),
        (
            b"\x10\x00\x02a\x01b\x08c\x02d\x09e\x03f\x0a",
            "http://a.org/b.orgc.edu/d.edue.net/f.net",
            0,
        ),
    ],
)
def test_url_frames(frame: bytes, url: str, tx_power: int) -> None:
    assert parse_eddystone(frame) == EddystoneUrl(url, tx_power)
    assert build_eddystone(EddystoneUrl(url, tx_power)) == frame


def test_every_scheme_prefix_and_expansion_code_decodes() -> None:
    for scheme_code, scheme in enumerate(URL_SCHEMES):
        for code, text in enumerate(URL_EXPANSIONS):
            assert decode_url(bytes((scheme_code, ord("x"), code))) == f"{scheme}x{text}"


@pytest.mark.parametrize(
    ("frame", "reason", "problem"),
    [
        (b"\x10\x00", "too short", "too_short"),
        (b"\x10\x00\x03", "too short", "too_short"),
        (b"\x10\x00\x04abc", "unknown URL scheme prefix 0x04", "bad_url"),
        (b"\x10\x00\x03ab\x0ec", "reserved URL code 0x0e at offset 5", "bad_url"),
        (b"\x10\x00\x03ab c", "reserved URL code 0x20", "bad_url"),
        (
            b"\x10\x00\x03ab\x7fc",
            "0x7f at offset 5 is not a printable US-ASCII character",
            "bad_url",
        ),
        (b"\x10\x00\x03ab\xc3\xa9", "0xc3 at offset 5", "bad_url"),
        (b"\x10\x00\x03" + b"a" * 18, "18 bytes, expected 1 to 17", "wrong_length"),
    ],
)
def test_url_frames_with_bytes_the_encoding_does_not_allow_are_rejected(
    frame: bytes, reason: str, problem: str
) -> None:
    with pytest.raises(EddystoneError, match=reason) as info:
        parse_eddystone(frame)
    assert (info.value.kind, info.value.problem) == ("eddystone-url", problem)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("ftp://example.com", "must start with"),
        ("https://", "0 bytes"),
        ("https://exa mple.com", "cannot be sent"),
        ("https://café.com", "cannot be sent"),
        ("https://" + "a" * 18, "18 bytes"),
    ],
)
def test_url_encoder_refuses_what_cannot_be_sent(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        encode_url(url)


def test_tlm_frame() -> None:
    # 3000 mV, 24.5 °C (0x1880 in 8.8 fixed point), 100 PDUs, 360 s since boot (3600 x 0.1 s)
    frame = bytes.fromhex("20000bb818800000006400000e10")
    tlm = parse_eddystone(frame)
    assert tlm == EddystoneTlm(battery_mv=3000, temperature=24.5, adv_count=100, uptime_tenths=3600)
    assert isinstance(tlm, EddystoneTlm)
    assert tlm.uptime_s == 360.0
    assert build_eddystone(tlm) == frame


@pytest.mark.parametrize(
    ("raw", "celsius"),
    [
        ("0000", 0.0),
        ("ff80", -0.5),
        ("0001", 1 / 256),
        ("7fff", 127 + 255 / 256),
        ("8001", -127 - 255 / 256),
        ("8000", None),
    ],
)
def test_tlm_temperature_is_signed_8_8_fixed_point(raw: str, celsius: float | None) -> None:
    frame = bytes.fromhex("20000000" + raw + "0000000000000000")
    tlm = parse_eddystone(frame)
    assert isinstance(tlm, EddystoneTlm)
    assert tlm.temperature == celsius
    assert tlm.battery_mv is None  # 0 mV: not measured (a USB-powered beacon)
    assert build_eddystone(tlm) == frame


def test_eid_frame() -> None:
    frame = bytes.fromhex("30f80123456789abcdef")
    assert parse_eddystone(frame) == EddystoneEid(-8, bytes.fromhex("0123456789abcdef"))
    assert build_eddystone(EddystoneEid(-8, bytes.fromhex("0123456789abcdef"))) == frame


@pytest.mark.parametrize(
    ("frame", "reason", "kind", "problem"),
    [
        (b"", "empty", "eddystone", "too_short"),
        (b"\x01" + bytes(19), "reserved low bits", "eddystone", "reserved"),
        (b"\x40" + bytes(19), "reserved frame type", "eddystone", "reserved"),
        (b"\x50" + bytes(19), "unknown frame type 0x50", "eddystone", "unknown_type"),
        (b"\x00\x00" + bytes(17), "19 bytes, expected 20", "eddystone-uid", "wrong_length"),
        (
            b"\x00\x00" + bytes(16) + b"\x00\x01",
            "reserved bytes must be zero",
            "eddystone-uid",
            "reserved",
        ),
        (b"\x20", "no TLM version", "eddystone-tlm", "too_short"),
        (b"\x20\x02" + bytes(12), "unknown TLM version 0x02", "eddystone-tlm", "unknown_version"),
        (b"\x20\x00" + bytes(11), "13 bytes, expected 14", "eddystone-tlm", "wrong_length"),
        (b"\x20\x01" + bytes(13), "15 bytes, expected 18", "eddystone-etlm", "wrong_length"),
        (b"\x20\x01" + bytes(17), "19 bytes, expected 18", "eddystone-etlm", "wrong_length"),
        (b"\x30\x00" + bytes(7), "9 bytes, expected 10", "eddystone-eid", "wrong_length"),
    ],
)
def test_eddystone_rejects_malformed_frames_with_a_reason(
    frame: bytes, reason: str, kind: str, problem: str
) -> None:
    with pytest.raises(EddystoneError, match=reason) as info:
        parse_eddystone(frame)
    assert (info.value.kind, info.value.problem) == (kind, problem)
    assert isinstance(info.value, FrameError)


def test_encrypted_tlm_is_recognised_and_never_decoded() -> None:
    ciphertext = bytes.fromhex("0bb8188000000064ffeeddcc")  # would decode as a plain TLM
    frame = build_encrypted_tlm(ciphertext, salt=b"\x5a\x17", mic=b"\xc0\xde")
    assert frame == b"\x20\x01" + ciphertext + b"\x5a\x17\xc0\xde"
    etlm = parse_eddystone(frame)
    assert etlm == EncryptedTlm(length=18, has_salt=True, has_mic=True)
    assert not isinstance(etlm, EddystoneTlm)
    # nothing of the ciphertext, salt or MIC is kept
    assert all(not isinstance(field, bytes) for field in etlm)
    # salt and MIC are counted by presence
    assert parse_eddystone(frame[:16]) == EncryptedTlm(length=16, has_salt=True, has_mic=False)
    assert parse_eddystone(frame[:14]) == EncryptedTlm(length=14, has_salt=False, has_mic=False)


# -- Eddystone: properties -------------------------------------------------------------------

tx_powers = st.integers(-128, 127)
url_chars = st.characters(min_codepoint=0x21, max_codepoint=0x7E)
url_tokens = st.lists(
    st.one_of(st.sampled_from(URL_EXPANSIONS), url_chars), min_size=1, max_size=17
)

uids = st.builds(
    EddystoneUid,
    st.binary(min_size=10, max_size=10),
    st.binary(min_size=6, max_size=6),
    tx_powers,
    st.booleans(),
)
tlms = st.builds(
    EddystoneTlm,
    st.one_of(st.none(), st.integers(1, 0xFFFF)),
    st.one_of(st.none(), st.integers(-0x7FFF, 0x7FFF).map(lambda raw: raw / 256)),
    st.integers(0, 0xFFFFFFFF),
    st.integers(0, 0xFFFFFFFF),
)
eids = st.builds(EddystoneEid, tx_powers, st.binary(min_size=8, max_size=8))


@st.composite
def urls(draw: st.DrawFn) -> tuple[str, list[str]]:
    """A URL from the scheme table, expansion texts and allowed characters, and its tokens."""
    tokens = draw(url_tokens)
    return draw(st.sampled_from(URL_SCHEMES)) + "".join(tokens), tokens


@given(st.one_of(uids, tlms, eids))
def test_eddystone_build_then_parse_round_trips(
    frame: EddystoneUid | EddystoneTlm | EddystoneEid,
) -> None:
    assert parse_eddystone(build_eddystone(frame)) == frame


@given(urls(), tx_powers)
def test_any_url_from_the_tables_round_trips_and_uses_the_expansion_codes(
    url_and_tokens: tuple[str, list[str]], tx_power: int
) -> None:
    url, tokens = url_and_tokens
    frame = build_eddystone(EddystoneUrl(url, tx_power))
    assert parse_eddystone(frame) == EddystoneUrl(url, tx_power)
    encoded = frame[3:]
    # never longer than the tokens it was made of: every expansion text became one byte
    assert len(encoded) <= len(tokens)
    body = url[len(URL_SCHEMES[frame[2]]) :]
    if any(text in body for text in URL_EXPANSIONS):
        assert len(encoded) < len(body)
        assert any(byte < len(URL_EXPANSIONS) for byte in encoded)
    else:
        assert encoded == body.encode("ascii")


@given(
    st.binary(min_size=12, max_size=12),
    st.binary(min_size=2, max_size=2),
    st.binary(min_size=2, max_size=2),
)
def test_encrypted_tlm_build_then_parse(ciphertext: bytes, salt: bytes, mic: bytes) -> None:
    assert parse_eddystone(build_encrypted_tlm(ciphertext, salt, mic)) == EncryptedTlm(
        18, True, True
    )


frame_types = st.sampled_from([0x00, 0x10, 0x20, 0x30, 0x40])
eddystone_like = st.one_of(
    st.binary(max_size=24),
    st.tuples(frame_types, st.binary(max_size=22)).map(lambda t: bytes((t[0],)) + t[1]),
    st.tuples(st.sampled_from([0x00, 0x01, 0x02]), st.binary(max_size=17)).map(
        lambda t: bytes((0x20, t[0])) + t[1]
    ),
    st.tuples(tx_powers, st.sampled_from(range(5)), st.binary(min_size=1, max_size=18)).map(
        lambda t: bytes((0x10, t[0] & 0xFF, t[1])) + t[2]
    ),
)


@given(eddystone_like)
def test_eddystone_arbitrary_bytes_raise_only_its_parse_error(data: bytes) -> None:
    try:
        frame = parse_eddystone(data)
    except EddystoneError:
        return
    if isinstance(frame, EncryptedTlm):
        assert frame.length == len(data)
    elif isinstance(frame, EddystoneUrl):
        # a URL may be re-encoded more compactly, never differently
        assert parse_eddystone(build_eddystone(frame)) == frame
    else:
        assert build_eddystone(frame) == data


# -- Eddystone-URL: one grammar for the parser and the builder ---------------------------------


def test_a_url_whose_body_spells_the_longer_scheme_builds() -> None:
    # scheme 0x02 "http://" + literal "www." decodes to "http://www.": the builder must make it,
    # though the longest scheme, "http://www.", would leave nothing to encode
    frame = bytes.fromhex("10ec027777772e")
    url = parse_eddystone(frame)
    assert url == EddystoneUrl("http://www.", -20)
    assert build_eddystone(url) == frame
    assert encode_url("https://www.") == b"\x03www."


def test_the_builder_picks_the_shortest_encoding() -> None:
    # greedy takes ".com/" and spends 3 bytes on "ple"; ".co" + "m" + "/" is no shorter
    assert encode_url("http://www.example.com/") == b"\x00example\x00"
    # the scheme that leaves the shortest body wins, whatever its length
    assert encode_url("http://www.a") == b"\x00a"


def _fewest_bytes(body: str) -> int | None:
    """Independent of the builder: the fewest encoded bytes that decode to ``body``."""

    @functools.cache
    def fewest(i: int) -> int | None:
        if i == len(body):
            return 0
        options = [fewest(i + len(text)) for text in URL_EXPANSIONS if body.startswith(text, i)]
        if 0x21 <= ord(body[i]) <= 0x7E:
            options.append(fewest(i + 1))
        sizes = [n + 1 for n in options if n is not None]
        return min(sizes) if sizes else None

    return fewest(0)


def _expressible(url: str) -> bool:
    """Some frame decodes to ``url``: a scheme, then 1 to 17 encoded bytes."""
    sizes = [_fewest_bytes(url[len(s) :]) for s in URL_SCHEMES if url.startswith(s)]
    return any(n is not None and 1 <= n <= URL_MAX_ENCODED for n in sizes)


@given(eddystone_encoded_urls())
@example(bytes.fromhex("027777772e"))  # "http://" + "www."
@example(bytes.fromhex("0368747470733a2f2f7777772e"))  # "https://" + "https://www."
def test_every_url_the_parser_reads_builds_and_reads_back_the_same(encoded: bytes) -> None:
    url = decode_url(encoded)
    built = encode_url(url)
    assert decode_url(built) == url
    assert len(built) <= len(encoded)  # the builder's encoding is the shortest
    assert decode_url(encode_url(decode_url(built))) == url


@given(url_texts())
@example("http://www.")
@example("https://")
@example("http://www." + "a" * 17)
def test_the_builder_refuses_exactly_the_urls_no_frame_decodes_to(url: str) -> None:
    try:
        encoded = encode_url(url)
    except ValueError:
        assert not _expressible(url)
        return
    assert _expressible(url)
    assert decode_url(encoded) == url
    assert 2 <= len(encoded) <= 1 + URL_MAX_ENCODED
