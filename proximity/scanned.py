"""What the gateway makes of a scanned text (a QR code, an NFC tag's NDEF record).

- ``PX1:...`` — a signed code: acted on only if it verifies (genuine, in its time,
  not used before); otherwise refused with the reason (forged, expired, replayed...).
- an ``http(s)`` URL — an unsigned product link: accepted only as "product
  interest", stripped to scheme, host and path (query strings can carry
  tracking ids or personal data);
- anything else — refused as ``unsigned``: nobody can tell who made it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

from proximity.codes import PREFIX, CodeError, SignedCode, Verifier

MAX_URL = 2048


class Meaning(StrEnum):
    SIGNED = "signed"
    PRODUCT = "product"
    REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class Interpretation:
    meaning: Meaning
    code: SignedCode | None = None
    product: str | None = None
    """For product interest: the URL without query or fragment."""
    reason: str | None = None
    """For a refused text: the counter label (``forged``... see codes.Reject, or ``unsigned``)."""
    detail: str | None = None
    """For a refused text: the sentence saying why."""


def interpret(text: str, verifier: Verifier, *, use: bool = True) -> Interpretation:
    text = text.strip()
    if text.upper().startswith(PREFIX):
        try:
            code = verifier.verify(text, use=use)
        except CodeError as exc:
            return Interpretation(Meaning.REFUSED, reason=str(exc.reason), detail=str(exc))
        return Interpretation(Meaning.SIGNED, code=code)
    product = product_url(text)
    if product is not None:
        return Interpretation(Meaning.PRODUCT, product=product)
    return Interpretation(
        Meaning.REFUSED,
        reason="unsigned",
        detail="neither a signed code nor a product link: not acted on",
    )


def product_url(text: str) -> str | None:
    """``text`` as a product link (scheme, host, path), or None if it is not one."""
    if len(text) > MAX_URL or any(c.isspace() for c in text):
        return None
    try:
        parts = urlsplit(text)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        return None
    return f"{parts.scheme.lower()}://{parts.netloc.rpartition('@')[2].lower()}{parts.path}"
