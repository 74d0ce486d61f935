"""The shared output format of every benchmark: a printed table and one JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

OUT = Path(__file__).parent / "out"
SATURATED = 0.8
"""A process using more than this share of one core is saturated: its latency is the
machine's, not the code's."""


@dataclass(frozen=True)
class Row:
    case: str
    metric: str
    unit: str
    value: float
    baseline_name: str | None = None
    baseline_value: float | None = None
    higher_is_better: bool = True
    cpu_share: float | None = None
    """The measured process's CPU time over the run's wall time (1.0 is one whole core),
    for a latency row: whether the figure was taken under load or at leisure."""

    @property
    def saturated(self) -> bool | None:
        return None if self.cpu_share is None else self.cpu_share > SATURATED

    @property
    def better(self) -> float | None:
        if self.baseline_value is None or self.baseline_value == 0 or self.value == 0:
            return None
        ratio = self.value / self.baseline_value
        return ratio if self.higher_is_better else 1 / ratio

    def as_json(self) -> dict[str, object]:
        row: dict[str, object] = {
            "case": self.case,
            "metric": self.metric,
            "unit": self.unit,
            "value": self.value,
        }
        if self.baseline_name is not None and self.baseline_value is not None:
            row["baseline"] = {"name": self.baseline_name, "value": self.baseline_value}
            row["better"] = round(self.better or 0.0, 3)
        if self.cpu_share is not None:
            row["cpu_share"] = round(self.cpu_share, 3)
            row["saturated"] = self.saturated
        return row


def cpu_seconds(pid: int | None = None) -> float | None:
    """A process's CPU time so far (user + system, every thread), in seconds, from
    ``/proc/<pid>/stat``; this process's by default. None once it has gone.

    This process's own comes from its CPU clock, to the nanosecond: ``/proc`` counts in
    clock ticks (10 ms), which would make a short run's share 0."""
    if pid is None:
        return time.process_time()
    try:
        stat = Path(f"/proc/{pid or 'self'}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class CpuMeter:
    """A process's CPU share over a stretch of wall time: :meth:`sample` at its start, as
    often as convenient while it runs (the last sample before the process exits counts),
    and at its end; :attr:`share` is the CPU seconds between the first and the last sample
    over the wall seconds between them (1.0 is one whole core)."""

    def __init__(self, pid: int | None = None) -> None:
        self.pid = pid
        self.first: tuple[float, float] | None = None
        self.last: tuple[float, float] | None = None

    def sample(self) -> None:
        cpu = cpu_seconds(self.pid)
        if cpu is None:
            return
        point = (time.monotonic(), cpu)
        if self.first is None:
            self.first = point
        self.last = point

    @property
    def share(self) -> float | None:
        if self.first is None or self.last is None or self.last[0] <= self.first[0]:
            return None
        return (self.last[1] - self.first[1]) / (self.last[0] - self.first[0])


def load_text(share: float | None, who: str = "daemon") -> str:
    """How loaded the measured process was, for a row's case text:
    ``"daemon CPU 98% of a core, saturated"``."""
    if share is None:
        return f"{who} CPU not measured"
    text = f"{who} CPU {share:.0%} of a core"
    return f"{text}, saturated" if share > SATURATED else text


@contextmanager
def one_core() -> Iterator[None]:
    """Pin this process to one CPU while timing (restored afterwards)."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(before)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _num(value: float) -> str:
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:.2f}"


def ratio(better: float) -> str:
    return f"{better:.2f}x" if better < 10 else f"{better:.0f}x"


def write(name: str, rows: list[Row]) -> Path:
    """Print the table and write bench/out/<name>.json."""
    width = max(len(r.case) for r in rows)
    print(f"\n{name}")
    print(f"{'case':<{width}}  {'value':>14}  unit   {'baseline':>28}  better")
    for r in rows:
        base = f"{r.baseline_name} {_num(r.baseline_value)}" if r.baseline_value is not None else ""
        better = ratio(r.better) if r.better is not None else ""
        print(f"{r.case:<{width}}  {_num(r.value):>14}  {r.unit:<5}  {base:>40}  {better}")
    OUT.mkdir(exist_ok=True)
    doc = {
        "name": name,
        "commit": _commit(),
        "machine": {"cpu": _cpu(), "cores": os.cpu_count(), "python": platform.python_version()},
        "rows": [r.as_json() for r in rows],
    }
    path = OUT / f"{name}.json"
    path.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"-> {path.relative_to(Path.cwd()) if path.is_relative_to(Path.cwd()) else path}")
    return path


def load(names: list[str]) -> list[dict[str, Any]]:
    """The JSON documents of these benchmarks, as written by :func:`write`."""
    return [json.loads((OUT / f"{name}.json").read_text()) for name in names]


def markdown(docs: list[dict[str, Any]]) -> str:
    """One table of every row of these benchmarks, for the README."""
    lines = [
        "| benchmark | case | Proximity | compared with | ratio |",
        "| --- | --- | --- | --- | --- |",
    ]
    for doc in docs:
        for n, row in enumerate(doc["rows"]):
            value = f"{_num(row['value'])} {row['unit']}"
            base = row.get("baseline")
            against = f"{base['name']}: {_num(base['value'])}" if base else ""
            better = ratio(row["better"]) if base and row.get("better") else ""
            name = f"`{doc['name']}`" if n == 0 else ""
            lines.append(f"| {name} | {row['case']} | {value} | {against} | {better} |")
    return "\n".join(lines) + "\n"


def machine(docs: list[dict[str, Any]]) -> str:
    """Where these figures were measured, e.g. "AMD EPYC, 2 cores, Python 3.11.7"."""
    if not docs:
        return "unknown"
    m = docs[0]["machine"]
    return f"{m['cpu']}, {m['cores']} cores, Python {m['python']}"
