"""Bluetooth resolvable private addresses (RPAs), resolved with identity resolving keys.

A phone that uses LE privacy advertises from a random address that changes
every few minutes. A resolvable one is built from the phone's IRK (Bluetooth
Core spec, Vol 3 Part H 2.2.2 and Vol 6 Part B 1.3.2.2):

    address = prand (24 bits, top two bits 0b01) || hash (24 bits)
    hash    = ah(IRK, prand) = AES-128(IRK, 104 zero bits || prand) mod 2**24

Addresses are written as bleak and BlueZ print them, most significant byte
first (``"70:81:94:0D:FB:AA"``: prand ``708194``, hash ``0dfbaa``), or as those
6 bytes. IRKs are 16 bytes in the order the Core spec writes them, most
significant byte first; an IRK captured from SMP or HCI traffic (least
significant byte first) must be reversed before use.

The top bits say "resolvable" only for a *random* address; the caller knows
the address type (BlueZ reports it) and asks only about random ones.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Hashable, Mapping
from typing import TypeVar

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from proximity.errors import FrameError

IRK_SIZE = 16
PRAND_SIZE = 3
HASH_SIZE = 3
ADDRESS_SIZE = 6
RPA_MARKER = 0b01

K = TypeVar("K", bound=Hashable)

_TEXT_ADDRESS = re.compile(r"[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){5}")


class AddressError(FrameError):
    """Something that is not a Bluetooth device address."""

    def __init__(self, reason: str) -> None:
        super().__init__("ble-address", "bad_address", reason)


def address_bytes(address: str | bytes) -> bytes:
    """The 6 bytes of an address, most significant first."""
    if isinstance(address, bytes):
        if len(address) != ADDRESS_SIZE:
            raise AddressError(f"address is {len(address)} bytes, expected {ADDRESS_SIZE}")
        return address
    if not _TEXT_ADDRESS.fullmatch(address):
        raise AddressError("address must look like 'AA:BB:CC:DD:EE:FF'")
    return bytes.fromhex(address.replace(":", ""))


def format_address(raw: bytes) -> str:
    """``raw`` (6 bytes, most significant first) as ``AA:BB:CC:DD:EE:FF``."""
    return ":".join(f"{byte:02X}" for byte in address_bytes(raw))


def ah(irk: bytes, prand: bytes) -> bytes:
    """The random address hash function: the 3-byte hash of ``prand`` under ``irk``."""
    if len(irk) != IRK_SIZE:
        raise ValueError(f"an IRK is {IRK_SIZE} bytes")
    if len(prand) != PRAND_SIZE:
        raise ValueError(f"prand is {PRAND_SIZE} bytes")
    encryptor = Cipher(algorithms.AES128(irk), modes.ECB()).encryptor()  # noqa: S305 - one block, as the spec says
    block = encryptor.update(bytes(IRK_SIZE - PRAND_SIZE) + prand) + encryptor.finalize()
    return block[-HASH_SIZE:]


def is_rpa(address: str | bytes) -> bool:
    """Whether a random address is a resolvable private one (top two bits 0b01)."""
    return address_bytes(address)[0] >> 6 == RPA_MARKER


def resolve_rpa(address: str | bytes, irks: Mapping[K, bytes]) -> K | None:
    """The id of the IRK that generated ``address``, or None.

    Costs one AES block per IRK: keep the IRK set to the shoppers who may be in
    the store.
    """
    raw = address_bytes(address)
    if raw[0] >> 6 != RPA_MARKER:
        return None
    prand, hash_ = raw[:PRAND_SIZE], raw[PRAND_SIZE:]
    for irk_id, irk in irks.items():
        if hmac.compare_digest(ah(irk, prand), hash_):
            return irk_id
    return None


def make_rpa(irk: bytes, prand: bytes) -> str:
    """The resolvable private address for ``prand`` under ``irk`` (for tests and the simulator).

    ``prand`` must carry the 0b01 marker in its top two bits, and its random
    22 bits must be neither all zeros nor all ones.
    """
    if len(prand) != PRAND_SIZE:
        raise ValueError(f"prand is {PRAND_SIZE} bytes")
    if prand[0] >> 6 != RPA_MARKER:
        raise ValueError("prand must start with the bits 0b01")
    random_part = int.from_bytes(prand, "big") & 0x3FFFFF
    if random_part in (0, 0x3FFFFF):
        raise ValueError("the random part of prand must not be all zeros or all ones")
    return format_address(prand + ah(irk, prand))
