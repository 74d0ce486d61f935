"""TLS to the broker, with a certificate authority made by the test (openssl)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

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


@pytest.fixture
def tls_broker(pki: Path, tmp_path: Path) -> Mosquitto:
    binary = find_mosquitto()
    assert binary is not None, "mosquitto is not installed: run `make test`"
    broker = Mosquitto(
        binary,
        tmp_path,
        extra_config=(
            f"cafile {pki}/store-ca.crt\ncertfile {pki}/broker.crt\n"
            f"keyfile {pki}/broker.key\nrequire_certificate true\n"
        ),
    )
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
