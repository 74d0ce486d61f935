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

Image files and camera frames are untrusted: :func:`load_image` refuses an image
larger than :data:`MAX_PIXELS` from its header, before its pixels are read (a
69-byte PNG can claim 100000×100000), and turns every way a corrupt or truncated
file can fail into one ``ValueError`` with the reason.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Gray = npt.NDArray[np.uint8]

MAX_PIXELS = 50_000_000
"""The largest image or frame decoded: a 48 MP phone photo (8000×6000) fits. Ours, and
below PIL's own decompression-bomb limits, so PIL never has to warn first."""


class DecoderKind(StrEnum):
    ZBAR = "zbar"
    ZXING = "zxing"
    CASCADE = "cascade"


class ImageRefused(ValueError):
    """An image file that is not decoded; the message says which file and why."""


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


def load_image(path: Path, max_pixels: int = MAX_PIXELS) -> Gray:
    """An image file as greyscale; :class:`ImageRefused` (a ValueError) with the reason
    if it is not an image PIL can read, is corrupt or truncated, or has more than
    ``max_pixels`` pixels (checked on the header, before any pixel is read). Nothing
    else escapes.

    PIL's ``DecompressionBombWarning`` is made an error while the file is opened
    (``warnings.catch_warnings``: call it from one thread at a time, as the CLI does).
    """
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    raise ImageRefused(
                        f"{path}: {width}×{height} is more than the {max_pixels:,} pixels "
                        "an image may have"
                    )
                return to_gray(image)
    except ImageRefused:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused(
            f"{path}: the image says it is larger than the {max_pixels:,} pixels an image may have"
        ) from None
    except Exception as exc:  # untrusted bytes: PIL fails in many ways (OSError, SyntaxError...)
        raise ImageRefused(_unreadable(path, exc)) from None


def _unreadable(path: Path, exc: Exception) -> str:
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        return f"{path}: {exc.strerror}"
    return f"{path}: not an image PIL can read ({type(exc).__name__}: {exc})"


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
