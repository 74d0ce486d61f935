"""Where the broker is: ``mqtt://host:port``, ``mqtts://user:pass@host:port``, or ``embedded``."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr

EMBEDDED = "embedded"
_DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


class BrokerUrl(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    scheme: str = Field(pattern=r"^(mqtt|mqtts|embedded)$")
    host: str = ""
    port: int = Field(default=0, ge=0, le=65535)
    username: str | None = None
    password: SecretStr | None = None

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        text = text.strip()
        if text == EMBEDDED:
            return cls(scheme=EMBEDDED)
        parts = urlsplit(text)
        if parts.scheme not in _DEFAULT_PORTS:
            raise ValueError(
                f"broker URL {cls._redact(text)!r} must start with mqtt:// or mqtts:// "
                f"(or be {EMBEDDED!r})"
            )
        try:
            port = parts.port
        except ValueError as exc:
            raise ValueError(f"broker URL {cls._redact(text)!r} has a bad port") from exc
        if not parts.hostname:
            raise ValueError(f"broker URL {cls._redact(text)!r} has no host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError(f"broker URL {cls._redact(text)!r} must not have a path or query")
        return cls(
            scheme=parts.scheme,
            host=parts.hostname,
            port=port or _DEFAULT_PORTS[parts.scheme],
            username=unquote(parts.username) if parts.username else None,
            password=SecretStr(unquote(parts.password)) if parts.password else None,
        )

    @classmethod
    def tcp(cls, host: str, port: int) -> BrokerUrl:
        return cls(scheme="mqtt", host=host, port=port)

    @property
    def is_embedded(self) -> bool:
        return self.scheme == EMBEDDED

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        if self.is_embedded:
            return EMBEDDED
        user = (
            f"{self.username}:***@"
            if self.password
            else (f"{self.username}@" if self.username else "")
        )
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"

    @staticmethod
    def _redact(text: str) -> str:
        parts = urlsplit(text)
        if parts.password:
            return text.replace(f":{parts.password}@", ":***@")
        return text
