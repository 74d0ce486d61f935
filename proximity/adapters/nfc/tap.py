"""What a tag on a reader becomes: one :class:`NfcTap`, with the tag's UID kept secret.

A tag UID is a stable hardware identifier (a transit card, a payment card, a
loyalty tag on a key ring), so it never leaves the adapter: a tap carries a
keyed hash of it instead, stable per gateway key, so taps of the same tag can
be matched without anyone learning the UID.

:class:`TapDecoder` turns the tags nfcpy hands over into taps: it debounces,
reads and checks the NDEF message, and counts what it could not use. It knows
nothing of threads or readers, so it is tested on its own terms.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, Literal

import structlog
from pydantic import Field

from proximity.adapters.nfc.ndef import DEFAULT_MAX_SIZE, NdefContent, NdefError, parse_ndef
from proximity.clock import Clock
from proximity.readings import Reading

log = structlog.get_logger(__name__)

UID_HASH_CHARS = 16
MIN_KEY_BYTES = 16


class NfcTap(Reading):
    """One tag brought to one reader (a tag left on the reader is one tap)."""

    kind: Literal["nfc_tap"] = "nfc_tap"
    reader: str = Field(min_length=1, description="which reader saw the tag")
    tag_uid_hash: str = Field(
        pattern=r"^[0-9a-f]{16}$", description="HMAC-SHA256 of the UID, first 16 hex chars"
    )
    tag_type: str = Field(min_length=1, description="nfcpy's tag type, e.g. Type3Tag")
    ndef: NdefContent | None = Field(
        default=None, description="the NDEF message, if the tag had a usable one"
    )
    reject_reason: str | None = Field(
        default=None, description="why the tag's NDEF message was not used, if it was not"
    )


def hash_tag_uid(uid: bytes, key: bytes) -> str:
    """The pseudonymous form of a tag UID: HMAC-SHA256 under the gateway's key, 16 hex chars."""
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the tag UID key must be at least {MIN_KEY_BYTES} bytes")
    return hmac.new(key, uid, hashlib.sha256).hexdigest()[:UID_HASH_CHARS]


class TapDecoder:
    """Turns nfcpy tags into taps: one per presentation, NDEF checked, problems counted.

    A tag seen again less than ``debounce`` seconds (of ``monotonic``) after it
    was last on the reader is the same presentation: the reader's presence
    check blinked, or the shopper lifted the phone and put it back.
    """

    _PRUNE_ABOVE = 64

    def __init__(
        self,
        reader: str,
        uid_key: bytes,
        clock: Clock,
        *,
        debounce: float = 2.0,
        max_ndef_size: int = DEFAULT_MAX_SIZE,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        if not reader:
            raise ValueError("reader must be named")
        if debounce < 0:
            raise ValueError("debounce must not be negative")
        hash_tag_uid(b"", uid_key)  # a short key fails here, not at the first tap
        self.reader = reader
        self._uid_key = uid_key
        self._clock = clock
        self._debounce = debounce
        self._max_ndef_size = max_ndef_size
        self._monotonic = monotonic
        self._last_seen: dict[str, float] = {}
        """Tag UID hash → when it was last on the reader (``monotonic``)."""
        self.taps = 0
        """Taps made (rejected ones included)."""
        self.debounced = 0
        """Presentations folded into an earlier tap of the same tag."""
        self.rejected: Counter[str] = Counter()
        """Taps whose NDEF message was not used, by problem (``malformed``, ``oversize``...)."""

    def to_tap(self, tag: Any) -> NfcTap | None:
        """The tap for a tag nfcpy just connected, or None if it is a debounced repeat.

        ``tag`` is an ``nfc.tag.Tag``; reading its NDEF message talks to the tag.
        Problems with the message are in the tap (``ndef=None``, ``reject_reason``).
        """
        at = self._clock.now()
        now = self._monotonic()
        uid_hash = hash_tag_uid(bytes(tag.identifier), self._uid_key)
        last = self._last_seen.get(uid_hash)
        self._seen(uid_hash, now)
        if last is not None and now - last < self._debounce:
            self.debounced += 1
            log.debug("nfc_tap_debounced", reader=self.reader, tag=uid_hash)
            return None
        ndef, reason, problem = self._read_ndef(tag)
        tap = NfcTap(
            at=at,
            reader=self.reader,
            tag_uid_hash=uid_hash,
            tag_type=str(tag.type),
            ndef=ndef,
            reject_reason=reason,
        )
        self.taps += 1
        if problem is not None:
            self.rejected[problem] += 1
            log.warning("nfc_ndef_rejected", reader=self.reader, tag=uid_hash, reason=reason)
        log.debug("nfc_tap", reader=self.reader, tag=uid_hash, tag_type=tap.tag_type)
        return tap

    def released(self, tag: Any) -> None:
        """The tag left the reader: its debounce window starts now."""
        self._seen(hash_tag_uid(bytes(tag.identifier), self._uid_key), self._monotonic())

    def _seen(self, uid_hash: str, now: float) -> None:
        self._last_seen[uid_hash] = now
        if len(self._last_seen) > self._PRUNE_ABOVE:
            horizon = now - self._debounce
            for key in [k for k, seen in self._last_seen.items() if seen < horizon]:
                del self._last_seen[key]

    def _read_ndef(self, tag: Any) -> tuple[NdefContent | None, str | None, str | None]:
        """The tag's NDEF message; or None, and why not (a reason and a problem) if it is bad."""
        try:
            found = tag.ndef
            octets = b"" if found is None else bytes(found.octets)
        except Exception as exc:  # the tag left mid-read, or nfcpy met something it can't map
            return None, f"NDEF read failed: {type(exc).__name__}", "unreadable"
        if not octets:
            return None, None, None  # a blank or non-NDEF tag is a plain tap
        try:
            return parse_ndef(octets, self._max_ndef_size), None, None
        except NdefError as exc:
            return None, exc.reason, exc.problem
