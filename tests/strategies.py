"""Hypothesis strategies shared by the tests."""

from __future__ import annotations

import json
import struct
import zlib
from typing import Any

from hypothesis import strategies as st

from proximity.adapters.ble.eddystone import URL_EXPANSIONS, URL_SCHEMES
from proximity.events import EventKind

# -- TOML documents ------------------------------------------------------------------------

bare_keys = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)
tricky_text = st.text(
    alphabet=st.sampled_from(list("ab #=[]{}.,'\"\\\tz")), min_size=0, max_size=12
)
scalars = st.one_of(
    st.integers(-(10**6), 10**6),
    st.booleans(),
    tricky_text,
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: round(f, 3)),
)


def render_scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)  # a valid TOML basic string for this alphabet
    return repr(value)


@st.composite
def toml_documents(draw: st.DrawFn) -> tuple[str, dict[tuple[str | int, ...], str]]:
    """A TOML text, and for every leaf path the text its value starts with."""
    lines: list[str] = []
    leaves: dict[tuple[str | int, ...], str] = {}

    def keyvals(prefix: tuple[str | int, ...]) -> None:
        for key in draw(st.lists(bare_keys, max_size=4, unique=True)):
            kind = draw(st.sampled_from(["scalar", "array", "inline"]))
            if kind == "scalar":
                text = render_scalar(draw(scalars))
                lines.append(f"{key} = {text}  # note = [x]")
                leaves[(*prefix, key)] = text
            elif kind == "array":
                items = [render_scalar(v) for v in draw(st.lists(st.integers(0, 99), max_size=3))]
                if draw(st.booleans()):
                    lines.append(f"{key} = [")
                    lines.extend(f"  {item}," for item in items)
                    lines.append("]")
                else:
                    lines.append(f"{key} = [{', '.join(items)}]")
                for n, item in enumerate(items):
                    leaves[(*prefix, key, n)] = item
            else:
                inner = draw(st.lists(bare_keys, min_size=1, max_size=3, unique=True))
                values = [render_scalar(draw(scalars)) for _ in inner]
                body = ", ".join(f"{k} = {v}" for k, v in zip(inner, values, strict=True))
                lines.append(f"{key} = {{ {body} }}")
                for k, v in zip(inner, values, strict=True):
                    leaves[(*prefix, key, k)] = v

    keyvals(())
    tables = draw(st.lists(bare_keys.map(lambda k: "t" + k), max_size=3, unique=True))
    for name in tables:
        lines.append(f"[{name}]")
        keyvals((name,))
    for count in range(draw(st.integers(0, 3))):
        lines.append('[[aot]]\nmulti = """line one\n[not] = "a header"\n"""')
        leaves[("aot", count, "multi")] = '"""'
        keyvals(("aot", count))
    return "\n".join(lines) + "\n", leaves


# -- rule tables ---------------------------------------------------------------------------

ZONES = ("entrance", "coffee", "bakery")
DWELLS = (10, 30, 60)


@st.composite
def rule_specs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Plain dicts describing rules (id, on, zones, dwell, priority, enabled)."""
    count = draw(st.integers(0, 12))
    specs = []
    for n in range(count):
        on = draw(st.sampled_from(list(EventKind)))
        zonal = on in (EventKind.ZONE_ENTER, EventKind.ZONE_DWELL, EventKind.ZONE_EXIT)
        zones = (
            draw(st.none() | st.lists(st.sampled_from(ZONES), min_size=1, max_size=2, unique=True))
            if zonal
            else None
        )
        specs.append(
            {
                "id": f"r{n}",
                "on": on,
                "zones": zones,
                "dwell": draw(st.sampled_from(DWELLS)) if on is EventKind.ZONE_DWELL else None,
                "priority": draw(st.integers(-2, 2)),
                "hours": draw(
                    st.none()
                    | st.tuples(
                        st.integers(0, 23), st.integers(0, 23), st.sampled_from([0, 30])
                    ).filter(lambda h: (h[0], 0) != (h[1], h[2]))
                ),
                "enabled": draw(st.booleans() | st.just(True)),
            }
        )
    return specs


def render_rules(specs: list[dict[str, Any]], hit_policy: str) -> str:
    out = [f'[defaults]\nhit_policy = "{hit_policy}"\n']
    for zone in ZONES:
        out.append(f'[zones.{zone}]\nscanners = ["gw-{zone}"]\n')
    for spec in specs:
        out.append("[[rules]]")
        out.append(f'id = "{spec["id"]}"\non = "{spec["on"]}"\nmoment = "know"')
        out.append(f"priority = {spec['priority']}\nenabled = {str(spec['enabled']).lower()}")
        out.append("[rules.when]")
        if spec["zones"] is not None:
            out.append("zone = [" + ", ".join(f'"{z}"' for z in spec["zones"]) + "]")
        if spec["dwell"] is not None:
            out.append(f'dwell = "{spec["dwell"]}s"')
        if spec["hours"] is not None:
            start, end, end_minute = spec["hours"]
            out.append(f'hours = "{start:02d}:00-{end:02d}:{end_minute:02d}"')
        out.append('[rules.cta]\nformat = "banner"\ntitle = "t"\n')
    return "\n".join(out)


# -- raw BLE readings (recordings) ---------------------------------------------------------

mac_addresses = st.binary(min_size=6, max_size=6).map(lambda raw: ":".join(f"{b:02X}" for b in raw))


@st.composite
def advertisement_fields(draw: st.DrawFn) -> dict[str, Any]:
    """What a BLE advertisement carries, as bleak's AdvertisementData fields."""
    return {
        "local_name": draw(st.none() | st.text(max_size=20)),
        "manufacturer_data": draw(
            st.dictionaries(st.integers(0, 0xFFFF), st.binary(max_size=27), max_size=3)
        ),
        "service_data": draw(
            st.dictionaries(st.uuids().map(str), st.binary(max_size=24), max_size=2)
        ),
        "service_uuids": draw(st.lists(st.uuids().map(str), max_size=2)),
        "tx_power": draw(st.none() | st.integers(-128, 127)),
        "rssi": draw(st.integers(-128, 127)),
    }


#: Lines a recording might hold after a crash, a bad edit or a bad disk.
garbage_lines = st.one_of(
    st.text(max_size=80).map(lambda s: s.replace("\n", " ")),
    st.dictionaries(
        st.sampled_from(["at", "scanner", "addr", "rssi", "tx", "mfr", "svc", "format", "v"]),
        st.none() | st.integers() | st.text(max_size=10) | st.floats() | st.booleans(),
        max_size=6,
    ).map(lambda d: json.dumps(d)),
)


# -- image files from untrusted hands ------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG that is all header: an IHDR claiming ``width``×``height``, an empty IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def gif_header(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only image claim ``width``×``height``."""
    screen = struct.pack("<HHBBB", width, height, 0, 0, 0)
    image = b"," + struct.pack("<HHHHB", 0, 0, width, height, 0)
    return b"GIF89a" + screen + image + b"\x02\x02\x44\x01\x00;"


def bmp_header(width: int, height: int) -> bytes:
    """A BMP with a BITMAPINFOHEADER claiming ``width``×``height``, 24 bits, no pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info), 0, 0, 14 + len(info)) + info


def _image_file(fmt: str) -> bytes:
    """A small valid image file: a checkerboard, so every format has real pixel data."""
    import io

    from PIL import Image

    image = Image.new("L", (24, 16), 255)
    for x in range(0, 24, 4):
        for y in range(0, 16, 4):
            if (x + y) % 8 == 0:
                image.paste(0, (x, y, x + 4, y + 4))
    out = io.BytesIO()
    image.save(out, fmt)
    return out.getvalue()


@st.composite
def damaged_images(draw: st.DrawFn) -> bytes:
    """What a camera or a customer might hand over: random bytes, a header claiming any
    size, or a valid PNG, GIF, BMP or JPEG cut short or with bytes overwritten."""
    match draw(st.sampled_from(["bytes", "header", "damaged"])):
        case "bytes":
            return draw(st.binary(max_size=300))
        case "header":
            header = draw(st.sampled_from([png_header, gif_header, bmp_header]))
            biggest = 0xFFFF if header is gif_header else 0x7FFFFFFF
            return header(draw(st.integers(1, biggest)), draw(st.integers(1, biggest)))
    data = bytearray(_image_file(draw(st.sampled_from(["PNG", "GIF", "BMP", "JPEG"]))))
    if draw(st.booleans()):
        return bytes(data[: draw(st.integers(0, len(data) - 1))])
    for _ in range(draw(st.integers(1, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


# -- Eddystone-URL ----------------------------------------------------------------------------

eddystone_url_bytes = st.one_of(
    st.integers(0, len(URL_EXPANSIONS) - 1),  # an expansion code
    st.sampled_from(b"w./:comnetgvbizorf"),  # characters that spell schemes and expansions
    st.integers(0x21, 0x7E),  # any printable character
)


@st.composite
def eddystone_encoded_urls(draw: st.DrawFn) -> bytes:
    """Any valid encoded URL: a scheme prefix byte, then 1 to 17 expansion codes or characters."""
    scheme = draw(st.integers(0, len(URL_SCHEMES) - 1))
    return bytes((scheme, *draw(st.lists(eddystone_url_bytes, min_size=1, max_size=17))))


url_pieces = st.one_of(
    st.sampled_from([*URL_EXPANSIONS, "www.", "w", ".", "/", "http://", "https://www."]),
    st.characters(min_codepoint=0x1F, max_codepoint=0x80),  # printable, and a few that are not
    st.just("é"),
)


@st.composite
def url_texts(draw: st.DrawFn) -> str:
    """Texts an operator might give the Eddystone-URL builder, encodable or not."""
    start = draw(st.sampled_from([*URL_SCHEMES, "", "http:/", "ftp://", "https://ww", "HTTP://"]))
    return start + "".join(draw(st.lists(url_pieces, max_size=24)))
