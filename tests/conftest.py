from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto, find_mosquitto


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
