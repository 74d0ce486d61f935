"""Signed codes: what a QR code (or NFC tag) must carry for the gateway to act on it.

A check-in, a cart binding or a coupon redemption triggers something, so its
code is signed; anything else scanned is at most "product interest". The text
form is short enough for a small QR code and uses only characters of QR's
alphanumeric mode (upper-case base32), so the code stays small::

    PX1:<base32 of the body>

    body = kind (1 byte) | key id (1) | issued (4, Unix seconds) | expires (4)
         | nonce (8) | subject length (1) | subject (UTF-8, 1-64 bytes)
         | tag (12: HMAC-SHA256 of "PX1" + everything before it, truncated)

An offer id as subject (18 characters) makes an 83-character code, a version 4
QR code (33×33 modules) at error correction level M. Keys have ids, so a new
key can be rolled out while codes signed with the old one are still valid. A
verifier rejects, each with its reason: text that is not a code, an unknown
key, a bad tag (forged or damaged), a code used too early or too late (beyond
a clock skew), and a code seen before (every code is single-use: its nonce is
remembered until it expires).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import IntEnum, StrEnum
from pathlib import Path
from uuid import UUID

from proximity.clock import Clock
from proximity.sqlite import FallbackDb

PREFIX = "PX1:"
_DOMAIN = b"PX1"
TAG_BYTES = 12
NONCE_BYTES = 8
MAX_SUBJECT = 64
MIN_KEY_BYTES = 16
DEFAULT_SKEW = timedelta(seconds=60)
_HEAD = struct.Struct(">BBII8sB")
_SUBJECT = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
# the longest possible code, so junk of any length is refused before decoding
MAX_TEXT = len(PREFIX) + (_HEAD.size + MAX_SUBJECT + TAG_BYTES) * 8 // 5 + 8


class CodeKind(IntEnum):
    CHECKIN = 1
    """A shopper checks in (a code shown by the app): identifies the shopper."""
    CART = 2
    """Binds a cart or basket beacon to the shopper for this visit."""
    COUPON = 3
    """A coupon redeemed at checkout; subject is the offer id."""

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> CodeKind:
        try:
            return cls[text.upper()]
        except KeyError:
            names = ", ".join(k.label for k in cls)
            raise ValueError(f"unknown code kind {text!r} (one of {names})") from None


class Reject(StrEnum):
    """Why a code was refused: the ``reason`` label of the rejection counters."""

    MALFORMED = "malformed"
    UNKNOWN_KEY = "unknown_key"
    BAD_SIGNATURE = "bad_signature"
    NOT_YET_VALID = "not_yet_valid"
    EXPIRED = "expired"
    REPLAYED = "replayed"


class CodeError(ValueError):
    def __init__(self, reason: Reject, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class SignedCode:
    kind: CodeKind
    subject: str
    issued: datetime
    expires: datetime
    key_id: int
    nonce: bytes

    @property
    def nonce_hex(self) -> str:
        return self.nonce.hex()


def sign(
    kind: CodeKind,
    subject: str,
    *,
    key: bytes,
    key_id: int,
    issued: datetime,
    expires: datetime,
    nonce: bytes | None = None,
) -> str:
    """The text of a signed code (put it in a QR code as it is)."""
    if not _SUBJECT.fullmatch(subject):
        raise ValueError(f"subject {subject!r} must be 1-{MAX_SUBJECT} of A-Z a-z 0-9 _ . : -")
    if not 0 <= key_id <= 255:
        raise ValueError(f"key id {key_id} is not in 0-255")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a signing key needs at least {MIN_KEY_BYTES} bytes")
    if expires <= issued:
        raise ValueError("a code must expire after it is issued")
    nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    if len(nonce) != NONCE_BYTES:
        raise ValueError(f"a nonce has {NONCE_BYTES} bytes")
    subject_bytes = subject.encode()
    body = _HEAD.pack(
        int(kind), key_id, _seconds(issued), _seconds(expires), nonce, len(subject_bytes)
    )
    body += subject_bytes
    return PREFIX + _b32(body + _tag(key, body))


def read(text: str) -> tuple[SignedCode, bytes, bytes]:
    """The code in ``text`` with its signed body and tag, not yet verified.

    Raises CodeError(MALFORMED) for anything that is not a well-formed code.
    """
    text = text.strip()
    if not text.upper().startswith(PREFIX):
        raise CodeError(Reject.MALFORMED, f"not a signed code (no {PREFIX} prefix)")
    if len(text) > MAX_TEXT:
        raise CodeError(Reject.MALFORMED, f"too long for a signed code ({len(text)} characters)")
    encoded = text[len(PREFIX) :].upper()
    try:
        raw = base64.b32decode(encoded + "=" * (-len(encoded) % 8))
    except (ValueError, TypeError) as exc:  # binascii.Error is a ValueError
        raise CodeError(Reject.MALFORMED, f"not base32: {exc}") from None
    if len(raw) < _HEAD.size + 1 + TAG_BYTES:
        raise CodeError(Reject.MALFORMED, f"too short for a signed code ({len(raw)} bytes)")
    kind_byte, key_id, issued, expires, nonce, length = _HEAD.unpack_from(raw)
    body, tag = raw[:-TAG_BYTES], raw[-TAG_BYTES:]
    if len(body) != _HEAD.size + length:
        raise CodeError(Reject.MALFORMED, "the subject length does not match the code's length")
    try:
        kind = CodeKind(kind_byte)
    except ValueError:
        raise CodeError(Reject.MALFORMED, f"unknown code kind {kind_byte}") from None
    try:
        subject = body[_HEAD.size :].decode()
    except UnicodeDecodeError:
        raise CodeError(Reject.MALFORMED, "the subject is not UTF-8") from None
    if not _SUBJECT.fullmatch(subject):
        raise CodeError(Reject.MALFORMED, "the subject has characters a code never carries")
    code = SignedCode(
        kind=kind,
        subject=subject,
        issued=datetime.fromtimestamp(issued, UTC),
        expires=datetime.fromtimestamp(expires, UTC),
        key_id=key_id,
        nonce=nonce,
    )
    return code, body, tag


class NonceStore:
    """Nonces of the codes already used, kept until the codes expire.

    In memory, and with a path also in SQLite so a restart does not reopen the
    door to a replay. A file that fails is reported once; the memory copy goes on.
    """

    def __init__(self, path: Path | None = None) -> None:
        self._seen: dict[bytes, datetime] = {}
        self._db: FallbackDb | None = None
        if path is not None:
            self._db = FallbackDb(
                path,
                "CREATE TABLE IF NOT EXISTS used_codes "
                "(nonce BLOB PRIMARY KEY, expires REAL NOT NULL);",
                name="used_codes",
                consequence="used codes are remembered in memory only",
            )
            for nonce, expires in self._db.query("SELECT nonce, expires FROM used_codes"):
                self._seen[bytes(nonce)] = datetime.fromtimestamp(float(expires), UTC)

    def __len__(self) -> int:
        return len(self._seen)

    def seen(self, nonce: bytes) -> bool:
        return nonce in self._seen

    def use(self, nonce: bytes, expires: datetime, now: datetime) -> bool:
        """Record ``nonce``; False if it was already used."""
        if nonce in self._seen:
            return False
        self._seen[nonce] = expires
        if self._db is not None:
            self._db.execute(
                "INSERT OR IGNORE INTO used_codes (nonce, expires) VALUES (?, ?)",
                (nonce, expires.timestamp()),
            )
        if len(self._seen) % 1024 == 0:
            self.prune(now)
        return True

    def prune(self, now: datetime) -> None:
        """Forget nonces of codes that expired (a replay of one fails as expired anyway)."""
        gone = [n for n, expires in self._seen.items() if expires < now]
        for nonce in gone:
            del self._seen[nonce]
        if self._db is not None and gone:
            self._db.execute("DELETE FROM used_codes WHERE expires < ?", (now.timestamp(),))

    def close(self) -> None:
        if self._db is not None:
            self._db.close()


class Verifier:
    def __init__(
        self,
        keys: Mapping[int, bytes],
        clock: Clock,
        used: NonceStore | None = None,
        skew: timedelta = DEFAULT_SKEW,
    ) -> None:
        """``keys``: every key id still accepted, with its key."""
        self._keys = dict(keys)
        self._clock = clock
        self.used = used if used is not None else NonceStore()
        self._skew = skew

    def verify(self, text: str, *, use: bool = True) -> SignedCode:
        """The code if it is genuine, in its time and new; CodeError with the reason if not.

        A genuine code is used up by this call (verifying it again fails as
        replayed) unless ``use`` is False, as when only inspecting it.
        """
        code, body, tag = read(text)
        key = self._keys.get(code.key_id)
        if key is None:
            raise CodeError(Reject.UNKNOWN_KEY, f"signed with unknown key {code.key_id}")
        if not hmac.compare_digest(tag, _tag(key, body)):
            raise CodeError(Reject.BAD_SIGNATURE, "the signature does not match: forged or damaged")
        now = self._clock.now()
        if code.issued > now + self._skew:
            raise CodeError(
                Reject.NOT_YET_VALID, f"issued in the future ({code.issued:%Y-%m-%d %H:%M:%S}Z)"
            )
        if code.expires <= now - self._skew:
            raise CodeError(Reject.EXPIRED, f"expired at {code.expires:%Y-%m-%d %H:%M:%S}Z")
        if self.used.seen(code.nonce):
            raise CodeError(Reject.REPLAYED, "this code was already used")
        if use:
            self.use(code)
        return code

    def use(self, code: SignedCode) -> None:
        """Use up ``code`` (verified with ``use=False``); CodeError(REPLAYED) if it was
        used in the meantime."""
        if not self.used.use(code.nonce, code.expires + self._skew, self._clock.now()):
            raise CodeError(Reject.REPLAYED, "this code was already used")


class CouponSigner:
    """Signs the redemption code of an offer with a coupon.

    The nonce comes from the offer id, so the same offer always carries the same
    code (a redelivered duplicate, a replayed decision): one offer, one redemption.
    """

    def __init__(self, key: bytes, key_id: int, valid_for: timedelta) -> None:
        self._key = key
        self._key_id = key_id
        self.valid_for = valid_for

    def code_for(self, offer_id: str, issued: datetime, expires: datetime) -> str:
        nonce = hashlib.sha256(b"coupon|" + offer_id.encode()).digest()[:NONCE_BYTES]
        return sign(
            CodeKind.COUPON,
            offer_id,
            key=self._key,
            key_id=self._key_id,
            issued=issued,
            expires=max(expires, issued + self.valid_for),
            nonce=nonce,
        )


def cart_subject(beacon: tuple[UUID, int, int]) -> str:
    """The subject of a cart code for a cart or basket beacon (as the BLE adapter keys it:
    an iBeacon/AltBeacon id, major, minor, or an Eddystone-UID namespace + instance with
    major and minor 0)."""
    uuid, major, minor = beacon
    if major == minor == 0:
        return "ed:" + uuid.hex
    return f"ib:{uuid.hex}{major:04x}{minor:04x}"


def parse_cart_subject(subject: str) -> tuple[UUID, int, int]:
    """The beacon a cart code names; ValueError if the subject is not a cart beacon."""
    kind, _, value = subject.partition(":")
    try:
        if kind == "ib" and len(value) == 40:
            return UUID(hex=value[:32]), int(value[32:36], 16), int(value[36:], 16)
        if kind == "ed" and len(value) == 32:
            return UUID(hex=value), 0, 0
    except ValueError:
        pass
    raise ValueError(f"{subject!r} is not a cart beacon (ib:<uuid><major><minor> or ed:<uid>)")


def parse_key(text: str) -> bytes:
    """A signing key written in a config file: ``hex:...``, ``base64:...`` or plain text."""
    if text.startswith("hex:"):
        key = bytes.fromhex(text[4:])
    elif text.startswith("base64:"):
        key = base64.b64decode(text[7:], validate=True)
    else:
        key = text.encode()
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"a signing key needs at least {MIN_KEY_BYTES} bytes")
    return key


def _tag(key: bytes, body: bytes) -> bytes:
    return hmac.new(key, _DOMAIN + body, hashlib.sha256).digest()[:TAG_BYTES]


def _b32(data: bytes) -> str:
    return base64.b32encode(data).decode().rstrip("=")


def _seconds(at: datetime) -> int:
    if at.tzinfo is None:
        raise ValueError("code times must be timezone-aware")
    value = int(at.timestamp())
    if not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"{at.isoformat()} cannot be written in a code")
    return value
