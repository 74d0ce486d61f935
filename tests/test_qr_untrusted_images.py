"""Image files and camera frames are untrusted: ``proximity inspect qr`` and the camera
refuse what they cannot or must not decode with a reason, never with a traceback."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from proximity.adapters.qr.decode import MAX_PIXELS, ImageRefused, decode, load_image
from proximity.adapters.qr.render import qr_image
from proximity.adapters.qr.scan import CodeScan
from proximity.adapters.qr.sources import Camera
from proximity.cli.main import main
from proximity.clock import VirtualClock
from tests.factories import T0
from tests.strategies import bmp_header, damaged_images, gif_header, png_header

BOMBS = [
    pytest.param("bomb.png", png_header(100_000, 100_000), id="png-100000x100000"),
    pytest.param("bomb.gif", gif_header(65_535, 65_535), id="gif-65535x65535"),
    pytest.param("bomb.bmp", bmp_header(60_000, 60_000), id="bmp-60000x60000"),
    # more than ours, less than PIL's: refused by our check, not PIL's warning
    pytest.param("big.png", png_header(8_000, 8_000), id="png-8000x8000"),
]


@pytest.mark.parametrize(("name", "data"), BOMBS)
def test_inspect_qr_refuses_an_image_claiming_a_huge_size_in_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, name: str, data: bytes
) -> None:
    image = tmp_path / name
    image.write_bytes(data)
    assert main(["inspect", "qr", str(image)]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"proximity: error: {image}: ")
    assert f"{MAX_PIXELS:,} pixels" in err


def test_the_real_command_prints_no_traceback_for_a_decompression_bomb(tmp_path: Path) -> None:
    image = tmp_path / "bomb.png"
    image.write_bytes(png_header(100_000, 100_000))
    done = subprocess.run(
        [sys.executable, "-m", "proximity", "inspect", "qr", str(image)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.count("\n") == 1


def test_the_limit_is_checked_on_the_header_before_any_pixel_is_read(tmp_path: Path) -> None:
    image = tmp_path / "small.png"
    image.write_bytes(png_header(100, 100))  # no pixel data at all
    with pytest.raises(ImageRefused, match="100×100 is more than the 9,999 pixels"):
        load_image(image, max_pixels=9_999)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=damaged_images())
def test_inspect_qr_on_any_bytes_exits_0_or_1_without_raising(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, data: bytes
) -> None:
    image = tmp_path / "untrusted.img"
    image.write_bytes(data)
    code = main(["inspect", "qr", str(image)])
    _, err = capsys.readouterr()
    assert code in (0, 1)
    if code == 1:
        assert err.count("\n") == 1


def _video(path: Path, frames: int) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
    assert writer.isOpened()
    frame = np.full((240, 320, 3), 140, np.uint8)
    code = np.asarray(qr_image("PX1:SHELF", box=3).convert("RGB"))
    frame[20 : 20 + code.shape[0], 40 : 40 + code.shape[1]] = code
    for _ in range(frames):
        writer.write(frame)
    writer.release()


async def test_a_camera_skips_and_counts_frames_above_its_pixel_limit(tmp_path: Path) -> None:
    video = tmp_path / "big.avi"
    _video(video, 5)
    camera = Camera(str(video), "cam", VirtualClock(T0), max_pixels=320 * 240 - 1)
    async with camera:
        scans = await asyncio.wait_for(_all(camera), 10)
    assert scans == []
    assert camera.finished
    assert camera.rejected["too_large"] == 5


async def test_a_frame_the_decoder_fails_on_is_skipped_and_counted_not_fatal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    video = tmp_path / "shelf.avi"
    _video(video, 4)
    calls = [0]

    def flaky(image: object, decoder: object) -> object:
        calls[0] += 1
        if calls[0] % 2:
            raise cv2.error("corrupt frame")
        return decode(image, decoder)  # type: ignore[arg-type]

    monkeypatch.setattr("proximity.adapters.qr.sources.decode", flaky)
    camera = Camera(str(video), "cam", VirtualClock(T0), window=30.0)
    async with camera:
        scans = await asyncio.wait_for(_all(camera), 10)
    assert [s.text for s in scans] == ["PX1:SHELF"]
    assert camera.finished
    assert camera.rejected["bad_frame"] == 2


async def _all(camera: Camera) -> list[CodeScan]:
    return [s async for s in camera.scans()]
