import asyncio
from datetime import timedelta

import pytest

from proximity.clock import ScaledClock, VirtualClock
from tests.factories import T0, at


async def test_virtual_clock_wakes_sleepers_in_deadline_order_at_their_deadline() -> None:
    clock = VirtualClock(T0)
    woke: list[tuple[str, object]] = []

    async def sleeper(name: str, seconds: float) -> None:
        await clock.sleep(seconds)
        woke.append((name, clock.now()))

    tasks = [asyncio.create_task(sleeper(n, s)) for n, s in (("b", 2), ("a", 1), ("c", 5))]
    await asyncio.sleep(0)
    await clock.advance(3)
    assert woke == [("a", at(1)), ("b", at(2))]
    assert clock.now() == at(3)
    await clock.advance(10)
    assert woke[-1] == ("c", at(5))
    await asyncio.gather(*tasks)


async def test_virtual_clock_refuses_to_go_back() -> None:
    clock = VirtualClock(T0)
    with pytest.raises(ValueError, match="back in time"):
        await clock.advance_to(T0 - timedelta(seconds=1))


async def test_scaled_clock_runs_faster() -> None:
    clock = ScaledClock(T0, speed=1000)
    await clock.sleep(50)  # 50 ms of real time
    assert clock.now() - T0 >= timedelta(seconds=50)


def test_clocks_need_aware_times() -> None:
    with pytest.raises(ValueError, match="timezone"):
        VirtualClock(T0.replace(tzinfo=None))
