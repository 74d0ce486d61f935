from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.mosquitto import Mosquitto, find_mosquitto


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A fresh mosquitto on a free loopback port. Missing mosquitto fails, never skips."""
    binary = find_mosquitto()
    if binary is None:
        pytest.fail("mosquitto is not installed: run `make test`, which installs it")
    broker = Mosquitto(binary, tmp_path)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()
