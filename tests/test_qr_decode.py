"""QR decoding on real photos and on rendered, degraded codes, through zbar and zxing-cpp."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from proximity.adapters.qr.decode import DecoderKind, decode, load_image, to_gray
from proximity.adapters.qr.render import qr_image, write_code

PHOTOS = Path(__file__).parent / "data" / "qr-photos"
TEXT = "PX1:AMAWWBLAEBVQ5GVA3WCLZ6IGR5UZSKDYPB4HQ6DYPB4HQ6DYPB4"


def photo_set() -> list[tuple[Path, str]]:
    return [
        (png, png.with_suffix(".txt").read_text(encoding="utf-8", errors="replace").strip())
        for png in sorted(PHOTOS.glob("qrcode-*/*.png"))
    ]


def test_the_cascade_reads_real_photos_at_least_as_well_as_either_decoder() -> None:
    photos = photo_set()
    assert len(photos) == 124
    read = dict.fromkeys(DecoderKind, 0)
    for path, want in photos:
        image = load_image(path)
        for kind in DecoderKind:
            read[kind] += want in [d.text.strip() for d in decode(image, kind)]
    assert read[DecoderKind.CASCADE] >= max(read[DecoderKind.ZBAR], read[DecoderKind.ZXING])
    # measured here: zbar 98, zxing-cpp 106, the cascade 107 of 124
    assert read[DecoderKind.CASCADE] >= 100


def on_shelf(code: Image.Image, size: tuple[int, int], scale: float = 1.0) -> Image.Image:
    """The code pasted onto a textured grey background, as a camera would see a shelf."""
    rng = np.random.default_rng(7)
    w, h = size
    ramp = np.linspace(90, 170, w, dtype=np.float32)[None, :].repeat(h, 0)
    background = np.clip(ramp + rng.normal(0, 12, (h, w)), 0, 255).astype(np.uint8)
    frame = Image.fromarray(background)
    if scale != 1.0:
        code = code.resize((int(code.width * scale), int(code.height * scale)))
    frame.paste(code, ((w - code.width) // 3, (h - code.height) // 2))
    return frame


@pytest.mark.parametrize(
    "degrade",
    [
        pytest.param(lambda im: im, id="clean"),
        pytest.param(lambda im: im.rotate(30, expand=True, fillcolor=128), id="rotated"),
        pytest.param(lambda im: im.filter(ImageFilter.GaussianBlur(1.2)), id="blurred"),
        pytest.param(
            lambda im: Image.fromarray(
                np.clip(
                    np.asarray(im, np.float32)
                    + np.random.default_rng(3).normal(0, 25, im.size[::-1]),
                    0,
                    255,
                ).astype(np.uint8)
            ),
            id="noisy",
        ),
    ],
)
@pytest.mark.parametrize("size", [(640, 480), (1280, 720)])
def test_a_rendered_code_is_found_in_a_degraded_frame(
    degrade: object, size: tuple[int, int]
) -> None:
    frame = degrade(on_shelf(qr_image(TEXT, box=4), size))  # type: ignore[operator]
    found = decode(frame)
    assert [d.text for d in found] == [TEXT]


def test_a_frame_without_a_code_is_empty_not_an_error() -> None:
    assert decode(on_shelf(Image.new("L", (10, 10), 128), (640, 480))) == []


def test_colour_frames_and_bad_inputs() -> None:
    rgb = np.asarray(on_shelf(qr_image(TEXT, box=4), (640, 480)).convert("RGB"))
    assert [d.text for d in decode(rgb)] == [TEXT]
    assert to_gray(rgb).shape == (480, 640)
    with pytest.raises(ValueError, match="not an image array"):
        to_gray(np.zeros((4, 4, 7), np.uint8))
    with pytest.raises(TypeError, match="cannot decode a str"):
        to_gray("frame.png")


def test_files_that_are_not_images_say_so(tmp_path: Path) -> None:
    bad = tmp_path / "label.png"
    bad.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        load_image(bad)


@pytest.mark.parametrize("suffix", [".png", ".svg"])
def test_written_codes_are_the_size_asked_for(tmp_path: Path, suffix: str) -> None:
    out = tmp_path / f"label{suffix}"
    assert write_code(TEXT, out) == 3  # 57 alphanumeric characters at level M
    assert out.stat().st_size > 0
    if suffix == ".png":
        assert [d.text for d in decode(load_image(out))] == [TEXT]
    else:
        assert out.read_text().startswith("<?xml")
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        write_code(TEXT, tmp_path / "label.gif")
