"""Named, seeded scenarios to score presence in: a crowd plus a radio on a store.

Each scenario changes the store's own radio (its ``[radio]`` table) only where it
says, so the same scenario runs on any store file.

=========  ==============================================================================
sparse     a quiet weekday hour: 20 shoppers, the store's radio
crowded    Saturday: 200 shoppers in the hour; more bodies between phones and scanners
           (blocking 40 % of the time) and more lost packets (15 %, collisions)
noisy      50 shoppers on a hostile radio: Rappaport's retail-store shadowing σ 8.7 dB,
           Rayleigh fading, 12 dB body blocking half of the time, 20 % packet loss
quiet      a near-ideal radio (σ 1 dB, no fading, blocking or loss): the presence
           logic alone, for tests and the demo
=========  ==============================================================================
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from firmware_sim.crowd import CrowdParams
from firmware_sim.radio import RadioParams
from firmware_sim.store import Store


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    crowd: CrowdParams
    radio: Mapping[str, float | bool] = field(default_factory=dict)
    """Changes to the store's radio parameters."""

    def radio_for(self, store: Store) -> RadioParams:
        return RadioParams.model_validate({**store.radio.model_dump(), **self.radio})

    def with_crowd(self, **changes: object) -> Scenario:
        """The same scenario with some crowd parameters changed (validated)."""
        crowd = CrowdParams.model_validate({**self.crowd.model_dump(), **changes})
        return Scenario(self.name, self.description, crowd, self.radio)


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
