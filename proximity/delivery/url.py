"""Where the broker is: ``mqtt://[user[:pass]@]host[:port]``, ``mqtts://...`` or ``embedded``.

    BrokerUrl.parse("mqtts://gw-1:s3cret@broker.store.lan")   # port 8883, TLS
    BrokerUrl.parse("mqtt://127.0.0.1")                         # port 1883
    BrokerUrl.parse("embedded")                                 # the in-process broker

A bad URL raises :class:`ValueError` with a message that names the problem and
never the password. The password is a :class:`~pydantic.SecretStr`: neither
``str(url)`` nor ``repr(url)`` shows it. A ``BrokerUrl`` field in a pydantic
model accepts the text form directly.
"""

from __future__ import annotations

import re
from typing import Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, model_validator

EMBEDDED = "embedded"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
# a DNS name or an IPv4 address; IPv6 literals come bracketed and are checked apart
_HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9_.-]{0,252})$")

Scheme = Literal["mqtt", "mqtts", "embedded"]


class BrokerUrl(BaseModel):
    # a validation error must not echo the text it was given: it may hold the password
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)

    scheme: Scheme
    host: str = ""
    """Without brackets, also for an IPv6 address; empty for ``embedded``."""
    port: int = Field(default=0, ge=0, le=65535)
    username: str | None = None
    password: SecretStr | None = None

    @classmethod
    def parse(cls, text: str) -> BrokerUrl:
        """The URL in ``text``; ValueError (password masked) when it is not a broker URL."""
        return cls(**_fields(text))

    @classmethod
    def tcp(cls, host: str, port: int) -> BrokerUrl:
        """A plain ``mqtt://host:port`` with no credentials."""
        return cls(scheme="mqtt", host=host, port=port)

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, data: Any) -> Any:
        return _fields(data) if isinstance(data, str) else data

    @model_validator(mode="after")
    def _complete(self) -> BrokerUrl:
        if self.is_embedded:
            if self.host or self.port or self.username or self.password:
                raise ValueError("the embedded broker takes no host, port or credentials")
        elif not self.host or not 1 <= self.port <= 65535:
            raise ValueError(f"{self.scheme}:// needs a host and a port in 1-65535")
        return self

    @property
    def is_embedded(self) -> bool:
        return self.scheme == EMBEDDED

    @property
    def tls(self) -> bool:
        return self.scheme == "mqtts"

    def __str__(self) -> str:
        if self.is_embedded:
            return EMBEDDED
        user = ""
        if self.username is not None:
            user = f"{self.username}:***@" if self.password else f"{self.username}@"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{user}{host}:{self.port}"


def _fields(text: str) -> dict[str, Any]:
    """The model fields written in ``text``, or ValueError naming what is wrong."""
    text = text.strip()
    if text == EMBEDDED:
        return {"scheme": EMBEDDED}
    try:
        parts = urlsplit(text)
    except ValueError as exc:  # an unbalanced IPv6 bracket
        raise ValueError(f"broker URL {_redact_raw(text)!r} is malformed: {exc}") from None
    shown = _redact(text, parts)
    if parts.scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"broker URL {shown!r} must start with mqtt:// or mqtts:// (or be {EMBEDDED!r})"
        )
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"broker URL {shown!r} has a bad port (use 1-65535)") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"broker URL {shown!r} has no host")
    if not (_HOST.fullmatch(host) or ("[" in parts.netloc and ":" in host)):
        raise ValueError(f"broker URL {shown!r} has a bad host name")
    if port == 0:
        raise ValueError(f"broker URL {shown!r} has a bad port (use 1-65535)")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(f"broker URL {shown!r} must not have a path, query or fragment")
    return {
        "scheme": parts.scheme,
        "host": host,
        "port": port or DEFAULT_PORTS[parts.scheme],
        "username": unquote(parts.username) if parts.username else None,
        "password": SecretStr(unquote(parts.password)) if parts.password else None,
    }


def _redact(text: str, parts: SplitResult) -> str:
    """``text`` with its password, if any, replaced by ``***``."""
    if not parts.password:
        return text
    userinfo, _, _ = parts.netloc.rpartition("@")
    name, _, _ = userinfo.partition(":")
    return text.replace(f"{userinfo}@", f"{name}:***@", 1)


def _redact_raw(text: str) -> str:
    """``text`` (which urlsplit refused) with anything between ``:`` and ``@`` masked."""
    return re.sub(r"(//[^:/@]*):[^@/]*@", r"\1:***@", text)
