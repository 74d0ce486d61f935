"""A real mosquitto broker on a free loopback port, and independent subscribers to check it.

- :class:`Mosquitto` starts ``mosquitto -c <generated config>``, waits until the
  port accepts connections, and stops it (SIGTERM, then SIGKILL). ``start``,
  ``stop``, ``kill``, ``pause`` and ``resume`` keep the same port, so a client
  can reconnect to a restarted broker.
- :class:`Subscriber` is a plain paho client (MQTT 5 by default) that records
  every message, with its properties.
- :class:`MosquittoSub` runs the ``mosquitto_sub`` command, so at least one
  check goes through a client that shares no code with ours.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from proximity.delivery.url import BrokerUrl

START_TIMEOUT_S = 5.0


def find_mosquitto() -> str | None:
    return find_tool("mosquitto")


def find_tool(name: str) -> str | None:
    """A mosquitto program on PATH, or in the sbin/bin folders Debian puts them in."""
    candidates = (f"/usr/sbin/{name}", f"/usr/bin/{name}", f"/usr/local/sbin/{name}")
    return shutil.which(name) or next((p for p in candidates if Path(p).exists()), None)


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
            self._proc = subprocess.Popen(
                [self.binary, "-c", str(self.config)], stdout=log, stderr=log
            )
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


class Subscriber:
    """A paho client subscribed (SUBACK received) to ``topic``; records every message."""

    def __init__(
        self,
        port: int,
        topic: str = "proximity/#",
        protocol: MQTTProtocolVersion = MQTTProtocolVersion.MQTTv5,
    ) -> None:
        self.messages: list[mqtt.MQTTMessage] = []
        subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=protocol)
        self.client.on_message = lambda client, userdata, msg: self.messages.append(msg)
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe(topic, qos=1)
        if not subscribed.wait(5):
            self.close()
            raise RuntimeError(f"no SUBACK for {topic}")

    def payloads(self, topic_suffix: str = "") -> list[bytes]:
        return [bytes(m.payload) for m in self.messages if m.topic.endswith(topic_suffix)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
        self.client._reset_sockets()  # paho closes its wake-up socket pair only in __del__


class MosquittoSub:
    """``mosquitto_sub`` in a subprocess, running once it has its SUBACK.

    Each message comes out as one line in ``fmt`` (see ``man mosquitto_sub``,
    OUTPUT FORMAT; ``%x`` is the payload in hex, so bytes compare exactly).
    """

    def __init__(
        self,
        port: int,
        topic: str,
        *,
        count: int,
        fmt: str = "%t %x",
        extra: Sequence[str] = ("-V", "mqttv5"),
        wait_s: int = 10,
    ) -> None:
        binary = find_tool("mosquitto_sub")
        if binary is None:
            raise RuntimeError("mosquitto_sub is not installed: run `make test`")
        stdbuf = shutil.which("stdbuf")  # line-buffer its output, to see the SUBACK at once
        command = [
            *([stdbuf, "-oL"] if stdbuf else []),
            binary,
            "-d",  # debug lines tell when the subscription is in place
            *("-h", "127.0.0.1", "-p", str(port), "-t", topic, "-q", "1"),
            *("-C", str(count), "-W", str(wait_s), "-F", fmt, *extra),
        ]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self._debug: list[str] = []
        for line in self.proc.stdout:
            self._debug.append(line)
            if line.startswith("Subscribed"):
                return
        raise RuntimeError(f"mosquitto_sub did not subscribe: {self._debug}")

    async def lines(self, starting: str = "proximity/") -> list[str]:
        """The message lines (debug lines left out), once mosquitto_sub has exited."""
        out, err = await asyncio.to_thread(self.proc.communicate, timeout=15)
        assert self.proc.returncode == 0, f"mosquitto_sub failed ({self.proc.returncode}): {err}"
        return [line for line in out.splitlines() if line.startswith(starting)]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


async def eventually(condition: Callable[[], object], limit_s: float = 5.0) -> None:
    """Wait (polling, without blocking the loop) until ``condition()`` is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"condition not met within {limit_s:g}s")
        await asyncio.sleep(0.01)
