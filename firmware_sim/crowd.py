"""Shoppers on the simulated floor: where each one truly is, and what the scanners hear.

Each shopper carries a phone running the store app, advertising an iBeacon under
the app's UUID with their own major/minor (the top bit of minor is the consent
bit) every ``interval`` seconds with jitter. A shopper follows an
:class:`Itinerary`: in through the door, a stop in some zones and aisles, out
through the door, walking in straight lines at their own speed.

- Scripted shoppers (:func:`scripted_shopper`, :func:`shopper_from_walk`) stop
  where they are told, for as long as they are told (the demo, tests).
- A stochastic crowd (:func:`make_crowd`) arrives as a Poisson process
  (``shoppers`` arrivals, uniform over the arrival window: a Poisson process
  conditioned on its count), stops in each zone with the zone's ``affinity`` for
  a lognormal time around its ``dwell``, browses the aisles in between, and has
  consented to personal offers with probability ``consent_share``.

- A full store (:func:`full_store`): every shopper already on the floor, part-way
  through a visit planned as above, for the whole of a short run (the scale
  benchmark's peak hour without the hour of arrivals before it).

A share of shoppers (``cart_share``) take a cart or basket with its own beacon
(:class:`firmware_sim.beacons.CartBeacon`) that goes where they go; the store's
fixed beacons (``[[beacons]]``) advertise while the store is open, Eddystone ones
with TLM counters that advance.
What shoppers do at the store's NFC readers and code scanners (check in, bind their
cart, redeem coupons; ``checkin_share``, ``redeem_share``) is planned by
:mod:`firmware_sim.acts`, on a random stream of its own.

The simulator knows every shopper's true zone at every instant: :func:`true_stays`
gives it as intervals, the ground truth :mod:`firmware_sim.score` compares the
daemon's journey events with. Everything random comes from seeded generators, so
the same seed gives the same crowd, the same advertisements and the same RSSI.
Carts and fixed beacons draw from generators of their own (forked from the
crowd's without drawing from it), so adding them leaves the phones' advertisements
and RSSI exactly as they were.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import math
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from firmware_sim.beacons import ADV_DELAY_S, CART_HEIGHT, BeaconFirmware, CartBeacon, Frame
from firmware_sim.radio import RadioModel, Receiver, fork_rng
from firmware_sim.store import Point, Store
from firmware_sim.walk import Walk
from proximity.adapters.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, build_ibeacon
from proximity.config import DEMO_APP_UUID
from proximity.identity.resolver import CONSENT_BIT

MAX_INSTALL = CONSENT_BIT - 1
"""Installs per major: minor's low 15 bits."""
TRUTH_STEP_S = 0.1
"""Resolution of the ground truth while a shopper walks (standing still it is exact)."""


@dataclass(frozen=True, slots=True)
class Stop:
    point: Point | None
    """Where the shopper stands; None: outside the store (off the floor)."""
    dwell_s: float


@dataclass(frozen=True, slots=True)
class Segment:
    """Where the shopper is over [start, end): walking from ``a`` to ``b``, or standing (a == b)."""

    start: float
    end: float
    a: Point | None
    b: Point | None

    def at(self, t: float) -> Point | None:
        if self.a is None or self.b is None:
            return None
        if self.a == self.b or self.end <= self.start:
            return self.a
        f = min(1.0, max(0.0, (t - self.start) / (self.end - self.start)))
        return (self.a[0] + (self.b[0] - self.a[0]) * f, self.a[1] + (self.b[1] - self.a[1]) * f)


@dataclass(frozen=True)
class Itinerary:
    segments: tuple[Segment, ...]
    _starts: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.segments:
            raise ValueError("an itinerary needs at least one segment")
        object.__setattr__(self, "_starts", tuple(s.start for s in self.segments))

    @property
    def arrive(self) -> float:
        return self.segments[0].start

    @property
    def leave(self) -> float:
        return self.segments[-1].end

    def position(self, t: float) -> Point | None:
        """Where the shopper is at ``t`` seconds; None when not in the store."""
        if t < self.arrive or t >= self.leave:
            return None
        i = bisect.bisect_right(self._starts, t) - 1
        return self.segments[i].at(t)

    def window(self, start: float, end: float) -> Itinerary:
        """The part of the visit within [start, end), on a clock that reads 0 at ``start``."""
        out = [
            Segment(a - start, b - start, seg.at(a), seg.at(b))
            for seg in self.segments
            if (a := max(seg.start, start)) < (b := min(seg.end, end))
        ]
        if not out:
            raise ValueError("the visit is not on the floor within that window")
        return Itinerary(tuple(out))


def plan(stops: Sequence[Stop], door: Point, arrive: float, speed_mps: float) -> Itinerary:
    """Walk in through ``door`` at ``arrive``, make each stop, walk out through the door."""
    if speed_mps <= 0:
        raise ValueError("walking speed must be positive")
    segments: list[Segment] = []
    t = arrive
    here: Point = door

    def walk_to(target: Point) -> None:
        nonlocal t, here
        seconds = math.dist(here, target) / speed_mps
        if seconds > 0:
            segments.append(Segment(t, t + seconds, here, target))
            t += seconds
        here = target

    for stop in stops:
        if stop.point is None:
            walk_to(door)
            if stop.dwell_s > 0:
                segments.append(Segment(t, t + stop.dwell_s, None, None))
                t += stop.dwell_s
            continue
        walk_to(stop.point)
        if stop.dwell_s > 0:
            segments.append(Segment(t, t + stop.dwell_s, stop.point, stop.point))
            t += stop.dwell_s
    walk_to(door)
    if not segments:
        segments.append(Segment(arrive, arrive, door, door))
    return Itinerary(tuple(segments))


@dataclass(frozen=True, slots=True)
class Phone:
    """A shopper's phone with the store app: an iBeacon advertiser."""

    index: int
    major: int
    install: int
    consent: bool
    address: str
    """A random static address, as phones use: it never leaves the BLE adapter, never logged."""
    tx_power: int = -59
    """The calibrated power at 1 m the frame carries."""
    offset_db: float = 0.0
    """How much more (or less) this phone really radiates."""
    interval_s: float = 1.0
    jitter: float = 0.1
    uuid: UUID = DEMO_APP_UUID
    frame: Frame = field(init=False, compare=False, repr=False)
    """The iBeacon frame it advertises (built once: it never changes)."""

    def __post_init__(self) -> None:
        beacon = IBeacon(self.uuid, self.major, self.minor, self.tx_power)
        object.__setattr__(self, "frame", (APPLE_COMPANY_ID, build_ibeacon(beacon)))

    @property
    def minor(self) -> int:
        return self.install | (CONSENT_BIT if self.consent else 0)


@dataclass(frozen=True, slots=True)
class SimShopper:
    phone: Phone
    itinerary: Itinerary
    cart: CartBeacon | None = None
    """The cart or basket beacon they took at the door, if any: it goes where they go."""


@dataclass(frozen=True, slots=True)
class Stay:
    """The shopper truly was in ``zone`` over [start, end) (seconds)."""

    zone: str
    start: float
    end: float


def true_stays(store: Store, itinerary: Itinerary, step: float = TRUTH_STEP_S) -> list[Stay]:
    """The zones the shopper was in, as intervals (walking: to within ``step`` seconds)."""
    stays: list[Stay] = []
    current: str | None = None
    since = 0.0

    def see(zone: str | None, t: float) -> None:
        nonlocal current, since
        if zone == current:
            return
        if current is not None and t > since:
            if stays and stays[-1].zone == current and stays[-1].end == since:
                stays[-1] = Stay(current, stays[-1].start, t)
            else:
                stays.append(Stay(current, since, t))
        current, since = zone, t

    for seg in itinerary.segments:
        if seg.a is None or seg.a == seg.b or seg.end <= seg.start:
            see(store.zone_at(seg.a), seg.start)
            continue
        n = max(1, math.ceil((seg.end - seg.start) / step))
        for k in range(n):
            t = seg.start + (seg.end - seg.start) * k / n
            see(store.zone_at(seg.at(t)), t)
    see(None, itinerary.leave)
    return stays


def in_store(itinerary: Itinerary) -> list[tuple[float, float]]:
    """When the shopper was on the floor, as intervals."""
    out: list[tuple[float, float]] = []
    for seg in itinerary.segments:
        if seg.a is None or seg.end <= seg.start:
            continue
        if out and out[-1][1] == seg.start:
            out[-1] = (out[-1][0], seg.end)
        else:
            out.append((seg.start, seg.end))
    return out


# -- making shoppers -------------------------------------------------------------------


class CrowdParams(BaseModel):
    """A stochastic crowd. Zone affinities and dwell times are the store's (its zones)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    shoppers: int = Field(default=20, ge=0, le=MAX_INSTALL * 100)
    arrival_window_s: float = Field(default=3600.0, gt=0)
    """Shoppers arrive over this long (a Poisson process with ``shoppers`` arrivals)."""
    consent_share: float = Field(default=0.6, ge=0, le=1)
    speed_mps: float = Field(default=1.2, gt=0, le=3)
    """Mean walking speed (a strolling shopper, 1.0–1.4 m/s)."""
    speed_sd: float = Field(default=0.2, ge=0)
    browse_stops: float = Field(default=1.0, ge=0, le=20)
    """Mean number of stops in the aisles (no zone) per visit (Poisson)."""
    browse_dwell_s: float = Field(default=20.0, gt=0)
    """Median of a browsing stop (lognormal, σ 0.6)."""
    interval_s: float = Field(default=1.0, gt=0, le=10)
    """Advertising interval of the app."""
    jitter: float = Field(default=0.1, ge=0, le=0.5)
    """Fraction of the interval each gap may vary by."""
    tx_power: int = Field(default=-59, ge=-100, le=20)
    cart_share: float = Field(default=0.0, ge=0, le=1)
    """The share of shoppers who take a cart or basket with a beacon."""
    cart_interval_s: float = Field(default=1.0, ge=0.02, le=10.24)
    """Advertising interval of the cart beacons."""
    checkin_share: float = Field(default=0.0, ge=0, le=1)
    """The share of shoppers who check in with the app's signed code at one of the store's
    readers: at the cart dock if they took a cart (which binds it to them), else at the
    till when they pay (see :mod:`firmware_sim.acts`)."""
    redeem_share: float = Field(default=0.0, ge=0, le=1)
    """The share of shoppers who have the till scan the coupons the app holds when they pay."""
    tx_power_spread_db: float = Field(default=0.0, ge=0, le=10)
    """Phones of different models: each radiates up to this many dB above or below the
    power its frame claims (uniform, drawn per shopper), on top of the radio's
    ``device_spread_db``. The app advertises one calibrated power whatever the phone, so
    an estimator must learn each phone's offset from its readings. Drawn from a generator
    of its own (0 draws nothing): the crowd's plan and radio stay as they were."""


def random_address(rng: random.Random) -> str:
    """A random static address (the two top bits set), as a phone advertises."""
    octets = [rng.randrange(256) for _ in range(6)]
    octets[0] |= 0xC0
    return ":".join(f"{b:02X}" for b in octets)


def make_phone(
    index: int,
    consent: bool,
    rng: random.Random,
    radio: RadioModel | None = None,
    interval_s: float = 1.0,
    jitter: float = 0.1,
    tx_power: int = -59,
) -> Phone:
    """Phone ``index`` (0-based): major 1 + index // 32767, a distinct install in minor."""
    return Phone(
        index=index,
        major=1 + index // MAX_INSTALL,
        install=1 + index % MAX_INSTALL,
        consent=consent,
        address=random_address(rng),
        tx_power=tx_power,
        offset_db=0.0 if radio is None else radio.device_offset(),
        interval_s=interval_s,
        jitter=jitter,
    )


def _poisson(rng: random.Random, mean: float) -> int:
    limit, k, p = math.exp(-mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _visit(store: Store, params: CrowdParams, rng: random.Random) -> tuple[list[Stop], float]:
    """One shopper's stops (zones by affinity, aisles in between) and walking speed."""
    stops = [
        Stop(zone.random_point(rng), rng.lognormvariate(math.log(zone.dwell), zone.dwell_sigma))
        for zone in store.zones.values()
        if rng.random() < zone.affinity
    ]
    for _ in range(_poisson(rng, params.browse_stops)):
        at = rng.randint(min(1, len(stops)), len(stops))
        dwell = rng.lognormvariate(math.log(params.browse_dwell_s), 0.6)
        stops.insert(at, Stop(store.random_aisle_point(rng), dwell))
    return stops, max(0.5, rng.gauss(params.speed_mps, params.speed_sd))


def _crowd_phone(
    index: int, params: CrowdParams, rng: random.Random, radio: RadioModel | None
) -> Phone:
    consent = rng.random() < params.consent_share
    return make_phone(index, consent, rng, radio, params.interval_s, params.jitter, params.tx_power)


def make_crowd(
    store: Store, params: CrowdParams, rng: random.Random, radio: RadioModel | None = None
) -> list[SimShopper]:
    """A seeded stochastic crowd over the store's zones (in the order the store lists them)."""
    arrivals = sorted(rng.uniform(0, params.arrival_window_s) for _ in range(params.shoppers))
    crowd: list[SimShopper] = []
    for index, arrive in enumerate(arrivals):
        stops, speed = _visit(store, params, rng)
        phone = _crowd_phone(index, params, rng, radio)
        crowd.append(SimShopper(phone, plan(stops, store.door, arrive, speed)))
    return with_carts(with_tx_spread(crowd, params, rng), params, rng)


def full_store(
    store: Store,
    params: CrowdParams,
    rng: random.Random,
    radio: RadioModel | None = None,
    seconds: float = 60.0,
) -> list[SimShopper]:
    """``params.shoppers`` shoppers, every one on the floor for the whole of [0, ``seconds``).

    Each visit is planned as :func:`make_crowd` plans one (a visit shorter than
    ``seconds`` is planned again) and joined at a random instant of it, so the
    shoppers are spread over the zones and aisles as at the peak of a busy day,
    without simulating the hour of arrivals that leads up to it. ``arrival_window_s``
    is not used.
    """
    if seconds <= 0:
        raise ValueError("the run must last more than zero seconds")
    crowd: list[SimShopper] = []
    for index in range(params.shoppers):
        for _ in range(1000):
            stops, speed = _visit(store, params, rng)
            visit = plan(stops, store.door, 0.0, speed)
            if visit.leave > seconds:
                break
        else:
            raise ValueError(f"this store's visits are all shorter than {seconds:g} s")
        joined = rng.uniform(0, visit.leave - seconds)
        phone = _crowd_phone(index, params, rng, radio)
        crowd.append(SimShopper(phone, visit.window(joined, joined + seconds)))
    return with_carts(with_tx_spread(crowd, params, rng), params, rng)


def with_tx_spread(
    shoppers: list[SimShopper], params: CrowdParams, rng: random.Random
) -> list[SimShopper]:
    """Offset each phone's radiated power by U(−s, +s) dB, s = ``params.tx_power_spread_db``,
    from a generator forked off ``rng`` (which is not drawn from: carts stay as they were)."""
    spread = params.tx_power_spread_db
    if spread <= 0:
        return shoppers
    draw = fork_rng(rng, "tx-power").uniform
    return [
        dataclasses.replace(
            s,
            phone=dataclasses.replace(s.phone, offset_db=s.phone.offset_db + draw(-spread, spread)),
        )
        for s in shoppers
    ]


def with_carts(
    shoppers: list[SimShopper], params: CrowdParams, rng: random.Random
) -> list[SimShopper]:
    """Give ``params.cart_share`` of the shoppers a cart beacon. Draws nothing when the
    share is 0, and is called once the crowd is planned, so carts never change it."""
    if params.cart_share <= 0:
        return shoppers
    out: list[SimShopper] = []
    number = 0
    for shopper in shoppers:
        if rng.random() < params.cart_share:
            cart = CartBeacon.numbered(
                number,
                shopper.phone.index,
                random_address(rng),
                interval_s=params.cart_interval_s,
            )
            shopper = dataclasses.replace(shopper, cart=cart)
            number += 1
        out.append(shopper)
    return out


def scripted_shopper(
    store: Store,
    stops: Sequence[tuple[str | None, float]],
    index: int = 0,
    arrive: float = 0.0,
    consent: bool = True,
    speed_mps: float = 1.2,
    rng: random.Random | None = None,
    interval_s: float = 1.0,
) -> SimShopper:
    """A shopper who stands in the middle of each named zone (None: outside) for its seconds."""
    rng = rng or random.Random(index)
    points = [
        Stop(None if zone is None else store.zones[zone].centre(), seconds)
        for zone, seconds in stops
    ]
    phone = make_phone(index, consent, rng, interval_s=interval_s)
    return SimShopper(phone, plan(points, store.door, arrive, speed_mps))


def shopper_from_walk(store: Store, walk: Walk, speed_mps: float = 1.2) -> SimShopper:
    """A scripted walk (firmware_sim/walks/) on the floor: each leg stands under its scanner."""
    stops = [
        Stop(None if leg.scanner is None else store.scanner(leg.scanner).position, leg.duration)
        for leg in walk.legs
    ]
    while stops and stops[-1].point is None:  # trailing "outside": the shopper has left
        stops.pop()
    p = walk.phone
    phone = Phone(
        index=0,
        major=p.major,
        install=p.minor & ~CONSENT_BIT,
        consent=bool(p.minor & CONSENT_BIT),
        address=p.address,
        tx_power=p.tx_power,
        interval_s=p.interval,
        jitter=p.jitter,
        uuid=p.uuid,
    )
    return SimShopper(phone, plan(stops, store.door, 0.0, speed_mps))


# -- what the scanners hear -------------------------------------------------------------

Source = Phone | CartBeacon | BeaconFirmware
"""What sent an advertisement: every source has the ``address`` it advertises from."""
_PHONE, _CART, _BEACON = 0, 1, 2
"""Kinds of sources in the advertising queue (at one instant phones go first)."""


@dataclass(frozen=True, slots=True)
class Heard:
    """One advertisement of ``source`` heard by ``scanner``, ``t`` seconds into the run."""

    t: float
    source: Source
    scanner: str
    rssi: int
    frame: Frame
    """What was sent: (company id, manufacturer data) or (service UUID, service data)."""


class Crowd:
    """A store full of shoppers on one radio: the advertisements heard, in time order.

    The shoppers' phones, their carts' beacons and the store's fixed beacons share one
    queue of advertising events; each event's frame is heard by every scanner through
    the radio model. Fixed beacons advertise from second 0 until the last shopper has
    left (:attr:`end`).
    """

    def __init__(
        self,
        store: Store,
        shoppers: Sequence[SimShopper],
        radio: RadioModel,
        rng: random.Random,
        outages: Mapping[str, tuple[float, float]] | None = None,
    ) -> None:
        indices = [s.phone.index for s in shoppers]
        if len(set(indices)) != len(indices):
            raise ValueError("each shopper needs a phone with its own index")
        self.store = store
        self.shoppers = {s.phone.index: s for s in shoppers}
        known = {sc.id for sc in store.scanners}
        unknown = sorted(set(outages or {}) - known)
        if unknown:
            raise ValueError(f"no scanner {', '.join(unknown)} in store {store.name!r}")
        self.outages: dict[str, tuple[float, float]] = dict(outages or {})
        """Scanner id → [from, until) seconds during which it hears nothing (it is down)."""
        self.carts = [s.cart for s in shoppers if s.cart is not None]
        self.radio = radio
        self._rng = rng
        # carts and fixed beacons get generators of their own: the phones' stream is untouched
        self.device_radio = radio.fork("devices")
        self._devices_rng = fork_rng(rng, "devices")
        self.beacons: list[BeaconFirmware] = []
        """The fixed beacons of the last :meth:`heard` run (powered on when it starts)."""
        self.advertised = 0
        """Advertisements the shoppers' phones sent while on the floor."""
        self.heard_count = 0
        """Of those, how many times a scanner heard one."""
        self.device_advertised = 0
        """Advertisements of carts and fixed beacons."""
        self.device_heard = 0

    @property
    def end(self) -> float:
        """When the last shopper leaves (seconds)."""
        return max((s.itinerary.leave for s in self.shoppers.values()), default=0.0)

    def truth(self) -> dict[int, list[Stay]]:
        return {i: true_stays(self.store, s.itinerary) for i, s in self.shoppers.items()}

    def receivers(self) -> list[Receiver]:
        return [
            Receiver(j, s.position[0], s.position[1], s.height, s.sensitivity)
            for j, s in enumerate(self.store.scanners)
        ]

    def heard(self) -> Iterator[Heard]:
        """Every advertisement every scanner hears, in time order (deterministic per seed)."""
        receivers = self.receivers()
        scanner_ids = [s.id for s in self.store.scanners]
        radio, device_radio = self.radio, self.device_radio
        rng, devices_rng = self._rng, self._devices_rng
        shoppers = self.shoppers
        phone_height = radio.params.phone_height
        queue: list[tuple[float, int, int]] = []
        for index, shopper in sorted(shoppers.items()):
            first = shopper.itinerary.arrive + rng.uniform(0, shopper.phone.interval_s)
            queue.append((first, _PHONE, index))
        for n, cart in enumerate(self.carts):
            arrive = shoppers[cart.owner].itinerary.arrive
            queue.append((arrive + devices_rng.uniform(0, cart.interval_s), _CART, n))
        self.beacons = [BeaconFirmware(b) for b in self.store.beacons]
        for k, beacon in enumerate(self.beacons):
            queue.append((devices_rng.uniform(0, beacon.interval_s), _BEACON, k))
        end = self.end
        # a scanner that is down still has its links drawn (the radio's stream stays the
        # same), it just reports nothing
        down = {j: self.outages[sid] for j, sid in enumerate(scanner_ids) if sid in self.outages}
        heapq.heapify(queue)
        pop, push = heapq.heappop, heapq.heappush
        while queue:
            t, kind, index = pop(queue)
            source: Source
            if kind == _PHONE:
                shopper = shoppers[index]
                phone, itinerary = shopper.phone, shopper.itinerary
                if t >= itinerary.leave:
                    radio.forget(index)
                    continue
                gap = phone.interval_s * (1 + rng.uniform(-phone.jitter, phone.jitter))
                push(queue, (t + gap, _PHONE, index))
                where = itinerary.position(t)
                if where is None:
                    continue
                self.advertised += 1
                power = phone.tx_power + phone.offset_db
                got = radio.hear(index, power, where[0], where[1], phone_height, t, receivers)
                self.heard_count += len(got)
                source, frame = phone, phone.frame
            elif kind == _CART:
                cart = self.carts[index]
                itinerary = shoppers[cart.owner].itinerary
                link = ("cart", index)
                if t >= itinerary.leave:
                    device_radio.forget(link)
                    continue
                gap = cart.interval_s * (1 + devices_rng.uniform(-cart.jitter, cart.jitter))
                push(queue, (t + gap, _CART, index))
                where = itinerary.position(t)
                if where is None:
                    continue
                got = device_radio.hear(
                    link, cart.tx_power, where[0], where[1], CART_HEIGHT, t, receivers
                )
                self.device_advertised += 1
                self.device_heard += len(got)
                source, frame = cart, cart.frame
            else:
                if t >= end:
                    continue
                beacon = self.beacons[index]
                config = beacon.config
                gap = beacon.interval_s + devices_rng.uniform(0, ADV_DELAY_S)
                push(queue, (t + gap, _BEACON, index))
                frame = beacon.advertise(t)
                x, y = config.position
                got = device_radio.hear(
                    ("beacon", index),
                    config.tx_power,
                    x,
                    y,
                    config.height,
                    t,
                    receivers,
                    body=False,
                )
                self.device_advertised += 1
                self.device_heard += len(got)
                source = beacon
            if down:
                before = len(got)
                got = [
                    (j, rssi) for j, rssi in got if not (j in down and down[j][0] <= t < down[j][1])
                ]
                if kind == _PHONE:
                    self.heard_count -= before - len(got)
                else:
                    self.device_heard -= before - len(got)
            for j, rssi in got:
                yield Heard(t, source, scanner_ids[j], rssi, frame)
