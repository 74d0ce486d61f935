"""One store's floor-plan presence: the plan's geometry, the radio calibration, which
scanners are alive, and a new estimator per shopper of the configured method.

The pipeline hands it every sighting's scanner (liveness) and the reference beacons'
sightings (calibration); the journey tracker asks it for each new shopper's
estimator. One instance per pipeline: nothing here is global.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from proximity.presence.estimate import Calibration, Liveness, Space, ZoneEstimator
from proximity.presence.floorplan import FloorPlan
from proximity.readings import BeaconSighting

Method = Literal["fused", "nearest", "multilateration"]
CALIBRATE_ABOVE_DBM = -88
"""Readings of reference beacons weaker than this do not calibrate: near a receiver's
sensitivity (about −94 dBm) only the lucky packets are heard, which would bias the fit."""
CALIBRATE_WITHIN_M = 10.0
"""Nor do beacons farther than this from the scanner, for the same reason."""


class Locator:
    def __init__(
        self,
        plan: FloorPlan,
        method: Method,
        exit_timeout_s: float = 15.0,
        silence_s: float = 10.0,
    ) -> None:
        """``exit_timeout_s``: a shopper not heard this long has left; ``silence_s``: a
        scanner nobody is heard by for this long is down."""
        self.plan = plan
        self.method: Method = method
        self.space = Space(plan)
        self.scanners = plan.scanner_ids
        self.liveness = Liveness(silence_s)
        self.calibration = Calibration()
        self.exit_timeout_s = exit_timeout_s
        self._epoch: datetime | None = None
        self.references_heard = 0
        from proximity.presence.fused import FusedModel, FusedParams

        self.fused = FusedModel(
            self.space, self.calibration, FusedParams(exit_timeout_s=exit_timeout_s)
        )
        self.calibration.on_change = self.fused.recalibrated

    def seconds(self, at: datetime) -> float:
        """``at`` on the estimators' scale: seconds since the first instant seen."""
        if self._epoch is None:
            self._epoch = at
        return (at - self._epoch).total_seconds()

    def heard(self, scanner: str, at: datetime) -> None:
        self.liveness.heard(scanner, self.seconds(at))

    def reference(self, sighting: BeaconSighting) -> bool:
        """Whether ``sighting`` is of one of the plan's reference beacons (if so, it
        calibrates the scanner that heard it)."""
        found = self.space.references.get(sighting.beacon_key)
        if found is None:
            return False
        tx_power, distances = found
        if tx_power is None:
            # Eddystone frames carry the power at 0 m: 41 dB above the power at 1 m
            tx_power = sighting.tx_power - (41 if sighting.kind == "eddystone_uid" else 0)
        distance = distances.get(sighting.scanner)
        if (
            distance is not None
            and distance <= CALIBRATE_WITHIN_M
            and sighting.rssi >= CALIBRATE_ABOVE_DBM
        ):
            self.references_heard += 1
            self.calibration.add(sighting.scanner, distance, sighting.rssi, tx_power)
        return True

    def estimator(self) -> ZoneEstimator:
        if self.method == "nearest":
            from proximity.presence.nearest import NearestEstimator, NearestParams

            return NearestEstimator(
                self.space,
                self.liveness,
                self.calibration,
                NearestParams(exit_timeout_s=self.exit_timeout_s),
            )
        if self.method == "multilateration":
            from proximity.presence.multilateration import (
                MultilaterationEstimator,
                MultilaterationParams,
            )

            return MultilaterationEstimator(
                self.space,
                self.liveness,
                self.calibration,
                MultilaterationParams(exit_timeout_s=self.exit_timeout_s),
            )
        return self.fused.estimator(self.liveness)
