"""Finding, loading and cropping images; parsing query boxes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .errors import SpotitError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

# A gallery of phone photos can hold 100+ megapixel panoramas; refuse only absurd sizes.
Image.MAX_IMAGE_PIXELS = 400_000_000

Box = tuple[int, int, int, int]  # x, y, width, height in pixels, top-left origin


class ImageError(SpotitError):
    """An image file that cannot be read."""


def list_images(root: str | os.PathLike) -> list[str]:
    """Image files under root, recursively, as sorted POSIX paths relative to root."""
    root = Path(root)
    if not root.is_dir():
        raise SpotitError(f"gallery folder not found: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                found.append((Path(dirpath) / name).relative_to(root).as_posix())
    return sorted(found)


def image_id(relpath: str) -> str:
    """The id of a gallery image: its relative path without extension."""
    return os.path.splitext(relpath)[0]


def load_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB uint8 array (H, W, 3), upright according to its EXIF orientation."""
    try:
        with Image.open(path) as img:
            img.load()
            img = ImageOps.exif_transpose(img)
            rgb = img.convert("RGB")
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{path}: image too large") from None
    except (OSError, SyntaxError, ValueError) as exc:
        # Pillow reports truncated and unknown files as OSError (UnidentifiedImageError is one)
        reason = "not an image" if isinstance(exc, Image.UnidentifiedImageError) else str(exc) or "unreadable"
        raise ImageError(f"{path}: {reason}") from None
    array = np.asarray(rgb)
    if array.shape[0] < 8 or array.shape[1] < 8:
        raise ImageError(f"{path}: image too small ({array.shape[1]}x{array.shape[0]})")
    return array


def as_image(image: str | os.PathLike | np.ndarray) -> np.ndarray:
    """Accept a path or an array (H, W, 3 RGB or H, W grey) and return RGB uint8."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise SpotitError(f"query array must be HxWx3 RGB, got shape {image.shape}")
        return np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    return load_image(image)


def parse_box(text: str) -> Box:
    """'X,Y,W,H' or 'X Y W H' (numbers, pixels) -> a box; rejects anything else with the reason."""
    parts = text.replace(",", " ").split()
    if len(parts) != 4:
        raise SpotitError(f"box {text.strip()!r} must be four numbers X,Y,W,H")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SpotitError(f"box {text.strip()!r} must be four numbers X,Y,W,H") from None
    if not all(np.isfinite(values)):
        raise SpotitError(f"box {text.strip()!r} has a non-finite number")
    x, y, w, h = (int(round(v)) for v in values)
    return (x, y, w, h)


def read_box_file(path: str | os.PathLike) -> list[Box]:
    """Boxes from a text file with one 'x y w h' line per box (blank lines ignored)."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SpotitError(f"cannot read box file {path}: {exc}") from None
    boxes = []
    for number, line in enumerate(lines, 1):
        if line.strip():
            try:
                boxes.append(parse_box(line))
            except SpotitError as exc:
                raise SpotitError(f"{path}, line {number}: {exc}") from None
    if not boxes:
        raise SpotitError(f"box file {path} holds no box")
    return boxes


def check_box(box: Box, width: int, height: int) -> Box:
    """Refuse a box of zero size or outside the image; clip one that sticks out a little."""
    x, y, w, h = box
    if w <= 0 or h <= 0:
        raise SpotitError(f"box {x},{y},{w},{h} has zero or negative size")
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, width), min(y + h, height)
    if x1 - x0 < 1 or y1 - y0 < 1:
        raise SpotitError(f"box {x},{y},{w},{h} lies outside the {width}x{height} image")
    if (x1 - x0) * (y1 - y0) < 0.5 * w * h:
        raise SpotitError(f"box {x},{y},{w},{h} lies mostly outside the {width}x{height} image")
    return (x0, y0, x1 - x0, y1 - y0)


def crop(image: np.ndarray, box: Box) -> np.ndarray:
    x, y, w, h = check_box(box, image.shape[1], image.shape[0])
    return image[y : y + h, x : x + w]


def resize_max_side(image: np.ndarray, max_side: int | None) -> tuple[np.ndarray, float]:
    """Downscale so that the longest side is at most max_side; returns the image and the scale."""
    height, width = image.shape[:2]
    if not max_side or max(height, width) <= max_side:
        return image, 1.0
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)), scale
