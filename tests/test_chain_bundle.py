"""Signed rule bundles: the canonical form, signing and verification, the keys."""

from __future__ import annotations

import base64
import json
import stat
import string
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proximity.chain.bundle import (
    BundleRefused,
    RuleBundle,
    canonical_bytes,
    generate_keys,
    load_private_key,
    load_public_key,
    sign_bundle,
    unsafe_file_name,
    verify_bundle,
)
from proximity.errors import ConfigError
from tests.factories import T0

KEY = Ed25519PrivateKey.generate()
KEYS = {"ops-2026": KEY.public_key()}


def make_bundle(**overrides: object) -> RuleBundle:
    fields: dict[str, object] = {
        "store": "store-001",
        "bundle": 7,
        "files": {"offers.toml": '[store]\nid = "store-001"\n# café\n'},
        "key_id": "ops-2026",
        "private_key": KEY,
        "created_at": T0,
    }
    fields.update(overrides)
    return sign_bundle(**fields)  # type: ignore[arg-type]


def test_round_trip_and_the_contract_shape() -> None:
    bundle = make_bundle()
    payload = bundle.payload()
    assert verify_bundle(payload, KEYS) == bundle
    data = json.loads(payload)
    assert set(data) == {"v", "store", "bundle", "created_at", "files", "key", "signature"}
    assert data["v"] == 1
    assert data["key"] == "ops-2026"
    # what the signature covers is exactly what docs/chain.md says
    expected = json.dumps(
        {k: v for k, v in data.items() if k != "signature"},
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    ).encode("utf-8")
    assert canonical_bytes(data) == expected
    assert "café".encode() in expected  # UTF-8, not \u escapes


def test_canonical_form_is_stable() -> None:
    files = {"b.toml": "é", "a.toml": ""}
    fields = {"v": 1, "store": "s", "bundle": 2, "created_at": "x", "files": files}
    shuffled = dict(reversed(list(fields.items())))
    assert canonical_bytes(fields) == canonical_bytes(shuffled)
    assert canonical_bytes(fields) == (
        b'{"bundle":2,"created_at":"x","files":{"a.toml":"","b.toml":"\xc3\xa9"},"store":"s","v":1}'
    )
    # the same input signs to the same bundle (Ed25519 is deterministic)
    assert make_bundle().payload() == make_bundle().payload()


def test_a_payload_formatted_differently_still_verifies() -> None:
    """The signature covers the values, not the sender's whitespace or key order."""
    data = json.loads(make_bundle().payload())
    pretty = json.dumps(dict(reversed(list(data.items()))), indent=2).encode()
    assert verify_bundle(pretty, KEYS).bundle == 7


def test_unknown_key_and_bad_signature() -> None:
    other = Ed25519PrivateKey.generate()
    with pytest.raises(BundleRefused, match=r"^unknown key ops-2025$"):
        verify_bundle(make_bundle(key_id="ops-2025").payload(), KEYS)
    with pytest.raises(BundleRefused, match=r"^bad signature$") as caught:
        verify_bundle(make_bundle(private_key=other).payload(), KEYS)
    assert caught.value.bundle == 7
    data = json.loads(make_bundle().payload())
    data["signature"] = "not base64!"
    with pytest.raises(BundleRefused, match=r"^bad signature$"):
        verify_bundle(json.dumps(data).encode(), KEYS)


PAYLOAD = make_bundle(files={"a.toml": "x = 1\n", "b.toml": "y = 'zz'\n"}).payload()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(index=st.integers(0, len(PAYLOAD) - 1), byte=st.integers(0, 255))
def test_every_changed_byte_is_refused(index: int, byte: int) -> None:
    if PAYLOAD[index] == byte:
        return
    changed = PAYLOAD[:index] + bytes([byte]) + PAYLOAD[index + 1 :]
    try:
        bundle = verify_bundle(changed, KEYS)
    except BundleRefused:
        return
    # a change JSON does not see (e.g. an escape of the same character) is no change
    assert bundle == RuleBundle.model_validate_json(PAYLOAD)


@settings(max_examples=100, deadline=None)
@given(
    field=st.sampled_from(["v", "store", "bundle", "created_at", "files", "key"]),
    value=st.one_of(
        st.integers(),
        st.text(max_size=8),
        st.dictionaries(st.text(max_size=6), st.text(max_size=6)),
    ),
)
def test_any_changed_field_is_refused(field: str, value: object) -> None:
    data = json.loads(PAYLOAD)
    if data[field] == value:
        return
    data[field] = value
    with pytest.raises(BundleRefused):
        verify_bundle(json.dumps(data).encode(), KEYS)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.binary(max_size=200), st.text(max_size=80).map(str.encode)))
def test_arbitrary_payloads_are_refused_never_raised(payload: bytes) -> None:
    with pytest.raises(BundleRefused):
        verify_bundle(payload, KEYS)


def test_shape_refusals_name_the_problem() -> None:
    with pytest.raises(BundleRefused, match="not UTF-8 JSON"):
        verify_bundle(b"\xff{", KEYS)
    with pytest.raises(BundleRefused, match="not a JSON object"):
        verify_bundle(b"[1]", KEYS)
    data = json.loads(PAYLOAD)
    data["bundle"] = 7.0
    with pytest.raises(BundleRefused, match="bundle") as caught:
        verify_bundle(json.dumps(data).encode(), KEYS)
    assert caught.value.reason.startswith("not a bundle: bundle:")
    del data["bundle"]
    with pytest.raises(BundleRefused, match="not a bundle: bundle: Field required"):
        verify_bundle(json.dumps(data).encode(), KEYS)


@pytest.mark.parametrize(
    ("name", "unsafe"),
    [
        ("offers.toml", False),
        ("store_2.v3.toml", False),
        ("../offers.toml", True),
        ("a/b.toml", True),
        ("a\\b.toml", True),
        ("..toml", True),
        ("a..b.toml", True),
        ("offers.json", True),
        (".hidden.toml", True),
        ("/etc/x.toml", True),
        ("", True),
    ],
)
def test_file_names(name: str, unsafe: bool) -> None:
    assert unsafe_file_name(name) is unsafe


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    private, public = generate_keys(tmp_path / "keys", "ops-2026")
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    key = load_private_key(private)
    bundle = make_bundle(private_key=key)
    assert verify_bundle(bundle.payload(), {"ops-2026": load_public_key(public)}) == bundle
    with pytest.raises(ConfigError, match="exists already"):
        generate_keys(tmp_path / "keys", "ops-2026")
    with pytest.raises(ConfigError, match=r"not an Ed25519 key|not a PEM"):
        load_public_key(private)
    with pytest.raises(ConfigError, match="key id"):
        generate_keys(tmp_path, "../x")


def test_a_signature_written_another_way_is_refused() -> None:
    """The last base64 character of a 64-byte signature carries 4 unused bits: setting one
    writes the same signature another way (hypothesis found it); one bundle, one encoding."""
    fields = json.loads(PAYLOAD)
    signature = fields["signature"]
    assert signature.endswith("==")
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    other = alphabet[alphabet.index(signature[-3]) ^ 1]
    fields["signature"] = signature[:-3] + other + "=="
    assert base64.b64decode(fields["signature"]) == base64.b64decode(signature)
    with pytest.raises(BundleRefused, match="bad signature"):
        verify_bundle(json.dumps(fields).encode(), KEYS)
