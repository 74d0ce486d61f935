"""``[console]``: the ops console served next to ``/metrics`` by ``proximity run``.

    [console]
    enabled = true          # serve /console/ on the metrics server's host and port
    token = "..."           # a bearer token; required whenever the server is not on loopback

On loopback (the default ``[metrics] host``) the console needs no token; set one anyway
and it is asked for there too. On any other address the console serves nothing without
a token. A browser gives it once as ``/console/?token=...`` (kept in a same-site cookie
from then on); scripts send ``Authorization: Bearer ...``.
"""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

_TOKEN = re.compile(r"[A-Za-z0-9._~-]{16,256}")


class ConsoleSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    token: SecretStr | None = None
    feed_size: int = Field(default=200, ge=10, le=10_000)
    """Journey events and offers kept for the live feed (the newest)."""
    subscriber_queue: int = Field(default=256, ge=8, le=10_000)
    """Updates waiting for one browser; past this its oldest are dropped (and counted)."""
    max_subscribers: int = Field(default=16, ge=1, le=256)
    """Browsers following the live page at once; one more is told to come back later."""

    @field_validator("token")
    @classmethod
    def _long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not _TOKEN.fullmatch(value.get_secret_value()):
            raise ValueError(
                "the console token must be 16 to 256 characters of A-Z a-z 0-9 . _ ~ -"
                " (e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
            )
        return value
