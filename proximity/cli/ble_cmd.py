"""``proximity inspect ble``: decode one beacon advertisement the way the gateway does.

For integrators in the field: paste the manufacturer-specific data (with its
company id) or the service data (with its service UUID) that a sniffer or
``bluetoothctl`` shows, and see the beacon the gateway would read from it, or
the parser's reason for refusing it. The bytes go through the same pure
parsers the scanner uses, so what this prints is what the daemon sees.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from typing import Any, assert_never
from uuid import UUID

from proximity.adapters.ble.altbeacon import (
    BEACON_CODE,
    RADIUS_NETWORKS_COMPANY_ID,
    AltBeacon,
    parse_altbeacon,
)
from proximity.adapters.ble.eddystone import (
    EDDYSTONE_SERVICE_UUID,
    EDDYSTONE_UUID16,
    EddystoneEid,
    EddystoneFrame,
    EddystoneTlm,
    EddystoneUid,
    EddystoneUrl,
    EncryptedTlm,
    parse_eddystone,
)
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, parse_ibeacon
from proximity.errors import FrameError

EXIT_OK, EXIT_FAIL = 0, 1

BLUETOOTH_BASE_UUID = "-0000-1000-8000-00805f9b34fb"
"""16- and 32-bit service UUIDs are short for ``xxxxxxxx`` followed by this."""

_COMPANY = re.compile(r"0[xX](?P<hex>[0-9a-fA-F]{1,4})|(?P<dec>[0-9]{1,5})")
_SHORT_UUID = re.compile(r"(?:0[xX])?(?P<hex>[0-9a-fA-F]{4}|[0-9a-fA-F]{8})")
_SEPARATORS = re.compile(r"[\s:]+")

Beacon = IBeacon | AltBeacon | EddystoneFrame
Parser = Callable[[bytes], Beacon]

DESCRIPTION = """\
Decode one BLE beacon advertisement and print it as JSON, or exit 1 with the
parser's reason when the bytes are not a well-formed frame.

Give the bytes the way a scanner reports them, in one of two forms:

  manufacturer-specific data (AD type 0xFF): --company ID --data HEX
      ID is the Bluetooth SIG company identifier (0x004C, or decimal 76 as bleak
      prints it); HEX is the payload AFTER the two company id bytes.
      0x004C (Apple) is read as iBeacon; 0x0118 (Radius Networks), and any
      company whose payload starts with the AltBeacon code BE AC, as AltBeacon.

  service data (AD type 0x16): --service-uuid UUID --data HEX
      UUID is the 128-bit form (0000feaa-0000-1000-8000-00805f9b34fb, as bleak
      keys service data) or the 16-bit short form (feaa, 0xFEAA); HEX is the
      payload AFTER the UUID bytes. FEAA is read as Eddystone (UID, URL, TLM,
      encrypted TLM, EID).

HEX may contain spaces or colons ("02 15 e2 ..", "02:15:e2:..")."""

EPILOG = """\
examples:
  iBeacon (manufacturer data of Apple, 0x004C):
    proximity inspect ble --company 0x004C \\
      --data "02 15 E2 C5 6D B5 DF FB 48 D2 B0 60 D0 F5 A7 10 96 E0 00 00 00 00 C5"
  AltBeacon (manufacturer data of Radius Networks, 0x0118):
    proximity inspect ble --company 0x0118 \\
      --data "BE AC 00000000000000000000000000000000 0001 0001 C5 01"
  Eddystone-URL https://goo.gl/S6zT6P (service data of 0xFEAA):
    proximity inspect ble --service-uuid feaa \\
      --data "10 EE 03 67 6F 6F 2E 67 6C 2F 53 36 7A 54 36 50"
  Eddystone-TLM, full service UUID:
    proximity inspect ble --service-uuid 0000feaa-0000-1000-8000-00805f9b34fb \\
      --data 20:00:0b:b8:17:80:00:00:04:d2:00:00:30:39"""


def add_inspect_ble(inspect_sub: Any, common: argparse.ArgumentParser) -> None:
    """Register ``ble`` among the ``inspect`` subcommands."""
    ble = inspect_sub.add_parser(
        "ble",
        parents=[common],
        help="decode a BLE beacon advertisement (iBeacon, AltBeacon, Eddystone) given in hex",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = ble.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--company",
        metavar="ID",
        help="company id of manufacturer-specific data: 0x004C (hex) or 76 (decimal)",
    )
    source.add_argument(
        "--service-uuid",
        metavar="UUID",
        help="UUID of service data: 0000feaa-0000-1000-8000-00805f9b34fb, feaa or 0xFEAA",
    )
    ble.add_argument(
        "--data",
        required=True,
        metavar="HEX",
        help="the payload after the company id or service UUID, in hex (spaces, colons allowed)",
    )
    ble.set_defaults(run_command=_inspect_ble)


def _inspect_ble(args: argparse.Namespace) -> int:
    try:
        data = hex_bytes(args.data)
    except ValueError as exc:
        return _fail(f"--data: {exc}")
    if args.company is not None:
        try:
            company = company_id(args.company)
        except ValueError as exc:
            return _fail(f"--company: {exc}")
        return _show(decode_manufacturer_data(company, data), {"company": f"0x{company:04X}"})
    try:
        uuid = service_uuid(args.service_uuid)
    except ValueError as exc:
        return _fail(f"--service-uuid: {exc}")
    return _show(decode_service_data(uuid, data), {"service_uuid": uuid})


def _show(decoded: dict[str, Any] | str, source: dict[str, str]) -> int:
    if isinstance(decoded, str):
        return _fail(decoded)
    print(json.dumps({"format": decoded["format"], **source, **decoded}, indent=2))
    return EXIT_OK


# -- decoding --------------------------------------------------------------------------------


def decode_manufacturer_data(company: int, data: bytes) -> dict[str, Any] | str:
    """The beacon in one company's manufacturer data as JSON values, or why there is none."""
    parse: Parser
    if data[:2] == BEACON_CODE or company == RADIUS_NETWORKS_COMPANY_ID:
        parse = parse_altbeacon
    elif company == APPLE_COMPANY_ID:
        parse = parse_ibeacon
    else:
        return (
            f"no beacon format known for company 0x{company:04X} (known: 0x{APPLE_COMPANY_ID:04X} "
            f"iBeacon; 0x{RADIUS_NETWORKS_COMPANY_ID:04X}, or any company with a payload "
            f"starting {BEACON_CODE.hex(' ').upper()}, AltBeacon)"
        )
    return _decode(parse, data, company.to_bytes(2, "little"), "company id")


def decode_service_data(uuid: str, data: bytes) -> dict[str, Any] | str:
    """The beacon in one service UUID's data as JSON values, or why there is none."""
    if uuid != EDDYSTONE_SERVICE_UUID:
        return (
            f"no beacon format known for service UUID {uuid} (known: "
            f"0x{EDDYSTONE_UUID16:04X} Eddystone)"
        )
    return _decode(parse_eddystone, data, EDDYSTONE_UUID16.to_bytes(2, "little"), "service UUID")


def _decode(parse: Parser, data: bytes, header: bytes, header_name: str) -> dict[str, Any] | str:
    try:
        beacon: Beacon = parse(data)
    except FrameError as exc:
        if data[:2] == header:
            # a common slip: the bytes pasted with the company id / UUID still in front
            return (
                f"{exc} (HEX seems to start with the {header_name} {header.hex(' ')}: "
                "give only the bytes after it)"
            )
        return str(exc)
    return describe(beacon)


def describe(beacon: Beacon) -> dict[str, Any]:
    """A parsed beacon as JSON-friendly values, its ``format`` first."""
    match beacon:
        case IBeacon(uuid, major, minor, tx_power):
            return {
                "format": "ibeacon",
                "uuid": str(uuid),
                "major": major,
                "minor": minor,
                "tx_power": tx_power,
            }
        case AltBeacon(id1, id2, id3, reference_rssi, mfg_reserved):
            return {
                "format": "altbeacon",
                "beacon_id": beacon.beacon_id.hex(),
                "id1": str(id1),
                "id2": id2,
                "id3": id3,
                "reference_rssi": reference_rssi,
                "mfg_reserved": mfg_reserved,
            }
        case EddystoneUid(namespace, instance, tx_power, with_rfu):
            return {
                "format": "eddystone-uid",
                "namespace": namespace.hex(),
                "instance": instance.hex(),
                "tx_power": tx_power,
                "with_rfu": with_rfu,
            }
        case EddystoneUrl(url, tx_power):
            return {"format": "eddystone-url", "url": url, "tx_power": tx_power}
        case EddystoneTlm(battery_mv, temperature, adv_count, uptime_tenths):
            return {
                "format": "eddystone-tlm",
                "battery_mv": battery_mv,
                "temperature_c": temperature,
                "adv_count": adv_count,
                "uptime_tenths": uptime_tenths,
                "uptime_s": beacon.uptime_s,
            }
        case EncryptedTlm(length, has_salt, has_mic):
            return {
                "format": "eddystone-etlm",
                "length": length,
                "has_salt": has_salt,
                "has_mic": has_mic,
            }
        case EddystoneEid(tx_power, eid):
            return {"format": "eddystone-eid", "eid": eid.hex(), "tx_power": tx_power}
        case _:
            assert_never(beacon)


# -- arguments -------------------------------------------------------------------------------


def hex_bytes(text: str) -> bytes:
    """Bytes written in hex, with spaces or colons anywhere and an optional ``0x`` in front."""
    digits = _SEPARATORS.sub("", text)
    if digits[:2] in ("0x", "0X"):
        digits = digits[2:]
    bad = next((c for c in digits if c not in "0123456789abcdefABCDEF"), None)
    if bad is not None:
        raise ValueError(f"{bad!r} is not a hex digit")
    if len(digits) % 2:
        raise ValueError(f"odd number of hex digits ({len(digits)}): a byte is two digits")
    return bytes.fromhex(digits)


def company_id(text: str) -> int:
    """A 16-bit company identifier written ``0x004C`` or ``76``."""
    found = _COMPANY.fullmatch(text.strip())
    if found is None:
        raise ValueError(f"{text!r} is not a company id: write it as 0x004C (hex) or 76 (decimal)")
    value = int(found["hex"], 16) if found["hex"] else int(found["dec"])
    if value > 0xFFFF:
        raise ValueError(f"{value} does not fit in 16 bits")
    return value


def service_uuid(text: str) -> str:
    """A service UUID as bleak keys service data: 128-bit, lower case, with dashes.

    16-bit (``feaa``, ``0xFEAA``) and 32-bit short forms are expanded on the
    Bluetooth base UUID.
    """
    text = text.strip()
    short = _SHORT_UUID.fullmatch(text)
    if short is not None:
        return f"{int(short['hex'], 16):08x}{BLUETOOTH_BASE_UUID}"
    try:
        return str(UUID(text))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a UUID: write it as 0000feaa-0000-1000-8000-00805f9b34fb "
            "or as the 16-bit short form feaa"
        ) from None


def _fail(message: str) -> int:
    print(f"proximity: error: {message}", file=sys.stderr)
    return EXIT_FAIL
