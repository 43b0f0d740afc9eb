"""The picture of a search: the query with its boxes, then the best gallery images with rank, name and score,
and, for verified results, where the query box lands in them.

Captions are set in WenQuanYi Micro Hei (the `paperang-p2-fonts-cjk` package: Latin, Greek, Cyrillic, CJK, kana,
Hangul). A character the font cannot draw, or cannot be seen (controls, format characters, odd spaces), is
drawn as its escape `\\uXXXX` / `\\UXXXXXXXX` and a backslash as `\\\\`, so a name never shows as empty boxes
or hides a character. A caption is fitted to its tile, measured in pixels: rank and score always show,
and a name too long loses its middle to an ellipsis; it is drawn into its own image, so it cannot spill over a
neighbour.
"""

from __future__ import annotations

import functools
import io
import os
import struct
import unicodedata
import warnings
from importlib import resources
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .fileio import write_output
from .images import Box, ImageError, load_image

TILE = 240
COLUMNS = 6
QUERY_COLOUR = (230, 40, 40)
FOUND_COLOUR = (40, 220, 60)
FONT_SIZE = 15
PAD = 4  # caption margin, pixels
ELLIPSIS = "\u2026"


def _font(size: int):
    """Pillow's built-in font: the fallback when the caption font package cannot be loaded."""
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


def font_codepoints(data: bytes, index: int = 0) -> frozenset[int]:
    """The code points that font `index` of a TrueType/OpenType file or collection maps to a real glyph (not
    .notdef), read from its Unicode cmap: format 12 where the font has one, else format 4."""
    base = struct.unpack_from(">I", data, 12 + 4 * index)[0] if data[:4] == b"ttcf" else 0
    (num_tables,) = struct.unpack_from(">H", data, base + 4)
    tables = dict(struct.unpack_from(">4s4xI", data, base + 12 + 16 * i) for i in range(num_tables))
    if b"cmap" not in tables:
        raise ValueError("the font has no cmap table")
    cmap = tables[b"cmap"]
    (count,) = struct.unpack_from(">H", data, cmap + 2)
    found = {}
    for i in range(count):
        platform, encoding, offset = struct.unpack_from(">HHI", data, cmap + 4 + 8 * i)
        if platform == 0 or (platform, encoding) in ((3, 1), (3, 10)):  # the Unicode subtables
            (fmt,) = struct.unpack_from(">H", data, cmap + offset)
            found.setdefault(fmt, cmap + offset)
    points = set()
    if 12 in found:
        at = found[12]
        (groups,) = struct.unpack_from(">I", data, at + 12)
        for start, end, glyph in struct.iter_unpack(">III", data[at + 16 : at + 16 + 12 * groups]):
            points.update(range(start if glyph else start + 1, end + 1))
    elif 4 in found:
        at = found[4]
        segments = struct.unpack_from(">H", data, at + 6)[0] // 2
        ends = struct.unpack_from(f">{segments}H", data, at + 14)
        starts = struct.unpack_from(f">{segments}H", data, at + 16 + 2 * segments)
        deltas = struct.unpack_from(f">{segments}h", data, at + 16 + 4 * segments)
        range_at = at + 16 + 6 * segments
        range_offsets = struct.unpack_from(f">{segments}H", data, range_at)
        for i, (start, end, delta, range_offset) in enumerate(zip(starts, ends, deltas, range_offsets)):
            for code in range(start, min(end, 0xFFFE) + 1):
                if range_offset == 0:
                    glyph = (code + delta) & 0xFFFF
                else:
                    (glyph,) = struct.unpack_from(">H", data, range_at + 2 * i + range_offset + 2 * (code - start))
                    glyph = (glyph + delta) & 0xFFFF if glyph else 0
                if glyph:
                    points.add(code)
    else:
        raise ValueError("the font has no Unicode cmap")
    return frozenset(points)


@functools.lru_cache(maxsize=None)
def caption_font() -> tuple[ImageFont.ImageFont | ImageFont.FreeTypeFont, frozenset[int]]:
    """The caption font and the code points it draws. Without the font package (a broken install) it is
    Pillow's built-in font, trusted for printable ASCII only: the rest is escaped, still legible."""
    try:
        data = (resources.files("paperang_p2_fonts_cjk") / "fonts" / "wqy-microhei.ttc").read_bytes()
        return ImageFont.truetype(io.BytesIO(data), FONT_SIZE, index=0), font_codepoints(data, 0)
    except (ImportError, OSError, ValueError, struct.error) as exc:
        warnings.warn(f"grid captions fall back to Pillow's font, non-ASCII escaped: {exc}", stacklevel=2)
        return _font(FONT_SIZE), frozenset(range(0x20, 0x7F))


def display_units(text: str, codepoints: frozenset[int] | set[int]) -> list[str]:
    """`text` as drawn, one string per character (NFC first): the character itself when it is printable and in
    `codepoints`, else its escape (`\\u00e9`, `\\U0001f600`); a backslash is doubled so an escape is never ambiguous."""
    units = []
    for char in unicodedata.normalize("NFC", text):
        code = ord(char)
        if char == "\\":
            units.append("\\\\")
        elif char.isprintable() and code in codepoints:
            units.append(char)
        else:
            units.append(f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}")
    return units


def display_text(text: str, codepoints: frozenset[int] | set[int] | None = None) -> str:
    """`text` as a caption shows it (before fitting), for the caption font's code points by default."""
    return "".join(display_units(text, caption_font()[1] if codepoints is None else codepoints))


def fit_text(prefix: str, units: list[str], width: float, font, ellipsis: str = ELLIPSIS) -> str:
    """`prefix` + the units, losing units from the middle (shown as `ellipsis`) until it measures at most `width`
    pixels in `font`. The prefix is always kept whole."""
    whole = prefix + "".join(units)
    if font.getlength(whole) <= width:
        return whole

    def cut(keep: int) -> str:
        head = (keep + 1) // 2
        return prefix + "".join(units[:head]) + ellipsis + "".join(units[len(units) - (keep - head) :])

    low, high = 0, len(units) - 1  # the longest cut that fits keeps `low` units
    while low < high:
        middle = (low + high + 1) // 2
        if font.getlength(cut(middle)) <= width:
            low = middle
        else:
            high = middle - 1
    return cut(low)


def caption_lines(rank: int, name: str, score: float, inliers: int | None, width: float, font=None, codepoints=None,
                  stale: str | None = None):
    """The two lines under a result tile: `#rank name` and `score  N inliers` (or `deleted` / `changed`
    when the photo is no longer what was indexed), each fitted to `width` pixels."""
    if font is None:
        font, codepoints = caption_font()
    ellipsis = ELLIPSIS if ord(ELLIPSIS) in codepoints else "..."
    first = fit_text(f"#{rank} ", display_units(name, codepoints), width, font, ellipsis)
    rest = f"  {stale} since indexing" if stale else f"  {inliers} inliers" if inliers is not None else ""
    second = fit_text(f"{score:.3g}", list(rest), width, font, ellipsis)
    return [first, second]


def caption_height(font=None) -> int:
    ascent, descent = (font or caption_font()[0]).getmetrics()
    return 2 * (ascent + descent) + 2 * PAD


def _tile(image: np.ndarray, boxes: list[Box], colour, quads=()) -> Image.Image:
    """Fit an image into a TILE x TILE square, drawing boxes (and quadrilaterals) scaled with it."""
    picture = Image.fromarray(image)
    scale = min(TILE / picture.width, TILE / picture.height)
    picture = picture.resize((max(1, round(picture.width * scale)), max(1, round(picture.height * scale))), Image.BILINEAR)
    tile = Image.new("RGB", (TILE, TILE), (32, 32, 32))
    left, top = (TILE - picture.width) // 2, (TILE - picture.height) // 2
    tile.paste(picture, (left, top))
    draw = ImageDraw.Draw(tile)
    for x, y, w, h in boxes:
        draw.rectangle(
            [left + x * scale, top + y * scale, left + (x + w) * scale, top + (y + h) * scale], outline=colour, width=3
        )
    for quad in quads:
        points = [(left + x * scale, top + y * scale) for x, y in quad]
        draw.line(points + points[:1], fill=colour, width=3)
    return tile


def _caption(lines: list[str], colour, font, height: int) -> Image.Image:
    """A TILE-wide caption drawn into its own image: whatever the text, it cannot reach a neighbouring tile."""
    picture = Image.new("RGB", (TILE, height), (255, 255, 255))
    draw = ImageDraw.Draw(picture)
    ascent, descent = font.getmetrics()
    for row, line in enumerate(lines):
        draw.text((PAD, PAD + row * (ascent + descent)), line, fill=colour, font=font)
    return picture


def render_grid(query: np.ndarray, boxes: list[Box], results, top: int = 10) -> Image.Image:
    """Compose the grid: the query tile first, then up to `top` results (objects with id, path, score, and for
    verified results inliers and quad)."""
    results = list(results)[:top]
    font, codepoints = caption_font()
    caption = caption_height(font)
    cells = 1 + len(results)
    columns = min(cells, COLUMNS)  # a few results (--matches) make a narrow picture, not a mostly blank one
    rows = -(-cells // columns)
    sheet = Image.new("RGB", (columns * TILE, rows * (TILE + caption)), (255, 255, 255))

    def place(cell: int, tile: Image.Image, lines: list[str], colour=(0, 0, 0)):
        x, y = (cell % columns) * TILE, (cell // columns) * (TILE + caption)
        sheet.paste(tile, (x, y))
        sheet.paste(_caption(lines, colour, font, caption), (x, y + TILE))

    place(0, _tile(query, boxes, QUERY_COLOUR), ["query"], QUERY_COLOUR)
    for rank, hit in enumerate(results, 1):
        stale = getattr(hit, "stale", None)
        verified = getattr(hit, "quad", None) is not None and not stale  # a changed photo's outline is stale too
        try:
            tile = _tile(load_image(hit.path), [], FOUND_COLOUR, [hit.quad] if verified else [])
        except ImageError:  # the gallery changed since indexing; keep the slot, say why
            tile = Image.new("RGB", (TILE, TILE), (90, 90, 90))
            stale = stale or "unreadable"
        inliers = getattr(hit, "inliers", None) if verified else None
        place(rank, tile, caption_lines(rank, hit.id, hit.score, inliers, TILE - 2 * PAD, font, codepoints, stale))
    return sheet


def save_grid(path: str | os.PathLike, query: np.ndarray, boxes: list[Box], results, top: int = 10) -> Path:
    path = Path(path)
    buffer = io.BytesIO()
    render_grid(query, boxes, results, top).save(buffer, format="PNG")
    write_output(path, buffer.getvalue())
    return path
