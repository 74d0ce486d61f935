"""Settings in, a ready pipeline and adapter out (shared by ``run`` and ``demo``)."""

from __future__ import annotations

from dataclasses import dataclass

from proximity.adapters.ble.adapter import BleAdapter
from proximity.adapters.ble.backends import make_ble_backend
from proximity.clock import Clock
from proximity.config import Settings
from proximity.engine.loader import load_rule_files
from proximity.engine.table import RuleTable
from proximity.errors import ConfigError
from proximity.identity.resolver import IdentityResolver
from proximity.pipeline import Pipeline


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    table: RuleTable
    resolver: IdentityResolver
    pipeline: Pipeline
    adapter: BleAdapter


def load_table(settings: Settings) -> RuleTable:
    """The compiled rules; raises RuleFileError with every problem found."""
    table = RuleTable.from_ruleset(load_rule_files(settings.rules.paths))
    rules_store = table.store.id if table.store is not None else None
    if rules_store is not None and rules_store != settings.store.id:
        raise ConfigError(
            f"the rules are for store {rules_store!r} but this gateway serves store "
            f"{settings.store.id!r} (store.id in the config)"
        )
    return table


def build_runtime(settings: Settings, clock: Clock) -> Runtime:
    table = load_table(settings)
    resolver = IdentityResolver(
        settings.identity.app_uuids,
        settings.identity.pseudonym_key.get_secret_value().encode(),
    )
    pipeline = Pipeline(
        settings.store.id,
        table,
        resolver,
        settings.presence.machine_config(),
        visit_timeout=settings.presence.visit_timeout,
        max_visits=settings.presence.max_visits,
    )
    adapter = BleAdapter(make_ble_backend(settings.ble, clock))
    return Runtime(settings, table, resolver, pipeline, adapter)
