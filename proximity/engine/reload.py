"""Hot reload: watch the rule files, swap in a new table only when it is valid.

Every ``interval`` the watcher hashes the files. When they changed, it loads
and checks them: a valid set replaces the table at once (one assignment on
the event loop, so no event ever sees half of each); a broken set is reported
``path:line:column: message`` — once per broken version — and the last good
table keeps serving.

:meth:`RuleWatcher.adopt` switches the watcher to other files (a rule bundle that
was checked and written elsewhere): their table serves and their paths are watched
from then on, in one step on the event loop.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path

import structlog

from proximity.clock import Clock
from proximity.engine.loader import fingerprint, load_rule_files
from proximity.engine.table import RuleTable
from proximity.errors import ConfigError, RuleFileError

log = structlog.get_logger(__name__)


class RuleWatcher:
    def __init__(
        self,
        paths: Sequence[Path],
        clock: Clock,
        on_reload: Callable[[RuleTable], Awaitable[None]],
        interval: float = 2.0,
        accept: Callable[[RuleTable], None] | None = None,
    ) -> None:
        self._paths = list(paths)
        self._clock = clock
        self._on_reload = on_reload
        self._interval = interval
        self._accept = accept
        self._seen = fingerprint(self._paths)
        self.reloads = 0
        self.failures = 0

    @property
    def paths(self) -> list[Path]:
        return list(self._paths)

    async def adopt(self, paths: Sequence[Path], table: RuleTable) -> None:
        """Serve ``table``, already loaded and checked from ``paths``, and watch ``paths``
        from now on (the old files are no longer read). Paths and fingerprint change
        together before the swap, so a concurrent :meth:`check` sees either the old
        files unchanged or the new ones unchanged, never a mix."""
        self._paths = list(paths)
        self._seen = fingerprint(self._paths)
        self.reloads += 1
        await self._on_reload(table)
        log.info("rules_adopted", version=table.version, rules=len(table.rules))

    async def run(self) -> None:
        while True:
            await self._clock.sleep(self._interval)
            await self.check()

    async def check(self) -> RuleTable | None:
        """Reload if the files changed; the new table, or None (unchanged or broken)."""
        current = fingerprint(self._paths)
        if current == self._seen:
            return None
        self._seen = current
        try:
            table = RuleTable.from_ruleset(load_rule_files(self._paths))
            if self._accept is not None:
                self._accept(table)
        except RuleFileError as exc:
            self.failures += 1
            for error in exc.errors:
                log.error(
                    "rules_reload_failed",
                    error=f"{error.path}:{error.line}:{error.column}: {error.message}",
                )
            log.warning("rules_kept_last_good", problems=len(exc.errors))
            return None
        except ConfigError as exc:
            self.failures += 1
            log.error("rules_reload_failed", error=str(exc))
            log.warning("rules_kept_last_good", problems=1)
            return None
        self.reloads += 1
        await self._on_reload(table)
        log.info("rules_reloaded", version=table.version, rules=len(table.rules))
        return table
