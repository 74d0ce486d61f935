"""Drawing codes with the ``qrcode`` library: PNG for screens and kiosks, SVG for print."""

from __future__ import annotations

from pathlib import Path

import qrcode
import qrcode.constants
from PIL import Image

_LEVELS = {
    "L": qrcode.constants.ERROR_CORRECT_L,
    "M": qrcode.constants.ERROR_CORRECT_M,
    "Q": qrcode.constants.ERROR_CORRECT_Q,
    "H": qrcode.constants.ERROR_CORRECT_H,
}


def _qr(text: str, level: str) -> qrcode.QRCode:
    if level not in _LEVELS:
        raise ValueError(f"error correction level {level!r} is not one of L, M, Q, H")
    qr = qrcode.QRCode(error_correction=_LEVELS[level], border=4)
    qr.add_data(text)
    qr.make(fit=True)
    return qr


def qr_image(text: str, *, box: int = 8, level: str = "M") -> Image.Image:
    """The code as a greyscale PIL image, ``box`` pixels a module, with the quiet zone."""
    qr = _qr(text, level)
    qr.box_size = box
    image: Image.Image = qr.make_image(fill_color="black", back_color="white").get_image()
    return image.convert("L")


def write_code(text: str, out: Path, *, box: int = 8, level: str = "M") -> int:
    """Write the code to ``out`` (``.png`` or ``.svg``); the QR version used."""
    suffix = out.suffix.lower()
    qr = _qr(text, level)
    if suffix == ".png":
        qr_image(text, box=box, level=level).save(out)
    elif suffix == ".svg":
        from qrcode.image.svg import SvgPathImage

        qr.box_size = box
        qr.make_image(image_factory=SvgPathImage).save(str(out))
    else:
        raise ValueError(f"{out}: write .png or .svg")
    version: int = qr.version
    return version
