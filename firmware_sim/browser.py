"""A real browser for the tests and the benchmarks: Debian's ``chromium``, headless.

Playwright (from PyPI) cannot download its own browser here (and must not: ``playwright
install`` is never run), so the system's Chromium is started headless on a free loopback
DevTools port with a new empty profile, and Playwright connects to it over the Chrome
DevTools Protocol (``connect_over_cdp``). ``tests/browser.py`` makes fixtures of it;
``bench/trading_day.py`` keeps the ops console open in it during a crowd.

The flags are the ones this machine needs: without the background-networking ones
Chromium keeps trying (and failing) to reach Google's hosts.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from firmware_sim.mosquitto import free_port
from firmware_sim.processes import spawn

if TYPE_CHECKING:
    from playwright.async_api import ViewportSize

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",  # the tests run as root
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
LAPTOP: ViewportSize = {"width": 1280, "height": 800}
PHONE: ViewportSize = {"width": 375, "height": 740}
START_TIMEOUT_S = 15.0
MISSING = (
    "chromium is not installed (looked on PATH and for /usr/bin/chromium): run "
    "`make test`, which installs it (scripts/system-deps.sh)"
)


def find_chromium() -> str | None:
    """Debian's chromium (``/usr/bin/chromium``), or whatever ``chromium`` is on PATH."""
    for candidate in (shutil.which("chromium"), "/usr/bin/chromium"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


@dataclass(frozen=True, slots=True)
class Chromium:
    """One headless Chromium, listening for DevTools on ``endpoint`` (loopback)."""

    process: subprocess.Popen[bytes]
    endpoint: str
    """``http://127.0.0.1:PORT``, what ``connect_over_cdp`` takes."""
    version: str
    profile: Path
    log: Path


def start_chromium(binary: str, workdir: Path) -> Chromium:
    """Start ``binary`` headless with a new profile in ``workdir``; returns once DevTools
    answers (RuntimeError with its log if it exits or does not answer in time).

    It runs in a process group of its own (:func:`firmware_sim.processes.spawn`): the
    browser, its renderers and helpers, all stopped together by :func:`stop_chromium`."""
    port = free_port()
    profile = workdir / "profile"
    profile.mkdir()
    log = workdir / "chromium.log"
    with log.open("ab") as out:
        proc = spawn(
            [
                binary,
                *CHROMIUM_FLAGS,
                f"--user-data-dir={profile}",
                "--remote-debugging-address=127.0.0.1",
                f"--remote-debugging-port={port}",
                "about:blank",
            ],
            stdout=out,
            stderr=out,
        )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited at start ({proc.returncode}):\n{log.read_text()}")
        try:
            url = f"{endpoint}/json/version"  # our own loopback http:// endpoint
            with urllib.request.urlopen(url, timeout=1) as answer:  # noqa: S310
                version = json.load(answer).get("Browser", "?")
        except OSError:
            time.sleep(0.05)
            continue
        return Chromium(proc, endpoint, str(version), profile, log)
    stop_chromium(proc)
    raise RuntimeError(f"chromium did not answer on {endpoint}:\n{log.read_text()}")


def stop_chromium(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to its process group (the browser and its renderers), SIGKILL after 5 s."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(5)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
    except ProcessLookupError:
        proc.wait(5)


def _group_stats(pgid: int) -> dict[int, list[str]]:
    """The ``/proc/<pid>/stat`` fields after the command name of each live process in
    process group ``pgid``, by pid."""
    found: dict[int, list[str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        if int(fields[2]) == pgid:  # pgrp
            found[int(entry.name)] = fields
    return found


def group_cpu_seconds(pgid: int) -> float:
    """CPU time so far (user + system) of every live process in process group ``pgid``
    (a Chromium's browser, renderers, GPU and utility processes), from ``/proc``.

    A process that exited is no longer counted: sample while the group runs."""
    ticks = sum(int(f[11]) + int(f[12]) for f in _group_stats(pgid).values())  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def pin_group(pgid: int, cpus: set[int]) -> int:
    """Run every process of group ``pgid`` on ``cpus`` only (those it starts later inherit
    it); how many processes were pinned."""
    pinned = 0
    for pid in _group_stats(pgid):
        try:
            os.sched_setaffinity(pid, cpus)
        except OSError:  # gone meanwhile
            continue
        pinned += 1
    return pinned
