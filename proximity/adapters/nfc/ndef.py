"""NDEF messages: a strict parser on bytes, and the builder the tag emulator uses.

An NDEF message read from a tag is untrusted input. :func:`parse_ndef` decodes
it with ndeflib in strict mode into :class:`NdefContent`, a frozen, JSON-friendly
value; anything it cannot use (empty, larger than the limit, malformed) raises
:class:`NdefError` with a short reason, and no other exception ever leaves it.

Each record keeps its NDEF type string as ndeflib spells it (``urn:nfc:wkt:U``,
``text/plain``, ``urn:nfc:ext:example.com:x``, ``unknown``...) and, by kind:

- ``uri``: the URI exactly as written on the tag (an IRI may hold non-ASCII);
- ``text``: the text and its IANA language code;
- ``mime``: the media type and the payload, as text when the type is textual
  (``text/*``, JSON, XML) and the bytes are UTF-8, otherwise as hex;
- ``other``: the payload as hex (smart posters, handover, external types...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Literal

import ndef
from pydantic import BaseModel, ConfigDict, Field

from proximity.errors import FrameError, NdefProblem

DEFAULT_MAX_SIZE = 8192
"""The largest NDEF message (bytes) a reader accepts by default."""

URI_TYPE = "urn:nfc:wkt:U"
TEXT_TYPE = "urn:nfc:wkt:T"

RecordKind = Literal["uri", "text", "mime", "other"]

# ndeflib's own reading of a type string: TNF 2 is "<type>/<subtype>" without a scheme
_MEDIA_TYPE = re.compile(r"^[A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+$")
_TEXTUAL_MEDIA = re.compile(r"^(text/.+|application/(.+\+)?(json|xml))$", re.IGNORECASE)


class NdefError(FrameError, ValueError):
    """An NDEF message that cannot be used.

    ``reason`` says why in a few words (for a log line or a tap); ``problem`` is
    its category, a small fixed set fit for a metric label.
    """

    def __init__(self, problem: NdefProblem, reason: str) -> None:
        super().__init__("ndef", problem, reason)
        self.problem: NdefProblem = problem


class NdefRecord(BaseModel):
    """One decoded NDEF record."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: RecordKind
    type: str = Field(description="TNF and TYPE as ndeflib spells them, e.g. urn:nfc:wkt:U")
    name: str = Field(default="", description="the record ID, often empty")
    uri: str | None = None
    text: str | None = None
    language: str | None = None
    mime_type: str | None = None
    data: str | None = Field(default=None, description="a textual MIME payload, decoded")
    payload_hex: str | None = Field(default=None, description="any other payload, as hex")


class NdefContent(BaseModel):
    """A whole NDEF message, decoded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(ge=1, description="length of the encoded message, bytes")
    records: tuple[NdefRecord, ...] = Field(min_length=1)

    @property
    def uris(self) -> tuple[str, ...]:
        """The URIs of the URI records, in message order."""
        return tuple(r.uri for r in self.records if r.uri is not None)


def parse_ndef(data: bytes, max_size: int = DEFAULT_MAX_SIZE) -> NdefContent:
    """Decode one NDEF message strictly.

    Raises :class:`NdefError` (and nothing else) when ``data`` is empty, longer
    than ``max_size`` bytes, or not a well-formed NDEF message.
    """
    if not data:
        raise NdefError("empty", "empty NDEF message")
    if len(data) > max_size:
        raise NdefError(
            "oversize",
            f"NDEF message of {len(data)} bytes is larger than the {max_size}-byte limit",
        )
    try:
        decoded = list(ndef.message_decoder(bytes(data), errors="strict"))
        records = tuple(_to_record(r) for r in decoded)
    except Exception as exc:  # ndeflib raises DecodeError, but also Unicode/Value/Type errors
        raise NdefError("malformed", f"malformed NDEF: {_reason(exc)}") from exc
    if not records:
        raise NdefError("malformed", "malformed NDEF: no records")
    broken = _chunking_problem(bytes(data))
    if broken is not None:
        raise NdefError("malformed", f"malformed NDEF: {broken}")
    return NdefContent(size=len(data), records=records)


def build_ndef(records: Iterable[NdefRecord]) -> bytes:
    """The encoded NDEF message holding ``records`` (at least one).

    Raises :class:`NdefError` for a record ndeflib cannot encode.
    """
    try:
        encoded = b"".join(ndef.message_encoder([_to_ndeflib(r) for r in records]))
    except NdefError:
        raise
    except Exception as exc:
        raise NdefError("unencodable", f"cannot encode NDEF: {_reason(exc)}") from exc
    if not encoded:
        raise NdefError("unencodable", "an NDEF message needs at least one record")
    return encoded


def uri_record(uri: str, name: str = "") -> NdefRecord:
    """A URI record (``urn:nfc:wkt:U``)."""
    return NdefRecord(kind="uri", type=URI_TYPE, name=name, uri=uri)


def text_record(text: str, language: str = "en", name: str = "") -> NdefRecord:
    """A Text record (``urn:nfc:wkt:T``), UTF-8 encoded."""
    return NdefRecord(kind="text", type=TEXT_TYPE, name=name, text=text, language=language)


def mime_record(mime_type: str, payload: bytes, name: str = "") -> NdefRecord:
    """A media-type record, its payload shown as text when textual, else hex."""
    return _mime(mime_type, name, payload)


def raw_record(record_type: str, payload: bytes, name: str = "") -> NdefRecord:
    """Any other record, by its ndeflib type string and raw payload."""
    return NdefRecord(kind="other", type=record_type, name=name, payload_hex=payload.hex())


def _to_record(record: ndef.Record) -> NdefRecord:
    record_type: str = record.type
    name: str = record.name
    if isinstance(record, ndef.UriRecord):
        return NdefRecord(kind="uri", type=record_type, name=name, uri=record.iri)
    if isinstance(record, ndef.TextRecord):
        return NdefRecord(
            kind="text", type=record_type, name=name, text=record.text, language=record.language
        )
    payload = bytes(record.data)
    if _MEDIA_TYPE.match(record_type):
        return _mime(record_type, name, payload)
    return NdefRecord(kind="other", type=record_type, name=name, payload_hex=payload.hex())


def _mime(mime_type: str, name: str, payload: bytes) -> NdefRecord:
    if _TEXTUAL_MEDIA.match(mime_type):
        try:
            text = payload.decode("utf-8")
        except UnicodeDecodeError:
            pass
        else:
            return NdefRecord(
                kind="mime", type=mime_type, name=name, mime_type=mime_type, data=text
            )
    return NdefRecord(
        kind="mime", type=mime_type, name=name, mime_type=mime_type, payload_hex=payload.hex()
    )


def _to_ndeflib(record: NdefRecord) -> ndef.Record:
    match record.kind:
        case "uri":
            built = ndef.UriRecord(record.uri or "")
        case "text":
            built = ndef.TextRecord(record.text or "", record.language or "en")
        case "mime" if record.data is not None:
            built = ndef.Record(record.type, None, record.data.encode("utf-8"))
        case _:
            built = ndef.Record(record.type, None, bytes.fromhex(record.payload_hex or ""))
    built.name = record.name
    return built


_ME, _CF, _SR, _IL = 0x40, 0x20, 0x10, 0x08
_TNF_UNCHANGED = 0x06


def _chunking_problem(data: bytes) -> str | None:
    """Why the records of a message ndeflib decoded break the chunking rules, or None.

    TNF 0x06 (unchanged) marks the middle and terminating chunks of a chunked
    record, and only those (NFC Forum NDEF 1.0, 2.3.3); ndeflib yields every
    chunk as a record of its own and does not check the sequence.
    """
    offset, number, chunked = 0, 0, False
    while offset < len(data):
        header = data[offset]
        number += 1
        unchanged = header & 0x07 == _TNF_UNCHANGED
        if unchanged and not chunked:
            return f"record {number} has TNF 0x06 (unchanged) outside a chunked record"
        if chunked and not unchanged:
            return f"record {number} interrupts a chunked record (its TNF is not 0x06, unchanged)"
        if header & _ME:
            return None
        chunked = bool(header & _CF)
        type_length = data[offset + 1]
        if header & _SR:
            payload_length, offset = data[offset + 2], offset + 3
        else:
            payload_length = int.from_bytes(data[offset + 2 : offset + 6], "big")
            offset += 6
        id_length = 0
        if header & _IL:
            id_length, offset = data[offset], offset + 1
        offset += type_length + id_length + payload_length
    return None


def _reason(exc: Exception) -> str:
    """ndeflib's message without its class-path prefix, on one short line."""
    if isinstance(exc, UnicodeDecodeError):
        return f"undecodable {exc.encoding} byte 0x{exc.object[exc.start]:02x} in a record field"
    text = str(exc) or type(exc).__name__
    text = re.sub(r"^ndef\.[\w.]+ ", "", text)
    return text.splitlines()[0][:200]
