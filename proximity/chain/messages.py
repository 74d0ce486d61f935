"""The uplink messages hq reads (docs/chain.md), validated, and why one was refused.

    parse_uplink(topic, payload) -> FactsBatch | GatewayStatus | RolloutReport | Rejected

Nothing here raises on bad input: whatever the bytes, the answer is a message or a
:class:`Rejected` with one of the fixed :data:`RejectReason` values (fit for a metric
label) and a short detail for the log. Unknown keys are ignored, so a newer gateway's
extra fields do not get its batches refused.

A batch's rows are dicts (:class:`FactRow`, a TypedDict validated as strictly as a model):
pydantic builds a dict a few times faster than a model instance, and hq parses every
row of every store (bench/chain: a batch of 12 rows in about a quarter of the time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, NotRequired

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError
from typing_extensions import TypedDict

from proximity.measurement.store import Stage

RejectReason = Literal[
    "unknown_topic",  # not proximity/v1/{store}/up/{facts,status,rollout}
    "not_json",  # not a UTF-8 JSON document
    "invalid_facts",  # JSON, but not a facts batch of version 1
    "invalid_status",  # JSON, but not a gateway status of version 1
    "invalid_rollout",  # JSON, but not a rollout report of version 1
    "store_mismatch",  # the payload's store is not the topic's
    "db_refused",  # valid here, but PostgreSQL refused the batch
]
REJECT_REASONS: tuple[RejectReason, ...] = (
    "unknown_topic",
    "not_json",
    "invalid_facts",
    "invalid_status",
    "invalid_rollout",
    "store_mismatch",
    "db_refused",
)

MAX_PAYLOAD = 8 * 1024 * 1024
"""Larger payloads are refused unread (a gateway's batch holds at most a few thousand rows)."""

# ids are the config's segments (docs/chain.md)
Segment = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
# PostgreSQL text cannot hold NUL: checked apart (a pattern here made parsing 4x slower)
Text = Annotated[str, Field(max_length=256)]
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
BigCount = Annotated[int, Field(ge=0, le=2**63 - 1)]
HOLDOUT_STAGES = frozenset({Stage.HELD_OUT.value, Stage.HELD_OUT_CONVERTED.value})


StageName = Literal[
    "decided",
    "suppressed",
    "published",
    "expired",
    "delivered",
    "opened",
    "clicked",
    "dismissed",
    "redeemed",
    "converted",
    "held_out",
    "held_out_converted",
]
"""The values of :class:`~proximity.measurement.store.Stage` (a Literal parses faster)."""


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class FactRow(TypedDict):
    """One row of a batch; ``variant`` and ``reason`` may be absent (read them with
    ``row.get("variant", "")``). Unknown keys are dropped."""

    minute: AwareDatetime
    rule: Annotated[str, Field(min_length=1, max_length=256)]
    variant: NotRequired[Text]
    arm: Literal["treatment", "holdout"]
    stage: StageName
    reason: NotRequired[Text]
    count: Count


class FactsBatch(_Message):
    v: Literal[1]
    store: Segment
    gateway: Segment
    seq: Annotated[int, Field(ge=1, le=2**63 - 1)]
    sealed_at: AwareDatetime
    rows: Annotated[list[FactRow], Field(max_length=100_000)]

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.store, self.gateway, self.seq)

    @property
    def facts(self) -> int:
        return sum(row["count"] for row in self.rows)


class GatewayStatus(_Message):
    v: Literal[1]
    store: Segment
    gateway: Segment
    online: bool
    at: AwareDatetime | None = None
    version: Text = ""
    rules_version: Text = ""
    bundle: Annotated[int, Field(ge=0, le=2**63 - 1)] | None = None
    outbox_depth: BigCount = 0
    uplink_pending: BigCount = 0
    errors: BigCount = 0


class RolloutReport(_Message):
    v: Literal[1]
    store: Segment
    gateway: Segment
    bundle: Annotated[int, Field(ge=0, le=2**63 - 1)]
    outcome: Literal["applied", "refused"]
    reason: Annotated[str, Field(max_length=2000)] = ""
    rules_version: Text = ""
    at: AwareDatetime


@dataclass(frozen=True, slots=True)
class Rejected:
    reason: RejectReason
    detail: str
    store: str = ""


Uplink = FactsBatch | GatewayStatus | RolloutReport
_MODELS: dict[str, tuple[type[FactsBatch | GatewayStatus | RolloutReport], RejectReason]] = {
    "facts": (FactsBatch, "invalid_facts"),
    "status": (GatewayStatus, "invalid_status"),
    "rollout": (RolloutReport, "invalid_rollout"),
}


def parse_uplink(topic: str, payload: bytes) -> Uplink | Rejected:
    """The message on ``topic``, or why it is refused."""
    parts = topic.split("/")
    if len(parts) != 5 or parts[:2] != ["proximity", "v1"] or parts[3] != "up":
        return Rejected("unknown_topic", "not proximity/v1/{store}/up/{kind}")
    store, kind = parts[2], parts[4]
    if kind not in _MODELS:
        return Rejected("unknown_topic", f"unknown uplink kind {kind[:40]!r}")
    model, invalid = _MODELS[kind]
    if len(payload) > MAX_PAYLOAD:
        return Rejected(invalid, f"payload of {len(payload)} bytes (limit {MAX_PAYLOAD})", store)
    try:
        message = model.model_validate_json(payload)
    except ValidationError as exc:
        return _refusal(exc, invalid, store)
    if b"\\u0000" in payload and _has_nul(message):
        return Rejected(invalid, "a string holds a NUL character", store)
    if message.store != store:
        return Rejected("store_mismatch", "the payload's store is not the topic's", store)
    if isinstance(message, FactsBatch):
        arms = ((r, r["stage"] in HOLDOUT_STAGES) for r in message.rows)
        wrong = next((r for r, held in arms if held != (r["arm"] == "holdout")), None)
        if wrong is not None:
            return Rejected(invalid, f"rows: stage {wrong['stage']} in arm {wrong['arm']}", store)
    return message


def _has_nul(message: BaseModel) -> bool:
    for value in message.__dict__.values():
        if isinstance(value, str) and "\x00" in value:
            return True
        if isinstance(value, list) and any(
            isinstance(text, str) and "\x00" in text
            for row in value
            if isinstance(row, dict)
            for text in row.values()
        ):
            return True
    return False


def _refusal(exc: ValidationError, invalid: RejectReason, store: str) -> Rejected:
    errors: list[Any] = exc.errors(include_input=False, include_url=False)
    first = errors[0] if errors else {"type": "?", "loc": (), "msg": "?"}
    if first["type"] in ("json_invalid", "json_type") or (
        first["type"] == "model_type" and not first["loc"]
    ):
        kind = "not_json" if first["type"] == "json_invalid" else invalid
        return Rejected(kind, str(first["msg"])[:200], store)
    where = ".".join(str(p) for p in first["loc"]) or "(message)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return Rejected(invalid, f"{where}: {first['msg']}"[:200] + more, store)
