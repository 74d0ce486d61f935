"""A real browser for the tests: Debian's ``chromium``, driven by Playwright from PyPI.

Playwright cannot download its own browser here (and must not: ``playwright install``
is never run), so the session starts the system's Chromium once, headless, on a free
loopback DevTools port, with a new empty profile, and every test connects to it over
the Chrome DevTools Protocol (``connect_over_cdp``) from its own event loop:

- ``chromium`` (session, sync): the running browser process and its endpoint. Started
  once for the whole run (about 0.5 s); it knows no event loop, so function-scoped
  async tests (the project's default, ``asyncio_mode = auto``) can all share it.
- ``browser`` (async): a Playwright driver connected to that Chromium, in the test's loop.
- ``page`` (async): a fresh browser context (its own cookies and storage, a laptop
  viewport of 1280×800) and one page in it; closed after the test. For a phone, make
  your own: ``await browser.new_context(viewport=PHONE)``.

A missing chromium or Playwright fails the test with what to install, never skips it:
CI must run the browser tests. The flags are the ones this machine needs: without the
background-networking ones Chromium keeps trying (and failing) to reach Google's hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from firmware_sim.mosquitto import free_port
from firmware_sim.processes import spawn

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page, ViewportSize

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
START_TIMEOUT_S = 15.0


def find_chromium() -> str | None:
    """Debian's chromium (``/usr/bin/chromium``), or whatever ``chromium`` is on PATH."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class Chromium:
    """One headless Chromium, listening for DevTools on ``endpoint`` (loopback)."""

    process: subprocess.Popen[bytes]
    endpoint: str
    """``http://127.0.0.1:PORT``, what ``connect_over_cdp`` takes."""
    version: str
    profile: Path
    log: Path


def start_chromium(binary: str, workdir: Path) -> Chromium:
    """Start ``binary`` headless with a new profile in ``workdir``; returns once DevTools
    answers (RuntimeError with its log if it exits or does not answer in time)."""
    port = free_port()
    profile = workdir / "profile"
    profile.mkdir()
    log = workdir / "chromium.log"
    with log.open("ab") as out:
        proc = spawn(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=out,
            stderr=out,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited at start ({proc.returncode}):\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{endpoint}/json/version", timeout=1) as answer:
                version = json.load(answer).get("Browser", "?")
        except OSError:
            time.sleep(0.05)
            continue
        return Chromium(proc, endpoint, str(version), profile, log)
    stop_chromium(proc)
    raise RuntimeError(f"chromium did not answer on {endpoint}:\n{log.read_text()}")


def stop_chromium(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group (the browser and its renderers), SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        proc.wait(5)


@pytest.fixture(scope="session")
def chromium() -> Iterator[Chromium]:
    """Debian's Chromium, started once per test run (fails, never skips, when missing)."""
    binary = find_chromium()
    if binary is None:
        pytest.fail(
            "chromium is not installed (looked on PATH and for /usr/bin/chromium): run "
            "`make test`, which installs it (scripts/system-deps.sh)",
            pytrace=False,
        )
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
