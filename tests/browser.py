"""A real browser for the tests: Debian's ``chromium``, driven by Playwright from PyPI.

Playwright cannot download its own browser here (and must not: ``playwright install``
is never run), so the session starts the system's Chromium once (firmware_sim/browser.py
launches it), headless, on a free loopback DevTools port, with a new empty profile, and
every test connects to it over the Chrome DevTools Protocol (``connect_over_cdp``) from
its own event loop:

- ``chromium`` (session, sync): the running browser process and its endpoint. Started
  once for the whole run (about 0.5 s); it knows no event loop, so function-scoped
  async tests (the project's default, ``asyncio_mode = auto``) can all share it.
- ``browser`` (async): a Playwright driver connected to that Chromium, in the test's loop.
- ``page`` (async): a fresh browser context (its own cookies and storage, a laptop
  viewport of 1280×800) and one page in it; closed after the test. For a phone, make
  your own: ``await browser.new_context(viewport=PHONE)``.

A missing chromium or Playwright fails the test with what to install, never skips it:
CI must run the browser tests.
"""

from __future__ import annotations

import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

# the launcher lives in firmware_sim/browser.py (the benchmarks start the same browser);
# these names are imported from here by the tests
from firmware_sim.browser import LAPTOP as LAPTOP
from firmware_sim.browser import MISSING
from firmware_sim.browser import PHONE as PHONE
from firmware_sim.browser import Chromium as Chromium
from firmware_sim.browser import find_chromium as find_chromium
from firmware_sim.browser import start_chromium as start_chromium
from firmware_sim.browser import stop_chromium as stop_chromium

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's Chromium, started once per test run (fails, never skips, when missing)."""
    binary = find_chromium()
    if binary is None:
        pytest.fail(MISSING, pytrace=False)
    with tempfile.TemporaryDirectory(prefix="proximity-chromium-") as workdir:
        running = start_chromium(binary, Path(workdir))
        try:
            yield running
        finally:
            stop_chromium(running.process)


@pytest.fixture
async def browser(chromium: Chromium) -> AsyncIterator[Browser]:
    """Playwright, in this test's event loop, connected to the session's Chromium."""
    try:
        from playwright.async_api import async_playwright
    except ImportError as exc:
        pytest.fail(f"{exc}: run `make test`, which installs playwright", pytrace=False)
    async with async_playwright() as playwright:
        connected = await playwright.chromium.connect_over_cdp(chromium.endpoint)
        try:
            yield connected
        finally:
            await connected.close()  # disconnects; the session's Chromium goes on


@pytest.fixture
async def page(browser: Browser) -> AsyncIterator[Page]:
    """A fresh context (laptop viewport, nothing stored) with one page; closed afterwards."""
    context = await browser.new_context(viewport=LAPTOP)
    try:
        yield await context.new_page()
    finally:
        await context.close()
