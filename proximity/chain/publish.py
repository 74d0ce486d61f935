"""The centre's side of a rollout: ``proximity rollout publish`` and ``status``.

``publish`` checks and tests the rule files here first (a broken bundle never leaves),
signs one bundle per store (only ``store`` differs) and publishes each retained, QoS 1,
on ``proximity/v1/{store}/down/rules`` through the central broker. With a canary share,
the canary stores go first — ``ceil(share × targets)`` of them, at least one: the first
ones of the target stores sorted by id, so the same command picks the same canaries —
and are watched for ``[rollout] canary_watch`` on ``up/rollout`` and ``up/status``. The
rollout halts (nothing more is published) when a canary refuses the bundle, when its
status ``errors`` rise during the watch, or when it has not reported the bundle applied
by the end of the watch; otherwise the other stores get it.

A bundle's number defaults to the current time in unix seconds: it only grows, with no
state kept here. When ``[hq] database`` is reachable and holds a higher number already
published, the next one is that + 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from proximity.chain.bundle import (
    KEY_ID,
    MAX_BUNDLE_BYTES,
    RuleBundle,
    load_private_key,
    sign_bundle,
    unsafe_file_name,
)
from proximity.chain.hqconfig import HqSettings
from proximity.clock import Clock
from proximity.delivery._bridge import PahoBridge, TlsFiles
from proximity.engine.loader import expand, load_rule_files
from proximity.engine.ruletests import run_all
from proximity.engine.table import RuleTable
from proximity.errors import ConfigError, ProximityError, RuleError, RuleFileError

log = structlog.get_logger(__name__)

TOPIC = "proximity/v1/{store}/{leaf}"


class RolloutRefused(ProximityError):
    """The rules, the targets or the settings do not allow a rollout (nothing published)."""


class RolloutHalted(ProximityError):
    """A canary store refused, erred or stayed silent: the rest were not published."""

    def __init__(self, store: str, reason: str) -> None:
        super().__init__(f"halted at canary {store}: {reason}")
        self.store = store
        self.reason = reason


def topic(store: str, leaf: str) -> str:
    return TOPIC.format(store=store, leaf=leaf)


# --- the files ---------------------------------------------------------------------


def bundle_files(paths: Sequence[Path], stores: Sequence[str]) -> dict[str, str]:
    """The rule files as a bundle carries them, after ``rules check`` and the in-file
    tests passed here; RolloutRefused (or RuleFileError, every problem) if not."""
    files, errors = expand(paths)
    if errors:
        raise RuleFileError(errors)
    table = RuleTable.from_ruleset(load_rule_files(paths))
    failed = [r for r in run_all(table) if not r.passed]
    if failed:
        lines = [f"test {r.name!r} failed: {r.source}: {r.problem}" for r in failed]
        raise RolloutRefused("the rules' own tests fail:\n" + "\n".join(lines))
    rules_store = table.store.id if table.store is not None else None
    others = [s for s in stores if rules_store is not None and s != rules_store]
    if others:
        raise RolloutRefused(
            f"the rules are for store {rules_store!r} ([store] id) and would be refused by "
            f"{', '.join(others)}: leave [store] id out of rules meant for several stores"
        )
    out: dict[str, str] = {}
    for path in files:
        if unsafe_file_name(path.name):
            raise RolloutRefused(f"{path}: a bundle's files must be plain *.toml names")
        if path.name in out:
            raise RolloutRefused(f"two rule files are named {path.name}: a bundle is one folder")
        try:
            out[path.name] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise RuleFileError([RuleError(path, 1, 1, f"cannot read rule file: {exc}")]) from None
    size = len(json.dumps(out).encode())
    if size > MAX_BUNDLE_BYTES - 4096:
        raise RolloutRefused(
            f"the rule files make {size} bytes: gateways take a bundle of "
            f"{MAX_BUNDLE_BYTES} bytes at most"
        )
    return out


def canaries(stores: Sequence[str], percent: float | None) -> list[str]:
    """The canary stores: ``ceil(percent% of stores)`` (at least one), the first ones
    sorted by id. None or 0: no canary stage."""
    if not percent:
        return []
    k = max(1, math.ceil(len(stores) * percent / 100 - 1e-9))
    return sorted(stores)[:k]


# --- publishing --------------------------------------------------------------------


@dataclass
class _Watch:
    """What the canary stores said during the watch."""

    bundle: int
    stores: frozenset[str]
    applied: set[str] = field(default_factory=set)
    errors_at_start: dict[str, int] = field(default_factory=dict)
    halt: tuple[str, str] | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 5 or parts[2] not in self.stores:
            return
        store, leaf = parts[2], parts[4]
        try:
            data = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            log.warning("rollout_watch_malformed", store=store, topic=leaf)
            return
        if not isinstance(data, dict):
            return
        if leaf == "rollout" and data.get("bundle") == self.bundle:
            if data.get("outcome") == "applied":
                self.applied.add(store)
            elif data.get("outcome") == "refused" and self.halt is None:
                self.halt = (store, f"refused bundle {self.bundle}: {data.get('reason', '')}")
        elif leaf == "status" and isinstance(data.get("errors"), int):
            errors: int = data["errors"]
            before = self.errors_at_start.setdefault(store, errors)
            if errors > before and self.halt is None:
                self.halt = (store, f"its errors rose from {before} to {errors} during the watch")
        self.changed.set()


@dataclass(frozen=True)
class Published:
    bundle: int
    stores: tuple[str, ...]
    canaries: tuple[str, ...]


def _bridge(
    settings: HqSettings, on_message: Callable[[mqtt.MQTTMessage], None], subscriptions: list[str]
) -> PahoBridge:
    hq = settings.hq
    return PahoBridge(
        hq.broker_url(),
        client_id=f"proximity-rollout-{os.getpid()}",
        tls=TlsFiles(
            ca_file=str(hq.ca_file) if hq.ca_file else None,
            cert_file=str(hq.client_cert) if hq.client_cert else None,
            key_file=str(hq.client_key) if hq.client_key else None,
        ),
        subscriptions=subscriptions,
        on_message=on_message,
    )


async def publish_rollout(
    settings: HqSettings,
    files: Mapping[str, str],
    stores: Sequence[str],
    *,
    bundle: int,
    clock: Clock,
    canary_percent: float | None = None,
    say: Callable[[str], None] = print,
    on_published: Callable[[str, str], None] | None = None,
) -> Published:
    """Sign and publish ``files`` to ``stores``, canaries first; RolloutHalted if a canary
    fails (the stores after it get nothing). ``on_published(store, stage)`` after each
    PUBACK, stage ``canary``, ``rest`` (after the canaries) or ``all`` (no canary stage)."""
    rollout = settings.rollout
    if rollout.signing_key is None or not rollout.key_id:
        raise ConfigError("[rollout] signing_key and key_id are needed to sign bundles")
    if not KEY_ID.fullmatch(rollout.key_id):
        raise ConfigError(
            f"[rollout] key_id {rollout.key_id!r}: use 1-64 letters, digits, '_', '.', '-'"
        )
    key = load_private_key(rollout.signing_key)
    created_at = clock.now()
    first = canaries(stores, canary_percent)
    rest = [s for s in sorted(stores) if s not in first]
    watch = _Watch(bundle, frozenset(first))
    leaves = ("up/rollout", "up/status")
    subscriptions = [topic(s, leaf) for s in first for leaf in leaves]
    async with _bridge(settings, watch.on_message, subscriptions) as bridge:

        async def send(store: str, stage: str) -> None:
            signed = _sign(files, store, bundle, rollout.key_id, key, created_at)
            await bridge.publish(topic(store, "down/rules"), signed.payload(), qos=1, retain=True)
            log.info("bundle_published", store=store, bundle=bundle, stage=stage)
            say(f"published bundle {bundle} to {store}{' (canary)' if stage == 'canary' else ''}")
            if on_published is not None:
                on_published(store, stage)

        for store in first:
            await send(store, "canary")
        if first:
            watch_s = rollout.canary_watch.total_seconds()
            say(f"watching {len(first)} canary store(s) for {watch_s:g}s")
            await _watch(watch, watch_s)
            say(f"canary ok: {', '.join(first)} applied bundle {bundle}")
        for store in rest:
            await send(store, "rest" if first else "all")
    return Published(bundle, tuple(first + rest), tuple(first))


def _sign(
    files: Mapping[str, str],
    store: str,
    bundle: int,
    key_id: str,
    key: Any,
    created_at: datetime,
) -> RuleBundle:
    return sign_bundle(
        store=store,
        bundle=bundle,
        files=files,
        key_id=key_id,
        private_key=key,
        created_at=created_at,
    )


async def _watch(watch: _Watch, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while True:
        if watch.halt is not None:
            raise RolloutHalted(*watch.halt)
        left = deadline - loop.time()
        if left <= 0:
            break
        watch.changed.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(watch.changed.wait(), left)
    silent = sorted(watch.stores - watch.applied)
    if silent:
        raise RolloutHalted(
            silent[0], f"no report of bundle {watch.bundle} applied within {seconds:g}s"
        )


# --- status ------------------------------------------------------------------------


async def retained_status(
    settings: HqSettings, stores: Sequence[str] | None, wait: float = 1.0
) -> dict[str, dict[str, Any]]:
    """Per store: the latest ``up/rollout`` report and ``up/status``, from the retained
    messages on the central broker (``stores`` None: every store that has some)."""
    found: dict[str, dict[str, Any]] = {}

    def on_message(msg: mqtt.MQTTMessage) -> None:
        parts = msg.topic.split("/")
        if len(parts) != 5 or (stores is not None and parts[2] not in stores):
            return
        try:
            data = json.loads(msg.payload)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(data, dict):
            found.setdefault(parts[2], {})[parts[4]] = data

    subscriptions = (
        [topic(s, leaf) for s in stores for leaf in ("up/rollout", "up/status")]
        if stores is not None
        else [topic("+", "up/rollout"), topic("+", "up/status")]
    )
    async with _bridge(settings, on_message, subscriptions):
        await asyncio.sleep(wait)  # retained messages come right after the SUBACK
    return found
