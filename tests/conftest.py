from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.mosquitto import Mosquitto, find_mosquitto

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
