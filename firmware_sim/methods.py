"""Which presence method the daemon runs, from the simulator's side of the contract.

The product's ``[presence]`` settings choose the method (``method = "threshold" |
"nearest" | "fused" | "multilateration"``) and, for every method but the per-zone
thresholds, the floor plan it reads (``floor_plan``: a store file in the simulator's
format, ``firmware_sim/stores/*.toml``). The simulator scores and benchmarks each
method on identical readings by passing the same store file it simulates.

"threshold" is today's behaviour and the settings' default: it is passed as the
settings are, so the simulator runs on a product that does not know ``method`` yet.
Any other method is validated by the product's own settings model; if the installed
product does not take it, :class:`MethodUnsupported` says so in one line.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from proximity.config import PresenceSettings

METHODS = ("threshold", "nearest", "fused", "multilateration")
"""Every method the simulator can ask for, comparators first."""
THRESHOLD = "threshold"


class MethodUnsupported(ValueError):
    """The installed product's presence settings do not take this method."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(
            f"presence method {method!r} is not supported by the installed proximity ({reason})"
        )
        self.method = method
        self.reason = reason


def presence_settings(
    method: str, floor_plan: Path, base: PresenceSettings | None = None
) -> PresenceSettings:
    """``base`` (default: the daemon's defaults) running ``method`` on ``floor_plan``."""
    base = base or PresenceSettings()
    if method == THRESHOLD:
        return base
    data = {**base.model_dump(exclude_unset=True), "method": method, "floor_plan": floor_plan}
    try:
        return PresenceSettings.model_validate(data)
    except ValidationError as exc:
        problems = [
            err for err in exc.errors() if err["loc"] and err["loc"][0] in ("method", "floor_plan")
        ]
        if not problems:
            raise
        err = problems[0]
        where = ".".join(str(part) for part in err["loc"])
        raise MethodUnsupported(method, f"presence.{where}: {err['msg']}") from exc


def supported(method: str, floor_plan: Path) -> bool:
    """Whether the installed product runs ``method`` on ``floor_plan``."""
    try:
        presence_settings(method, floor_plan)
    except MethodUnsupported:
        return False
    return True
