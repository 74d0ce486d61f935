"""proximity qr make and proximity inspect qr|ndef, as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from proximity.adapters.nfc.ndef import build_ndef, uri_record
from proximity.cli.main import main

PHOTO = Path(__file__).parent / "data" / "qr-photos" / "qrcode-3" / "01.png"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_a_made_coupon_inspects_as_a_genuine_signed_code(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, suffix: str
) -> None:
    out_file = tmp_path / f"coupon{suffix}"
    code, out, err = run(
        capsys, "qr", "make", "--kind", "coupon", "--subject", "o-3f2a9c1e77b04d21",
        "--ttl", "2d", "--out", str(out_file),
    )  # fmt: skip
    assert code == 0, err
    text = out.strip()
    assert text.startswith("PX1:")
    assert "QR version 4" in err
    if suffix == ".svg":
        assert out_file.read_text().startswith("<?xml")
        return
    code, out, err = run(capsys, "inspect", "qr", str(out_file))
    assert code == 0, err
    (found,) = json.loads(out)
    assert found["text"] == text
    assert found["meaning"] == "signed"
    assert found["code"]["kind"] == "coupon"
    assert found["code"]["subject"] == "o-3f2a9c1e77b04d21"
    # inspecting did not use the coupon up
    code, out, _ = run(capsys, "inspect", "qr", str(out_file))
    assert json.loads(out)[0]["meaning"] == "signed"


def test_a_code_signed_with_another_key_is_shown_as_forged(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    other = tmp_path / "other.toml"
    other.write_text('[codes]\nkeys = { 1 = "a-completely-different-key" }\n')
    label = tmp_path / "c.png"
    assert run(capsys, "qr", "make", "--kind", "checkin", "--subject", "s-abcd",
               "--out", str(label), "--config", str(other))[0] == 0  # fmt: skip
    code, out, _ = run(capsys, "inspect", "qr", str(label))
    assert code == 0
    found = json.loads(out)[0]
    assert found["meaning"] == "refused"
    assert found["reason"] == "bad_signature"
    assert "forged" in found["detail"]


def test_a_real_photo_of_a_link_is_product_interest_without_its_query(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run(capsys, "inspect", "qr", str(PHOTO), "--decoder", "zbar")
    assert code == 0
    (found,) = json.loads(out)
    assert found["decoder"] == "zbar"
    assert found["meaning"] == "product"
    assert found["product"] == "http://arnaud.sahuguet.com/graffiti/test.php"


def test_inspect_qr_fails_clearly(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    not_image = tmp_path / "notes.txt"
    not_image.write_text("hello")
    code, _, err = run(capsys, "inspect", "qr", str(not_image))
    assert code == 1
    assert "not an image" in err
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.new("L", (200, 200), 255).save(blank)
    code, _, err = run(capsys, "inspect", "qr", str(blank))
    assert code == 1
    assert "no QR code found" in err


def test_inspect_ndef(capsys: pytest.CaptureFixture[str]) -> None:
    message = build_ndef([uri_record("https://shop.example/p/42")])
    code, out, _ = run(capsys, "inspect", "ndef", message.hex(" "))
    assert code == 0
    assert json.loads(out)["records"][0]["uri"] == "https://shop.example/p/42"
    code, _, err = run(capsys, "inspect", "ndef", "d1 01 ff")
    assert code == 1
    assert "malformed NDEF" in err
    code, _, err = run(capsys, "inspect", "ndef", "zz")
    assert code == 1
    assert "not hexadecimal" in err


def test_qr_make_refuses_what_it_cannot_make(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    base = ["qr", "make", "--kind", "coupon", "--out", str(tmp_path / "x.png")]
    code, _, err = run(capsys, *base, "--subject", "has space")
    assert code == 1
    assert "subject" in err
    code, _, err = run(capsys, *base, "--subject", "o-1", "--ttl", "soon")
    assert code == 1
    assert "--ttl" in err
    code, _, err = run(capsys, "qr", "make", "--kind", "coupon", "--subject", "o-1",
                       "--out", str(tmp_path / "x.gif"))  # fmt: skip
    assert code == 1
    assert ".png or .svg" in err


def test_inspect_qr_reads_real_photos_as_often_as_the_better_decoder(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The acceptance check: photos none of us made, through the command itself."""
    from proximity.adapters.qr.decode import DecoderKind, decode, load_image

    photos = sorted((PHOTO.parent.parent).glob("qrcode-*/*.png"))
    by_command = 0
    by_decoder = dict.fromkeys((DecoderKind.ZBAR, DecoderKind.ZXING), 0)
    for photo in photos:
        want = photo.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip()
        code, out, _ = run(capsys, "inspect", "qr", str(photo))
        by_command += code == 0 and want in [f["text"].strip() for f in json.loads(out)]
        image = load_image(photo)
        for kind in by_decoder:
            by_decoder[kind] += want in [d.text.strip() for d in decode(image, kind)]
    assert by_command >= max(by_decoder.values())
    assert by_command > min(by_decoder.values())  # the cascade adds what one decoder misses
