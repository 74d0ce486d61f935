"""NDEF parsing: only NdefError escapes, builders round-trip, bad messages say why."""

from __future__ import annotations

import json

import ndef
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from proximity.adapters.nfc.ndef import (
    NdefContent,
    NdefError,
    NdefRecord,
    build_ndef,
    mime_record,
    parse_ndef,
    raw_record,
    text_record,
    uri_record,
)
from proximity.cli.main import main
from proximity.errors import FrameError

# The URI record for https://example.com/p/1 as an NFC Forum spec example would encode
# it: MB|ME|SR, TNF 1, type "U", prefix 0x04 ("https://") and the rest of the URI.
URI_MESSAGE = bytes.fromhex("d1011055") + b"\x04example.com/p/1"

urls = st.builds(
    lambda scheme, host, path: f"{scheme}{host}/{path}",
    st.sampled_from(["https://", "http://", "https://www.", "tel:", "mailto:", "urn:x:"]),
    st.from_regex(r"[a-z0-9-]{1,20}(\.[a-z]{2,6}){1,2}", fullmatch=True),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=40),
)
languages = st.from_regex(r"[a-z]{2}(-[A-Z]{2})?", fullmatch=True)


def test_parses_a_spec_uri_record() -> None:
    content = parse_ndef(URI_MESSAGE)
    assert content == NdefContent(
        size=len(URI_MESSAGE),
        records=(NdefRecord(kind="uri", type="urn:nfc:wkt:U", uri="https://example.com/p/1"),),
    )
    assert content.uris == ("https://example.com/p/1",)


def test_records_are_json_friendly_by_kind() -> None:
    message = build_ndef(
        [
            uri_record("https://example.com/p/1", name="shelf"),
            text_record("Bonjour", language="fr"),
            mime_record("application/json", b'{"sku": 42}'),
            mime_record("image/png", b"\x89PNG"),
            raw_record("urn:nfc:ext:example.com:shelf", b"\x01\x02"),
        ]
    )
    dumped = json.loads(parse_ndef(message).model_dump_json(exclude_none=True))
    assert dumped == {
        "size": len(message),
        "records": [
            {
                "kind": "uri",
                "type": "urn:nfc:wkt:U",
                "name": "shelf",
                "uri": "https://example.com/p/1",
            },
            {
                "kind": "text",
                "type": "urn:nfc:wkt:T",
                "name": "",
                "text": "Bonjour",
                "language": "fr",
            },
            {
                "kind": "mime",
                "type": "application/json",
                "name": "",
                "mime_type": "application/json",
                "data": '{"sku": 42}',
            },
            {
                "kind": "mime",
                "type": "image/png",
                "name": "",
                "mime_type": "image/png",
                "payload_hex": "89504e47",
            },
            {
                "kind": "other",
                "type": "urn:nfc:ext:example.com:shelf",
                "name": "",
                "payload_hex": "0102",
            },
        ],
    }


def test_a_textual_mime_payload_that_is_not_utf8_stays_hex() -> None:
    content = parse_ndef(build_ndef([mime_record("text/plain", b"\xff\xfe")]))
    assert content.records[0].data is None
    assert content.records[0].payload_hex == "fffe"


def test_a_smart_poster_is_kept_as_raw_payload() -> None:
    poster = ndef.SmartposterRecord("https://example.com/")
    octets = b"".join(ndef.message_encoder([poster]))
    (record,) = parse_ndef(octets).records
    assert (record.kind, record.type) == ("other", "urn:nfc:wkt:Sp")
    assert record.payload_hex == bytes(poster.data).hex()


@settings(max_examples=400)
@given(st.binary(max_size=300))
@example(bytes.fromhex("d20100ff"))  # a MIME type byte that is not ASCII (UnicodeDecodeError)
@example(bytes.fromhex("d1"))
@example(bytes.fromhex("00"))
def test_arbitrary_bytes_raise_nothing_but_ndef_error(data: bytes) -> None:
    outcome = _parse_or_error(data)  # any other exception fails the test
    if isinstance(outcome, NdefError):
        assert outcome.reason
        assert outcome.problem in ("empty", "malformed")
    else:
        assert outcome.size == len(data)
        assert outcome.records


def _parse_or_error(data: bytes) -> NdefContent | NdefError:
    try:
        return parse_ndef(data)
    except NdefError as exc:
        return exc


@given(urls, st.text(alphabet="abcxyz0123", max_size=8))
def test_uri_records_round_trip(uri: str, name: str) -> None:
    record = uri_record(uri, name=name)
    assert parse_ndef(build_ndef([record])).records == (record,)


@given(st.text(max_size=300), languages)
def test_text_records_round_trip(text: str, language: str) -> None:
    record = text_record(text, language=language)
    assert parse_ndef(build_ndef([record])).records == (record,)


@given(
    st.lists(
        st.one_of(urls.map(uri_record), st.text(max_size=50).map(text_record)),
        min_size=1,
        max_size=8,
    )
)
def test_messages_of_several_records_round_trip(records: list[NdefRecord]) -> None:
    content = parse_ndef(build_ndef(records))
    assert content.records == tuple(records)


@given(st.integers(min_value=1, max_value=600))
def test_a_message_over_the_limit_is_rejected_with_its_size(excess: int) -> None:
    limit = 256
    message = build_ndef([text_record("x" * (limit + excess))])
    with pytest.raises(NdefError) as info:
        parse_ndef(message, max_size=limit)
    assert info.value.problem == "oversize"
    assert info.value.reason == (
        f"NDEF message of {len(message)} bytes is larger than the {limit}-byte limit"
    )
    assert parse_ndef(message, max_size=len(message)).records[0].text == "x" * (limit + excess)


def test_the_default_limit_is_8_kib() -> None:
    with pytest.raises(NdefError, match="9000 bytes is larger than the 8192-byte limit"):
        parse_ndef(b"\x00" * 9000)


@pytest.mark.parametrize(
    ("data", "problem", "reason"),
    [
        (b"", "empty", "empty NDEF message"),
        (
            bytes.fromhex("d1"),
            "malformed",
            "malformed NDEF: buffer underflow at reading length fields",
        ),
        (
            URI_MESSAGE[:-3],
            "malformed",
            "malformed NDEF: buffer underflow at reading PAYLOAD field",
        ),
        (
            bytes.fromhex("d7000000"),
            "malformed",
            "malformed NDEF: TNF field value must be between 0 and 6",
        ),
        (
            bytes.fromhex("d20100ff"),
            "malformed",
            "malformed NDEF: undecodable ascii byte 0xff in a record field",
        ),
        # the first record lacks the message-begin flag
        (b"\x51" + URI_MESSAGE[1:], "malformed", "malformed NDEF: MB flag not set in first record"),
        # a URI record whose payload is empty (no identifier code)
        (bytes.fromhex("d1010055"), "malformed", "payload length can not be less than 1"),
    ],
)
def test_malformed_messages_say_why(data: bytes, problem: str, reason: str) -> None:
    with pytest.raises(NdefError) as info:
        parse_ndef(data)
    assert info.value.problem == problem
    assert reason in info.value.reason
    assert isinstance(info.value, ValueError)
    assert isinstance(info.value, FrameError)
    assert info.value.kind == "ndef"


def test_building_an_empty_message_is_refused() -> None:
    with pytest.raises(NdefError, match="at least one record"):
        build_ndef([])


# TNF 0x06 (unchanged) marks the middle and terminating chunks of a chunked record, only those.
LONE_UNCHANGED = bytes.fromhex("d6 00 03") + b"abc"  # MB|ME|SR, TNF 6, a payload of 3
CHUNKED = (
    bytes.fromhex("b2 0a 02") + b"text/plain" + b"ab"  # MB|CF|SR, TNF 2: the first chunk
    + bytes.fromhex("36 00 01") + b"c"  # CF|SR, TNF 6: a middle chunk
    + bytes.fromhex("56 00 01") + b"d"  # ME|SR, TNF 6: the terminating chunk
)  # fmt: skip


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (LONE_UNCHANGED, "record 1 has TNF 0x06 (unchanged) outside a chunked record"),
        (
            b"\x91" + URI_MESSAGE[1:] + bytes.fromhex("56 00 03") + b"abc",  # MB, then ME
            "record 2 has TNF 0x06 (unchanged) outside a chunked record",
        ),
        (
            CHUNKED[:15] + bytes.fromhex("51 01 02 55 00") + b"x",
            "record 2 interrupts a chunked record",
        ),
    ],
    ids=["lone", "after-a-whole-record", "chunk-interrupted"],
)
def test_unchanged_records_outside_a_chunk_sequence_are_malformed(data: bytes, reason: str) -> None:
    list(ndef.message_decoder(data))  # ndeflib's strict mode lets them through
    with pytest.raises(NdefError) as info:
        parse_ndef(data)
    assert info.value.problem == "malformed"
    assert reason in info.value.reason


def test_a_chunked_record_still_parses_one_record_per_chunk() -> None:
    content = parse_ndef(CHUNKED)
    assert [r.type for r in content.records] == ["text/plain", "unchanged", "unchanged"]
    assert content.records[0].data == "ab"


def test_inspect_ndef_refuses_a_lone_unchanged_record(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", "ndef", LONE_UNCHANGED.hex(" ")]) == 1
    assert "TNF 0x06 (unchanged) outside a chunked record" in capsys.readouterr().err
