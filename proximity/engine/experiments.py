"""A/B variants and holdouts: deterministic, per rule and shopper.

A shopper's bucket is a hash of the rule id and the shopper token, so the
same shopper always lands in the same arm of the same rule — across visits,
restarts and gateways — and different rules split shoppers independently.
"""

from __future__ import annotations

import hashlib

from proximity.engine.rules import Rule, Variant


def _unit(*parts: str) -> float:
    """A uniform number in [0, 1) from the parts."""
    digest = hashlib.sha256("|".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def held_out(rule: Rule, token: str) -> bool:
    return rule.holdout > 0 and _unit("holdout", rule.id, token) < rule.holdout


def variant_for(rule: Rule, token: str) -> Variant | None:
    if not rule.variants:
        return None
    total = sum(v.weight for v in rule.variants)
    point = _unit("variant", rule.id, token) * total
    for variant in rule.variants:
        if point < variant.weight:
            return variant
        point -= variant.weight
    return rule.variants[-1]
