"""Shopper segments, from a file the CRM exports keyed by pseudonymous token.

    # token,segments (separated by ";")
    su6zqxxg24jwlqwsd,loyal;coffee-lover
    sa1b2c3d4e5f6g7h8,new

The CRM computes tokens with the same pseudonym key as the gateway (see
``IdentityResolver.token_for``), so no loyalty number or name ever reaches
the store. Bad lines are skipped and reported with their line number.
"""

from __future__ import annotations

import re
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
_SEGMENT = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")


def load_segments(path: Path) -> dict[str, frozenset[str]]:
    out: dict[str, frozenset[str]] = {}
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        token, _, rest = line.partition(",")
        segments = [s.strip() for s in rest.split(";") if s.strip()]
        bad = [s for s in segments if not _SEGMENT.match(s)]
        if not _TOKEN.match(token.strip()) or bad or not segments:
            log.warning(
                "segment_line_skipped",
                path=str(path),
                line=number,
                reason="expected: token,segment;segment (lowercase segment names)",
            )
            continue
        out[token.strip()] = frozenset(segments)
    return out
