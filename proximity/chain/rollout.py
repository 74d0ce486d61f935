"""The gateway's side of a rollout: a signed bundle in, the rules swapped (or refused), a
report out (docs/chain.md, ``down/rules`` → ``up/rollout``).

:class:`BundleApplier` refuses — the store keeps its rules, nothing is written — a
bundle that is not one, is signed by an unknown key or not by its key, is for another
store, is not newer than the running bundle, names an unsafe file, does not pass
``proximity rules check``, fails its own ``[[tests]]`` or does not fit the store (its
store id, its floor plan). Otherwise it writes the files (:class:`BundleDir`: a
staged folder renamed into place, then ``current`` switched in one rename), swaps the
rule table through the hot-reload path and reports ``applied``.

A bundle byte-identical to the running one (the retained bundle, received again at
every reconnect) is reported ``applied`` again with the reason ``already running``:
nothing is rewritten and it counts as no error. Any other bundle whose number is not
above the running one is refused: a rollback is a new, higher bundle.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from proximity.chain.bundle import (
    BundleRefused,
    RuleBundle,
    load_public_keys,
    unsafe_file_name,
    verify_bundle,
)
from proximity.chain.bundledir import BundleDir
from proximity.clock import Clock
from proximity.engine.loader import load_rule_files
from proximity.engine.reload import RuleWatcher
from proximity.engine.ruletests import run_all
from proximity.engine.table import RuleTable
from proximity.errors import ConfigError, RuleFileError
from proximity.wiring import Runtime, check_store

log = structlog.get_logger(__name__)

Swap = Callable[[Sequence[Path], RuleTable], Awaitable[None]]
"""Serve ``table`` (loaded from ``paths``) from now on, and watch ``paths`` for edits."""

MAX_REASON_PROBLEMS = 5
MAX_REASON = 1000
"""A refusal's reason is cut to this many characters (hq keeps 2000 at most)."""


class BundleApplier:
    """Applies the bundles a gateway receives; ``apply`` returns the report to publish.

    - ``keys``: key id → public key (``[chain] rollout_keys``, see ``load_public_keys``);
    - ``bundles``: the folder of :class:`BundleDir` (``[chain] bundles``);
    - ``rules_version``: the version of the rules serving now (for refusals' reports);
    - ``swap``: serves a new table, e.g. ``RuleWatcher.adopt``;
    - ``accept``: raises ConfigError when a table does not fit this store (its store id,
      its floor plan): :func:`store_check`.
    """

    def __init__(
        self,
        store: str,
        gateway: str,
        keys: Mapping[str, Ed25519PublicKey],
        bundles: Path,
        *,
        rules_version: Callable[[], str],
        swap: Swap,
        clock: Clock,
        accept: Callable[[RuleTable], None] | None = None,
    ) -> None:
        self.store = store
        self.gateway = gateway
        self._keys = dict(keys)
        self.dir = BundleDir(bundles)
        self._rules_version = rules_version
        self._swap = swap
        self._clock = clock
        self._accept = accept
        self._lock = asyncio.Lock()
        self.applied = 0
        self.refused = 0

    @property
    def running(self) -> int | None:
        """The running bundle's number (None: the config's rule files run)."""
        return self.dir.running()

    async def apply(self, payload: bytes) -> dict[str, Any]:
        """Verify, check, test and apply one bundle; the ``up/rollout`` report either way."""
        async with self._lock:
            try:
                return await self._apply(payload)
            except BundleRefused as exc:
                return self._refuse(exc.reason, exc.bundle)
            except OSError as exc:
                return self._refuse(f"cannot write the bundle: {exc.strerror or exc}", None)
            except Exception as exc:  # a bug must not stop the gateway: refuse and say so
                log.exception("bundle_apply_crashed")
                return self._refuse(f"internal error: {type(exc).__name__}", None)

    async def _apply(self, payload: bytes) -> dict[str, Any]:
        bundle = verify_bundle(payload, self._keys)
        number = bundle.bundle
        if bundle.store != self.store:
            raise BundleRefused(f"for store {bundle.store}", number)
        running = self.dir.running()
        if running is not None and number <= running:
            if number == running and self.dir.running_payload() == payload:
                log.info("bundle_already_running", bundle=number)
                return self._report(number, "applied", "already running", self._rules_version())
            raise BundleRefused(f"bundle {number} is not newer than {running}", number)
        for name in bundle.files:
            if unsafe_file_name(name):
                raise BundleRefused(
                    f"unsafe file name {name!r}: plain *.toml names only, no folders", number
                )
        folder, table = await asyncio.to_thread(self._write, bundle, payload)
        try:
            await self._swap([folder], table)
        except Exception as exc:
            self.dir.unpoint(running)
            log.exception("bundle_swap_failed", bundle=number)
            raise BundleRefused(f"could not switch to the new rules: {exc}", number) from exc
        await asyncio.to_thread(self.dir.tidy)
        self.applied += 1
        log.info(
            "bundle_applied",
            bundle=number,
            rules_version=table.version,
            files=len(bundle.files),
            previous=running,
        )
        return self._report(number, "applied", "", table.version)

    def _write(self, bundle: RuleBundle, payload: bytes) -> tuple[Path, RuleTable]:
        """Check and test in a staged folder; then install it and point ``current`` at it."""
        staged = self.dir.stage(bundle.files, payload)
        try:
            self._check(self._load(staged, bundle.bundle), bundle.bundle)
            folder = self.dir.install(staged, bundle.bundle)
        except BaseException:
            self.dir.discard(staged)
            raise
        table = self._load(folder, bundle.bundle)  # the table names its files where they stay
        self.dir.point_current(bundle.bundle)
        return folder, table

    def _load(self, folder: Path, number: int) -> RuleTable:
        try:
            return RuleTable.from_ruleset(load_rule_files([folder]))
        except RuleFileError as exc:
            problems = [
                f"{e.path.name}:{e.line}:{e.column}: {e.message}"
                for e in exc.errors[:MAX_REASON_PROBLEMS]
            ]
            more = len(exc.errors) - len(problems)
            if more:
                problems.append(f"and {more} more")
            raise BundleRefused("; ".join(problems), number) from None

    def _check(self, table: RuleTable, number: int) -> None:
        if self._accept is not None:
            try:
                self._accept(table)
            except ConfigError as exc:
                raise BundleRefused(str(exc), number) from None
        for result in run_all(table):
            if not result.passed:
                raise BundleRefused(f"test {result.name!r} failed: {result.problem}", number)

    def _refuse(self, reason: str, number: int | None) -> dict[str, Any]:
        self.refused += 1
        log.warning("bundle_refused", bundle=number, reason=reason)
        return self._report(number, "refused", reason, self._rules_version())

    def _report(
        self, number: int | None, outcome: str, reason: str, rules_version: str
    ) -> dict[str, Any]:
        if len(reason) > MAX_REASON:
            reason = reason[: MAX_REASON - 1] + "…"
        return {
            "v": 1,
            "store": self.store,
            "gateway": self.gateway,
            "bundle": number or 0,  # 0: a payload that names no bundle number
            "outcome": outcome,
            "reason": reason.replace("\x00", "\\x00"),
            "rules_version": rules_version,
            "at": self._clock.now().isoformat(),
        }


def store_check(
    check_store: Callable[[RuleTable], None], floor_plan_zones: Sequence[str] | None
) -> Callable[[RuleTable], None]:
    """What a bundle must fit besides its own checks: ``check_store`` (e.g.
    ``lambda t: wiring.check_store(settings, t)``), and with a floor plan, every zone of
    the rules must be one of its zones (as ``proximity config check`` requires)."""

    def accept(table: RuleTable) -> None:
        check_store(table)
        if floor_plan_zones is None:
            return
        missing = [z for z in table.ruleset.zones if z not in floor_plan_zones]
        if missing:
            raise ConfigError(
                f"zone {missing[0]!r} is not in the store's floor plan "
                f"({', '.join(floor_plan_zones)}): no shopper would ever be placed in it"
            )

    return accept


def applier_for(
    runtime: Runtime, watcher: RuleWatcher | None, clock: Clock
) -> BundleApplier | None:
    """The gateway's applier, wired as ``proximity run`` needs it: swaps through
    ``watcher`` (``runtime.watcher(...)``; without one, straight into the pipeline), checks
    the store id and the floor plan's zones. None when ``[chain] bundles`` is not set (the
    gateway then takes no bundles)."""
    settings = runtime.settings
    if settings.chain.bundles is None:
        return None
    zones = None
    if settings.presence.floor_plan is not None:
        from proximity.presence.floorplan import load_floor_plan

        zones = list(load_floor_plan(settings.presence.floor_plan).zone_ids)

    async def into_pipeline(paths: Sequence[Path], table: RuleTable) -> None:
        runtime.pipeline.replace_table(table)

    return BundleApplier(
        settings.store.id,
        settings.store.gateway,
        load_public_keys(settings.chain.rollout_keys),
        settings.chain.bundles,
        rules_version=lambda: runtime.pipeline.table.version,
        swap=watcher.adopt if watcher is not None else into_pipeline,
        clock=clock,
        accept=store_check(lambda table: check_store(settings, table), zones),
    )
