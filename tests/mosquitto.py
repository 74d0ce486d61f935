"""A real mosquitto broker on a free loopback port, and independent subscribers to check it.

- :class:`Mosquitto` (from :mod:`firmware_sim.mosquitto`, which the simulator's
  live mode shares) starts ``mosquitto`` on a free port and stops it; ``start``,
  ``stop``, ``kill``, ``pause`` and ``resume`` keep the same port.
- :class:`Subscriber` is a plain paho client (MQTT 5 by default) that records
  every message, with its properties.
- :class:`MosquittoSub` runs the ``mosquitto_sub`` command, so at least one
  check goes through a client that shares no code with ours.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from firmware_sim.mosquitto import Mosquitto, find_mosquitto, free_port
from firmware_sim.processes import find_tool

__all__ = [
    "Mosquitto",
    "MosquittoSub",
    "Subscriber",
    "eventually",
    "find_mosquitto",
    "find_tool",
    "free_port",
]


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


ACL = Path(__file__).resolve().parent.parent / "deploy" / "mosquitto" / "proximity.acl"


@contextmanager
def secured_broker(tmp_path: Path, users: Mapping[str, str]) -> Iterator[Mosquitto]:
    """A mosquitto with the shipped ACL (deploy/mosquitto/proximity.acl), no anonymous
    clients and ``users`` (name → password) in its password file."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    passwd = tmp_path / "proximity.passwd"
    for n, (user, password) in enumerate(users.items()):
        flags = ["-b", "-c"] if n == 0 else ["-b"]
        subprocess.run(
            ["mosquitto_passwd", *flags, str(passwd), user, password],
            check=True,
            capture_output=True,
        )
    broker = Mosquitto(
        binary, tmp_path, anonymous=False, extra_config=f"password_file {passwd}\nacl_file {ACL}\n"
    )
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


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
