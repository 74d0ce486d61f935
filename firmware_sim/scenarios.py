"""Named, seeded scenarios to score presence in: a crowd plus a radio on a store.

Each scenario changes the store's own radio (its ``[radio]`` table) only where it
says, so the same scenario runs on any store file.

============  ===========================================================================
sparse        a quiet weekday hour: 20 shoppers, the store's radio
crowded       Saturday: 200 shoppers in the hour; more bodies between phones and scanners
              (blocking 40 % of the time) and more lost packets (15 %, collisions)
noisy         50 shoppers on a hostile radio: Rappaport's retail-store shadowing σ 8.7 dB,
              Rayleigh fading, 12 dB body blocking half of the time, 20 % packet loss
node_failure  40 shoppers; a quarter of the store's scanners (at least one, a seeded
              pick) go silent from minute 15 to minute 30 (the second quarter of the
              arrival window), then come back
phones        40 shoppers whose phones radiate up to ±4 dB off the power their app
              claims (phone models differ; drawn per shopper), on the store's radio
quiet         a near-ideal radio (σ 1 dB, no fading, blocking or loss): the presence
              logic alone, for tests and the demo
============  ===========================================================================

A scanner that is down still has its links drawn by the radio model, it just
reports nothing, so an outage changes nothing else in the run (the same seed gives
the same advertisements and RSSI from the scanners still up).
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware_sim.crowd import CrowdParams
from firmware_sim.radio import RadioParams
from firmware_sim.store import Store


@dataclass(frozen=True)
class Outage:
    """Scanners that go silent mid-run: ``share`` of the store's (at least one), picked
    at random per seed, from ``start`` for ``duration``, both fractions of the crowd's
    arrival window (so a shorter run keeps its outage in the middle of the crowd)."""

    share: float
    start: float
    duration: float

    def __post_init__(self) -> None:
        if not 0 < self.share <= 1 or not 0 <= self.start <= 1 or not 0 < self.duration <= 1:
            raise ValueError(f"invalid outage: {self}")

    def pick(
        self, store: Store, rng: random.Random, window_s: float
    ) -> dict[str, tuple[float, float]]:
        """Scanner id → (from, until) seconds, for the scanners ``rng`` picks."""
        ids = [s.id for s in store.scanners]
        count = max(1, round(self.share * len(ids)))
        start = self.start * window_s
        down = (start, start + self.duration * window_s)
        return dict.fromkeys(sorted(rng.sample(ids, count)), down)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    crowd: CrowdParams
    radio: Mapping[str, float | bool] = field(default_factory=dict)
    """Changes to the store's radio parameters."""
    outage: Outage | None = None
    """Scanners that go down during the run (none by default)."""

    def radio_for(self, store: Store) -> RadioParams:
        return RadioParams.model_validate({**store.radio.model_dump(), **self.radio})

    def with_crowd(self, **changes: object) -> Scenario:
        """The same scenario with some crowd parameters changed (validated)."""
        crowd = CrowdParams.model_validate({**self.crowd.model_dump(), **changes})
        return dataclasses.replace(self, crowd=crowd)

    def outages(self, store: Store, rng: random.Random) -> dict[str, tuple[float, float]]:
        """Which of ``store``'s scanners are down when (none without an outage)."""
        if self.outage is None:
            return {}
        return self.outage.pick(store, rng, self.crowd.arrival_window_s)


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("sparse", "a quiet weekday hour, 20 shoppers", CrowdParams(shoppers=20)),
        Scenario(
            "crowded",
            "Saturday: 200 shoppers in the hour, more body blocking and collisions",
            CrowdParams(shoppers=200),
            {"body_probability": 0.4, "packet_loss": 0.15},
        ),
        Scenario(
            "noisy",
            "50 shoppers, σ 8.7 dB shadowing, Rayleigh fading, heavy blocking, 20 % loss",
            CrowdParams(shoppers=50),
            {
                "shadowing_db": 8.7,
                "rician_k": 0.0,
                "body_loss_db": 12.0,
                "body_probability": 0.5,
                "packet_loss": 0.2,
            },
        ),
        Scenario(
            "node_failure",
            "40 shoppers; a quarter of the scanners silent from minute 15 to 30",
            CrowdParams(shoppers=40),
            outage=Outage(share=0.25, start=0.25, duration=0.25),
        ),
        Scenario(
            "phones",
            "40 shoppers whose phones radiate up to ±4 dB off their claimed power",
            CrowdParams(shoppers=40, tx_power_spread_db=4.0),
        ),
        Scenario(
            "quiet",
            "a near-ideal radio: the presence logic alone",
            CrowdParams(shoppers=10),
            {
                "shadowing_db": 1.0,
                "fading": False,
                "body_probability": 0.0,
                "packet_loss": 0.0,
                "device_spread_db": 0.0,
            },
        ),
    )
}
DEFAULT_SCENARIOS = ("sparse", "crowded", "noisy")
