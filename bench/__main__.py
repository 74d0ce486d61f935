"""Run every benchmark: python -m bench [--readme] [NAME ...].

Each benchmark prints its table and writes bench/out/<name>.json; at the end one
combined table of every row is printed. With ``--readme``, the README's
Performance table is rewritten from those JSON files (between its
``<!-- bench:start -->`` and ``<!-- bench:end -->`` markers), so the two always match.
"""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

from bench.report import OUT, load, machine, markdown

BENCHMARKS = [
    "ble_pipeline",
    "rules_vs_peer",
    "delivery",
    "qr_decode",
    "nfc_tap",
    "trading_day",
    "sim_scale",
    "node_ingest",
    "presence_accuracy",
    "crash_points",
    "chain",
    "chain_drill",
]
README = Path(__file__).resolve().parent.parent / "README.md"
_TABLE = re.compile(r"(<!-- bench:start -->\n).*?(<!-- bench:end -->)", re.S)


def main(argv: list[str]) -> int:
    readme = "--readme" in argv
    names = [a for a in argv if a != "--readme"] or BENCHMARKS
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        print(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
        return 2
    for i, name in enumerate(names, 1):
        print(f"[{i}/{len(names)}] {name}", flush=True)
        importlib.import_module(f"bench.{name}").main()
    done = [n for n in BENCHMARKS if (OUT / f"{n}.json").exists()]
    docs = load(done)
    print(f"\nall benchmarks ({machine(docs)})\n")
    print(markdown(docs))
    if readme:
        update_readme(docs)
    return 0


def update_readme(docs: list[dict[str, object]]) -> None:
    """Rewrite the README's table from ``docs``; a benchmark module with a ``readme_row``
    predicate puts only those of its rows there (its own table has them all)."""
    text = README.read_text()
    shown = []
    for doc in docs:
        try:
            module = importlib.import_module(f"bench.{doc['name']}")
        except ImportError:  # a file in bench/out of no benchmark here
            module = None
        keep = getattr(module, "readme_row", None)
        rows = doc["rows"]
        if keep is not None:
            rows = [row for row in rows if keep(row)]  # type: ignore[attr-defined]
        shown.append({**doc, "rows": rows})
    table = f"Measured on {machine(shown)}:\n\n{markdown(shown)}"
    new, count = _TABLE.subn(lambda m: m.group(1) + table + m.group(2), text)
    if count != 1:
        raise SystemExit("README.md has no <!-- bench:start --> ... <!-- bench:end --> block")
    README.write_text(new)
    print(f"-> {README.name} updated")


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
