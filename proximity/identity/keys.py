"""Registered shopper keys: what lets the gateway recognise phones that hide their identity.

A phone that advertises a rotating identifier (an HMAC of its shopper key over
15-minute windows) or a resolvable private address (from its IRK) can only be
recognised with its key. The store's backend exports the keys of the shoppers
who use the app, keyed by their pseudonymous token, in a CSV file the gateway
reads at start:

    # token,kind,key (hex),consent (yes/no)
    su6zqxxg24jwlqwsd,rotating,8d2c...e1,yes
    sa1b2c3d4e5f6g7h8,irk,ec0234a357c8ad05341010a60a397d9b,no

Bad lines are reported with their line number and the file is refused: a key
file that half-loads would silently forget shoppers.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from proximity.errors import ConfigError

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{4,64}$")
MIN_ROTATING_KEY = 16
IRK_SIZE = 16


@dataclass
class ShopperKeys:
    rotating: dict[str, bytes] = field(default_factory=dict)
    irks: dict[str, bytes] = field(default_factory=dict)
    consent: dict[str, bool] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.consent)


def load_shopper_keys(path: Path) -> ShopperKeys:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"{path}: cannot read shopper keys: {reason}") from None
    keys = ShopperKeys()
    problems: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        problem = _add(keys, [part.strip() for part in line.split(",")])
        if problem is not None:
            problems.append(f"{path}:{number}: {problem}")
    if problems:
        raise ConfigError("\n".join(problems))
    return keys


def _add(keys: ShopperKeys, parts: list[str]) -> str | None:
    if len(parts) != 4:
        return f"expected token,kind,key,consent, got {len(parts)} fields"
    token, kind, key_hex, consent = parts
    if not _TOKEN.match(token):
        return f"token {token!r} is not 4-64 of A-Z a-z 0-9 _ -"
    if token in keys.consent:
        return f"token {token} is listed twice"
    try:
        key = bytes.fromhex(key_hex)
    except ValueError:
        return "the key is not hexadecimal"
    if kind == "rotating":
        if len(key) < MIN_ROTATING_KEY:
            return f"a rotating-identifier key needs at least {MIN_ROTATING_KEY} bytes"
        keys.rotating[token] = key
    elif kind == "irk":
        if len(key) != IRK_SIZE:
            return f"an IRK has exactly {IRK_SIZE} bytes"
        keys.irks[token] = key
    else:
        return f"kind {kind!r} is not rotating or irk"
    if consent not in ("yes", "no"):
        return f"consent {consent!r} is not yes or no"
    keys.consent[token] = consent == "yes"
    return None
