"""TLS to the broker, with a certificate authority made by the test (openssl)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from proximity.cli.main import main
from proximity.clock import VirtualClock
from proximity.delivery._bridge import TlsFiles
from proximity.delivery.publisher import MqttPublisher
from proximity.delivery.url import BrokerUrl
from proximity.errors import BrokerUnavailable
from tests.factories import T0
from tests.mosquitto import Mosquitto, find_mosquitto
from tests.test_publisher import make_offer


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(name: str, tmp: Path) -> None:
    openssl(
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-days",
        "2",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.crt",
        "-subj",
        f"/CN={name}",
        cwd=tmp,
    )


def make_cert(name: str, ca: str, tmp: Path, ip: bool = False) -> None:
    openssl(
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
        "-keyout",
        f"{name}.key",
        "-out",
        f"{name}.csr",
        "-subj",
        f"/CN={name}",
        cwd=tmp,
    )
    ext = tmp / f"{name}.ext"
    ext.write_text("subjectAltName = IP:127.0.0.1\n" if ip else "basicConstraints = CA:FALSE\n")
    openssl(
        "x509",
        "-req",
        "-in",
        f"{name}.csr",
        "-CA",
        f"{ca}.crt",
        "-CAkey",
        f"{ca}.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        f"{name}.crt",
        "-extfile",
        str(ext),
        cwd=tmp,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two certificate authorities (the store's and a rogue one) and their certificates."""
    tmp = tmp_path_factory.mktemp("pki")
    make_ca("store-ca", tmp)
    make_ca("rogue-ca", tmp)
    make_cert("broker", "store-ca", tmp, ip=True)
    make_cert("gateway", "store-ca", tmp)
    make_cert("intruder", "rogue-ca", tmp)
    return tmp


def tls_mosquitto(pki: Path, workdir: Path, require_certificate: bool = True) -> Mosquitto:
    """A mosquitto with a TLS listener only, its certificate signed by the store's CA."""
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    return Mosquitto(
        binary,
        workdir,
        extra_config=(
            f"cafile {pki}/store-ca.crt\ncertfile {pki}/broker.crt\n"
            f"keyfile {pki}/broker.key\n"
            f"require_certificate {'true' if require_certificate else 'false'}\n"
        ),
    )


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path) -> Mosquitto:
    broker = tls_mosquitto(pki, tmp_path)
    broker.start()
    yield broker  # type: ignore[misc]
    broker.stop()


def files(tmp: Path, ca: str, cert: str) -> TlsFiles:
    return TlsFiles(str(tmp / f"{ca}.crt"), str(tmp / f"{cert}.crt"), str(tmp / f"{cert}.key"))


async def test_tls_with_a_client_certificate(tls_broker: Mosquitto, pki: Path) -> None:
    url = BrokerUrl.parse(f"mqtts://127.0.0.1:{tls_broker.port}")
    async with MqttPublisher(
        url,
        store="store-001",
        gateway="gw-1",
        client_id="gw-tls",
        tls=files(pki, "store-ca", "gateway"),
        clock=VirtualClock(T0),
    ) as pub:
        assert await pub.publish_offer("s-token-1", make_offer())


@pytest.mark.parametrize(
    ("ca", "cert"),
    [
        ("store-ca", "intruder"),  # a certificate the broker's CA did not sign
        ("rogue-ca", "gateway"),  # a broker certificate the gateway does not trust
    ],
)
async def test_a_wrong_certificate_is_refused(
    tls_broker: Mosquitto, pki: Path, ca: str, cert: str
) -> None:
    url = BrokerUrl.parse(f"mqtts://127.0.0.1:{tls_broker.port}")
    with pytest.raises(BrokerUnavailable):
        async with MqttPublisher(
            url,
            store="store-001",
            gateway="gw-1",
            client_id="gw-bad",
            tls=files(pki, ca, cert),
            connect_timeout=2,
        ):
            pass


def app(port: int, *options: str) -> subprocess.Popen[str]:
    """``proximity app`` for one offer to s-token-1, on the TLS broker at ``port``."""
    return subprocess.Popen(
        [
            *(sys.executable, "-m", "proximity", "app", "--shopper", "s-token-1", "--count", "1"),
            *("--broker", f"mqtts://127.0.0.1:{port}", *options),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("client_cert", [False, True])
async def test_proximity_app_on_a_tls_broker_with_its_own_ca(
    pki: Path, tmp_path: Path, client_cert: bool
) -> None:
    broker = tls_mosquitto(pki, tmp_path, require_certificate=client_cert)
    broker.start()
    url = BrokerUrl.parse(f"mqtts://127.0.0.1:{broker.port}")
    options = ["--ca-file", str(pki / "store-ca.crt")]
    if client_cert:
        options += [
            "--client-cert",
            str(pki / "gateway.crt"),
            "--client-key",
            str(pki / "gateway.key"),
        ]
    shopper = app(broker.port, *options)
    try:
        assert shopper.stdout is not None
        listening = shopper.stdout.readline()  # printed once subscribed
        assert listening.startswith("listening for offers to s-token-1"), shopper.stderr
        async with MqttPublisher(
            url,
            store="store-001",
            gateway="gw-1",
            client_id="gw-tls",
            tls=files(pki, "store-ca", "gateway")
            if client_cert
            else TlsFiles(str(pki / "store-ca.crt")),
            clock=VirtualClock(T0),
        ) as pub:
            assert await pub.publish_offer("s-token-1", make_offer())
        out, err = shopper.communicate(timeout=15)
    finally:
        if shopper.poll() is None:
            shopper.kill()
            shopper.communicate()
        broker.stop()
    assert shopper.returncode == 0, err
    assert "20% off" in out
    assert "offer o-1 (rule coffee-coupon)" in out


def test_proximity_app_without_the_ca_says_so_in_one_line(tls_broker: Mosquitto) -> None:
    shopper = app(tls_broker.port)
    _, err = shopper.communicate(timeout=30)
    assert shopper.returncode == 1
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("proximity app: error: cannot connect to mqtts://127.0.0.1:")
    assert "certificate verify failed" in err
    assert err.rstrip().endswith("(a broker with its own CA: give it with --ca-file)")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            ["--ca-file", "{tmp}/missing.pem"],
            "--ca-file {tmp}/missing.pem: No such file or directory",
        ),
        (["--ca-file", "{tmp}"], "--ca-file {tmp}: Is a directory"),
        (["--ca-file", "{tmp}/not.pem"], "--ca-file {tmp}/not.pem: not a PEM certificate"),
        (
            [
                "--ca-file",
                "{pki}/store-ca.crt",
                "--client-cert",
                "{pki}/gateway.crt",
                "--client-key",
                "{pki}/intruder.key",
            ],
            "--client-cert {pki}/gateway.crt: not a PEM certificate and its key",
        ),
        (["--client-key", "{pki}/gateway.key"], "--client-key goes with --client-cert"),
    ],
)
def test_proximity_app_names_a_tls_file_it_cannot_use(
    pki: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], message: str
) -> None:
    (tmp_path / "not.pem").write_text("not a certificate\n")
    argv = [x.format(tmp=tmp_path, pki=pki) for x in options]
    code = main(["app", "--shopper", "s-1", "--broker", "mqtts://127.0.0.1:8883", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"proximity app: error: {message.format(tmp=tmp_path, pki=pki)}")
    assert len(err.splitlines()) == 1


def test_proximity_app_takes_tls_files_for_mqtts_only(
    pki: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["app", "--shopper", "s-1", "--ca-file", str(pki / "store-ca.crt")])
    assert code == 2
    assert capsys.readouterr().err == (
        "proximity app: error: --ca-file is for an mqtts:// broker, not mqtt://127.0.0.1:1883\n"
    )
