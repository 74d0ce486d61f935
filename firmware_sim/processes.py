"""Child processes the simulator starts (dbus-daemon, mosquitto, ``proximity run``), and
how it makes sure none outlives it.

Two guards, because a developer stops the simulator in every possible way:

- :func:`die_with_parent` runs in the child before ``exec``: Linux sends the child
  SIGTERM when the simulator dies, even by SIGKILL or a pytest timeout that skips
  every ``finally``.
- :func:`stop_process` is the orderly way: SIGTERM, a grace period, then SIGKILL.

:func:`spawn` is the one place the simulator starts a program: always one it found
itself (:func:`find_tool`) or this Python, with an argument list, never a shell.
"""

from __future__ import annotations

import ctypes
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """In the child, before exec: get SIGTERM when the process that started it dies."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def preexec() -> Callable[[], None] | None:
    """The ``preexec_fn`` for children that must not outlive us (Linux only)."""
    return die_with_parent if sys.platform == "linux" else None


def spawn(
    argv: Sequence[str],
    *,
    stdout: int | IO[bytes] | None = None,
    stderr: int | IO[bytes] | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` (no shell, no stdin) as a child that dies with this process.

    The child gets a process group of its own: Ctrl-C in a terminal signals only the
    simulator, which then stops its children in order (the daemon before the broker
    it publishes to and the bus it scans on).
    """
    return subprocess.Popen(  # noqa: S603 - our own argv: a found binary or sys.executable
        list(argv),
        stdout=stdout,
        stderr=stderr,
        stdin=subprocess.DEVNULL,
        env=None if env is None else dict(env),
        cwd=cwd,
        preexec_fn=preexec(),
        process_group=0,
    )


def stop_process(proc: subprocess.Popen[bytes] | None, grace_s: float = 5.0) -> int | None:
    """SIGTERM, then SIGKILL after ``grace_s``; the exit code (None if never started)."""
    if proc is None:
        return None
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(grace_s)
    return proc.returncode


def find_tool(name: str) -> str | None:
    """A program on PATH, or in the sbin/bin folders Debian puts daemons in."""
    folders = ("/usr/sbin", "/usr/bin", "/usr/local/sbin", "/bin")
    candidates = (f"{folder}/{name}" for folder in folders)
    return shutil.which(name) or next((p for p in candidates if Path(p).exists()), None)
