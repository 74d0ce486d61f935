"""``[[nodes]]`` in the gateway config: validated on load, and by `proximity config check`
against the floor plan or the rules; wired into the daemon as the BLE backend."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from proximity.adapters.ble.merged import MergedBackend
from proximity.adapters.nodes.backend import NodeBackend
from proximity.cli.main import main
from proximity.clock import SystemClock
from proximity.config import load_settings
from proximity.errors import ConfigError
from proximity.wiring import build_runtime

ROOT = Path(__file__).resolve().parent.parent
PLAN = ROOT / "firmware_sim" / "stores" / "example.toml"
NODES = """
[ble]
backend = "nodes"

[[nodes]]
source = "ours"
node = "pi-entrance"
scanner = "gw-entrance"

[[nodes]]
source = "espresense"
node = "gw-coffee"

[[nodes]]
source = "omg"
node = "omg-bakery"
scanner = "gw-bakery"
broker = "mqtt://ha.store.lan:1883"
username = "gw-reader"
password = "s3cret"
max_rate = 200
silence = "2m"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_nodes_are_read_with_their_defaults(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, '[broker]\nurl = "mqtt://127.0.0.1:1883"\n' + NODES))
    ours, espresense, omg = settings.nodes
    assert (ours.scanner_id, espresense.scanner_id, omg.scanner_id) == (
        "gw-entrance",
        "gw-coffee",
        "gw-bakery",
    )
    assert (ours.filtered, espresense.filtered, omg.filtered) == (False, True, False)
    assert omg.silence_after.total_seconds() == 120
    silences = [n.silence_after.total_seconds() for n in (ours, espresense)]
    assert silences == [15, 60]  # by source, from how often each speaks unprompted
    assert "s3cret" not in repr(omg)


def test_the_nodes_backend_connects_once_per_broker_and_credentials(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, '[broker]\nurl = "mqtt://gw:pw@127.0.0.1:1883"\n' + NODES)
    )
    backend = build_runtime(settings, SystemClock()).adapter.backend
    assert isinstance(backend, NodeBackend)
    shared, own = backend.brokers
    assert [spec.node for spec in shared.nodes] == ["pi-entrance", "gw-coffee"]
    # MQTT 3.1.1 unless [broker] protocol says 5: the readings use nothing of MQTT 5
    assert (shared.url.host, shared.url.username, shared.protocol) == ("127.0.0.1", "gw", "3.1.1")
    assert [spec.node for spec in own.nodes] == ["omg-bakery"]
    assert (own.url.host, own.url.username) == ("ha.store.lan", "gw-reader")
    assert own.url.password is not None
    assert own.url.password.get_secret_value() == "s3cret"
    assert (own.nodes[0].max_rate, own.nodes[0].silence_s) == (200.0, 120.0)
    assert shared.client_id != own.client_id
    explicit = load_settings(
        write(
            tmp_path,
            '[broker]\nurl = "mqtt://gw:pw@127.0.0.1:1883"\nprotocol = "5"\n' + NODES,
        )
    )
    backend = build_runtime(explicit, SystemClock()).adapter.backend
    assert isinstance(backend, NodeBackend)
    assert {b.protocol for b in backend.brokers} == {"5"}


def test_local_radios_and_nodes_are_read_together(tmp_path: Path) -> None:
    text = NODES.replace(
        'backend = "nodes"', 'backend = "bleak"\nadapters = { "gw-checkout" = "hci0" }'
    )
    settings = load_settings(write(tmp_path, text))
    backend = build_runtime(settings, SystemClock()).adapter.backend
    assert isinstance(backend, MergedBackend)
    radio, nodes = backend.parts
    assert type(radio).__name__ == "Radios"  # the local radios of ble.adapters
    assert isinstance(nodes, NodeBackend)
    assert [f.name for f in backend.metric_families()] == [f.name for f in nodes.metric_families()]
    # the embedded broker (the default) is where the nodes publish, in MQTT 3.1.1
    assert (str(nodes.brokers[0].url), nodes.brokers[0].protocol) == (
        "mqtt://127.0.0.1:1883",
        "3.1.1",
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[[nodes]]\nsource = "zigbee"\nnode = "x"\n',
            "nodes.0.source: Input should be 'ours', 'espresense' or 'omg'",
        ),
        ('[[nodes]]\nsource = "ours"\n', "nodes.0.node: Field required"),
        ('[[nodes]]\nsource = "ours"\nnode = "a/b"\n', "nodes.0.node"),
        ('[[nodes]]\nsource = "ours"\nnode = "a"\nport = 1\n', "nodes.0.port: unknown key"),
        ('[[nodes]]\nsource = "ours"\nnode = "a"\nmax_rate = 0\n', "nodes.0.max_rate"),
        (
            '[ble]\nbackend = "nodes"\n[[nodes]]\nsource = "ours"\nnode = "a"\n'
            '[[nodes]]\nsource = "ours"\nnode = "a"\n',
            "nodes: ours node 'a' is listed twice",
        ),
        (
            '[ble]\nbackend = "nodes"\n[[nodes]]\nsource = "ours"\nnode = "a"\nscanner = "s"\n'
            '[[nodes]]\nsource = "omg"\nnode = "b"\nscanner = "s"\n',
            "nodes: scanner 's' is given to both ours node 'a' and omg node 'b'",
        ),
        ('[ble]\nbackend = "nodes"\n', 'ble.backend = "nodes" needs at least one [[nodes]] table'),
        ('[[nodes]]\nsource = "ours"\nnode = "a"\n', 'not "sim"'),
        (
            '[ble]\nbackend = "bleak"\nadapters = { "s" = "hci0" }\n'
            '[[nodes]]\nsource = "ours"\nnode = "a"\nscanner = "s"\n',
            "scanner 's' of ours node 'a' is also a local radio",
        ),
    ],
)
def test_bad_nodes_are_reported_clearly(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        load_settings(path)
    assert str(path) in str(caught.value)


def test_the_embedded_broker_on_any_port_cannot_take_nodes(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nembedded_port = 0\n" + NODES)
    with pytest.raises(ConfigError, match=r"needs a fixed broker\.embedded_port"):
        load_settings(path)
    # a node on a broker of its own does not care
    load_settings(
        write(
            tmp_path,
            "[broker]\nembedded_port = 0\n"
            + NODES.replace(
                'scanner = "gw-entrance"', 'scanner = "gw-entrance"\nbroker = "mqtt://b.lan"'
            ).replace('node = "gw-coffee"', 'node = "gw-coffee"\nbroker = "mqtt://b.lan"'),
        )
    )


def test_config_check_knows_the_nodes_scanners(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, NODES)
    assert main(["config", "check", str(path)]) == 0
    captured = capsys.readouterr()
    assert "3 remote scanner nodes" in captured.out
    assert captured.err == ""  # every node's scanner is in a zone of the example rules
    # a node whose scanner no zone lists: a warning without a floor plan...
    write(tmp_path, NODES.replace('scanner = "gw-bakery"', 'scanner = "gw-garden"'))
    assert main(["config", "check", str(path)]) == 0
    assert "omg node 'omg-bakery' is scanner 'gw-garden', which no zone" in capsys.readouterr().err
    # ...and an error with one: the plan's scanners are the ones that place shoppers
    plan = f'[presence]\nmethod = "fused"\nfloor_plan = "{PLAN}"\n'
    write(tmp_path, plan + NODES.replace('scanner = "gw-bakery"', 'scanner = "gw-garden"'))
    assert main(["config", "check", str(path)]) == 1
    err = capsys.readouterr().err
    node = "omg node 'omg-bakery' is scanner 'gw-garden'"
    assert f"{path}: nodes: {node}, which is not in the floor plan" in err
    write(tmp_path, plan + NODES)
    assert main(["config", "check", str(path)]) == 0
