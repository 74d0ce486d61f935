from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from hypothesis import settings

from tests.browser import browser as browser  # Debian's chromium via Playwright: tests/browser.py
from tests.browser import chromium as chromium
from tests.browser import page as page
from tests.mosquitto import Mosquitto, find_mosquitto
from tests.postgres import pg_dsn as pg_dsn  # the chain's PostgreSQL: tests/postgres.py
from tests.postgres import postgres as postgres

if TYPE_CHECKING:
    from firmware_sim.bluez import MockBlueZ

# CI (CI=true) runs every property test on the same examples, so a submission's run is
# repeatable; a developer's `make test` draws new ones each time, which is where new
# counterexamples come from (hypothesis keeps them in .hypothesis/ and tries them first).
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests on a real mosquitto carry the ``mosquitto`` marker (``-m "not mosquitto"``)."""
    for item in items:
        if "mosquitto" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.mosquitto)


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free loopback port (it starts in about 20 ms).

    A missing mosquitto fails the test, never skips it: CI must not silently
    run without the real broker.
    """
    binary = find_mosquitto()
    if binary is None:
        pytest.fail(
            "mosquitto is not installed (looked on PATH and in /usr/sbin): run `make test`, "
            "which installs it",
            pytrace=False,
        )
    broker = Mosquitto(binary, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def bluez(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[MockBlueZ]:
    """A private dbus-daemon serving python-dbusmock's bluez5 template, as bleak's system bus.

    A missing dbus-daemon or python-dbusmock fails the test, never skips it.
    """
    try:
        from firmware_sim.bluez import MockBlueZ, PrivateBus, find_dbus_daemon
    except ImportError as exc:
        pytest.fail(f"{exc}: run `make test`, which installs python-dbusmock", pytrace=False)
    binary = find_dbus_daemon()
    if binary is None:
        pytest.fail(
            "dbus-daemon is not installed: run `make test`, which installs it", pytrace=False
        )
    bus = PrivateBus(binary, tmp_path)
    bus.start()
    try:
        # bleak (dbus_fast) reads this when it creates its MessageBus; monkeypatch restores it
        monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bus.address)
        mock = MockBlueZ(bus, tmp_path)
        mock.start()
        try:
            yield mock
        finally:
            mock.stop()
    finally:
        bus.stop()


@pytest.fixture
async def bleak_bus(bluez: MockBlueZ) -> AsyncIterator[MockBlueZ]:
    """The mocked BlueZ, and at the end bleak's own connection to it closed in this loop.

    bleak keeps one D-Bus connection per event loop for the life of the loop; stopping
    the daemon while the loop still runs lets bleak see the hang-up and close its socket
    (otherwise it is left to the garbage collector, an unclosed-socket warning).
    """
    yield bluez
    bluez.stop()
    bluez.bus.stop()
    await asyncio.sleep(0.05)


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Whatever a test configures (a benchmark's or a command's ``configure_logging``:
    a level filter, a stream pytest closes afterwards), the next test logs as before:
    structlog's configuration and the root logger's handlers and level are put back."""
    import logging

    import structlog

    config = structlog.get_config()
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    structlog.configure(**config)
    root.handlers[:] = handlers
    root.setLevel(level)
