"""The ops console in a real browser (Debian's chromium, tests/browser.py), against a real
daemon driven by the simulator. With PROXIMITY_SCREENSHOTS=1 the live and funnel pages
are saved to docs/img/console-*.png.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from proximity.config import Settings
from proximity.console.server import explain
from tests.consoles import StartingClock, console_store, running
from tests.factories import T0

if TYPE_CHECKING:
    from playwright.async_api import Page

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parent.parent
FLOOR_PLAN = ROOT / "firmware_sim" / "stores" / "example.toml"
EXAMPLE_RULES = ROOT / "rules" / "example-store.toml"
SCREENSHOTS = os.environ.get("PROXIMITY_SCREENSHOTS") == "1"


async def test_the_live_map_follows_a_shopper_and_the_funnel_counts_their_offers(
    page: Page,
) -> None:
    from playwright.async_api import expect

    settings = Settings.model_validate(
        {"presence": {"method": "fused", "floor_plan": str(FLOOR_PLAN)}}
    )
    clock = StartingClock(T0, 10)
    async with console_store(settings, clock) as store:
        await page.goto(f"{store.url}/console/")
        await expect(page.locator("[data-live=stream]")).to_have_text("live")
        entrance = page.locator('#floor [data-zone-count="entrance"]')
        coffee = page.locator('#floor [data-zone-count="coffee"]')
        await expect(coffee).to_have_text("0")
        async with running(store.daemon, clock) as run:
            # the built-in walk: the entrance (13-33 s of store time), then coffee
            await expect(entrance).to_have_text("1", timeout=8000)
            await expect(coffee).to_have_text("1", timeout=8000)
            await expect(entrance).to_have_text("0")
            shape = page.locator('#floor [data-zone="coffee"] polygon')
            assert float(await shape.get_attribute("fill-opacity") or 0) > 0.5  # shaded
            await expect(page.locator('td[data-zone-count="coffee"]')).to_have_text("1")
            feed = page.locator("#feed li.offer")
            await expect(feed.first).to_contain_text("welcome-directions")
            assert "shopper" not in (await page.locator("#feed").inner_text())
            if SCREENSHOTS:
                await _screenshot(page, "console-live.png")
            clock.faster(200)  # the rest of the walk (bakery, checkout) in a second or so
            await asyncio.wait_for(asyncio.shield(run), 15)
        # the app's feedback on the offers the walk got, through the daemon's own path
        sent = list(store.sink.offers)
        assert sent
        for n, (token, offer) in enumerate(sent):
            for action in ("delivered", "opened", "clicked")[: 3 - n % 2]:
                store.daemon.on_feedback(
                    f"proximity/v1/store-001/shoppers/{token}/feedback",
                    json.dumps(
                        {"offer": offer.id, "action": action, "at": T0.isoformat()}
                    ).encode(),
                )
        await page.get_by_role("link", name="Funnel").click()
        await expect(page.locator("h1")).to_have_text("Funnel")
        for row in store.daemon.measure.funnel():
            line = page.locator(f'tr[data-row="{row.rule}/{row.variant}"]')
            for stage in ("decided", "published", "delivered", "opened", "clicked"):
                cell = line.locator(f'[data-stage="{stage}"]')
                await expect(cell).to_have_text(str(row.stages[stage]))
        if SCREENSHOTS:
            await _screenshot(page, "console-funnel.png")


async def test_the_rules_page_by_keyboard_shows_a_broken_file_and_explains(
    page: Page, tmp_path: Path
) -> None:
    from playwright.async_api import expect

    rules = tmp_path / "rules.toml"
    shutil.copy(EXAMPLE_RULES, rules)
    settings = Settings.model_validate({"rules": {"paths": [str(rules)]}})
    async with console_store(settings, StartingClock(T0, 1)) as store:
        await page.goto(f"{store.url}/console/rules")
        await page.keyboard.press("Tab")
        skip = page.get_by_role("link", name="Skip to content")
        await expect(skip).to_be_focused()
        await expect(page.locator("#reload-ok")).to_be_visible()

        # the explain form (its fields reached by their labels), sent with Enter
        await page.get_by_label("Event kind").select_option("zone.dwell")
        await page.get_by_label("Zone").select_option("coffee")
        await page.get_by_label("Dwell (seconds)").fill("30")
        at = "2026-11-24T10:00:00+01:00"
        await page.get_by_label("At (ISO time", exact=False).fill(at)
        await page.keyboard.press("Enter")
        verdicts = page.locator("#verdicts")
        await expect(verdicts).to_be_visible()
        query = {"kind": "zone.dwell", "zone": "coffee", "dwell": "30", "at": at}
        _, expected = explain(store.runtime.table, query)
        for line in expected:
            cell = verdicts.locator(f'tr[data-rule="{line["rule"]}"] [data-verdict]')
            await expect(cell).to_have_text(str(line["verdict"]))
        assert any(line["verdict"] == "matched" for line in expected)

        # a broken rule file, picked up by the watcher: its error with file:line
        text = rules.read_text().replace('moment = "go" ', 'moment = "maybe" ', 1)
        rules.write_text(text)
        assert await store.watcher.check() is None
        await page.reload()
        errors = page.locator("#reload-errors")
        await expect(errors).to_contain_text(f"{rules}:50:")
        await expect(page.get_by_role("alert").first).to_contain_text("last good rules")


async def _screenshot(page: Page, name: str) -> None:
    """The viewport as a small PNG (a 128-colour palette: the pages are flat colours)."""
    from PIL import Image

    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    shot = Image.open(io.BytesIO(await page.screenshot(full_page=False)))
    shot.convert("RGB").quantize(128).save(out / name, optimize=True)
