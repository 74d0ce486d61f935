"""``proximity qr make`` and ``proximity inspect qr|ndef``: make signed codes, see what a code says.

``inspect`` never uses a code up: inspecting a coupon does not redeem it.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from proximity.cli.ble_cmd import add_inspect_ble
from proximity.cli.common import show_help
from proximity.cli.presence_cmd import add_inspect_presence
from proximity.clock import SystemClock
from proximity.codes import CodeKind, Verifier, sign
from proximity.config import Settings, load_settings
from proximity.engine.durations import parse_duration
from proximity.scanned import Interpretation, Meaning, interpret

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    qr = sub.add_parser("qr", help="make signed QR codes (coupons, check-in, cart binding)")
    qr.set_defaults(run_command=show_help(qr))
    qr_sub = qr.add_subparsers(dest="qr_command", metavar="SUBCOMMAND")
    make = qr_sub.add_parser(
        "make",
        parents=[common],
        help="render a signed code to PNG or SVG",
        description="Sign a code with the config's codes.sign_with key and render it with "
        "qrcode: PNG for screens and kiosks, SVG for print. Prints the code's text.",
        epilog="example:\n  proximity qr make --kind coupon --subject o-3f2a9c1e77b04d21 "
        "--ttl 7d --out coupon.png --config /etc/proximity/config.toml",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    make.add_argument(
        "--kind", required=True, choices=[k.label for k in CodeKind], help="what the code does"
    )
    make.add_argument(
        "--subject",
        required=True,
        help="coupon: the offer id; checkin: the shopper token; cart: the cart beacon's id",
    )
    make.add_argument("--out", required=True, type=Path, help="FILE.png or FILE.svg")
    make.add_argument("--ttl", default="7d", help="how long the code is valid (default 7d)")
    make.add_argument("--box", type=int, default=8, help="pixels per module in a PNG (default 8)")
    make.add_argument("--config", type=Path, help="config with the [codes] keys (default: demo)")
    make.set_defaults(run_command=_make)

    inspect = sub.add_parser(
        "inspect", help="decode a QR image, an NDEF message or a BLE beacon frame to JSON"
    )
    inspect.set_defaults(run_command=show_help(inspect))
    inspect_sub = inspect.add_subparsers(dest="inspect_command", metavar="SUBCOMMAND")
    image = inspect_sub.add_parser(
        "qr",
        parents=[common],
        help="the QR codes in an image, and what the gateway makes of each",
        description="Decode every QR code in IMAGE and print JSON: its text, the decoder "
        "that read it and its meaning (a signed code and whether it verifies, a product "
        "link, or refused). Exit 1 with the reason if there is no code. Codes are not "
        "used up.",
    )
    image.add_argument("image", type=Path, metavar="IMAGE")
    image.add_argument(
        "--decoder",
        choices=["cascade", "zxing", "zbar"],
        default="cascade",
        help="(default cascade)",
    )
    image.add_argument("--config", type=Path, help="config with the [codes] keys (default: demo)")
    image.set_defaults(run_command=_inspect_qr)
    ndef = inspect_sub.add_parser(
        "ndef",
        parents=[common],
        help="decode an NDEF message given in hex",
        description="Decode HEX as an NDEF message and print its records as JSON; exit 1 "
        "with the reason if it is not a valid message.",
    )
    ndef.add_argument("hex", metavar="HEX", help="the message bytes in hex (spaces allowed)")
    ndef.set_defaults(run_command=_inspect_ndef)
    add_inspect_ble(inspect_sub, common)
    add_inspect_presence(inspect_sub, common)


def _settings(path: Path | None) -> Settings:
    return load_settings(path) if path is not None else Settings()


def _make(args: argparse.Namespace) -> int:
    from proximity.adapters.qr.render import write_code

    settings = _settings(args.config)
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as exc:
        return _fail(f"--ttl: {exc}")
    if ttl <= timedelta(0):
        return _fail("--ttl must be more than 0")
    now = SystemClock().now().replace(microsecond=0)
    keys = settings.codes.key_bytes()
    try:
        text = sign(
            CodeKind.parse(args.kind),
            args.subject,
            key=keys[settings.codes.sign_with],
            key_id=settings.codes.sign_with,
            issued=now,
            expires=now + ttl,
        )
        version = write_code(text, args.out, box=args.box)
    except ValueError as exc:
        return _fail(str(exc))
    except OSError as exc:
        return _fail(f"{args.out}: {exc.strerror or exc}")
    print(text)
    print(
        f"{args.out}: QR version {version}, valid until {(now + ttl).isoformat()}",
        file=sys.stderr,
    )
    return EXIT_OK


def _inspect_qr(args: argparse.Namespace) -> int:
    from proximity.adapters.qr.decode import DecoderKind, decode, load_image

    settings = _settings(args.config)
    try:
        image = load_image(args.image)
    except ValueError as exc:
        return _fail(str(exc))
    try:
        found = decode(image, DecoderKind(args.decoder))
    except Exception as exc:  # the decoders are C libraries fed untrusted pixels
        return _fail(f"{args.image}: the decoder failed ({type(exc).__name__}: {exc})")
    if not found:
        return _fail(f"{args.image}: no QR code found")
    verifier = Verifier(settings.codes.key_bytes(), SystemClock(), skew=settings.codes.skew)
    out = [
        {
            "text": f.text,
            "decoder": str(f.decoder),
            **_meaning(interpret(f.text, verifier, use=False)),
        }
        for f in found
    ]
    print(json.dumps(out, indent=2))
    return EXIT_OK


def _meaning(found: Interpretation) -> dict[str, Any]:
    out: dict[str, Any] = {"meaning": str(found.meaning)}
    if found.meaning is Meaning.SIGNED and found.code is not None:
        code = found.code
        out["code"] = {
            "kind": code.kind.label,
            "subject": code.subject,
            "issued": code.issued.isoformat(),
            "expires": code.expires.isoformat(),
            "key_id": code.key_id,
        }
    elif found.meaning is Meaning.PRODUCT:
        out["product"] = found.product
    else:
        out["reason"] = found.reason
        out["detail"] = found.detail
    return out


def _inspect_ndef(args: argparse.Namespace) -> int:
    from proximity.adapters.nfc.ndef import NdefError, parse_ndef

    try:
        data = bytes.fromhex(args.hex.replace(" ", "").replace(":", ""))
    except ValueError:
        return _fail("HEX is not hexadecimal bytes")
    try:
        content = parse_ndef(data)
    except NdefError as exc:
        return _fail(str(exc))
    print(content.model_dump_json(indent=2, exclude_none=True))
    return EXIT_OK


def _fail(message: str) -> int:
    print(f"proximity: error: {message}", file=sys.stderr)
    return EXIT_FAIL
