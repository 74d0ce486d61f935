"""``proximity app``: the reference shopper-app client on the command line.

For app developers learning the contract: it subscribes to one shopper's offers,
prints each one as it arrives, and answers with feedback (``delivered`` at once,
then the action you choose), exactly as an app should. ``--web`` serves the
reference shopper web app (proximity/webapp) instead, for a browser. For an ``mqtts://``
broker, ``--ca-file`` names the CA of its certificate and ``--client-cert`` /
``--client-key`` a client certificate, as the daemon's ``[broker]`` settings do.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from proximity.delivery._bridge import TlsFiles
from proximity.delivery.app_client import ShopperApp
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


def add_command(sub: Any, common: argparse.ArgumentParser) -> None:
    parser = sub.add_parser(
        "app",
        parents=[common],
        help="a reference shopper-app client: receive one shopper's offers, send feedback",
        description="Subscribe to proximity/v1/{store}/shoppers/{token}/offers, print every "
        "offer as it arrives and send feedback on .../feedback: 'delivered' at once, then "
        "--then if given. Username and password, if the broker wants them, go in the URL. "
        "With --web, serve the shopper web app (MQTT over WebSockets, in a browser) instead.",
        epilog="examples:\n"
        "  proximity app --shopper s3k... --broker mqtt://127.0.0.1:1883\n"
        "  proximity app --web --ws ws://127.0.0.1:9001 --shopper s3k...   then open the URL",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--shopper",
        metavar="TOKEN",
        help="the shopper's pseudonymous token (what the demo prints); required without --web",
    )
    web = parser.add_argument_group("the shopper web app (--web)")
    web.add_argument(
        "--web",
        action="store_true",
        help="serve the shopper web app's static files and print the URL to open",
    )
    web.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to serve the web app on (default 127.0.0.1: this machine only)",
    )
    web.add_argument(
        "--port", type=int, default=8080, help="port to serve the web app on (default 8080)"
    )
    web.add_argument(
        "--ws",
        default="ws://127.0.0.1:9001",
        metavar="URL",
        help="the broker's MQTT-over-WebSockets listener, put in the printed URL "
        "(default ws://127.0.0.1:9001; mosquitto needs a 'protocol websockets' listener)",
    )
    parser.add_argument(
        "--broker",
        default="mqtt://127.0.0.1:1883",
        metavar="URL",
        help="mqtt://[user:password@]host:port, or mqtts:// for TLS "
        "(default mqtt://127.0.0.1:1883)",
    )
    parser.add_argument(
        "--ca-file",
        type=Path,
        metavar="PATH",
        help="mqtts:// only: the CA that signed the broker's certificate, in PEM "
        "(default: the system's CAs)",
    )
    parser.add_argument(
        "--client-cert",
        type=Path,
        metavar="PATH",
        help="mqtts:// only: a client certificate in PEM, for brokers that require one",
    )
    parser.add_argument(
        "--client-key",
        type=Path,
        metavar="PATH",
        help="the client certificate's private key (default: in the --client-cert file)",
    )
    parser.add_argument("--store", default="store-001", help="the store id (default store-001)")
    parser.add_argument(
        "--protocol",
        choices=["5", "3.1.1"],
        default="5",
        help="MQTT version (3.1.1 for the embedded broker; default 5)",
    )
    parser.add_argument(
        "--then",
        choices=["opened", "clicked", "dismissed"],
        help="feedback to send after 'delivered'",
    )
    parser.add_argument(
        "--count", type=int, metavar="N", help="stop after N offers (default: run until Ctrl-C)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print each offer's payload as one JSON line"
    )
    parser.set_defaults(run_command=run)


def run(args: argparse.Namespace) -> int:
    if args.web:
        return _serve_web(args)
    if args.shopper is None:
        print("proximity app: error: --shopper TOKEN is required (or --web)", file=sys.stderr)
        return EXIT_USAGE
    try:
        url = BrokerUrl.parse(args.broker)
    except ValueError as exc:
        print(f"proximity app: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if url.is_embedded:
        print(
            "proximity app: error: give the broker's address, e.g. mqtt://127.0.0.1:1883",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        tls = _tls_files(url, args)
    except ValueError as exc:
        print(f"proximity app: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        return asyncio.run(_listen(url, tls, args))
    except BrokerUnavailable as exc:
        hint = ""
        if isinstance(exc.__cause__, ssl.SSLCertVerificationError) and tls.ca_file is None:
            hint = " (a broker with its own CA: give it with --ca-file)"
        print(f"proximity app: error: {exc}{hint}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK


def _tls_files(url: BrokerUrl, args: argparse.Namespace) -> TlsFiles:
    """The TLS files given, each checked (readable, PEM): ValueError says which one is not."""
    given = {
        "--ca-file": args.ca_file,
        "--client-cert": args.client_cert,
        "--client-key": args.client_key,
    }
    named = [option for option, path in given.items() if path is not None]
    if named and not url.tls:
        raise ValueError(f"{named[0]} is for an mqtts:// broker, not {url}")
    if args.client_key is not None and args.client_cert is None:
        raise ValueError("--client-key goes with --client-cert")
    for option in named:
        path = given[option]
        try:
            with path.open("rb"):
                pass
        except OSError as exc:
            raise ValueError(f"{option} {path}: {exc.strerror or exc}") from None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if args.ca_file is not None:
        try:
            context.load_verify_locations(cafile=args.ca_file)
        except ssl.SSLError as exc:
            raise ValueError(
                f"--ca-file {args.ca_file}: not a PEM certificate ({exc.reason})"
            ) from None
    if args.client_cert is not None:
        try:
            context.load_cert_chain(args.client_cert, args.client_key)
        except ssl.SSLError as exc:
            raise ValueError(
                f"--client-cert {args.client_cert}: not a PEM certificate and its key "
                f"({exc.reason})"
            ) from None
    return TlsFiles(
        ca_file=str(args.ca_file) if args.ca_file else None,
        cert_file=str(args.client_cert) if args.client_cert else None,
        key_file=str(args.client_key) if args.client_key else None,
    )


async def _listen(url: BrokerUrl, tls: TlsFiles, args: argparse.Namespace) -> int:
    received = 0
    async with ShopperApp(
        url, store=args.store, token=args.shopper, protocol=args.protocol, tls=tls
    ) as app:
        # subscribed: say so (on stderr when stdout carries the offers' JSON lines)
        print(
            f"listening for offers to {args.shopper} in {args.store} on {url}",
            file=sys.stderr if args.json else sys.stdout,
            flush=True,
        )
        async for item in app.offers():
            offer = item.offer
            if args.json:
                print(json.dumps(json.loads(item.payload)), flush=True)
            else:
                coupon = f"  coupon {offer.coupon}" if offer.coupon else ""
                print(
                    f"[{offer.moment}] {offer.cta.format}: {offer.cta.title}{coupon}\n"
                    f"    {offer.cta.text or ''} {offer.cta.link or ''}".rstrip()
                    + f"\n    offer {offer.id} (rule {offer.rule}), "
                    f"expires {offer.expires_at:%H:%M:%S}Z",
                    flush=True,
                )
            await app.send_feedback(offer.id, "delivered")
            if args.then:
                await app.send_feedback(offer.id, args.then)
            received += 1
            if args.count is not None and received >= args.count:
                break
    return EXIT_OK


def _serve_web(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        print(f"proximity app: error: --port {args.port} is not a port", file=sys.stderr)
        return EXIT_USAGE
    if not args.ws.startswith(("ws://", "wss://")):
        print(
            f"proximity app: error: --ws {args.ws!r} is not a ws:// or wss:// URL", file=sys.stderr
        )
        return EXIT_USAGE
    try:
        return asyncio.run(_web(args))
    except OSError as exc:
        reason = exc.strerror or exc
        print(f"proximity app: error: cannot serve on {args.host}:{args.port}: {reason}",
              file=sys.stderr)  # fmt: skip
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_OK


async def _web(args: argparse.Namespace) -> int:
    from proximity.webapp.server import WebappServer  # only the web app's command needs it

    async with WebappServer(args.host, args.port) as server:
        query = {"broker": args.ws, "store": args.store}
        if args.shopper:
            query["token"] = args.shopper
        print(f"shopper web app: open {server.url}?{urlencode(query, safe=':/')}", flush=True)
        if not args.shopper:
            print("  (add &token=YOUR_TOKEN&password=... or fill in the form)", flush=True)
        await server.serve_forever()
    return EXIT_OK
