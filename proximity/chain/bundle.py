"""Signed rule bundles (docs/chain.md, ``down/rules``): the format, its canonical bytes,
signing and verification with Ed25519, and the keys.

A bundle is a JSON object::

    {"v": 1, "store": "store-001", "bundle": 7, "created_at": "…",
     "files": {"offers.toml": "…"}, "key": "ops-2026", "signature": "base64…"}

The signature covers the canonical JSON of every other field (sorted keys, no spaces,
UTF-8). A gateway verifies it over the fields exactly as they arrived, so no value is
ever reformatted between the signer and the verifier.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from proximity.errors import ConfigError, ProximityError

MAX_BUNDLE_BYTES = 4 * 1024 * 1024
"""A bigger payload is refused before it is parsed (rule files are a few kilobytes)."""

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}\.toml$")
KEY_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class BundleRefused(ProximityError):
    """A bundle the gateway will not run; ``reason`` says why, in words."""

    def __init__(self, reason: str, bundle: int | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.bundle = bundle


class RuleBundle(BaseModel):
    """One signed bundle, as it travels. ``strict``: nothing is coerced, so the fields a
    gateway verifies are the fields that were signed."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    v: Literal[1]
    store: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    bundle: int = Field(ge=1, lt=2**63)
    created_at: str
    files: dict[str, str] = Field(min_length=1)
    key: str = Field(pattern=KEY_ID.pattern)
    signature: str

    @field_validator("created_at")
    @classmethod
    def _time(cls, value: str) -> str:
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError("created_at is not an ISO time") from None
        if at.tzinfo is None:
            raise ValueError("created_at has no timezone")
        return value

    def signed_fields(self) -> dict[str, Any]:
        return self.model_dump(exclude={"signature"})

    def payload(self) -> bytes:
        """The bytes to publish (UTF-8 JSON, keys sorted)."""
        return json.dumps(
            self.model_dump(), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        ).encode()


def canonical_bytes(fields: Mapping[str, Any]) -> bytes:
    """What the signature covers: every field but ``signature``, canonical JSON, UTF-8."""
    body = {k: v for k, v in fields.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def unsafe_file_name(name: str) -> bool:
    """A bundle's file name must be a plain ``*.toml`` name: no folder, no ``..``."""
    return not _FILE_NAME.fullmatch(name) or ".." in name


def sign_bundle(
    *,
    store: str,
    bundle: int,
    files: Mapping[str, str],
    key_id: str,
    private_key: Ed25519PrivateKey,
    created_at: datetime,
) -> RuleBundle:
    fields: dict[str, Any] = {
        "v": 1,
        "store": store,
        "bundle": bundle,
        "created_at": created_at.isoformat(),
        "files": dict(sorted(files.items())),
        "key": key_id,
    }
    signature = private_key.sign(canonical_bytes(fields))
    return RuleBundle.model_validate({**fields, "signature": base64.b64encode(signature).decode()})


def parse_bundle(payload: bytes) -> tuple[RuleBundle, dict[str, Any]]:
    """The bundle and its fields exactly as received; BundleRefused if it is not one."""
    if len(payload) > MAX_BUNDLE_BYTES:
        raise BundleRefused(f"bundle too large ({len(payload)} bytes, {MAX_BUNDLE_BYTES} at most)")
    try:
        raw = json.loads(payload.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise BundleRefused("not a bundle: not UTF-8 JSON") from None
    if not isinstance(raw, dict):
        raise BundleRefused("not a bundle: not a JSON object")
    number = raw.get("bundle")
    known = number if type(number) is int and 0 < number < 2**63 else None
    try:
        bundle = RuleBundle.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'bundle'}: {err['msg']}"
            for err in exc.errors()[:3]
        )
        raise BundleRefused(f"not a bundle: {problems}", known) from None
    return bundle, raw


def verify_bundle(payload: bytes, keys: Mapping[str, Ed25519PublicKey]) -> RuleBundle:
    """Parse and check the signature; BundleRefused (``unknown key …``, ``bad signature``)."""
    bundle, raw = parse_bundle(payload)
    public = keys.get(bundle.key)
    if public is None:
        raise BundleRefused(f"unknown key {bundle.key}", bundle.bundle)
    try:
        signature = base64.b64decode(bundle.signature, validate=True)
        if base64.b64encode(signature).decode() != bundle.signature:
            # the last character's unused bits: the same signature written another way
            # (one bundle, one encoding: "byte-identical" must mean the same bundle)
            raise ValueError("not canonical base64")
        public.verify(signature, canonical_bytes(raw))
    except (InvalidSignature, binascii.Error, ValueError):
        raise BundleRefused("bad signature", bundle.bundle) from None
    return bundle


# --- keys --------------------------------------------------------------------------


def generate_keys(out: Path, key_id: str) -> tuple[Path, Path]:
    """Write ``{key_id}.pem`` (private, mode 0600) and ``{key_id}.pub.pem`` into ``out``."""
    if not KEY_ID.fullmatch(key_id):
        raise ConfigError(f"key id {key_id!r}: use 1-64 letters, digits, '_', '.', '-'")
    out.mkdir(parents=True, exist_ok=True)
    private_path, public_path = out / f"{key_id}.pem", out / f"{key_id}.pub.pem"
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"{path} exists already: not overwriting a key")
    key = Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(private_pem)
    public_path.write_bytes(
        key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private_path, public_path


def load_private_key(path: Path) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read signing key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read public key: {exc.strerror}") from None
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"{path}: not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise ConfigError(f"{path}: not an Ed25519 key")
    return key


def load_public_keys(paths: Mapping[str, Path]) -> dict[str, Ed25519PublicKey]:
    """``[chain] rollout_keys`` (key id → PEM file) loaded; ConfigError naming the file."""
    return {key_id: load_public_key(path) for key_id, path in paths.items()}
