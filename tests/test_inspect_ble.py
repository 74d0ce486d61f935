"""proximity inspect ble, as an integrator runs it on frames from the public specifications.

The frames are written out byte by byte from the layouts the specifications
publish, not made with the project's own builders:

- iBeacon: Apple's layout (0x02 0x15 | UUID | major | minor | measured power),
  with the UUID of Apple's AirLocate sample, E2C56DB5-DFFB-48D2-B060-D0F5A71096E0,
  and a complete advertisement as commonly published (forforf/multi_beacon).
- AltBeacon: github.com/AltBeacon/spec, and the example advertisement of its
  reference transmitter (RadiusNetworks/altbeacon-reference, altbeacon_transmit).
- Eddystone: github.com/google/eddystone, eddystone-uid, eddystone-url,
  eddystone-tlm/tlm-plain.md, eddystone-tlm/tlm-encrypted.md, eddystone-eid.
"""

from __future__ import annotations

import json
import shlex
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proximity.cli.ble_cmd import EPILOG
from proximity.cli.main import main

EDDYSTONE = "0000feaa-0000-1000-8000-00805f9b34fb"

# Apple's layout, the AirLocate UUID, major 0, minor 0, measured power -59 dBm (0xC5)
IBEACON = "02 15 E2C56DB5 DFFB 48D2 B060 D0F5A71096E0 0000 0000 C5"
# a published advertisement: 02 01 1A | 1A FF 4C 00 | 02 15 ... (after the company id)
IBEACON_PUBLISHED_AD = (
    "02 01 1A 1A FF 4C 00 02 15 83 25 6B 74 78 D0 43 A4 82 69 05 F9 DC 8A 44 BA 00 10 00 20 C6"
)
# the AltBeacon reference transmitter: 1b ff 18 01 | be ac | id1 | id2 | id3 | c5 | 01
ALTBEACON = "be ac 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 01 00 01 c5 01"
# Eddystone-UID: the spec's elided-UUID namespace example, an instance, RFU 00 00
UID = "00 E7 8b0ca750095477cb3e77 0000000004d2 00 00"
# the spec's example URL https://goo.gl/S6zT6P, 0xEE = -18 dBm as the spec's example reads it
URL_GOO_GL = "10 EE 03 676f6f2e676c2f53367a543650"
# plain TLM: 3000 mV, 23.5 °C (0x1780 in 8.8), 1234 PDUs, 12345 tenths of a second
TLM = "20 00 0BB8 1780 000004D2 00003039"
# encrypted TLM: 12 bytes of ciphertext, salt, MIC
ETLM = "20 01 0102030405060708090a0b0c 5a17 c0de"
EID = "30 F6 0011223344556677"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def decoded(capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, Any]:
    code, out, err = run(capsys, "inspect", "ble", *argv)
    assert (code, err) == (0, "")
    found = json.loads(out)
    assert isinstance(found, dict)
    return found


def refused(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    code, out, err = run(capsys, "inspect", "ble", *argv)
    assert (code, out) == (1, "")
    assert err.startswith("proximity: error: ")
    assert err.count("\n") == 1
    return err


def cut(frame: str, count: int) -> str:
    """``frame`` (hex) without its last ``count`` bytes."""
    return bytes.fromhex(frame.replace(" ", ""))[:-count].hex(" ")


def spec_ad_payload(advertisement: str, company: int) -> str:
    """The manufacturer data after the company id, cut out of a whole advertisement."""
    raw = bytes.fromhex(advertisement.replace(" ", ""))
    while raw:
        length, ad_type = raw[0], raw[1]
        if ad_type == 0xFF and raw[2:4] == company.to_bytes(2, "little"):
            return raw[4 : 1 + length].hex()
        raw = raw[1 + length :]
    raise AssertionError("no manufacturer data for that company")


# -- iBeacon -----------------------------------------------------------------------------------


def test_ibeacon_from_apples_layout(capsys: pytest.CaptureFixture[str]) -> None:
    assert decoded(capsys, "--company", "0x004C", "--data", IBEACON) == {
        "format": "ibeacon",
        "company": "0x004C",
        "uuid": "e2c56db5-dffb-48d2-b060-d0f5a71096e0",
        "major": 0,
        "minor": 0,
        "tx_power": -59,
    }


def test_ibeacon_from_a_published_advertisement(capsys: pytest.CaptureFixture[str]) -> None:
    payload = spec_ad_payload(IBEACON_PUBLISHED_AD, 0x004C)
    # bleak prints manufacturer data keyed by decimal company id: 76 is 0x004C
    found = decoded(capsys, "--company", "76", "--data", payload)
    assert found["format"] == "ibeacon"
    assert found["uuid"] == "83256b74-78d0-43a4-8269-05f9dc8a44ba"
    assert (found["major"], found["minor"], found["tx_power"]) == (16, 32, -58)


@pytest.mark.parametrize(
    "data",
    [
        IBEACON.lower(),
        IBEACON.replace(" ", ""),
        ":".join(bytes.fromhex(IBEACON.replace(" ", "")).hex(" ").split()),
        "0x" + IBEACON.replace(" ", ""),
        "  " + IBEACON + "\n",
    ],
    ids=["lower", "no-spaces", "colons", "0x", "padded"],
)
def test_hex_may_be_written_with_spaces_or_colons(
    capsys: pytest.CaptureFixture[str], data: str
) -> None:
    found = decoded(capsys, "--company", "0x004c", "--data", data)
    assert found["uuid"] == "e2c56db5-dffb-48d2-b060-d0f5a71096e0"


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (cut(IBEACON, 1), "ibeacon: frame is 22 bytes, expected at least 23"),  # no tx power
        ("02" + IBEACON[2:].replace("15", "14", 1), "not an iBeacon frame: type 0x0214"),
        ("12 19 0000", "not an iBeacon frame: type 0x1219"),  # another Apple message
        ("02", "ibeacon: frame too short: 1 bytes, need 23"),
        ("", "ibeacon: frame too short: 0 bytes, need 23"),
    ],
    ids=["cut", "wrong-length-byte", "not-ibeacon", "one-byte", "empty"],
)
def test_corrupt_ibeacon_frames_fail_with_the_parsers_reason(
    capsys: pytest.CaptureFixture[str], data: str, reason: str
) -> None:
    assert reason in refused(capsys, "--company", "0x004C", "--data", data)


def test_an_ibeacon_with_a_vendor_byte_after_the_tx_power_decodes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Jaalee-style tags append a battery byte (here 0x64, 100 %): ignored, as Home Assistant does
    found = decoded(capsys, "--company", "0x004C", "--data", IBEACON + " 64")
    assert (found["format"], found["uuid"], found["tx_power"]) == (
        "ibeacon",
        "e2c56db5-dffb-48d2-b060-d0f5a71096e0",
        -59,
    )


def test_data_pasted_with_the_company_id_in_front_gets_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(capsys, "--company", "0x004C", "--data", "4C 00 " + IBEACON)
    assert "not an iBeacon frame: type 0x4c00" in err
    assert "company id 4c 00" in err


# -- AltBeacon ---------------------------------------------------------------------------------


def test_altbeacon_from_the_reference_transmitter(capsys: pytest.CaptureFixture[str]) -> None:
    assert decoded(capsys, "--company", "0x0118", "--data", ALTBEACON) == {
        "format": "altbeacon",
        "company": "0x0118",
        "beacon_id": "0000000000000000000000000000000000010001",
        "id1": "00000000-0000-0000-0000-000000000000",
        "id2": 1,
        "id3": 1,
        "reference_rssi": -59,
        "mfg_reserved": 1,
    }


@pytest.mark.parametrize("company", ["0x0059", "0x004C", "0xFFFF", "0"])
def test_altbeacon_is_recognised_under_any_company_id(
    capsys: pytest.CaptureFixture[str], company: str
) -> None:
    # the spec: MFG ID is the beacon maker's own company code; the beacon code says AltBeacon
    data = "BEAC 2F234454CF6D4A0FADF2F4911BA9FFA6 0102 0304 B5 FF"
    found = decoded(capsys, "--company", company, "--data", data)
    assert found["format"] == "altbeacon"
    assert found["company"] == f"0x{int(company, 0):04X}"
    assert found["id1"] == "2f234454-cf6d-4a0f-adf2-f4911ba9ffa6"
    assert (found["id2"], found["id3"], found["reference_rssi"], found["mfg_reserved"]) == (
        0x0102,
        0x0304,
        -75,
        0xFF,
    )


@pytest.mark.parametrize(
    ("company", "data", "reason"),
    [
        ("0x0059", cut(ALTBEACON, 2), "altbeacon: frame is 22 bytes, expected at least 23"),
        ("0x0118", "be ad" + ALTBEACON[5:], "not an AltBeacon frame: beacon code 0xbead"),
        ("0x0118", "be", "altbeacon: frame too short: 1 bytes, need 23"),
    ],
    ids=["cut-rssi", "wrong-code", "one-byte"],
)
def test_corrupt_altbeacon_frames_fail_with_the_parsers_reason(
    capsys: pytest.CaptureFixture[str], company: str, data: str, reason: str
) -> None:
    assert reason in refused(capsys, "--company", company, "--data", data)


@pytest.mark.parametrize(
    ("data", "reserved"),
    [(cut(ALTBEACON, 1), 0), (ALTBEACON + " 00", 1)],
    ids=["without-reserved-byte", "extra-byte"],
)
def test_altbeacon_frames_read_as_the_android_library_reads_them(
    capsys: pytest.CaptureFixture[str], data: str, reserved: int
) -> None:
    found = decoded(capsys, "--company", "0x0118", "--data", data)
    assert (found["id2"], found["id3"], found["reference_rssi"], found["mfg_reserved"]) == (
        1,
        1,
        -59,
        reserved,
    )


# -- Eddystone ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "uuid", [EDDYSTONE, EDDYSTONE.upper(), EDDYSTONE.replace("-", ""), "feaa", "0xFEAA", "FEAA"]
)
def test_the_service_uuid_may_be_long_or_short(
    capsys: pytest.CaptureFixture[str], uuid: str
) -> None:
    found = decoded(capsys, "--service-uuid", uuid, "--data", UID)
    assert found["service_uuid"] == EDDYSTONE


def test_eddystone_uid(capsys: pytest.CaptureFixture[str]) -> None:
    assert decoded(capsys, "--service-uuid", EDDYSTONE, "--data", UID) == {
        "format": "eddystone-uid",
        "service_uuid": EDDYSTONE,
        "namespace": "8b0ca750095477cb3e77",
        "instance": "0000000004d2",
        "tx_power": -25,
        "with_rfu": True,
    }
    # older beacons leave the two RFU bytes off (service data length 0x15)
    found = decoded(capsys, "--service-uuid", "feaa", "--data", cut(UID, 2))
    assert (found["namespace"], found["with_rfu"]) == ("8b0ca750095477cb3e77", False)


@pytest.mark.parametrize(
    ("data", "url", "tx_power"),
    [
        (URL_GOO_GL, "https://goo.gl/S6zT6P", -18),
        ("10 12 03 676f6f2e676c2f417131387a46", "https://goo.gl/Aq18zF", 18),
        ("10 00 00 6578616d706c65 00", "http://www.example.com/", 0),  # 0x00 = ".com/"
        ("10 EB 01 676f6f676c65 07", "https://www.google.com", -21),  # 0x07 = ".com"
        ("10 F6 02 6578616d706c65 01 73686f70", "http://example.org/shop", -10),
        ("10 F6 02 61 0d 2f 62 0b", "http://a.gov/b.info", -10),
    ],
    ids=["goo.gl-S6zT6P", "goo.gl-Aq18zF", "expand-com/", "expand-com", "mid-org/", "gov-info"],
)
def test_eddystone_url_with_scheme_prefixes_and_expansion_codes(
    capsys: pytest.CaptureFixture[str], data: str, url: str, tx_power: int
) -> None:
    assert decoded(capsys, "--service-uuid", "feaa", "--data", data) == {
        "format": "eddystone-url",
        "service_uuid": EDDYSTONE,
        "url": url,
        "tx_power": tx_power,
    }


def test_eddystone_tlm(capsys: pytest.CaptureFixture[str]) -> None:
    assert decoded(capsys, "--service-uuid", "feaa", "--data", TLM) == {
        "format": "eddystone-tlm",
        "service_uuid": EDDYSTONE,
        "battery_mv": 3000,
        "temperature_c": 23.5,
        "adv_count": 1234,
        "uptime_tenths": 12345,
        "uptime_s": 1234.5,
    }


def test_eddystone_tlm_without_battery_or_temperature(capsys: pytest.CaptureFixture[str]) -> None:
    # the spec: a USB-powered beacon sends battery 0; no sensor sends 0x8000 (-128 °C)
    found = decoded(capsys, "--service-uuid", "feaa", "--data", "20 00 0000 8000 00000000 00000000")
    assert (found["battery_mv"], found["temperature_c"]) == (None, None)
    assert (found["adv_count"], found["uptime_s"]) == (0, 0)
    # signed 8.8 fixed point: 0xFF80 is -0.5 °C
    found = decoded(capsys, "--service-uuid", "feaa", "--data", "20 00 0C1C FF80 FFFFFFFF 00000001")
    assert (found["battery_mv"], found["temperature_c"]) == (3100, -0.5)
    assert (found["adv_count"], found["uptime_tenths"]) == (0xFFFFFFFF, 1)


def test_encrypted_tlm_is_reported_by_length_salt_and_mic_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert decoded(capsys, "--service-uuid", "feaa", "--data", ETLM) == {
        "format": "eddystone-etlm",
        "service_uuid": EDDYSTONE,
        "length": 18,
        "has_salt": True,
        "has_mic": True,
    }
    without_mic = decoded(capsys, "--service-uuid", "feaa", "--data", cut(ETLM, 2))
    assert (without_mic["length"], without_mic["has_salt"], without_mic["has_mic"]) == (
        16,
        True,
        False,
    )


def test_eddystone_eid(capsys: pytest.CaptureFixture[str]) -> None:
    assert decoded(capsys, "--service-uuid", "feaa", "--data", EID) == {
        "format": "eddystone-eid",
        "service_uuid": EDDYSTONE,
        "eid": "0011223344556677",
        "tx_power": -10,
    }


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        ("", "eddystone: empty service data"),
        (cut(UID, 1), "eddystone-uid: frame is 19 bytes, expected 20 (or 18)"),
        (cut(UID, 3), "eddystone-uid: frame is 17 bytes, expected 20 (or 18)"),
        (UID[:-2] + "01", "eddystone-uid: reserved bytes must be zero"),
        ("10 EE 03", "eddystone-url: frame too short: 3 bytes, need 4"),
        ("10 EE 04 676f6f2e676c", "eddystone-url: unknown URL scheme prefix 0x04"),
        ("10 EE 03 676f6f 0e 676c", "eddystone-url: reserved URL code 0x0e at offset 6"),
        ("10 EE 03 676f6f 20", "eddystone-url: reserved URL code 0x20 at offset 6"),
        (
            "10 EE 03 676f6f 80",
            "eddystone-url: byte 0x80 at offset 6 is not a printable US-ASCII character",
        ),
        ("10 EE 03" + " 61" * 18, "eddystone-url: encoded URL is 18 bytes, expected 1 to 17"),
        (cut(TLM, 1), "eddystone-tlm: frame is 13 bytes, expected 14"),
        (TLM + "00", "eddystone-tlm: frame is 15 bytes, expected 14"),
        ("20", "eddystone-tlm: frame too short: no TLM version"),
        ("20 02" + TLM[5:], "eddystone-tlm: unknown TLM version 0x02"),
        (cut(ETLM, 1), "eddystone-etlm: encrypted TLM is 17 bytes, expected 18"),
        (cut(ETLM, 3), "eddystone-etlm: encrypted TLM is 15 bytes, expected 18"),
        (cut(ETLM, 7), "eddystone-etlm: encrypted TLM is 11 bytes, expected 18"),
        (cut(EID, 1), "eddystone-eid: frame is 9 bytes, expected 10"),
        (EID + "00", "eddystone-eid: frame is 11 bytes, expected 10"),
        ("40 00", "eddystone: reserved frame type 0x40"),
        ("50 00", "eddystone: unknown frame type 0x50"),
        ("11" + URL_GOO_GL[2:], "eddystone: reserved low bits set in frame type 0x11"),
    ],
    ids=[
        "empty",
        "uid-cut-rfu",
        "uid-cut-instance",
        "uid-rfu-set",
        "url-no-body",
        "url-bad-scheme",
        "url-reserved-code",
        "url-space",
        "url-non-ascii",
        "url-too-long",
        "tlm-cut",
        "tlm-extra",
        "tlm-no-version",
        "tlm-bad-version",
        "etlm-cut-mic",
        "etlm-cut-salt",
        "etlm-cut-ciphertext",
        "eid-cut",
        "eid-extra",
        "reserved-type",
        "unknown-type",
        "wrong-frame-type",
    ],
)
def test_corrupt_eddystone_frames_fail_with_the_parsers_reason(
    capsys: pytest.CaptureFixture[str], data: str, reason: str
) -> None:
    assert reason in refused(capsys, "--service-uuid", "feaa", "--data", data)


def test_data_pasted_with_the_service_uuid_in_front_gets_a_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = refused(capsys, "--service-uuid", "feaa", "--data", "aa fe " + UID)
    assert "service UUID aa fe" in err


# -- what it does not know, and bad input ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--company", "0x1234", "--data", IBEACON], "no beacon format known for company 0x1234"),
        (["--company", "6", "--data", ""], "no beacon format known for company 0x0006"),
        (["--company", "0x0059", "--data", "be"], "no beacon format known for company 0x0059"),
        (
            ["--service-uuid", "0x180F", "--data", "64"],
            "no beacon format known for service UUID 0000180f-0000-1000-8000-00805f9b34fb",
        ),
        (
            ["--service-uuid", "fd6f", "--data", UID],
            "no beacon format known for service UUID 0000fd6f-0000-1000-8000-00805f9b34fb",
        ),
        (
            ["--service-uuid", "e2c56db5-dffb-48d2-b060-d0f5a71096e0", "--data", UID],
            "no beacon format known for service UUID e2c56db5-dffb-48d2-b060-d0f5a71096e0",
        ),
    ],
    ids=["company", "company-decimal", "company-short-payload", "battery", "exposure", "long"],
)
def test_unknown_company_or_service_fails(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert reason in refused(capsys, *argv)


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["--company", "0x004C", "--data", "zz"], "--data: 'z' is not a hex digit"),
        (["--company", "0x004C", "--data", "02 15 e2 g5"], "--data: 'g' is not a hex digit"),
        (["--company", "0x004C", "--data", "02-15"], "--data: '-' is not a hex digit"),
        (["--company", "0x004C", "--data", "021"], "--data: odd number of hex digits (3)"),
        (["--service-uuid", "feaa", "--data", "10 E"], "--data: odd number of hex digits (3)"),
        (["--company", "apple", "--data", IBEACON], "--company: 'apple' is not a company id"),
        (["--company", "004C", "--data", IBEACON], "--company: '004C' is not a company id"),
        (["--company", "0x10000", "--data", IBEACON], "--company: '0x10000' is not a company"),
        (["--company", "70000", "--data", IBEACON], "--company: 70000 does not fit in 16 bits"),
        (["--service-uuid", "eddystone", "--data", UID], "--service-uuid: 'eddystone' is not"),
        (["--service-uuid", "feaa0", "--data", UID], "--service-uuid: 'feaa0' is not a UUID"),
    ],
)
def test_bad_arguments_fail_with_a_reason(
    capsys: pytest.CaptureFixture[str], argv: list[str], reason: str
) -> None:
    assert reason in refused(capsys, *argv)


def test_exactly_one_of_company_or_service_uuid_is_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (
        ["--data", IBEACON],
        ["--company", "0x004C", "--service-uuid", "feaa", "--data", IBEACON],
        ["--company", "0x004C"],
    ):
        with pytest.raises(SystemExit) as exited:
            main(["inspect", "ble", *argv])
        assert exited.value.code == 2
        assert "usage: proximity inspect ble" in capsys.readouterr().err


def test_help_explains_both_forms_and_each_example_in_it_decodes(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["inspect", "ble", "--help"])
    assert exited.value.code == 0
    help_text = capsys.readouterr().out
    for words in ("manufacturer-specific data", "--company", "service data", "--service-uuid"):
        assert words in help_text
    commands = EPILOG.replace("\\\n", " ").splitlines()
    examples = [shlex.split(line)[1:] for line in commands if "proximity inspect ble" in line]
    assert {argv[2] for argv in examples} >= {"--company", "--service-uuid"}
    formats = set()
    for argv in examples:
        code, out, err = run(capsys, *argv)
        assert (code, err) == (0, "")
        formats.add(json.loads(out)["format"])
    assert formats == {"ibeacon", "altbeacon", "eddystone-url", "eddystone-tlm"}


def test_inspect_lists_ble(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "inspect")
    assert code == 2
    assert "ble" in out.split()


# -- arbitrary input ---------------------------------------------------------------------------


def check_outcome(code: int, out: str, err: str) -> None:
    assert code in (0, 1)
    if code == 0:
        assert err == ""
        assert json.loads(out)["format"] in {
            "ibeacon",
            "altbeacon",
            "eddystone-uid",
            "eddystone-url",
            "eddystone-tlm",
            "eddystone-etlm",
            "eddystone-eid",
        }
    else:
        assert out == ""
        assert err.startswith("proximity: error: ")


SOURCES = st.one_of(
    st.sampled_from(["0x004C", "0x0118", "0x0059"]).map(lambda c: ("--company", c)),
    st.integers(0, 0xFFFF).map(lambda c: ("--company", f"0x{c:04x}")),
    st.sampled_from(["feaa", EDDYSTONE, "0x180f"]).map(lambda u: ("--service-uuid", u)),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(source=SOURCES, data=st.binary(max_size=40), prefix=st.sampled_from(["", "be ac", "02 15"]))
@example(source=("--service-uuid", "feaa"), data=b"\x10\x00\x03", prefix="")
@example(source=("--company", "0x004C"), data=bytes(21), prefix="02 15")
def test_arbitrary_bytes_exit_0_or_1_and_never_raise(
    capsys: pytest.CaptureFixture[str], source: tuple[str, str], data: bytes, prefix: str
) -> None:
    code, out, err = run(capsys, "inspect", "ble", *source, "--data", f"{prefix} {data.hex(':')}")
    check_outcome(code, out, err)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(option=st.sampled_from(["--company", "--service-uuid"]), value=st.text(), data=st.text())
def test_arbitrary_text_arguments_exit_0_or_1_and_never_raise(
    capsys: pytest.CaptureFixture[str], option: str, value: str, data: str
) -> None:
    code, out, err = run(capsys, "inspect", "ble", f"{option}={value}", f"--data={data}")
    check_outcome(code, out, err)
