"""The shopper web app (proximity/webapp) in a real browser, against a real mosquitto with a
WebSockets listener, per-shopper passwords and the shipped ACL:

- offers from the daemon's own publisher show within a second, in each call-to-action
  format, count down and go when they expire, once each however often they arrive, and the
  feedback the page sends is what the gateway's FeedbackDesk accepts;
- the loop the issue asks for: a simulated visit through ``proximity run`` earns a coupon,
  the page shows it, a screenshot of the page is decoded with zxing-cpp, the decoded text
  is typed into the till's serial scanner, and the funnel records the offer redeemed;
- on a phone-width screen the page fits, and the keyboard alone opens and follows an offer.

``PROXIMITY_SCREENSHOTS=1`` also writes docs/img/shopper-app.png from the phone test.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlencode

import paho.mqtt.client as mqtt
import pytest
import zxingcpp
from hypothesis import given, settings
from hypothesis import strategies as st
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from PIL import Image

from proximity.cli.main import main as proximity_main
from proximity.codes import CodeKind, sign
from proximity.config import DEMO_APP_UUID, DEMO_PSEUDONYM_KEY
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.identity.resolver import CONSENT_BIT, IdentityResolver
from proximity.measurement.feedback import Feedback, FeedbackDesk
from proximity.offers import Cta, CtaFormat, Moment, Offer, offer_id
from proximity.webapp.server import WebappServer
from tests.browser import PHONE
from tests.mosquitto import ACL, Mosquitto, find_mosquitto, free_port
from tests.test_qr_sources import Pty

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

ROOT = Path(__file__).resolve().parent.parent
STORE = "store-001"
GATEWAY_USER, GATEWAY_PASSWORD = "gw-store-001", "gateway-password"
SHOPPER_PASSWORD = "shopper-password"
CODE_KEY = "till-and-app-code-key-for-tests-01"
MAJOR, MINOR = 3, 32771  # the walk's phone: install 3, consent bit set
TOKEN = IdentityResolver([DEMO_APP_UUID], DEMO_PSEUDONYM_KEY.encode()).token_for(
    DEMO_APP_UUID, MAJOR, MINOR & ~CONSENT_BIT
)
OFFERS_TOPIC = f"proximity/v1/{STORE}/shoppers/{TOKEN}/offers"
pytestmark = pytest.mark.timeout(60)


# --- the broker, the page's server, and a gateway-side client -------------------------------


@dataclass(frozen=True)
class WsBroker:
    broker: Mosquitto
    ws_port: int

    @property
    def gateway_url_text(self) -> str:
        return f"mqtt://{GATEWAY_USER}:{GATEWAY_PASSWORD}@127.0.0.1:{self.broker.port}"

    @property
    def gateway_url(self) -> BrokerUrl:
        return BrokerUrl.parse(self.gateway_url_text)


@contextmanager
def ws_broker(tmp_path: Path) -> Iterator[WsBroker]:
    """mosquitto with the shipped ACL, passwords for the gateway and the shopper, and a
    WebSockets listener beside the plain one (Debian 12's 2.0.11 needs both)."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto is not installed: run `make test`", pytrace=False)
    passwd = tmp_path / "proximity.passwd"
    users = {GATEWAY_USER: GATEWAY_PASSWORD, TOKEN: SHOPPER_PASSWORD}
    for n, (user, password) in enumerate(users.items()):
        flags = ["-b", "-c"] if n == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    ws_port = free_port()
    broker = Mosquitto(
        binary,
        tmp_path,
        anonymous=False,
        extra_config=f"password_file {passwd}\nacl_file {ACL}\n"
        f"listener {ws_port}\nprotocol websockets\n",
    )
    broker.start()
    try:
        yield WsBroker(broker, ws_port)
    finally:
        broker.stop()


class GatewayClient:
    """paho as the store gateway's user: records what it subscribed to, publishes anything."""

    def __init__(self, port: int, *topics: str) -> None:
        self.messages: list[tuple[float, str, bytes]] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5)
        self.client.username_pw_set(GATEWAY_USER, GATEWAY_PASSWORD)
        self.client.on_message = lambda c, u, m: self.messages.append(
            (time.time(), m.topic, bytes(m.payload))
        )
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if topics:
            self.client.subscribe([(t, 1) for t in topics])
            assert subscribed.wait(5), "no SUBACK"

    def payloads(self, suffix: str) -> list[bytes]:
        return [p for _, t, p in self.messages if t.endswith(suffix)]

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, qos=1).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()


def page_url(server: WebappServer, ws_port: int) -> str:
    query = {
        "broker": f"ws://127.0.0.1:{ws_port}",
        "store": STORE,
        "token": TOKEN,
        "password": SHOPPER_PASSWORD,
    }
    return f"{server.url}?{urlencode(query)}"


async def open_app(page: Page, server: WebappServer, ws_port: int) -> list[str]:
    """Load the page and wait until it is subscribed; the page's script errors, kept."""
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    await page.goto(page_url(server, ws_port))
    await page.locator('#status[data-state="connected"]').wait_for(timeout=5000)
    assert "password" not in page.url  # taken out of the address bar
    return errors


@asynccontextmanager
async def gateway(ws: WsBroker, desk: FeedbackDesk) -> AsyncIterator[tuple[MqttPublisher, list]]:
    """The daemon's own publisher; app feedback judged by the daemon's own FeedbackDesk,
    each payload checked to be exactly the contract's object."""
    judged: list[Feedback | None] = []

    def handle(topic: str, payload: bytes) -> None:
        message = json.loads(payload)
        exact = set(message) == {"offer", "action", "at"}
        exact = exact and datetime.fromisoformat(message["at"]).tzinfo is not None
        judged.append(desk.judge(topic, payload) if exact else None)

    publisher = MqttPublisher(ws.gateway_url, store=STORE, gateway="gw-1", client_id="gw-1")
    publisher.feedback_handler = handle
    async with publisher:
        yield publisher, judged


def make_offer(
    fmt: CtaFormat,
    n: int,
    *,
    ttl_s: float = 600,
    coupon: str | None = None,
    link: str | None = "https://example.com/offer",
    title: str | None = None,
    text: str | None = None,
    moment: Moment | None = None,
) -> Offer:
    now = datetime.now(UTC)
    oid = offer_id(f"rule-{fmt}", TOKEN, "v1", f"n{n}")
    expires = now + timedelta(seconds=ttl_s)
    redeem = None
    if coupon:
        issued, until = now.replace(microsecond=0), expires.replace(microsecond=0)
        redeem = sign(CodeKind.COUPON, oid, key=CODE_KEY.encode(), key_id=1,
                      issued=issued, expires=until)  # fmt: skip
    return Offer(
        id=oid,
        rule=f"rule-{fmt}",
        moment=moment or (Moment.BUY if coupon else Moment.KNOW),
        cta=Cta(
            format=fmt,
            title=title or f"A {fmt} offer",
            text=f"What the {fmt} says." if text is None else text,
            link=link,
        ),
        coupon=coupon,
        redeem_code=redeem,
        store=STORE,
        issued_at=now,
        expires_at=expires,
    )


async def eventually(what: str, condition: object, limit_s: float = 5.0) -> None:
    deadline = time.monotonic() + limit_s
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"no {what} within {limit_s:g}s"
        await asyncio.sleep(0.02)


def actions(judged: list[Feedback | None]) -> set[tuple[str, str]]:
    assert None not in judged, "a feedback message was not the contract's, or was rejected"
    return {(f.offer, str(f.action)) for f in judged if f is not None}


# --- (1) offers, formats, expiry, duplicates, feedback -------------------------------------

PACKET_READER_CHECK = """() => {
  const body = new Uint8Array(205);  // PUBLISH "a/b", 200 bytes: a 2-byte remaining length
  body.set([0, 3, 97, 47, 98]);
  const stream = new Uint8Array([0x30, 0xcd, 0x01, ...body, 0xd0, 0x00]);  // and a PINGRESP
  const same = (got) => got.length === 2 && got[0].type === 3 && got[0].body.length === 205
    && got[0].body[4] === 98 && got[1].type === 13 && got[1].body.length === 0;
  for (let i = 0; i <= stream.length; i++) {
    const reader = new ProximityMqtt.PacketReader();
    const got = [...reader.push(stream.slice(0, i)), ...reader.push(stream.slice(i))];
    if (!same(got)) return "split at " + i;
  }
  const bytewise = new ProximityMqtt.PacketReader();
  const got = [];
  for (const b of stream) got.push(...bytewise.push(new Uint8Array([b])));
  if (!same(got)) return "byte by byte";
  try {
    new ProximityMqtt.PacketReader().push(new Uint8Array([0x30, 0xff, 0xff, 0xff, 0xff, 1]));
    return "a 5-byte remaining length was accepted";
  } catch (error) {
    return "ok";
  }
}"""


async def test_offers_show_within_a_second_in_their_format_expire_once_each_with_feedback(
    page: Page, tmp_path: Path
) -> None:
    desk = FeedbackDesk(STORE)
    with ws_broker(tmp_path) as ws:
        async with WebappServer("127.0.0.1", 0) as server, gateway(ws, desk) as (pub, judged):
            # no settings in the address: the form; a wrong password is refused, and said so
            await page.goto(server.url)
            await page.fill('input[name="broker"]', f"ws://127.0.0.1:{ws.ws_port}")
            await page.fill('input[name="token"]', TOKEN)
            await page.fill('input[name="password"]', "not-the-password")
            await page.press('input[name="password"]', "Enter")
            status = page.locator('#status[data-state="refused"]')
            await status.wait_for(timeout=5000)
            assert await status.inner_text() in {
                "Refused: not authorized",
                "Refused: bad user name or password",
            }
            assert await page.locator("#connect").is_hidden()

            requests: list[str] = []
            page.on("request", lambda request: requests.append(request.url))
            errors = await open_app(page, server, ws.ws_port)
            offers = [make_offer(fmt, n, coupon="COFFEE-20" if fmt == "banner" else None,
                                 link="javascript:alert(1)" if fmt == "button" else "https://example.com/o")
                      for n, fmt in enumerate(CtaFormat)]  # fmt: skip
            lags = {}
            for offer in offers:
                desk.sent(offer.id, TOKEN, offer.rule, None)
                sent_at = time.time()
                assert await pub.publish_offer(TOKEN, offer)
                card = page.locator(f'li.offer[data-offer-id="{offer.id}"]')
                await card.wait_for(timeout=1000)  # on the page within a second of publish
                shown_ms = await page.evaluate(f"window.proximityApp.shownAt['{offer.id}']")
                lags[offer.cta.format] = shown_ms / 1000 - sent_at
            assert max(lags.values()) < 1.0, lags

            for offer in offers:  # each call-to-action format, as itself
                card = page.locator(f'li.offer[data-offer-id="{offer.id}"]')
                assert await card.get_attribute("class") == f"offer offer--{offer.cta.format}"
                assert await card.locator(".offer__title").inner_text() == offer.cta.title
                countdown = await card.locator(".offer__countdown").inner_text()
                assert re.fullmatch(r"Expires in (9:5\d|10:00)", countdown), countdown
            push = next(o for o in offers if o.cta.format == "push")
            assert await page.locator(f'.toast[data-offer-id="{push.id}"]').is_visible()
            sms = page.locator(f'li.offer[data-offer-id="{offers[-1].id}"] .offer__sender')
            assert await sms.inner_text() == f"Text from {STORE}"
            button = page.locator(f'li[data-offer-id="{offers[1].id}"]')
            assert await button.locator(".offer__cta").count() == 0  # a script link: not shown
            qr = page.locator(f'li[data-offer-id="{offers[0].id}"] canvas.coupon__qr')
            assert int(await qr.get_attribute("data-module-size") or 0) >= 4

            # the page's MQTT framing: two packets split at every byte, then a bad length
            assert await page.evaluate(PACKET_READER_CHECK) == "ok"

            # the same offer again (at-least-once delivery), and payloads that are no offer
            assert await pub.publish_offer(TOKEN, offers[0])
            raw = GatewayClient(ws.broker.port)
            try:
                raw.publish(OFFERS_TOPIC, b"\xffnot json")
                raw.publish(OFFERS_TOPIC, json.dumps({"id": "o-1", "rule": "r"}).encode())
            finally:
                raw.close()
            await page.wait_for_function(
                "() => window.proximityApp.duplicates === 1"
                " && window.proximityApp.rejected.not_json === 1"
                " && window.proximityApp.rejected.bad_moment === 1"
            )
            assert await page.locator(f'li[data-offer-id="{offers[0].id}"]').count() == 1

            # a short-lived offer counts down and goes when it expires
            brief = make_offer(CtaFormat.BUTTON, 9, ttl_s=1.5)
            desk.sent(brief.id, TOKEN, brief.rule, None)
            assert await pub.publish_offer(TOKEN, brief)
            short = page.locator(f'li.offer[data-offer-id="{brief.id}"]')
            await short.wait_for(timeout=1000)
            assert (await short.locator(".offer__countdown").inner_text()).startswith(
                "Expires in 0:0"
            )
            await short.wait_for(state="detached", timeout=4000)

            # the app's own files and its broker, nothing else, before anyone clicks a link
            assert all(url.startswith(server.url) for url in requests), requests
            assert {url.removeprefix(server.url).split("?")[0] for url in requests} == {
                "", "app.css", "vendor/qrcode.js", "mqtt.js", "app.js"
            }  # fmt: skip

            # open the landing card, follow its link, dismiss the sms
            await page.context.route(re.compile(r"^https?://example\.com/"), lambda r: r.abort())
            landing = page.locator(f'li[data-offer-id="{offers[2].id}"]')
            assert not await landing.locator(".offer__text").is_visible()
            await landing.locator(".offer__open").click()
            assert await landing.locator(".offer__text").is_visible()
            await landing.locator(".offer__cta").click()
            await page.locator(f'li[data-offer-id="{offers[4].id}"] .offer__dismiss').click()
            await page.locator(f'li[data-offer-id="{offers[4].id}"]').wait_for(state="detached")

            expected = {(o.id, "delivered") for o in [*offers, brief]} | {
                (offers[2].id, "opened"),
                (offers[2].id, "clicked"),
                (offers[4].id, "dismissed"),
            }
            await eventually("feedback", lambda: actions(judged) >= expected)
            await asyncio.sleep(0.2)
            assert actions(judged) == expected
            assert desk.rejected == {}
            assert desk.duplicates == 0
            assert errors == []


# --- (3) a phone-width screen, and the keyboard alone ----------------------------------------


async def test_on_a_phone_the_page_fits_and_the_keyboard_opens_and_follows_an_offer(
    browser: Browser, tmp_path: Path
) -> None:
    desk = FeedbackDesk(STORE)
    context = await browser.new_context(
        viewport=PHONE, device_scale_factor=1, is_mobile=True, has_touch=True
    )
    await context.route(re.compile(r"^https?://example\.com/"), lambda r: r.abort())
    page = await context.new_page()
    try:
        with ws_broker(tmp_path) as ws:
            async with WebappServer("127.0.0.1", 0) as server, gateway(ws, desk) as (pub, judged):
                errors = await open_app(page, server, ws.ws_port)
                offer = make_offer(CtaFormat.BANNER, 1, coupon="COFFEE-20",
                                   title="20% off any coffee, today only",
                                   text="Show this coupon at the checkout.")  # fmt: skip
                others = [
                    make_offer(CtaFormat.SMS, 2, moment=Moment.KNOW, title="Fresh from the oven",
                               text="Sourdough out at 10:00, baguettes every hour."),
                    make_offer(CtaFormat.PUSH, 3, moment=Moment.GO, link="shop://map?aisle=7",
                               title="Welcome! Coffee week is on",
                               text="Follow the signs to aisle 7 for the tasting."),
                ]  # fmt: skip
                for each in [offer, *others]:
                    desk.sent(each.id, TOKEN, each.rule, None)
                    assert await pub.publish_offer(TOKEN, each)
                card = page.locator(f'li[data-offer-id="{offer.id}"]')
                await card.wait_for(timeout=1000)
                await page.locator(f'li[data-offer-id="{others[-1].id}"]').wait_for(timeout=1000)

                width = await page.evaluate("document.documentElement.scrollWidth")
                assert width <= PHONE["width"]  # no sideways scrolling
                box = await card.locator("canvas.coupon__qr").bounding_box()
                assert box is not None
                assert box["x"] >= 0
                assert box["x"] + box["width"] <= PHONE["width"]
                png = await page.screenshot(full_page=True)
                (code,) = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
                assert code.text == offer.redeem_code
                if os.environ.get("PROXIMITY_SCREENSHOTS") == "1":  # for the docs, kept small
                    shot = Image.open(io.BytesIO(await page.screenshot())).convert("RGB")
                    (ROOT / "docs" / "img").mkdir(parents=True, exist_ok=True)
                    shot.quantize(64).save(ROOT / "docs" / "img" / "shopper-app.png", optimize=True)

                # Tab to the offer, Enter opens it; Tab to its link, Enter follows it
                for _ in range(10):
                    await page.keyboard.press("Tab")
                    if await page.evaluate(
                        "document.activeElement.classList.contains('offer__open')"
                    ):
                        break
                else:
                    pytest.fail("Tab never reached the offer")
                assert not await card.locator(".offer__cta").is_visible()
                outline = await page.evaluate(
                    "getComputedStyle(document.activeElement).outlineStyle"
                )
                assert outline != "none"  # the focus is visible
                await page.keyboard.press("Enter")
                assert await card.locator(".offer__cta").is_visible()
                await page.keyboard.press("Tab")
                assert await page.evaluate(
                    "document.activeElement.classList.contains('offer__cta')"
                )
                await page.keyboard.press("Enter")
                expected = {(offer.id, a) for a in ("delivered", "opened", "clicked")} | {
                    (each.id, "delivered") for each in others
                }
                await eventually("feedback", lambda: actions(judged) == expected)

                # the broker restarts: the page connects again by itself and gets what follows
                ws.broker.stop()
                await page.locator('#status[data-state="offline"]').wait_for(timeout=5000)
                ws.broker.start()
                await page.locator('#status[data-state="connected"]').wait_for(timeout=10_000)
                later = make_offer(CtaFormat.BUTTON, 4)
                raw = GatewayClient(ws.broker.port)
                try:
                    raw.publish(OFFERS_TOPIC, later.model_dump_json().encode())
                finally:
                    raw.close()
                await page.locator(f'li[data-offer-id="{later.id}"]').wait_for(timeout=1000)

                # a reload keeps the offers (and the password, out of the address bar)
                await page.reload()
                await page.locator('#status[data-state="connected"]').wait_for(timeout=5000)
                shown = await page.locator("li.offer").evaluate_all(
                    "items => items.map(item => item.dataset.offerId)"
                )
                assert shown == [offer.id, others[0].id, others[1].id, later.id]
                assert await page.locator(".toast").count() == 0  # no second toast
                await asyncio.sleep(0.3)
                assert await page.evaluate("window.proximityApp.sent.length") == 0
                assert errors == []
    finally:
        await context.close()


# --- (2) the loop: a visit, the page, a screenshot, the till, the funnel ---------------------

RULES = """
[store]
id = "store-001"
[zones.entrance]
scanners = ["gw-entrance"]
[zones.checkout]
readers = ["till-1"]

[[rules]]
id = "welcome-coupon"
on = "zone.enter"
moment = "buy"
coupon = "WELCOME-10"
[rules.cta]
format = "banner"
title = "10% off today"
text = "Show this coupon at the checkout."
link = "https://example.com/coupons/welcome-10"
[rules.when]
zone = "entrance"
"""


def write_store(tmp_path: Path, ws: WsBroker, console_port: int) -> Path:
    (tmp_path / "rules.toml").write_text(RULES)
    (tmp_path / "walk.toml").write_text(
        'name = "till"\nscanners = ["gw-entrance"]\n'
        f'[phone]\nuuid = "{DEMO_APP_UUID}"\nmajor = {MAJOR}\nminor = {MINOR}\n'
        'interval = "100ms"\n'
        '[[legs]]\nscanner = "gw-entrance"\nduration = "2s"\n'
        '[[legs]]\nduration = "60s"\n'
    )
    config = tmp_path / "config.toml"
    config.write_text(
        f'[broker]\nurl = "{ws.gateway_url_text}"\n'
        '[rules]\npaths = ["rules.toml"]\nwatch = false\n'
        '[ble.sim]\nwalk = "walk.toml"\n'
        f'[codes]\nkeys = {{ 1 = "{CODE_KEY}" }}\n'
        '[[scanners]]\nid = "till-1"\nserial = "till"\n'
        '[measurement]\nstore = "funnel.sqlite"\n'
        f"[metrics]\nport = {console_port}\n"
        '[logging]\nformat = "json"\n'
    )
    return config


async def test_a_visit_earns_a_coupon_the_page_shows_and_the_till_redeems_from_a_screenshot(
    page: Page, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ws_broker(tmp_path) as ws:
        console_port = free_port()
        config = write_store(tmp_path, ws, console_port)
        till = Pty(tmp_path / "till")
        watcher = GatewayClient(ws.broker.port, OFFERS_TOPIC, f"proximity/v1/{STORE}/events")
        daemon: subprocess.Popen[str] | None = None
        try:
            async with WebappServer("127.0.0.1", 0) as server:
                errors = await open_app(page, server, ws.ws_port)
                daemon = subprocess.Popen(
                    [sys.executable, "-m", "proximity", "run", "--config", str(config)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                    cwd=tmp_path,
                )
                card = page.locator("li.offer--banner")
                await card.wait_for(timeout=20_000)  # the daemon starts, the shopper walks in
                (payload,) = watcher.payloads("/offers")
                offer = Offer.model_validate_json(payload)
                received_at = next(at for at, t, _ in watcher.messages if t.endswith("/offers"))
                shown_ms = await page.evaluate(f"window.proximityApp.shownAt['{offer.id}']")
                assert shown_ms / 1000 - received_at < 1.0  # the page as quick as a TCP client
                await card.locator(".offer__open").click()  # the shopper opens it

                png = await page.screenshot(full_page=True)
                codes = zxingcpp.read_barcodes(Image.open(io.BytesIO(png)))
                assert [c.format for c in codes] == [zxingcpp.BarcodeFormat.QRCode]
                assert codes[0].text == offer.redeem_code
                till.type(codes[0].text.encode() + b"\r\n")  # the till scans the phone

                def kinds() -> list[str]:
                    return [json.loads(p)["kind"] for p in watcher.payloads("/events")]

                await eventually("offer.redeemed", lambda: "offer.redeemed" in kinds(), 10)
                assert errors == []

                # the ops console's funnel page counts it too
                await page.goto(f"http://127.0.0.1:{console_port}/console/funnel")
                row = page.locator('tr:has(th:text-is("welcome-coupon"))')
                for stage in ("published", "delivered", "opened", "redeemed"):
                    assert await row.locator(f'td[data-stage="{stage}"]').inner_text() == "1"
        finally:
            if daemon is not None:
                daemon.send_signal(signal.SIGTERM)
                out, err = await asyncio.to_thread(daemon.communicate, timeout=30)
            watcher.close()
            till.unplug()
    assert daemon.returncode == 0, err
    logged = [json.loads(x) for x in (out + err).splitlines() if x.startswith("{")]
    assert [x for x in logged if x["event"] == "code_refused"] == []
    redeemed = next(json.loads(p) for p in watcher.payloads("/events")
                    if json.loads(p)["kind"] == "offer.redeemed")  # fmt: skip
    assert (redeemed["offer"], redeemed["reader"]) == (offer.id, "till-1")

    capsys.readouterr()
    report = ["report", "--store", str(tmp_path / "funnel.sqlite"), "--format", "json"]
    assert proximity_main(report) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["rule"], row["published"], row["delivered"], row["opened"], row["redeemed"]) == (
        "welcome-coupon",
        1,
        1,
        1,
        1,
    )


# --- the development server and the command line ---------------------------------------------


async def test_the_web_server_serves_the_app_files_and_nothing_else() -> None:
    async with WebappServer("127.0.0.1", 0) as server:

        async def fetch(request: bytes) -> bytes:
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            await writer.drain()
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            return answer

        index = await fetch(b"GET /?token=x HTTP/1.1\r\nHost: x\r\n\r\n")
        assert index.startswith(b"HTTP/1.1 200 OK\r\n")
        assert b"Content-Type: text/html; charset=utf-8" in index
        assert index.endswith(server.files["/index.html"])
        qr = await fetch(b"HEAD /vendor/qrcode.js HTTP/1.1\r\n\r\n")
        assert b"text/javascript" in qr
        assert qr.endswith(b"\r\n\r\n")
        for request, status in [
            (b"GET /../pyproject.toml HTTP/1.1\r\n\r\n", b"404"),
            (b"GET /server.py HTTP/1.1\r\n\r\n", b"404"),
            (b"GET /vendor/ HTTP/1.1\r\n\r\n", b"404"),
            (b"POST / HTTP/1.1\r\n\r\n", b"405"),
        ]:
            assert (await fetch(request)).startswith(b"HTTP/1.1 " + status)
        assert server.rejected == {"not_found": 3, "method": 1}
        assert {"/vendor/LICENSE", "/vendor/qrcode.js", "/app.js", "/mqtt.js"} <= set(server.files)


request_heads = st.builds(
    lambda method, target, rest: method + b" " + target + b" " + rest + b"\r\n\r\n",
    st.one_of(st.sampled_from([b"GET", b"HEAD", b"POST", b"get", b""]), st.binary(max_size=8)),
    st.one_of(
        st.sampled_from([b"/", b"/app.js", b"/vendor/", b"/../server.py", b"//app.js"]),
        st.binary(max_size=40).map(lambda b: b"/" + b),
    ),
    st.binary(max_size=30),
)


@settings(max_examples=60, deadline=None)
@given(head=request_heads)
def test_any_request_gets_a_status_line_and_the_server_keeps_serving(head: bytes) -> None:
    async def check() -> None:
        async with WebappServer("127.0.0.1", 0) as server:
            for request in (head, b"GET /app.css HTTP/1.1\r\n\r\n"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(request)
                await writer.drain()
                answer = await reader.read()
                writer.close()
                await writer.wait_closed()
                status = answer.split(b"\r\n", 1)[0]
                assert status in {
                    b"HTTP/1.1 200 OK",
                    b"HTTP/1.1 400 Bad Request",
                    b"HTTP/1.1 404 Not Found",
                    b"HTTP/1.1 405 Method Not Allowed",
                }
            assert answer.endswith(server.files["/app.css"])  # fmt: skip

    asyncio.run(check())


def test_app_needs_a_shopper_unless_it_serves_the_web_app(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert proximity_main(["app"]) == 2
    assert "--shopper TOKEN is required (or --web)" in capsys.readouterr().err
    assert proximity_main(["app", "--web", "--ws", "http://x"]) == 2
    assert "not a ws:// or wss:// URL" in capsys.readouterr().err
