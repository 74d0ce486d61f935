"""The radio between a shopper's phone and a ceiling scanner: what RSSI it reports, if any.

One advertisement, one scanner::

    rssi = tx_power                  calibrated power at 1 m (iBeacon "measured power")
         + device offset             this phone radiates a little more or less
         − 10 · n · log10(d / 1 m)   log-distance path loss, exponent n
         + S(t)                      log-normal shadowing, σ dB, slowly varying
         + F                         fast (multipath) fading, Rician K (0: Rayleigh)
         − B                         body blocking: B dB with probability p
    heard if rssi ≥ the scanner's sensitivity, and the packet is not lost (probability q).

``d`` is the 3-D distance from the phone (held at ``phone_height``) to the scanner
(at its mounting height). Shadowing is a per-link Gauss–Markov process: stationary
N(0, σ²), correlated over ``shadowing_time_s`` (0: independent per packet), because
shadowing comes from the furniture and shelving around a spot and changes as the
shopper moves, not packet by packet. Fast fading is drawn per packet: the power
gain |h|² of a Rician channel with unit mean power, so its mean in dB is below 0
(−2.5 dB for Rayleigh) while its mean power is 1.

Defaults and their sources (the ``noisy`` scenario in :mod:`firmware_sim.scenarios`
takes the pessimistic ends):

- ``tx_power`` −59 dBm at 1 m: the iBeacon convention for the calibrated
  "measured power" field, the default of phone beacon libraries (e.g. the
  beacon_broadcast package, https://pub.dev/documentation/beacon_broadcast/latest/beacon_broadcast/BeaconBroadcast/setTransmissionPower.html;
  "−59 is a convention, not a law of physics",
  https://www.irisclasson.com/2026/03/03/bluetooth-log-distance-path-loss-calculation/).
- ``exponent`` n = 2.2, ``shadowing_db`` σ: the empirical indoor table reproduced
  from T. S. Rappaport, *Wireless Communications: Principles and Practice* (2002),
  in "Log-distance path loss model" (Wikipedia,
  https://en.wikipedia.org/wiki/Log-distance_path_loss_model): retail store
  n = 2.2, σ = 8.7 dB; grocery store n = 1.8, σ = 5.2 dB; office with soft
  partitions n = 2.4–2.6, σ = 9.6–14.1 dB (914 MHz–1.9 GHz). BLE measurements
  fall in the same band: n ≈ 2.4 fitted on 350 BLE samples in a living room
  (M. Marolf, "Path loss constant and RSSI distribution",
  https://blog.markmarolf.com/documentation/05-11-path-loss-constant/), and
  Dharmawan, Kurnianto, Retnawati, "Evaluation of received signal strength
  indication of Bluetooth Low Energy on distance estimation" (BPPT) fit n per
  free space, indoor hall and closed room and show it must be calibrated per site.
  The default σ = 4 dB is the *time-varying* part a gateway sees around a
  shopper (the per-spot part of Rappaport's σ is folded into zone geometry);
  ``noisy`` uses the full 8.7 dB.
- Fast fading: BLE's narrow (2 MHz) channels and its three advertising channels
  make it "highly susceptible to fast fading" (R. Faragher, R. Harle, "Location
  Fingerprinting With Bluetooth Low Energy Beacons", IEEE JSAC 33(11), 2015;
  and "An Analysis of the Accuracy of Bluetooth Low Energy for Indoor
  Positioning Applications", ION GNSS+ 2014). Rician K = 2 (a line of sight to
  a ceiling scanner plus multipath); ``noisy`` uses Rayleigh (K = 0). The
  model itself: Rayleigh or Rician envelope, exponential power gain (Wikipedia
  as above).
- Body blocking 8 dB with probability 0.25: the shopper's own body between a
  pocketed phone and the scanner. Ł. Januszkiewicz, "Analysis of Human Body
  Shadowing Effect on Wireless Sensor Networks Operating in the 2.4 GHz Band",
  Sensors 18(10):3412, 2018 (https://www.mdpi.com/1424-8220/18/10/3412)
  studies exactly this loss at 2.4 GHz; measurements of a body blocking short
  indoor links report fades up to 15 dB and more ("Human body shadowing
  variability in short-range indoor radio links at 3–11 GHz band"). Our 8 dB
  is a middle value; ``noisy`` uses 12 dB half of the time.
- ``sensitivity`` (per scanner, in :mod:`firmware_sim.store`) −94 dBm: typical
  LE 1M receivers (https://www.everythingrf.com/community/bluetooth-receiver-sensitivity:
  LE 1M about −94 dBm; Nordic quotes −93 dBm for nRF51 and −96 dBm for nRF52,
  https://devzone.nordicsemi.com/f/nordic-q-a/15701/typical-snr-of-bt-le); the
  Bluetooth core specification only requires −70 dBm.
- ``packet_loss`` 5 %: advertisements collide and scanners miss packets while
  switching channels; a free parameter (``crowded`` and ``noisy`` raise it).

The model takes its random numbers from the ``random.Random`` it is given, in a
fixed order, so the same seed gives the same RSSI stream. :meth:`RadioModel.fork`
gives devices added to a run (fixed beacons, carts) a radio of their own, so
they do not change the phones' stream. :meth:`RadioModel.hear` is the crowd's
hot path (every scanner, every advertisement): the same arithmetic and the same
draws, in the same order, as :meth:`RadioModel.receive` once per scanner, without
its per-call overhead.
"""

from __future__ import annotations

import hashlib
import math
import random
from collections.abc import Hashable, Sequence
from typing import NamedTuple

from pydantic import BaseModel, ConfigDict, Field

RSSI_MIN = -127
RSSI_MAX = 20
MIN_DISTANCE_M = 0.1


class RadioParams(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    exponent: float = Field(default=2.2, ge=1.0, le=6.0)
    """Path-loss exponent n (2 in free space, 1.8–3 on an open indoor floor)."""
    shadowing_db: float = Field(default=4.0, ge=0, le=20)
    """σ of the log-normal shadowing, dB."""
    shadowing_time_s: float = Field(default=8.0, ge=0)
    """Correlation time of the shadowing on one link; 0: a new draw per packet."""
    fading: bool = True
    rician_k: float = Field(default=2.0, ge=0)
    """Rician K factor (linear): power in the direct path over the scattered; 0 is Rayleigh."""
    body_loss_db: float = Field(default=8.0, ge=0, le=40)
    body_probability: float = Field(default=0.25, ge=0, le=1)
    packet_loss: float = Field(default=0.05, ge=0, le=1)
    phone_height: float = Field(default=1.2, ge=0, le=3)
    """Metres above the floor (a phone in a hand or a pocket)."""
    device_spread_db: float = Field(default=2.0, ge=0, le=10)
    """σ of how much each phone's radiated power differs from its calibrated tx power."""


def fork_rng(rng: random.Random, purpose: str) -> random.Random:
    """A generator of its own for ``purpose``, seeded from ``rng``'s state without drawing
    from it: the same seed still gives the same numbers, and ``rng``'s stream is untouched."""
    digest = hashlib.sha256(repr((rng.getstate(), purpose)).encode()).digest()
    return random.Random(digest)


class Receiver(NamedTuple):
    """A scanner as the radio sees it, precomputed once per run."""

    scanner: int
    x: float
    y: float
    height: float
    sensitivity: float


class RadioModel:
    """Samples what scanners hear; keeps the slowly varying shadowing of each link.

    A link is a (transmitter, scanner) pair; transmitters are keyed by any hashable
    (a phone's index, ``("cart", n)``, ``("beacon", n)``).
    """

    def __init__(self, params: RadioParams, rng: random.Random) -> None:
        self.params = params
        self._rng = rng
        self._shadow: dict[Hashable, dict[int, tuple[float, float]]] = {}
        """transmitter → scanner → (shadowing dB, when it was drawn)."""
        los = params.rician_k / (params.rician_k + 1)
        self._los_amplitude = math.sqrt(los)
        self._scatter_sd = math.sqrt((1 - los) / 2)

    def fork(self, purpose: str) -> RadioModel:
        """The same radio with a generator of its own (see :func:`fork_rng`)."""
        return RadioModel(self.params, fork_rng(self._rng, purpose))

    def path_loss_db(self, distance_m: float) -> float:
        """Mean loss beyond the 1 m reference, dB (negative closer than 1 m)."""
        return 10 * self.params.exponent * math.log10(max(distance_m, MIN_DISTANCE_M))

    def mean_rssi(self, tx_power: float, distance_m: float) -> float:
        """RSSI without shadowing, fading, blocking or loss."""
        return tx_power - self.path_loss_db(distance_m)

    def shadowing(self, phone: Hashable, scanner: int, t: float) -> float:
        """The shadowing of one link at time ``t`` (seconds), N(0, σ²) in the long run."""
        sigma = self.params.shadowing_db
        gauss = self._rng.gauss(0.0, 1.0)
        links = self._shadow.setdefault(phone, {})
        previous = links.get(scanner)
        tau = self.params.shadowing_time_s
        if previous is None or tau == 0:
            value = sigma * gauss
        else:
            rho = math.exp(-max(0.0, t - previous[1]) / tau)
            value = rho * previous[0] + math.sqrt(1 - rho * rho) * sigma * gauss
        links[scanner] = (value, t)
        return value

    def fading_db(self) -> float:
        """One draw of the fast-fading power gain, dB (consumes two normals always)."""
        re = self._los_amplitude + self._scatter_sd * self._rng.gauss(0.0, 1.0)
        im = self._scatter_sd * self._rng.gauss(0.0, 1.0)
        if not self.params.fading:
            return 0.0
        return 10 * math.log10(max(re * re + im * im, 1e-12))

    def receive(
        self,
        phone: Hashable,
        scanner: int,
        tx_power: float,
        distance_m: float,
        t: float,
        sensitivity: float,
        body: bool = True,
    ) -> int | None:
        """The RSSI ``scanner`` reports for one advertisement of ``phone``, or None if unheard.

        ``body``: the transmitter is carried (a phone, a cart's handle), so the carrier's
        body may block it; a beacon on a shelf has no carrier (and draws nothing for it).
        """
        p = self.params
        rssi = self.mean_rssi(tx_power, distance_m)
        rssi += self.shadowing(phone, scanner, t)
        rssi += self.fading_db()
        if body and self._rng.random() < p.body_probability:
            rssi -= p.body_loss_db
        lost = self._rng.random() < p.packet_loss
        if lost or rssi < sensitivity:
            return None
        return max(RSSI_MIN, min(RSSI_MAX, round(rssi)))

    def hear(
        self,
        link: Hashable,
        tx_power: float,
        x: float,
        y: float,
        height: float,
        t: float,
        receivers: Sequence[Receiver],
        body: bool = True,
    ) -> list[tuple[int, int]]:
        """(scanner index, RSSI) for each receiver that hears one advertisement sent from
        (x, y) at ``height``: exactly :meth:`receive` per receiver, in order, inlined."""
        p = self.params
        rng_random = self._rng.random
        gauss = self._rng.gauss
        slope = 10 * p.exponent
        sigma = p.shadowing_db
        tau = p.shadowing_time_s
        fading = p.fading
        los, scatter = self._los_amplitude, self._scatter_sd
        body_p = p.body_probability
        body_loss = p.body_loss_db
        loss = p.packet_loss
        links = self._shadow.get(link)
        if links is None:
            links = self._shadow[link] = {}
        out: list[tuple[int, int]] = []
        for j, sx, sy, sh, sensitivity in receivers:
            distance = math.sqrt((x - sx) ** 2 + (y - sy) ** 2 + (sh - height) ** 2)
            rssi = tx_power - slope * math.log10(max(distance, MIN_DISTANCE_M))
            g = gauss(0.0, 1.0)
            previous = links.get(j)
            if previous is None or tau == 0:
                shadow = sigma * g
            else:
                rho = math.exp(-max(0.0, t - previous[1]) / tau)
                shadow = rho * previous[0] + math.sqrt(1 - rho * rho) * sigma * g
            links[j] = (shadow, t)
            rssi += shadow
            re = los + scatter * gauss(0.0, 1.0)
            im = scatter * gauss(0.0, 1.0)
            rssi += 10 * math.log10(max(re * re + im * im, 1e-12)) if fading else 0.0
            if body and rng_random() < body_p:
                rssi -= body_loss
            if rng_random() < loss or rssi < sensitivity:
                continue
            out.append((j, max(RSSI_MIN, min(RSSI_MAX, round(rssi)))))
        return out

    @property
    def phones(self) -> int:
        """Phones whose links' shadowing is tracked."""
        return len(self._shadow)

    def forget(self, phone: Hashable) -> None:
        """The phone left: drop its links' state."""
        self._shadow.pop(phone, None)

    def device_offset(self) -> float:
        """How much one phone radiates above or below its calibrated power, dB."""
        return self._rng.gauss(0.0, self.params.device_spread_db)


def distance_3d(
    phone: tuple[float, float], phone_height: float, scanner: tuple[float, float], height: float
) -> float:
    return math.sqrt(
        (phone[0] - scanner[0]) ** 2 + (phone[1] - scanner[1]) ** 2 + (height - phone_height) ** 2
    )
