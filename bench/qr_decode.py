"""The three QR decoders of ``proximity.adapters.qr.decode`` on the same frames.

zbar (pyzbar), zxing-cpp, and the cascade the gateway uses (zxing-cpp, then zbar
on frames where it found nothing), each on:

- synthetic camera frames: a signed coupon code rendered with ``qrcode``, pasted
  onto a seeded, textured grey "shelf" at 640×480 and 1280×720, under a fixed
  set of degradations (rotation, noise, blur, a small code, low contrast,
  perspective...). A frame is read when the exact coupon text comes out. Time is
  the median over those frames of each frame's fastest of a few decodes;
- real photos: the ZXing black-box QR set in ``tests/data/qr-photos`` (phone
  pictures taken by other people), each with its expected text.

Every number is measured against a peer decoder in the same run.
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import qrcode
from PIL import Image, ImageFilter

from bench.report import Row, write
from proximity.adapters.qr.decode import DecoderKind, Gray, decode, load_image
from proximity.codes import CodeKind, sign

PHOTOS = Path(__file__).parent.parent / "tests" / "data" / "qr-photos"
SIZES = ((640, 480), (1280, 720))
SEEDS = (1, 2, 3)
"""Each degradation is drawn on three backgrounds and code positions per size."""
REPEATS = 3
"""Decodes of each synthetic frame for timing; the fastest counts."""
KINDS = (DecoderKind.ZBAR, DecoderKind.ZXING, DecoderKind.CASCADE)

Degrade = Callable[[Image.Image, Image.Image, np.random.Generator], tuple[Image.Image, Image.Image]]
"""(code, mask, rng) -> (code, mask): changes the code patch before it is pasted."""
Finish = Callable[[Gray, np.random.Generator], Gray]
"""(frame, rng) -> frame: changes the whole frame after the code is pasted."""


def coupon() -> str:
    issued = datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    return sign(
        CodeKind.COUPON,
        "o-0123456789abcdef",
        key=b"k" * 32,
        key_id=1,
        issued=issued,
        expires=issued + timedelta(days=14),
        nonce=bytes.fromhex("0011223344556677"),
    )


def render(text: str) -> Image.Image:
    """The code at 8 px per module, with its 4-module quiet zone, as greyscale."""
    code = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, box_size=8, border=4)
    code.add_data(text)
    code.make(fit=True)
    image: Image.Image = code.make_image(fill_color="black", back_color="white").get_image()
    return image.convert("L")


def shelf(width: int, height: int, rng: np.random.Generator) -> Gray:
    """A grey, shelf-like background: a lighting gradient, shelf edges, blotches, grain."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    light = 110 + 70 * (x / width) + 30 * np.sin(y / height * np.pi)
    bands = np.zeros_like(light)
    for edge in rng.uniform(0.1, 0.9, size=3) * height:
        bands += np.where(np.abs(y - edge) < rng.uniform(6, 18), -rng.uniform(40, 80), 0)
    coarse = rng.normal(0, 25, size=(height // 40 + 2, width // 40 + 2)).astype(np.float32)
    blotches = np.asarray(Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 6, size=(height, width)).astype(np.float32)
    frame: Gray = np.clip(light + bands + blotches + grain, 0, 255).astype(np.uint8)
    return frame


def perspective_coeffs(
    src: list[tuple[float, float]], dst: list[tuple[float, float]]
) -> list[float]:
    """PIL's PERSPECTIVE coefficients mapping output points ``dst`` back to input ``src``."""
    rows = []
    for (sx, sy), (dx, dy) in zip(src, dst, strict=True):
        rows.append([dx, dy, 1, 0, 0, 0, -sx * dx, -sx * dy])
        rows.append([0, 0, 0, dx, dy, 1, -sy * dx, -sy * dy])
    a = np.array(rows, dtype=np.float64)
    b = np.array([c for point in src for c in point], dtype=np.float64)
    return [float(c) for c in np.linalg.solve(a, b)]


def keep(
    code: Image.Image, mask: Image.Image, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    return code, mask


def scaled(width: int) -> Degrade:
    def apply(
        code: Image.Image, mask: Image.Image, rng: np.random.Generator
    ) -> tuple[Image.Image, Image.Image]:
        size = (width, width)
        return (
            code.resize(size, Image.Resampling.LANCZOS),
            mask.resize(size, Image.Resampling.NEAREST),
        )

    return apply


def rotated(degrees: float) -> Degrade:
    def apply(
        code: Image.Image, mask: Image.Image, rng: np.random.Generator
    ) -> tuple[Image.Image, Image.Image]:
        return (
            code.rotate(degrees, Image.Resampling.BILINEAR, expand=True, fillcolor=255),
            mask.rotate(degrees, Image.Resampling.NEAREST, expand=True, fillcolor=0),
        )

    return apply


def skewed(
    code: Image.Image, mask: Image.Image, rng: np.random.Generator
) -> tuple[Image.Image, Image.Image]:
    """Seen from below and to the left: the far edge shorter, the top pulled right."""
    w, h = code.size
    src = [(0.0, 0.0), (w, 0.0), (w, h), (0.0, h)]
    dst = [(0.22 * w, 0.12 * h), (0.95 * w, 0.0), (w, h), (0.0, 0.85 * h)]
    coeffs = perspective_coeffs(src, dst)
    return (
        code.transform(
            code.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.BILINEAR, fillcolor=255
        ),
        mask.transform(
            code.size, Image.Transform.PERSPECTIVE, coeffs, Image.Resampling.NEAREST, fillcolor=0
        ),
    )


def as_is(frame: Gray, rng: np.random.Generator) -> Gray:
    return frame


def gaussian_noise(sigma: float) -> Finish:
    def apply(frame: Gray, rng: np.random.Generator) -> Gray:
        noisy = frame.astype(np.float32) + rng.normal(0, sigma, size=frame.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8)

    return apply


def salt_and_pepper(share: float) -> Finish:
    def apply(frame: Gray, rng: np.random.Generator) -> Gray:
        out = frame.copy()
        hit = rng.random(frame.shape)
        out[hit < share / 2] = 0
        out[hit > 1 - share / 2] = 255
        return out

    return apply


def blurred(radius: float) -> Finish:
    def apply(frame: Gray, rng: np.random.Generator) -> Gray:
        return np.asarray(Image.fromarray(frame).filter(ImageFilter.GaussianBlur(radius)))

    return apply


def jpeg(quality: int) -> Finish:
    def apply(frame: Gray, rng: np.random.Generator) -> Gray:
        buffer = io.BytesIO()
        Image.fromarray(frame).save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        with Image.open(buffer) as image:
            return np.asarray(image.convert("L"))

    return apply


def low_contrast(frame: Gray, rng: np.random.Generator) -> Gray:
    """Everything squeezed into 40 grey levels around mid-grey, as in a dim aisle."""
    return (100 + frame.astype(np.float32) * (40 / 255)).astype(np.uint8)


@dataclass(frozen=True)
class Degradation:
    name: str
    code: Degrade = keep
    frame: Finish = as_is


DEGRADATIONS = (
    Degradation("none"),
    Degradation("rotated 15°", code=rotated(15)),
    Degradation("rotated 45°", code=rotated(45)),
    Degradation("gaussian noise σ=40", frame=gaussian_noise(40)),
    Degradation("salt and pepper 8%", frame=salt_and_pepper(0.08)),
    Degradation("blur r=2", frame=blurred(2)),
    Degradation("blur r=3.5", frame=blurred(3.5)),
    Degradation("small (60 px code)", code=scaled(60)),
    Degradation("small + noise σ=20", code=scaled(60), frame=gaussian_noise(20)),
    Degradation("low contrast", frame=low_contrast),
    Degradation(
        "low contrast + noise σ=10", frame=lambda f, r: gaussian_noise(10)(low_contrast(f, r), r)
    ),
    Degradation("small + rotated 45°", code=lambda c, m, r: rotated(45)(*scaled(60)(c, m, r), r)),
    Degradation("jpeg quality 10", frame=jpeg(10)),
    Degradation("perspective skew", code=skewed),
    Degradation("skew + rotated 30°", code=lambda c, m, r: rotated(30)(*skewed(c, m, r), r)),
)


@dataclass(frozen=True)
class Frame:
    size: tuple[int, int]
    degradation: str
    image: Gray


def frames(text: str) -> list[Frame]:
    code = render(text)
    out = []
    for width, height in SIZES:
        side = int(height * 0.45)
        base_code = code.resize((side, side), Image.Resampling.NEAREST)
        base_mask = Image.new("L", base_code.size, 255)
        for n, degradation in enumerate(DEGRADATIONS):
            for seed in SEEDS:
                rng = np.random.default_rng([width, n, seed])
                patch, mask = degradation.code(base_code, base_mask, rng)
                background = Image.fromarray(shelf(width, height, rng))
                x = int(rng.integers(0, width - patch.width))
                y = int(rng.integers(0, height - patch.height))
                background.paste(patch, (x, y), mask)
                image = degradation.frame(np.asarray(background), rng)
                out.append(Frame((width, height), degradation.name, image))
    return out


def empty_frames() -> list[Frame]:
    """Shelves with no code on them: most of what a camera sees, and the cascade's worst case."""
    out = []
    for width, height in SIZES:
        for seed in SEEDS:
            rng = np.random.default_rng([width, 999, seed])
            out.append(Frame((width, height), "no code", shelf(width, height, rng)))
    return out


def read(image: Gray, kind: DecoderKind, expected: str) -> bool:
    return any(found.text.strip() == expected for found in decode(image, kind))


def fastest_decode(image: Gray, kind: DecoderKind) -> float:
    """Seconds for the fastest of :data:`REPEATS` decodes."""
    best = float("inf")
    for _ in range(REPEATS):
        t0 = time.perf_counter()
        decode(image, kind)
        best = min(best, time.perf_counter() - t0)
    return best


def photos() -> list[tuple[Path, Gray, str]]:
    out = []
    for png in sorted(PHOTOS.glob("qrcode-*/*.png")):
        expected = png.with_suffix(".txt").read_text(encoding="utf-8").strip()
        out.append((png, load_image(png), expected))
    return out


def main() -> None:
    text = coupon()
    t0 = time.perf_counter()
    synthetic = frames(text)
    empty = empty_frames()
    real = photos()
    for kind in KINDS:  # load both libraries before any timing
        decode(synthetic[0].image, kind)
    print(
        f"{len(synthetic)} synthetic frames ({len(DEGRADATIONS)} degradations × {len(SEEDS)} "
        f"seeds × {len(SIZES)} sizes), {len(empty)} without a code, {len(real)} real photos; "
        f"built in {time.perf_counter() - t0:.1f} s"
    )

    ok: dict[DecoderKind, dict[tuple[tuple[int, int], str], int]] = {k: {} for k in KINDS}
    times: dict[DecoderKind, dict[tuple[int, int], list[float]]] = {
        k: {size: [] for size in SIZES} for k in KINDS
    }
    for frame in synthetic:
        for kind in KINDS:
            key = (frame.size, frame.degradation)
            ok[kind][key] = ok[kind].get(key, 0) + read(frame.image, kind, text)
            times[kind][frame.size].append(fastest_decode(frame.image, kind))

    empty_times: dict[DecoderKind, dict[tuple[int, int], list[float]]] = {
        k: {size: [] for size in SIZES} for k in KINDS
    }
    false_reads = 0
    for frame in empty:
        for kind in KINDS:
            false_reads += len(decode(frame.image, kind))
            empty_times[kind][frame.size].append(fastest_decode(frame.image, kind))

    real_ok: dict[DecoderKind, set[Path]] = {k: set() for k in KINDS}
    real_times: dict[DecoderKind, list[float]] = {k: [] for k in KINDS}
    for path, image, expected in real:
        for kind in KINDS:
            if read(image, kind, expected):
                real_ok[kind].add(path)
            real_times[kind].append(fastest_decode(image, kind))

    print(f"\nframes read out of {len(SEEDS)} per cell (zbar / zxing / cascade)")
    header = "".join(f"  {w}x{h:<10}" for w, h in SIZES)
    print(f"{'degradation':<28}{header}")
    for degradation in DEGRADATIONS:
        cells = "".join(
            f"  {'/'.join(str(ok[k][(size, degradation.name)]) for k in KINDS):<14}"
            for size in SIZES
        )
        print(f"{degradation.name:<28}{cells}")
    only = {
        "zbar only": real_ok[DecoderKind.ZBAR] - real_ok[DecoderKind.ZXING],
        "zxing only": real_ok[DecoderKind.ZXING] - real_ok[DecoderKind.ZBAR],
    }
    for label, paths in only.items():
        names = ", ".join(str(p.relative_to(PHOTOS)) for p in sorted(paths)) or "none"
        print(f"real photos, {label}: {names}")

    synth_read = {k: sum(ok[k].values()) for k in KINDS}
    real_read = {k: len(real_ok[k]) for k in KINDS}
    best_synth = max((DecoderKind.ZBAR, DecoderKind.ZXING), key=lambda k: synth_read[k])
    best_real = max((DecoderKind.ZBAR, DecoderKind.ZXING), key=lambda k: real_read[k])
    verdict = "at least" if real_read[DecoderKind.CASCADE] >= real_read[best_real] else "FEWER than"
    print(
        f"cascade reads {real_read[DecoderKind.CASCADE]} real photos, {verdict} the better "
        f"single decoder ({best_real}: {real_read[best_real]})"
    )

    n_synth, n_real = len(synthetic), len(real)
    rows = [
        Row(
            f"synthetic degradations read ({n_synth}), zxing-cpp",
            "frames read",
            "count",
            synth_read[DecoderKind.ZXING],
            "zbar",
            synth_read[DecoderKind.ZBAR],
        ),
        Row(
            f"synthetic degradations read ({n_synth}), cascade",
            "frames read",
            "count",
            synth_read[DecoderKind.CASCADE],
            f"best single ({best_synth})",
            synth_read[best_synth],
        ),
        Row(
            f"real photos read ({n_real}), zxing-cpp",
            "photos read",
            "count",
            real_read[DecoderKind.ZXING],
            "zbar",
            real_read[DecoderKind.ZBAR],
        ),
        Row(
            f"real photos read ({n_real}), cascade",
            "photos read",
            "count",
            real_read[DecoderKind.CASCADE],
            f"best single ({best_real})",
            real_read[best_real],
        ),
    ]
    for size in SIZES:
        label = f"{size[0]}x{size[1]} frame, median decode time"
        zbar_ms = statistics.median(times[DecoderKind.ZBAR][size]) * 1000
        for kind in (DecoderKind.ZXING, DecoderKind.CASCADE):
            rows.append(
                Row(
                    f"{label}, {kind if kind is DecoderKind.CASCADE else 'zxing-cpp'}",
                    "time per frame",
                    "ms",
                    round(statistics.median(times[kind][size]) * 1000, 2),
                    "zbar",
                    round(zbar_ms, 2),
                    higher_is_better=False,
                )
            )
    big = SIZES[-1]
    rows.append(
        Row(
            f"{big[0]}x{big[1]} frame without a code, median decode time, cascade",
            "time per frame",
            "ms",
            round(statistics.median(empty_times[DecoderKind.CASCADE][big]) * 1000, 2),
            "zbar",
            round(statistics.median(empty_times[DecoderKind.ZBAR][big]) * 1000, 2),
            higher_is_better=False,
        )
    )
    rows.append(
        Row(
            "real photos, median decode time, cascade",
            "time per photo",
            "ms",
            round(statistics.median(real_times[DecoderKind.CASCADE]) * 1000, 2),
            "zbar",
            round(statistics.median(real_times[DecoderKind.ZBAR]) * 1000, 2),
            higher_is_better=False,
        )
    )
    print(f"codes found on {len(empty)} frames without one, all decoders: {false_reads}")
    print(f"(measured in {time.perf_counter() - t0:.1f} s)")
    write("qr_decode", rows)


if __name__ == "__main__":
    main()
