"""Finding QR codes in images: zbar (pyzbar) and zxing-cpp, alone or as a cascade.

``bench/qr_decode.py`` measures all three on the same frames. zxing-cpp reads
more (79 of 90 degraded synthetic frames against zbar's 55; 106 of 124 real
photos against 98) and is about ten times faster (2.5 ms against 25 ms for a
1280×720 frame). zbar still reads a photo now and then that zxing-cpp misses,
so the cascade — zxing-cpp, then zbar only where zxing-cpp found nothing —
reads the most (107 photos) and is what ``proximity inspect qr`` uses. On a
frame without a code the cascade runs both, so a camera, whose frames mostly
hold no code, decodes with zxing-cpp alone by default.

A decoder takes a greyscale image (a 2-D ``uint8`` array, or anything PIL can
convert) and returns the texts of the QR codes in it, never raising for an
image without a code. Both libraries are imported on first use, so a gateway
without a camera never loads them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Gray = npt.NDArray[np.uint8]


class DecoderKind(StrEnum):
    ZBAR = "zbar"
    ZXING = "zxing"
    CASCADE = "cascade"


@dataclass(frozen=True, slots=True)
class Decoded:
    text: str
    decoder: DecoderKind
    """Which library read it (in a cascade: the one that did)."""


Decoder = Callable[[Gray], list[Decoded]]


def to_gray(image: Any) -> Gray:
    """A 2-D ``uint8`` greyscale array from an array (grey, BGR/RGB) or a PIL image."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2 and image.dtype == np.uint8:
            return image
        if image.ndim == 3 and image.shape[2] in (3, 4):
            rgb = image[..., :3].astype(np.float32)
            gray = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            return np.clip(gray, 0, 255).astype(np.uint8)
        raise ValueError(f"not an image array: shape {image.shape}, dtype {image.dtype}")
    from PIL import Image

    if isinstance(image, Image.Image):
        return np.asarray(image.convert("L"), dtype=np.uint8)
    raise TypeError(f"cannot decode a {type(image).__name__}")


def load_image(path: Path) -> Gray:
    """An image file as greyscale; ValueError with the reason if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return to_gray(image)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: not an image PIL can read ({exc})") from None


def zbar(image: Gray) -> list[Decoded]:
    from pyzbar import pyzbar

    found = pyzbar.decode(image, symbols=[pyzbar.ZBarSymbol.QRCODE])
    return [Decoded(_text(r.data), DecoderKind.ZBAR) for r in found]


def zxing(image: Gray) -> list[Decoded]:
    import zxingcpp

    qr = zxingcpp.BarcodeFormats(zxingcpp.BarcodeFormat.QRCode)
    found = zxingcpp.read_barcodes(image, formats=qr)
    return [Decoded(r.text, DecoderKind.ZXING) for r in found if r.valid]


def cascade(image: Gray) -> list[Decoded]:
    return zxing(image) or zbar(image)


DECODERS: dict[DecoderKind, Decoder] = {
    DecoderKind.ZBAR: zbar,
    DecoderKind.ZXING: zxing,
    DecoderKind.CASCADE: cascade,
}


def decode(image: Any, decoder: DecoderKind = DecoderKind.CASCADE) -> list[Decoded]:
    """The QR codes in ``image``, each text once, in the order found."""
    seen: set[str] = set()
    out: list[Decoded] = []
    for found in DECODERS[decoder](to_gray(image)):
        if found.text not in seen:
            seen.add(found.text)
            out.append(found)
    return out


def _text(data: bytes) -> str:
    """zbar hands over bytes; QR codes in the wild are UTF-8, sometimes Latin-1."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")
