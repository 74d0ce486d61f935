"""Who is behind a beacon sighting: a pseudonymous shopper, or nobody.

The walking-skeleton scheme (rotating identifiers replace it, see the BLE issue):
the shopper app advertises an iBeacon under one of the store app's proximity
UUIDs; major and the low 15 bits of minor identify the app install, and the
top bit of minor is set once the shopper has opted in to personal offers in
the app. The gateway never uses those numbers as they are: the shopper token
is a keyed hash (HMAC-SHA256 with the gateway's pseudonym key), so topics,
logs and analytics carry a token that cannot be linked back to the beacon
without the key. Beacons under other UUIDs are not shoppers and are ignored.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime
from uuid import UUID

from proximity.events import Shopper
from proximity.readings import BeaconSighting, ShopperSighting, Sighting

CONSENT_BIT = 0x8000


class IdentityResolver:
    def __init__(
        self,
        app_uuids: Iterable[UUID],
        pseudonym_key: bytes,
        anonymous_uuids: Iterable[UUID] = (),
        segments: Mapping[str, frozenset[str]] | None = None,
        anonymous_namespaces: Iterable[bytes] = (),
        consent: Mapping[str, bool] | None = None,
    ) -> None:
        """``anonymous_namespaces``: Eddystone-UID namespaces of cart and basket beacons
        (anonymous presence); ``consent``: registered shoppers (rotating identifiers,
        IRKs) by token, with their consent to personal offers."""
        self._segments = segments or {}
        self._anonymous_namespaces = frozenset(anonymous_namespaces)
        self._registered = dict(consent or {})
        self._shoppers: dict[str, Shopper] = {}
        self._app_uuids = frozenset(app_uuids)
        self._anonymous_uuids = frozenset(anonymous_uuids)
        # integers hash in C; UUID objects hash through Python code (the hot path)
        self._app_ints = frozenset(u.int for u in self._app_uuids)
        self._anonymous_ints = frozenset(u.int for u in self._anonymous_uuids)
        if not self._app_uuids:
            raise ValueError("at least one app UUID is needed to recognise shoppers")
        if len(pseudonym_key) < 16:
            raise ValueError("the pseudonym key must be at least 16 bytes")
        self._key = pseudonym_key
        self._cache: dict[tuple[int, int, int], Shopper] = {}
        self._bound: dict[tuple[UUID, int, int], tuple[Shopper, datetime]] = {}
        self.bindings = 0

    def bind(self, beacon: tuple[UUID, int, int], shopper: Shopper, until: datetime) -> bool:
        """From now until ``until``, the anonymous cart or basket beacon ``beacon`` is
        ``shopper``'s presence. False if it is not an anonymous beacon of this store."""
        uuid = beacon[0]
        if uuid not in self._anonymous_uuids and uuid.bytes[:10] not in self._anonymous_namespaces:
            return False
        self._bound[beacon] = (shopper, until)
        self.bindings += 1
        if len(self._bound) > 10_000:  # expired bindings go first
            now = min(u for _, u in self._bound.values())
            self._bound = {k: v for k, v in self._bound.items() if v[1] > now}
        return True

    def resolve(self, sighting: Sighting) -> Shopper | None:
        if isinstance(sighting, ShopperSighting):
            return self._registered_shopper(sighting.key_id)
        if self._bound:
            bound = self._bound.get(sighting.beacon_key)
            if bound is not None:
                if sighting.at < bound[1]:
                    return bound[0]
                del self._bound[sighting.beacon_key]
        if sighting.kind == "eddystone_uid":
            return self._namespace(sighting)
        uuid_int = sighting.uuid.int
        known = uuid_int in self._app_ints
        if not known and uuid_int not in self._anonymous_ints:
            return None
        key = (uuid_int, sighting.major, sighting.minor)
        shopper = self._cache.get(key)
        if shopper is None:
            if len(self._cache) >= 50_000:
                self._cache.clear()
            if known:
                token = self.token_for(sighting.uuid, sighting.major, sighting.minor & ~CONSENT_BIT)
                shopper = Shopper(
                    token=token,
                    consent=bool(sighting.minor & CONSENT_BIT),
                    segments=self._segments.get(token, frozenset()),
                )
            else:  # presence without identity: signage only, never a personal offer
                token = self.token_for(sighting.uuid, sighting.major, sighting.minor)
                shopper = Shopper(token="a" + token[1:], anonymous=True)
            self._cache[key] = shopper
        return shopper

    def _registered_shopper(self, token: str) -> Shopper | None:
        shopper = self._shoppers.get(token)
        if shopper is None:
            consent = self._registered.get(token)
            if consent is None:
                return None
            shopper = self._shoppers[token] = Shopper(
                token=token, consent=consent, segments=self._segments.get(token, frozenset())
            )
        return shopper

    def _namespace(self, sighting: BeaconSighting) -> Shopper | None:
        if sighting.uuid.bytes[:10] not in self._anonymous_namespaces:
            return None
        key = (sighting.uuid.int, 0, 0)
        shopper = self._cache.get(key)
        if shopper is None:
            token = self.token_for(sighting.uuid, 0, 0)
            shopper = self._cache[key] = Shopper(token="a" + token[1:], anonymous=True)
        return shopper

    def token_for(self, uuid: UUID, major: int, install: int) -> str:
        """The pseudonymous token of one app install (what the app learns at check-in)."""
        message = uuid.bytes + major.to_bytes(2, "big") + install.to_bytes(2, "big")
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return "s" + base64.b32encode(digest[:10]).decode().lower()
