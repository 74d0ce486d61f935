"""The shared output format of every benchmark: a printed table and one JSON file."""

from __future__ import annotations

import json
import os
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

OUT = Path(__file__).parent / "out"


@dataclass(frozen=True)
class Row:
    case: str
    metric: str
    unit: str
    value: float
    baseline_name: str | None = None
    baseline_value: float | None = None
    higher_is_better: bool = True

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
        return row


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
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}"


def write(name: str, rows: list[Row]) -> Path:
    """Print the table and write bench/out/<name>.json."""
    width = max(len(r.case) for r in rows)
    print(f"\n{name}")
    print(f"{'case':<{width}}  {'value':>14}  unit   {'baseline':>28}  better")
    for r in rows:
        base = f"{r.baseline_name} {_num(r.baseline_value)}" if r.baseline_value is not None else ""
        better = f"{r.better:.1f}x" if r.better is not None else ""
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
