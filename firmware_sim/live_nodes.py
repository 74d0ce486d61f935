"""``python -m firmware_sim run --via nodes``: the store's scanners as scanner nodes.

For one run::

    crowd or walk ──▶ one node per store scanner ──MQTT──▶ mosquitto ──▶ proximity run
    (this process)    (ours: NodeSender; ESPresense;                    (ble.backend = "nodes",
                       OpenMQTTGateway: firmware_sim.nodes)              [[nodes]] per scanner)
                                                                              │ offers
                                                    shopper apps (this process) ◀┘

Everything else is the live mode of :mod:`firmware_sim.live` (this run is a
:class:`~firmware_sim.live.LiveRun`): mosquitto started for the run unless ``--broker``
names one, ``proximity run`` as a child process on a config written for the run (a
fresh pseudonym key, the clock ``speed`` of the run, the store's readers when shoppers
act), one :class:`~proximity.delivery.app_client.ShopperApp` per consenting shopper,
the daemon's counts from /metrics and its last log line, everything stopped in reverse
order on the way out.

Each advertisement a scanner hears is handed, at its (scaled) time, to that scanner's
node, which publishes it in its format (:mod:`firmware_sim.nodes`). Faults:
``--node-down SCANNER@START-END`` takes a node down for those store seconds (it says
``offline``, as its will would, and what its scanner hears meanwhile is lost);
``--node-skew SCANNER=SECONDS`` sets a node's clock off (ours carries it in ``sent``;
ESPresense and OpenMQTTGateway messages carry no time, so it changes nothing there).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, TextIO

from prometheus_client.parser import text_string_to_metric_families

from firmware_sim.journey_feed import JourneyFeed
from firmware_sim.live import (
    FUNNEL_FILE,
    STOP_TIMEOUT_S,
    DaemonTime,
    LiveError,
    LivePlan,
    LiveResult,
    LiveRun,
    _cancel,
    _DaemonLog,
    _http_get,
    act_metrics,
    ble_metrics,
    peak_rate,
    read_funnel,
    run_config,
)
from firmware_sim.nodes import NodeClock, NodeFormat, SimNode, make_node, totals
from firmware_sim.processes import spawn, stop_process
from proximity.clock import ScaledClock
from proximity.delivery.url import BrokerUrl

#: The most advertisements a second the nodes publish (the busiest second of the plan,
#: in real time): ours batches them; ESPresense and OpenMQTTGateway send a message each.
MAX_READINGS_PER_S = {"ours": 20_000, "espresense": 3_000, "omg": 3_000}
PROGRESS_EVERY_S = 5.0
_DOWN = re.compile(r"(?P<scanner>[^@]+)@(?P<start>[0-9.]+)-(?P<end>[0-9.]+)")
_SKEW = re.compile(r"(?P<scanner>[^=]+)=(?P<seconds>[-+]?[0-9.]+)")


def parse_down(text: str) -> tuple[str, tuple[float, float]]:
    """``SCANNER@START-END`` (store seconds) → (scanner, (start, end)); ValueError."""
    match = _DOWN.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--node-down {text!r}: expected SCANNER@START-END, e.g. gw-coffee@20-35")
    start, end = float(match["start"]), float(match["end"])
    if end <= start:
        raise ValueError(f"--node-down {text!r}: the end must be after the start")
    return match["scanner"], (start, end)


def parse_skew(text: str) -> tuple[str, float]:
    """``SCANNER=SECONDS`` → (scanner, seconds the node's clock is ahead); ValueError."""
    match = _SKEW.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"--node-skew {text!r}: expected SCANNER=SECONDS, e.g. gw-coffee=-4.5")
    return match["scanner"], float(match["seconds"])


@dataclass(frozen=True)
class NodeFaults:
    down: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    """Scanner → (start, end) store seconds its node is down."""
    skew: Mapping[str, float] = field(default_factory=dict)
    """Scanner → seconds its node's clock is ahead (negative: behind)."""

    def check(self, scanners: list[str]) -> None:
        unknown = (set(self.down) | set(self.skew)) - set(scanners)
        if unknown:
            raise LiveError(
                f"--node-down/--node-skew name scanners the store does not have: "
                f"{sorted(unknown)} (its scanners: {', '.join(scanners)})"
            )

    def describe(self) -> list[str]:
        out = [f"{s} down {a:g}-{b:g} s" for s, (a, b) in sorted(self.down.items())]
        return out + [f"{s} clock {v:+g} s" for s, v in sorted(self.skew.items())]


@dataclass
class NodesResult(LiveResult):
    node_format: str = "ours"
    faults: list[str] = field(default_factory=list)
    nodes: dict[str, int] = field(default_factory=dict)
    """What the simulated nodes did, summed: heard, lost (down), messages, readings,
    unexpressed (frames the format cannot carry)."""

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out["via"] = "nodes"
        del out["dbus_calls"]
        out["node_format"] = self.node_format
        out["node_faults"] = self.faults
        out["nodes"] = self.nodes
        return out


def nodes_config(
    plan: LivePlan,
    broker: str,
    node_format: NodeFormat,
    scanners: list[str],
    key: str,
    app_uuids: list[str],
    anonymous_uuids: list[str],
    readers: list[str] | None = None,
) -> str:
    """The ``proximity run`` config of one run through nodes: ``ble.backend = "nodes"``
    and one ``[[nodes]]`` per store scanner (its node named after it)."""
    q = json.dumps
    nodes = []
    for scanner in scanners:
        nodes += ["[[nodes]]", f"source = {q(node_format)}", f"node = {q(scanner)}"]
        nodes.append(f"scanner = {q(scanner)}")
    return run_config(
        "nodes",
        plan,
        broker,
        ['backend = "nodes"'],
        key,
        app_uuids,
        anonymous_uuids,
        readers,
        nodes,
    )


def node_metrics(text: str) -> dict[str, Any]:
    """The nodes' figures of a /metrics page: readings taken, up, rejected, dropped."""
    out: dict[str, Any] = {"node_readings": 0, "nodes_up": {}, "rejected": {}, "dropped": {}}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels, value = sample.labels, int(sample.value)
            if sample.name == "proximity_node_readings_total":
                out["node_readings"] += value
            elif sample.name == "proximity_node_up":
                out["nodes_up"][labels["node"]] = value
            elif sample.name == "proximity_node_messages_rejected_total" and value:
                out["rejected"][f"{labels['source']}:{labels['problem']}"] = value
            elif sample.name == "proximity_node_dropped_total" and value:
                out["dropped"][labels["reason"]] = value
    return out


class NodesRun(LiveRun):
    """One live run through scanner nodes; :meth:`run` sets up, plays, tears down."""

    def __init__(
        self, plan: LivePlan, out: TextIO, node_format: NodeFormat, faults: NodeFaults
    ) -> None:
        super().__init__(plan, out)
        self.node_format: NodeFormat = node_format
        self.faults = faults
        faults.check(self.scanners)
        self.nodes_result = NodesResult(
            plan.label,
            plan.speed,
            {s: f"{node_format}:{s}" for s in self.scanners},
            len(plan.crowd.shoppers),
            peak_updates_per_s=peak_rate(self.heard, plan.speed),
            node_format=node_format,
            faults=faults.describe(),
        )
        self.result = self.nodes_result
        self.nodes: dict[str, SimNode] = {}

    def _check_rate(self) -> None:
        most = MAX_READINGS_PER_S[self.node_format]
        if self.result.peak_updates_per_s > most:
            raise LiveError(
                f"{self.plan.label} at {self.plan.speed:g}x needs "
                f"{self.result.peak_updates_per_s:,} readings in its busiest second; the "
                f"{self.node_format} nodes publish {most:,} at most: lower --speed or --shoppers"
            )

    async def _run(
        self, workdir: Path, stack: contextlib.ExitStack, astack: contextlib.AsyncExitStack
    ) -> None:
        broker = self.plan.broker or self._start_mosquitto(workdir, stack)
        url = BrokerUrl.parse(broker)
        readers = self._open_readers(stack)
        config = workdir / "proximity.toml"
        config.write_text(
            nodes_config(
                self.plan,
                broker,
                self.node_format,
                self.scanners,
                self.key,
                self.app_uuids,
                self.anonymous_uuids,
                readers.config() if readers is not None else None,
            ),
            encoding="utf-8",
        )
        funnel = workdir / FUNNEL_FILE
        funnel.unlink(missing_ok=True)
        log = _DaemonLog(workdir / "proximity.log")
        log_file = stack.enter_context(log.path.open("wb"))
        self._clock = DaemonTime(datetime.now(UTC), time.monotonic(), self.plan.speed)
        store_clock = ScaledClock(datetime.now(UTC), self.plan.speed)
        daemon = self._spawn(config, log_file, workdir)
        stack.callback(stop_process, daemon, STOP_TIMEOUT_S)
        metrics_url = await self._wait_ready(daemon, log)
        self.say(f"proximity run (pid {daemon.pid}) ready: nodes backend, metrics {metrics_url}")

        for scanner in self.scanners:
            clock = NodeClock(store_clock, self.faults.skew.get(scanner, 0.0))
            node = make_node(
                self.node_format, scanner, url, self.plan.store_id, clock, self.plan.speed
            )
            self.nodes[scanner] = node
            await node.up()
        astack.push_async_callback(self._all_down)
        self.say(
            f"{len(self.nodes)} {self.node_format} nodes publishing to {url} "
            f"({', '.join(self.nodes)})"
            + (
                f"; faults: {', '.join(self.nodes_result.faults)}"
                if self.nodes_result.faults
                else ""
            )
        )

        feed = await astack.enter_async_context(JourneyFeed(url, self.plan.store_id))
        apps = await self._open_apps(url, astack)
        listening = [asyncio.create_task(self._read_offers(i, app)) for i, app in apps.items()]
        listening.append(asyncio.create_task(self._watch_acts(feed)))
        astack.push_async_callback(_cancel, listening)
        self._t0 = time.monotonic()
        serving: list[asyncio.Task[None]] = []
        if readers is not None:
            from concurrent.futures import ThreadPoolExecutor

            for stats in self.result.readers:
                worker = stack.enter_context(
                    ThreadPoolExecutor(1, thread_name_prefix=f"reader-{stats.id}")
                )
                serving.append(asyncio.create_task(self._serve(readers, stats, worker)))
            astack.push_async_callback(_cancel, serving)
        await self._play_nodes()

        linger = self.plan.linger_s
        self.say(f"all played: {linger:g} s of store time for exit and visit timeouts to run out")
        await self._until(self._now_s() + linger)
        for task in serving:
            await task

        status, body = await asyncio.to_thread(_http_get, metrics_url)
        if status == 200:
            text = body.decode()
            self.result.daemon.update(ble_metrics(text))
            self.result.daemon.update(act_metrics(text))
            self.result.daemon.update(node_metrics(text))
        code = await asyncio.to_thread(stop_process, daemon, STOP_TIMEOUT_S)
        log.read()
        self._daemon_summary(log, code)
        self.result.daemon["node_changes"] = [
            f"{x['event']} {x.get('scanner')}"
            for x in log.lines
            if x.get("event") in ("node_down", "node_up")
        ]
        if funnel.exists():
            self.result.funnel = read_funnel(funnel)
        await self._collect_stragglers()
        await self._all_down()
        if code != 0:
            raise LiveError(f"proximity run exited with {code}:\n{log.tail()}")

    def _spawn(self, config: Path, log: IO[bytes], workdir: Path) -> subprocess.Popen[bytes]:
        argv = [sys.executable, "-m", "proximity", "run", "--config", str(config)]
        return spawn(argv, stdout=log, stderr=log, cwd=workdir)

    async def _all_down(self) -> None:
        for node in self.nodes.values():
            if node.is_up:
                await node.down()
        self.nodes_result.nodes = dict(totals(list(self.nodes.values())))

    async def _play_nodes(self) -> None:
        """Hand every advertisement to its scanner's node at its time (from ``self._t0``),
        taking nodes down and up as the faults say."""
        plan, heard = self.plan, self.heard
        changes = sorted(
            [(start, scanner, False) for scanner, (start, _) in self.faults.down.items()]
            + [(end, scanner, True) for scanner, (_, end) in self.faults.down.items()]
        )
        self.say(
            f"playing {plan.label}: {heard[-1].t:.0f} s of store time at {plan.speed:g}x "
            f"({heard[-1].t / plan.speed:.1f} s), {len(heard):,} advertisements heard, "
            f"busiest second {self.result.peak_updates_per_s:,}/s"
        )
        next_progress = PROGRESS_EVERY_S
        for h in heard:
            while changes and changes[0][0] <= h.t:
                await self._change(*changes.pop(0))
            await self._until(h.t)
            self.result.max_lag_s = max(self.result.max_lag_s, (self._now_s() - h.t) / plan.speed)
            self.nodes[h.scanner].hear(h)
            self.result.advertisements_sent += 1
            if h.t / plan.speed >= next_progress:
                next_progress += PROGRESS_EVERY_S
                self.say(
                    f"  {h.t:.0f} s of store time: {self.result.advertisements_sent:,} "
                    f"advertisements heard, {len(self.result.offers)} offers received"
                )
        for change in changes:  # faults within the linger
            if change[0] <= heard[-1].t + plan.linger_s:
                await self._change(*change)

    async def _change(self, at_s: float, scanner: str, up: bool) -> None:
        await self._until(at_s)
        node = self.nodes[scanner]
        if up:
            await node.up()
        else:
            await node.down()
        self.say(f"  node {scanner} {'back up' if up else 'down'} at {self._now_s():.0f} s")


def run_nodes(
    plan: LivePlan, out: TextIO, node_format: NodeFormat, faults: NodeFaults
) -> NodesResult:
    """Run ``plan`` through nodes to the end; Ctrl-C or SIGTERM stop it cleanly."""
    import signal

    async def main() -> NodesResult:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            run = NodesRun(plan, out, node_format, faults)
            await run.run()
            return run.nodes_result
        finally:
            loop.remove_signal_handler(signal.SIGTERM)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None


def print_nodes_summary(result: NodesResult, out: TextIO) -> None:
    d, n = result.daemon, result.nodes
    faults = f"; faults: {', '.join(result.faults)}" if result.faults else ""
    print(
        f"{result.label} via {result.node_format} scanner nodes: {result.shoppers} shoppers at "
        f"{result.speed:g}x, {result.wall_s:.1f} s{faults}",
        file=out,
    )
    print(
        f"  {len(result.scanners)} nodes heard {n.get('heard', 0):,} advertisements and "
        f"published {n.get('readings', 0):,} readings in {n.get('messages', 0):,} messages "
        f"(lost while down {n.get('lost', 0):,}, not expressible {n.get('unexpressed', 0):,}; "
        f"worst lag {result.max_lag_s * 1000:.0f} ms)",
        file=out,
    )
    print(
        f"  proximity run (nodes backend; presence {d.get('presence')}): took "
        f"{d.get('node_readings', '?')} node readings ({d.get('sightings', '?')} sightings), "
        f"rejected {_counts(d.get('rejected') or {})}, dropped {_counts(d.get('dropped') or {})}; "
        f"{d.get('events', '?')} journey events, {d.get('offers_published', '?')} offers "
        f"published; {', '.join(d.get('node_changes') or []) or 'no node went down'}",
        file=out,
    )
    rules = Counter(o.rule for o in result.offers)
    listed = ", ".join(f"{rule} {k}" for rule, k in sorted(rules.items())) or "none"
    print(f"  offers received by the shopper apps: {len(result.offers)} ({listed})", file=out)


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {n}" for key, n in sorted(counts.items()) if n) or "none"
