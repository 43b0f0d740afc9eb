"""The picture of a search: the query with its boxes, then the best gallery images with rank, name and score,
and, for verified results, where the query box lands in them."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import Box, ImageError, load_image
from .store import atomic_write_bytes

TILE = 240
CAPTION = 36
COLUMNS = 6
QUERY_COLOUR = (230, 40, 40)
FOUND_COLOUR = (40, 220, 60)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow built without FreeType
        return ImageFont.load_default()


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


def render_grid(query: np.ndarray, boxes: list[Box], results, top: int = 10) -> Image.Image:
    """Compose the grid: the query tile first, then up to `top` results (objects with id, path, score)."""
    results = list(results)[:top]
    cells = 1 + len(results)
    rows = -(-cells // COLUMNS)
    sheet = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + CAPTION)), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    font = _font(15)

    def place(cell: int, tile: Image.Image, caption: str, colour=(0, 0, 0)):
        x, y = (cell % COLUMNS) * TILE, (cell // COLUMNS) * (TILE + CAPTION)
        sheet.paste(tile, (x, y))
        draw.text((x + 4, y + TILE + 4), caption, fill=colour, font=font)

    place(0, _tile(query, boxes, QUERY_COLOUR), "query", QUERY_COLOUR)
    for rank, hit in enumerate(results, 1):
        try:
            quads = [hit.quad] if getattr(hit, "quad", None) is not None else []
            tile = _tile(load_image(hit.path), [], FOUND_COLOUR, quads)
        except ImageError:  # the gallery changed since indexing; keep the slot, say why
            tile = Image.new("RGB", (TILE, TILE), (90, 90, 90))
        name = hit.id if len(hit.id) <= 22 else "…" + hit.id[-21:]
        verified = getattr(hit, "quad", None) is not None
        inliers = f"  {hit.inliers} inliers" if verified else ""
        place(rank, tile, f"#{rank} {name}  {hit.score:.3g}{inliers}")
    return sheet


def save_grid(path: str | os.PathLike, query: np.ndarray, boxes: list[Box], results, top: int = 10) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    render_grid(query, boxes, results, top).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())
    return path
