"""Loading rule files: TOML → validated models, with every problem at ``path:line:column``.

Problems are collected, not raised one at a time: a run of ``proximity rules
check`` lists everything wrong in every file. Messages are written for the
retail-ops people who edit the files, not for programmers.
"""

from __future__ import annotations

import difflib
import hashlib
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from proximity.engine.rules import (
    Defaults,
    Engagement,
    Rule,
    RuleFile,
    RuleTest,
    StoreMeta,
    TestEvent,
    When,
    Zone,
)
from proximity.engine.tomlpos import Path as KeyPath
from proximity.engine.tomlpos import Position, Positions, locate, syntax_error
from proximity.engine.values import WEEKDAYS
from proximity.errors import RuleError, RuleFileError
from proximity.events import EventKind
from proximity.offers import Cta, CtaFormat, Moment

_ZONE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,39}$")
_CHOICES: dict[str, tuple[str, ...]] = {
    "on": tuple(e.value for e in EventKind),
    "moment": tuple(m.value for m in Moment),
    "format": tuple(f.value for f in CtaFormat),
    "hit_policy": ("first", "collect", "unique"),
    "weekdays": WEEKDAYS,
}


@dataclass(frozen=True)
class Source:
    path: Path
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.column}"


@dataclass(frozen=True)
class RuleSet:
    """Every rule file of a store, merged and checked."""

    store: StoreMeta | None
    zones: Mapping[str, Zone]
    defaults: Defaults
    rules: tuple[Rule, ...]
    tests: tuple[tuple[RuleTest, Source], ...] = ()
    engagement: Engagement = field(default_factory=Engagement)
    zone_sources: Mapping[str, Source] = field(default_factory=dict)
    sources: Mapping[str, Source] = field(default_factory=dict)
    files: tuple[Path, ...] = ()
    version: str = ""
    """A hash of the files' contents: it changes exactly when the rules do."""


@dataclass
class _Loaded:
    path: Path
    text: str
    model: RuleFile
    positions: Positions

    def at(self, path: KeyPath, prefer_key: bool = False) -> Source:
        pos = self.positions.lookup(path, prefer_key)
        return Source(self.path, pos.line, pos.column)


def expand(paths: Sequence[Path]) -> tuple[list[Path], list[RuleError]]:
    """Files to load: each file as given, each folder's *.toml sorted by name."""
    files: list[Path] = []
    errors: list[RuleError] = []
    for path in paths:
        if path.is_dir():
            found = sorted(p for p in path.glob("*.toml") if p.is_file())
            if not found:
                errors.append(RuleError(path, 1, 1, "no *.toml rule files in this folder"))
            files.extend(found)
        else:
            files.append(path)
    return files, errors


def fingerprint(paths: Sequence[Path]) -> str:
    """A cheap hash of what the rule files hold now (files, names and bytes), for watching."""
    files, _ = expand(paths)
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError as exc:
            digest.update(f"unreadable: {exc}".encode())
        digest.update(b"\0")
    return digest.hexdigest()


def check_rule_files(paths: Sequence[Path]) -> list[RuleError]:
    """Every problem in these rule files (an empty list when they are valid)."""
    try:
        load_rule_files(paths)
    except RuleFileError as exc:
        return list(exc.errors)
    return []


def load_rule_files(paths: Sequence[Path]) -> RuleSet:
    """Load, validate and merge rule files; raise RuleFileError listing every problem."""
    files, errors = expand(paths)
    loaded: list[_Loaded] = []
    for path in files:
        item = _load_one(path, errors)
        if item is not None:
            loaded.append(item)
    ruleset = _merge(loaded, errors)
    if errors:
        order = {path: n for n, path in enumerate(files)}
        errors.sort(key=lambda e: (order.get(e.path, -1), e.line, e.column))
        raise RuleFileError(errors)
    return ruleset


def _load_one(path: Path, errors: list[RuleError]) -> _Loaded | None:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        errors.append(RuleError(path, 1, 1, f"cannot read rule file: {reason}"))
        return None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message, at = syntax_error(exc)
        at = at or Position(1, 1)
        errors.append(RuleError(path, at.line, at.column, f"TOML syntax error: {message}"))
        return None
    positions = locate(text)
    try:
        model = RuleFile.model_validate(data)
    except ValidationError as exc:
        seen: set[KeyPath] = set()
        for err in exc.errors():
            loc = _data_loc(data, err["loc"])
            if loc in seen:  # one message per place (unions report each member)
                continue
            seen.add(loc)
            prefer_key = err["type"] in ("extra_forbidden", "missing")
            pos = positions.lookup(loc, prefer_key)
            errors.append(RuleError(path, pos.line, pos.column, _message(data, loc, err)))
        return None
    return _Loaded(path, text, model, positions)


def _data_loc(data: Any, loc: tuple[int | str, ...]) -> KeyPath:
    """The part of a pydantic error location that names real keys in the data."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            out.append(part)
            node = node[part]
        elif node is None and isinstance(part, str) and out[-1:] != [part]:
            out.append(part)  # a missing key: name it
            break
        else:
            continue  # a union member tag such as 'str' or 'list[str]'
    return tuple(out)


def _where(data: Any, loc: KeyPath) -> tuple[str, KeyPath]:
    """A human name for the table a location is in, and the location inside it."""
    match loc:
        case ("rules", int(i), *rest):
            rules = data.get("rules") if isinstance(data, dict) else None
            rule = rules[i] if isinstance(rules, list) and i < len(rules) else None
            rid = rule.get("id") if isinstance(rule, dict) else None
            return (f'rule "{rid}"' if isinstance(rid, str) else f"rule #{i + 1}"), tuple(rest)
        case ("zones", str(zone), *rest):
            return f'zone "{zone}"', tuple(rest)
        case ("tests", int(i), *rest):
            cases = data.get("tests") if isinstance(data, dict) else None
            case = cases[i] if isinstance(cases, list) and i < len(cases) else None
            name = case.get("name") if isinstance(case, dict) else None
            return (f'test "{name}"' if isinstance(name, str) else f"test #{i + 1}"), tuple(rest)
        case (("store" | "defaults") as table, *rest):
            return f"[{table}]", tuple(rest)
    return "the file", loc


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    match loc:
        case ():
            return RuleFile
        case ("store",):
            return StoreMeta
        case ("defaults",):
            return Defaults
        case ("zones", str()):
            return Zone
        case ("rules", int()):
            return Rule
        case ("rules", int(), "when"):
            return When
        case ("rules", int(), "cta"):
            return Cta
        case ("tests", int()):
            return RuleTest
        case ("tests", int(), "events", int()):
            return TestEvent
    return None


def _toml(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "a list"
    return str(value)


_KINDS = {
    "string_type": "text in quotes",
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "list_type": 'a list, e.g. ["a", "b"]',
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "timedelta_type": 'a duration in quotes, e.g. "10m"',
    "float_type": "a number",
}


def _message(data: Any, loc: KeyPath, err: Mapping[str, Any]) -> str:
    where, inner = _where(data, loc)
    name = ".".join(str(p) for p in inner if isinstance(p, str)) or where
    kind = err["type"]
    value = err.get("input")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        model = _model_at(loc[:-1])
        hint = ""
        if model is not None:
            close = difflib.get_close_matches(key, list(model.model_fields), n=1, cutoff=0.6)
            if close:
                hint = f' (did you mean "{close[0]}"?)'
        return f'{where}: unknown field "{key}"{hint}'
    if kind == "missing":
        return f'{where}: "{name}" is required' if inner else f"{where} is required"
    if kind in ("enum", "literal_error"):
        field = next((str(p) for p in reversed(loc) if isinstance(p, str)), "")
        choices = _CHOICES.get(field)
        allowed = ", ".join(choices) if choices else str(err.get("ctx", {}).get("expected"))
        return f"{where}: {name} must be one of {allowed}, not {_toml(value)}"
    if kind == "value_error":
        return f"{where}: {name}: {err['ctx']['error']}"
    if kind == "string_pattern_mismatch":
        if name in ("id", "store.id"):
            return (
                f"{where}: id {_toml(value)} is not valid: use lowercase letters, digits, "
                f'"-", "_" and ".", starting with a letter or digit'
            )
        return f"{where}: {name} {_toml(value)} is not in the expected form"
    if kind in _KINDS:
        return f"{where}: {name} must be {_KINDS[kind]}, not {_toml(value)}"
    return f"{where}: {name}: {err['msg']}"


def _merge(loaded: Sequence[_Loaded], errors: list[RuleError]) -> RuleSet:
    store: StoreMeta | None = None
    store_src: dict[str, tuple[Any, Source]] = {}
    zones: dict[str, Zone] = {}
    zone_src: dict[str, Source] = {}
    scanner_src: dict[str, tuple[str, Source]] = {}
    reader_src: dict[str, tuple[str, Source]] = {}
    defaults: Defaults | None = None
    defaults_src: Source | None = None
    engagement: Engagement | None = None
    engagement_src: Source | None = None
    rules: list[Rule] = []
    tests: list[tuple[RuleTest, Source]] = []
    sources: dict[str, Source] = {}

    def error(src: Source, message: str) -> None:
        errors.append(RuleError(src.path, src.line, src.column, message))

    for item in loaded:
        model = item.model
        if model.store is not None:
            merged = dict(store.model_dump(exclude_none=True)) if store else {}
            for key, value in model.store.model_dump(exclude_none=True).items():
                src = item.at(("store", key))
                if key in store_src and store_src[key][0] != value:
                    error(
                        src,
                        f"[store] {key} is {_toml(value)} here but "
                        f"{_toml(store_src[key][0])} at {store_src[key][1]}",
                    )
                    continue
                store_src.setdefault(key, (value, src))
                merged[key] = value
            store = StoreMeta(**merged)
        if model.defaults is not None:
            src = item.at(("defaults",), prefer_key=True)
            if defaults_src is not None:
                error(src, f"[defaults] may appear in one file only (already at {defaults_src})")
            else:
                defaults, defaults_src = model.defaults, src
        if model.engagement is not None:
            src = item.at(("engagement",), prefer_key=True)
            if engagement_src is not None:
                error(
                    src, f"[engagement] may appear in one file only (already at {engagement_src})"
                )
            else:
                engagement, engagement_src = model.engagement, src
        for zone_id, zone in model.zones.items():
            src = item.at(("zones", zone_id), prefer_key=True)
            if not _ZONE_ID.match(zone_id):
                error(
                    src,
                    f'zone id "{zone_id}" is not valid: use lowercase letters, digits, '
                    f'"-" and "_", starting with a letter or digit',
                )
                continue
            if zone_id in zones:
                error(src, f'zone "{zone_id}" is defined twice (first at {zone_src[zone_id]})')
                continue
            zones[zone_id] = zone
            zone_src[zone_id] = src
            for key, devices, what in (
                ("scanners", zone.scanners, "scanner"),
                ("readers", zone.readers, "reader"),
            ):
                for n, device in enumerate(devices):
                    s_src = item.at(("zones", zone_id, key, n))
                    seen = scanner_src if key == "scanners" else reader_src
                    if device in seen:
                        other, other_src = seen[device]
                        error(
                            s_src,
                            f'{what} "{device}" is already in zone "{other}" '
                            f"(at {other_src}); a {what} belongs to one zone",
                        )
                        continue
                    seen[device] = (zone_id, s_src)
        for index, case in enumerate(model.tests):
            tests.append((case, item.at(("tests", index), prefer_key=True)))
        for index, rule in enumerate(model.rules):
            src = item.at(("rules", index, "id"))
            if rule.id in sources:
                error(src, f'duplicate rule id "{rule.id}" (first defined at {sources[rule.id]})')
                continue
            sources[rule.id] = src
            rules.append(rule)
            _check_rule(item, index, rule, error)

    for item in loaded:
        for index, case in enumerate(item.model.tests):
            for n, ev in enumerate(case.events):
                if ev.zone is not None and ev.zone not in zones:
                    error(
                        item.at(("tests", index, "events", n, "zone")),
                        f'test "{case.name}": unknown zone "{ev.zone}"',
                    )
            for n, rule_id in enumerate(case.expect):
                if rule_id not in sources:
                    error(
                        item.at(("tests", index, "expect", n)),
                        f'test "{case.name}": expects an offer of unknown rule "{rule_id}"',
                    )
        for index, rule in enumerate(item.model.rules):
            for key in ("visited", "not_visited"):
                for n, zone_id in enumerate(getattr(rule.when, key)):
                    if zone_id not in zones:
                        error(
                            item.at(("rules", index, "when", key, n)),
                            f'rule "{rule.id}": when.{key} names unknown zone "{zone_id}"',
                        )
            if (
                rule.conversion is not None
                and rule.conversion.zone is not None
                and rule.conversion.zone not in zones
            ):
                error(
                    item.at(("rules", index, "conversion")),
                    f'rule "{rule.id}": conversion names unknown zone "{rule.conversion.zone}"',
                )
            for n, other in enumerate(rule.when.after_offer):
                if other not in sources:
                    error(
                        item.at(("rules", index, "when", "after_offer", n)),
                        f'rule "{rule.id}": when.after_offer names unknown rule "{other}"',
                    )
            for n, zone_id in enumerate(rule.when.zones or ()):
                if zone_id not in zones:
                    path: KeyPath = ("rules", index, "when", "zone")
                    if isinstance(rule.when.zone, list):
                        path = (*path, n)
                    known = ", ".join(sorted(zones)) or "none defined"
                    close = difflib.get_close_matches(zone_id, list(zones), n=1)
                    hint = f' (did you mean "{close[0]}"?)' if close else ""
                    error(
                        item.at(path),
                        f'rule "{rule.id}" uses unknown zone "{zone_id}"{hint} '
                        f"(known zones: {known})",
                    )
    digest = hashlib.sha256()
    for item in loaded:
        digest.update(item.path.name.encode() + b"\0" + item.text.encode() + b"\0")
    return RuleSet(
        version=digest.hexdigest()[:12],
        store=store,
        zones=zones,
        defaults=defaults or Defaults(),
        rules=tuple(rules),
        tests=tuple(tests),
        engagement=engagement or Engagement(),
        zone_sources=zone_src,
        sources=sources,
        files=tuple(item.path for item in loaded),
    )


def _check_rule(item: _Loaded, index: int, rule: Rule, error: Any) -> None:
    when = rule.when
    if when.dwell is not None and rule.on is not EventKind.ZONE_DWELL:
        error(
            item.at(("rules", index, "when", "dwell")),
            f'rule "{rule.id}": "dwell" is only allowed with on = "zone.dwell"',
        )
    if rule.on is EventKind.ZONE_DWELL and when.dwell is None:
        error(
            item.at(("rules", index, "on")),
            f'rule "{rule.id}": on = "zone.dwell" needs when.dwell, e.g. dwell = "30s"',
        )
    if rule.on in (EventKind.VISIT_START, EventKind.VISIT_END) and when.zone is not None:
        error(
            item.at(("rules", index, "when", "zone")),
            f'rule "{rule.id}": {rule.on} events have no zone; remove when.zone',
        )
    for key in ("stayed_at_least", "stayed_at_most"):
        if getattr(when, key) is not None and rule.on is not EventKind.ZONE_EXIT:
            error(
                item.at(("rules", index, "when", key)),
                f'rule "{rule.id}": "{key}" is only allowed with on = "zone.exit"',
            )
    if (
        when.stayed_at_least is not None
        and when.stayed_at_most is not None
        and when.stayed_at_least > when.stayed_at_most
    ):
        error(
            item.at(("rules", index, "when", "stayed_at_most")),
            f'rule "{rule.id}": stayed_at_most is shorter than stayed_at_least: no stay can match',
        )
    if rule.audience == "signage":
        if rule.on in (EventKind.VISIT_START, EventKind.VISIT_END):
            error(
                item.at(("rules", index, "audience")),
                f'rule "{rule.id}": signage shows on a zone\'s screens, so it needs a zone '
                f"event (zone.enter, zone.dwell or zone.exit), not {rule.on}",
            )
        if rule.variants or rule.holdout:
            error(
                item.at(("rules", index, "audience")),
                f'rule "{rule.id}": signage is anonymous: variants and holdout need shoppers',
            )
    seen_variants: set[str] = set()
    for n, variant in enumerate(rule.variants):
        if variant.id in seen_variants:
            error(
                item.at(("rules", index, "variants", n, "id")),
                f'rule "{rule.id}": variant "{variant.id}" is defined twice',
            )
        seen_variants.add(variant.id)
    if isinstance(when.zone, list) and not when.zone:
        error(
            item.at(("rules", index, "when", "zone")),
            f'rule "{rule.id}": when.zone is an empty list; name at least one zone',
        )
