"""A real mosquitto broker on a free loopback port, for the simulator and the tests.

:class:`Mosquitto` starts ``mosquitto -c <generated config>``, waits until the
port accepts connections, and stops it (SIGTERM, then SIGKILL). ``start``,
``stop``, ``kill``, ``pause`` and ``resume`` keep the same port, so a client can
reconnect to a restarted broker (the tests use that to show what survives an
outage). The generated configuration carries what DESIGN.md lists as facts about
mosquitto: a large ``max_queued_messages`` (the default silently drops QoS 1
messages to a slow subscriber) and ``user root`` when run as root.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from firmware_sim.processes import find_tool, spawn
from proximity.delivery.url import BrokerUrl

START_TIMEOUT_S = 5.0


def find_mosquitto() -> str | None:
    return find_tool("mosquitto")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Mosquitto:
    """One mosquitto process on ``127.0.0.1:port``."""

    def __init__(
        self,
        binary: str,
        workdir: Path,
        extra_config: str = "",
        port: int | None = None,
        persistent: bool = False,
        anonymous: bool = True,
    ) -> None:
        """``persistent``: sessions and queued messages are saved to ``workdir`` every second,
        so a persistent subscriber's session survives a SIGKILL of the broker."""
        self.binary = binary
        self.port = port or free_port()
        self.config = workdir / "mosquitto.conf"
        self.log = workdir / "mosquitto.log"
        lines = [
            f"listener {self.port} 127.0.0.1",
            f"allow_anonymous {'true' if anonymous else 'false'}",
            # the default (1000) silently drops QoS 1 messages to a slow subscriber
            "max_queued_messages 100000",
            "set_tcp_nodelay true",  # as deploy/mosquitto/mosquitto.conf
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]
        if os.geteuid() == 0:
            # as root, mosquitto switches to user "mosquitto" (or "nobody"), which cannot
            # read the test's files (password file, persistence) in a private temporary
            # folder; "user root" keeps it as it is
            lines.append("user root")
        if persistent:
            lines += [
                "persistence true",
                f"persistence_location {workdir}/",
                "autosave_interval 1",
            ]
        else:
            lines.append("persistence false")
        self.config.write_text("\n".join(lines) + "\n" + extra_config)
        self._proc: subprocess.Popen[bytes] | None = None
        self._paused = False

    @property
    def url(self) -> BrokerUrl:
        return BrokerUrl.tcp("127.0.0.1", self.port)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start (or restart) on the same port; returns once the port accepts connections."""
        with self.log.open("ab") as log:
            # spawned to die with its parent: never left behind by a killed run
            self._proc = spawn([self.binary, "-c", str(self.config)], stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited at start:\n{self.log.read_text()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.01)
        self.kill()
        raise RuntimeError(f"mosquitto did not listen on {self.port}:\n{self.log.read_text()}")

    def stop(self) -> None:
        """Graceful: SIGTERM (clients get their connection closed), SIGKILL after 5 s."""
        if self._proc is None:
            return
        self.resume()  # a stopped process would not act on SIGTERM
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait(5)
        self._proc = None

    def kill(self) -> None:
        """Abrupt: SIGKILL, as a crash or a pulled plug."""
        if self._proc is None:
            return
        self._proc.kill()
        self._proc.wait(5)
        self._proc = None
        self._paused = False

    def pause(self) -> None:
        """SIGSTOP: the connections stay open but nothing is answered (a hung broker)."""
        if self._proc is not None and not self._paused:
            self._proc.send_signal(signal.SIGSTOP)
            self._paused = True

    def resume(self) -> None:
        if self._proc is not None and self._paused:
            self._proc.send_signal(signal.SIGCONT)
            self._paused = False
