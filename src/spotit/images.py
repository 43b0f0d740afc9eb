"""Finding, loading and cropping images; when a photo was taken (EXIF); parsing query boxes."""

from __future__ import annotations

import datetime as dt
import errno
import fnmatch
import io
import os
import stat
import struct
from collections import Counter
from pathlib import Path
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps, TiffImagePlugin
from pillow_heif import register_heif_opener

from .errors import SpotitError
from .raw import RAW_EXTENSIONS, decode_raw, is_raw

# phones write HEIC/HEIF (pillow-heif) and AVIF (Pillow), cameras RAW (raw.py)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".heic", ".heif", ".hif",
                    ".avif", *RAW_EXTENSIONS)
register_heif_opener()

# 250 MP holds the largest camera output today (200 MP phone sensors, 16320x12240) with room to spare,
# yet decodes to 750 MB of RGB (a few GB at peak for 16-bit or float files): what a laptop survives.
DEFAULT_MAX_PIXELS = 250_000_000

# Our own limit, checked from the header in load_image, replaces Pillow's global decompression-bomb
# check: that one would fire first (or only warn) at its own threshold, whatever max_pixels says.
Image.MAX_IMAGE_PIXELS = None

# What Pillow's plugins raise on damaged or unsupported files (UnidentifiedImageError is an OSError).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error)

_MISSING = "no such file"

Box = tuple[int, int, int, int]  # x, y, width, height in pixels, top-left origin


class ImageError(SpotitError):
    """An image file that cannot be read."""


# what a photo library holds beside its photos: (glob on a file or folder name, what it is)
DEFAULT_EXCLUDES = (
    ("._*", "AppleDouble files (macOS metadata)"),
    (".*", "hidden"),
    ("@eaDir", "Synology thumbnails"),
    ("#recycle", "NAS recycle bin"),
    ("#snapshot", "NAS snapshots"),
    ("$RECYCLE.BIN", "Windows recycle bin"),
    ("System Volume Information", "Windows system folder"),
)


def excluded_by(relpath: str, name: str, exclude=()) -> str | None:
    """Why a gallery entry is left out (the default rules, then `exclude` globs on its name or, for globs
    with a "/", on its path relative to the gallery), or None."""
    for pattern, why in DEFAULT_EXCLUDES:
        if fnmatch.fnmatchcase(name, pattern):
            return why
    for pattern in exclude:
        if fnmatch.fnmatchcase(relpath if "/" in pattern else name, pattern.strip("/")):
            return f"--exclude {pattern}"
    return None


def scan_images(root: str | os.PathLike, exclude=()) -> tuple[list[str], list[tuple[str, str]], Counter]:
    """Image files under root, recursively, as sorted POSIX paths relative to root; what was skipped; and
    how many folders and image files were left out by rule (excluded_by), by reason.

    Skipped are (relative path, reason) for image-named entries that are no regular file (fifo, socket,
    device, broken symlink, symlink loop) and for folders that cannot be read.
    """
    root = Path(root)
    if not root.is_dir():
        raise SpotitError(f"gallery folder not found: {root}")
    try:
        os.scandir(root).close()
    except OSError as exc:
        raise SpotitError(f"gallery folder {root} cannot be read: {_os_reason(exc, root)}") from None
    found, skipped, left_out = [], [], Counter()

    def unreadable(exc: OSError) -> None:
        if exc.errno != errno.ENOENT:  # a folder that vanished meanwhile is no problem
            skipped.append((_relative(exc.filename, root), f"unreadable folder ({_os_reason(exc, exc.filename)})"))

    def keep(dirpath: str, name: str, what: str) -> bool:
        why = excluded_by(_relative(Path(dirpath) / name, root), name, exclude)
        if why is not None:
            left_out[f"{what} ({why})"] += 1
        return why is None

    # os.walk does not follow folder symlinks, so a symlink loop cannot make it recurse forever
    for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable):
        dirnames[:] = sorted(d for d in dirnames if keep(dirpath, d, "folders"))
        for name in dirnames:
            if os.path.islink(os.path.join(dirpath, name)):  # said, so that its photos are not silently missing
                skipped.append((_relative(Path(dirpath) / name, root), "symlinked folder, not followed"))
        for name in filenames:
            if name.lower().endswith(IMAGE_EXTENSIONS) and keep(dirpath, name, "image files"):
                path = Path(dirpath) / name
                problem = file_problem(path)
                if problem is None:
                    found.append(_relative(path, root))
                elif problem != _MISSING:  # a file deleted during the scan is simply gone
                    skipped.append((_relative(path, root), problem))
    return sorted(found), sorted(skipped), left_out


def list_images(root: str | os.PathLike) -> list[str]:
    """Image files under root, recursively, as sorted POSIX paths relative to root (see scan_images)."""
    return scan_images(root)[0]


def _relative(path: str | os.PathLike, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def file_problem(path: str | os.PathLike) -> str | None:
    """Why path cannot be read as an image file without blocking, or None for a regular file.

    Stats through symlinks, never opens: a fifo would block a reader, a device could be endless.
    """
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _os_reason(exc, path)
    return None if stat.S_ISREG(mode) else f"not a regular file ({_file_kind(mode)})"


def _file_kind(mode: int) -> str:
    kinds = [(stat.S_ISDIR, "folder"), (stat.S_ISFIFO, "fifo"), (stat.S_ISSOCK, "socket"),
             (stat.S_ISCHR, "character device"), (stat.S_ISBLK, "block device")]
    return next((name for test, name in kinds if test(mode)), "special file")


def _os_reason(exc: OSError, path: str | os.PathLike | None) -> str:
    """A short reason for a failed stat or open; tells broken symlinks and symlink loops apart."""
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    if exc.errno == errno.ENOENT:
        return "broken symlink (its target is missing)" if path is not None and os.path.islink(path) else _MISSING
    if exc.errno in (errno.EACCES, errno.EPERM):
        return "permission denied"
    return (exc.strerror or str(exc)).lower()


def image_id(relpath: str) -> str:
    """The id of a gallery image: its relative path without extension."""
    return os.path.splitext(relpath)[0]


def assign_ids(relpaths: list[str]) -> list[str]:
    """The ids of distinct gallery images, in the same order: unique by construction.

    An id is the relative path without its extension (image_id), unless that would be shared with another
    path in the list (photo.jpg and photo.png) or equal another path (a.jpg beside a.jpg.png): then the id
    is the full relative path.
    """
    stems = [image_id(p) for p in relpaths]
    if len(set(stems)) == len(stems) and set(relpaths).isdisjoint(stems):  # the usual case, in a third the time
        return stems
    count = Counter(stems)
    paths = set(relpaths)
    return [p if count[s] > 1 or (s != p and s in paths) else s for p, s in zip(relpaths, stems)]


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS, at_least: int | None = None) -> np.ndarray:
    """The true content of an image file as RGB uint8 (H, W, 3), upright by its EXIF orientation.

    Any bit depth, greyscale, palette, alpha (over white), CMYK; the first frame of an animation.
    Pillow decodes, OpenCV takes over for what Pillow cannot; images over max_pixels (None: no limit)
    are refused from their header, before decoding. With `at_least`, a JPEG may be decoded at 1/2, 1/4 or
    1/8 of its size (much faster) where both sides keep at least that many pixels.
    """
    with _open_regular(path) as file:
        return _big_enough(_decode(file, path, max_pixels, at_least), path)


def decode_image(data: bytes, name: str = "upload", max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """load_image for a file's bytes (an upload): RGB uint8, upright; `name` only appears in errors."""
    return _big_enough(_decode(io.BytesIO(data), name, max_pixels), name)


def _big_enough(array: np.ndarray, path) -> np.ndarray:
    if array.shape[0] < 8 or array.shape[1] < 8:
        raise ImageError(f"{path}: image too small ({array.shape[1]}x{array.shape[0]})")
    return array


def _open_regular(path: str | os.PathLike) -> BinaryIO:
    """The file opened for reading, or ImageError at once if it is no regular file (never blocks)."""
    problem = file_problem(path)
    if problem is not None:
        raise ImageError(f"{path}: {problem}")
    try:
        # O_NONBLOCK: should the path become a fifo after the stat, opening it must not wait for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except OSError as exc:
        raise ImageError(f"{path}: {_os_reason(exc, path)}") from None
    file = os.fdopen(fd, "rb")
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        file.close()
        raise ImageError(f"{path}: not a regular file ({_file_kind(mode)})")
    return file


def _decode(file: BinaryIO, path: str | os.PathLike, max_pixels: int | None, at_least: int | None = None) -> np.ndarray:
    if is_raw(path):  # before Pillow, which would open a TIFF-based raw's small thumbnail as the photo
        import rawpy

        try:
            return decode_raw(file, lambda width, height: _check_pixels(path, width, height, max_pixels))
        except (rawpy.LibRawError, ValueError, OSError) as exc:
            reason = exc.args[0].decode(errors="replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
            raise ImageError(f"{path}: unreadable camera raw file ({reason or type(exc).__name__})") from None
    opened_as = None
    try:
        with Image.open(file) as img:  # reads the header only; stands on the first frame
            opened_as = img.format
            _check_pixels(path, *img.size, max_pixels)
            if at_least:
                img.draft(img.mode, (at_least, at_least))  # JPEG only; others decode whole
            img.load()
            return _pillow_to_rgb(_upright(img))
    except _DECODE_ERRORS as exc:
        reason = _pillow_reason(exc)
    # a JPEG (MPO: one holding more pictures, as phones write) that libjpeg gave up on: OpenCV's libjpeg
    # would decode the damaged part as noise, with warnings on stderr
    if opened_as in ("JPEG", "MPO"):
        raise ImageError(f"{path}: " + (reason if reason.startswith("truncated") else f"damaged JPEG data ({reason})"))
    size = _tiff_size(file)  # TIFFs that Pillow cannot open (float RGB, ...) still tell their size
    if size is not None:
        _check_pixels(path, *size, max_pixels)
    array = _decode_with_opencv(file, max_pixels)
    if array is None:
        raise ImageError(f"{path}: {reason}")
    # OpenCV reads no header alone: for other formats its own limit (2**30 pixels) guards the decoding
    _check_pixels(path, array.shape[1], array.shape[0], max_pixels)
    return array


def _check_pixels(path: str | os.PathLike, width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise ImageError(f"{path}: {width}x{height} pixels ({width * height / 1e6:g} MP) is over the limit "
                         f"of {max_pixels / 1e6:g} MP; raise it with --max-pixels")


def _tiff_size(file: BinaryIO) -> tuple[int, int] | None:
    """Width and height from the first directory of a TIFF file, or None if it is none."""
    try:
        file.seek(0)
        head = file.read(8)
        if head[2:3] == b"\x2b":  # BigTIFF has a 16-byte header
            head += file.read(8)
        directory = TiffImagePlugin.ImageFileDirectory_v2(head)
        file.seek(directory.next)
        directory.load(file)
        return int(directory[256]), int(directory[257])
    except (*_DECODE_ERRORS, KeyError, TypeError):
        return None


def _pillow_reason(exc: Exception) -> str:
    if isinstance(exc, Image.UnidentifiedImageError):
        return "not an image"
    if "truncated" in str(exc).lower():
        return "truncated (the file ends before the image does)"
    return str(exc) or "unreadable"


def _upright(img: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(img)
    except Exception:  # a damaged EXIF block must not cost a readable image
        return img


def _pillow_to_rgb(img: Image.Image) -> np.ndarray:
    """RGB uint8 from a decoded Pillow image of any mode."""
    if img.mode.startswith("I;16"):
        return _grey_to_rgb(_to_8_bits(np.asarray(img), bits=16))
    if img.mode in ("I", "F"):
        return _grey_to_rgb(_to_8_bits(np.asarray(img)))
    if img.mode in ("La", "RGBa"):  # premultiplied alpha: undo it first
        img = img.convert(img.mode.upper())
    if img.mode in ("RGBA", "LA", "PA") or (img.mode in ("L", "P", "RGB") and "transparency" in img.info):
        rgba = np.asarray(img.convert("RGBA"))
        return _over_white(rgba[..., :3], rgba[..., 3] / np.float32(255))
    return np.asarray(img.convert("RGB"))  # 1-bit, L, P, CMYK, YCbCr, LAB, HSV: Pillow's own conversion


def _decode_with_opencv(file: BinaryIO, max_pixels: int | None) -> np.ndarray | None:
    """RGB uint8 decoded by OpenCV, or None if it cannot either."""
    # an image within the limit cannot take more than 32 bytes a pixel (4 channels of float64)
    size = file.seek(0, os.SEEK_END)
    if max_pixels is not None and size > max_pixels * 32 + (1 << 24):
        return None
    file.seek(0)
    data = np.frombuffer(file.read(), np.uint8)
    try:
        array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
        channels = None if array is None else 1 if array.ndim == 2 else array.shape[2]
        if channels in (1, 3):
            # IMREAD_UNCHANGED ignores the EXIF orientation: without alpha to keep, decode upright
            array = cv2.imdecode(data, cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR)
    except cv2.error:
        return None
    if array is None or array.size == 0:
        return None
    if array.ndim == 2:
        array = array[:, :, None]
    colour = array[:, :, :3][:, :, ::-1] if array.shape[2] >= 3 else array[:, :, :1]  # OpenCV is BGR
    rgb = _grey_to_rgb(_to_8_bits(colour))
    alpha = array.shape[2] in (2, 4)
    return _over_white(rgb, _alpha_to_unit(array[:, :, -1])) if alpha else rgb


def _grey_to_rgb(array: np.ndarray) -> np.ndarray:
    if array.ndim == 3 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    grey = array if array.ndim == 2 else array[:, :, 0]
    return np.repeat(grey[:, :, None], 3, axis=2)


def _to_8_bits(array: np.ndarray, bits: int | None = None) -> np.ndarray:
    """uint8 from any depth; channels are scaled together so that colours keep their balance.

    Known depths map full range to full range (16-bit: /257). Integers of unknown depth within
    0..65535 are 16-bit data (Pillow opens 16-bit files as 32-bit 'I'); others, and floats outside
    [0, 1], are stretched from their min to their max, so an image with content is never blank.
    """
    if array.dtype == np.uint8:
        return array
    if bits is None and array.dtype == np.uint16:
        bits = 16
    if bits is None and np.issubdtype(array.dtype, np.integer) and array.size:
        bits = 16 if array.min() >= 0 and array.max() <= 65535 else None
    if bits is not None:
        top = (1 << bits) - 1
        return ((array.astype(np.uint32) * 255 + top // 2) // top).astype(np.uint8)  # bits <= 16: no overflow
    values = array.astype(np.float32)
    finite = np.isfinite(values)
    if not finite.any():
        return np.zeros(array.shape, np.uint8)
    low, high = float(values[finite].min()), float(values[finite].max())
    values = np.nan_to_num(values, nan=low, posinf=high, neginf=low)
    if low >= 0 and high <= 1:
        scaled = values * 255
    elif high > low:
        scaled = (values - low) * (255 / (high - low))
    else:  # a flat image: keep its level where it fits
        scaled = values
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _alpha_to_unit(alpha: np.ndarray) -> np.ndarray:
    if np.issubdtype(alpha.dtype, np.integer):
        return np.clip(alpha / np.float32(np.iinfo(alpha.dtype).max), 0, 1)
    return np.clip(np.nan_to_num(alpha.astype(np.float32)), 0, 1)


def _over_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Composite over white: transparent pixels have no true colour (often stored black, or garbage),
    and white is what viewers and documents show behind them; hidden colours must not become features."""
    a = alpha[:, :, None]
    return np.rint(rgb * a + 255 * (1 - a)).astype(np.uint8)


def as_image(image: str | os.PathLike | np.ndarray, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Accept a path (loaded by load_image, under max_pixels) or an array (H, W, 3 RGB or H, W grey): RGB uint8."""
    if isinstance(image, np.ndarray):
        if image.ndim == 2:
            image = np.stack([image] * 3, axis=-1)
        if image.ndim != 3 or image.shape[2] not in (3, 4):
            raise SpotitError(f"query array must be HxWx3 RGB, got shape {image.shape}")
        if image.shape[0] < 8 or image.shape[1] < 8:
            raise SpotitError(f"query array is too small ({image.shape[1]}x{image.shape[0]}); at least 8x8 pixels")
        if image.dtype == bool or not (np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)):
            raise SpotitError(f"query array must hold numbers, not {image.dtype}")
        rgb = _to_8_bits(image[:, :, :3])  # any depth, as files are: floats in [0, 1], 16-bit...
        if image.shape[2] == 4:
            rgb = _over_white(rgb, _alpha_to_unit(image[:, :, 3]))
        return np.ascontiguousarray(rgb)
    return load_image(image, max_pixels)


def parse_box(text: str) -> Box:
    """'X,Y,W,H' or 'X Y W H' (numbers, pixels) -> a box; rejects anything else with the reason."""
    parts = [p.strip() for p in text.split(",")] if "," in text else text.split()
    if len(parts) != 4 or not all(parts):
        raise SpotitError(f"box {text.strip()!r} must be four numbers X,Y,W,H")
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise SpotitError(f"box {text.strip()!r} must be four numbers X,Y,W,H") from None
    if not all(np.isfinite(values)):
        raise SpotitError(f"box {text.strip()!r} has a non-finite number")
    x, y, w, h = (int(round(v)) for v in values)
    return (x, y, w, h)


def as_boxes(boxes) -> list[Box]:
    """The Python API's boxes: a list of (x, y, w, h) numbers or 'X,Y,W,H' strings, or one such box alone."""
    if boxes is None:
        return []
    if isinstance(boxes, np.ndarray):
        boxes = boxes.tolist()
    if isinstance(boxes, str) or (isinstance(boxes, (list, tuple)) and len(boxes) == 4
                                  and all(isinstance(v, (int, float, np.number)) for v in boxes)):
        boxes = [boxes]
    if not isinstance(boxes, (list, tuple)):
        raise SpotitError(f"boxes must be a list of (x, y, w, h), got {type(boxes).__name__}")
    out = []
    for box in boxes:
        if isinstance(box, str):
            out.append(parse_box(box))
            continue
        if isinstance(box, np.ndarray):
            box = box.tolist()
        if not isinstance(box, (list, tuple)) or len(box) != 4 or \
                not all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool) for v in box):
            raise SpotitError(f"box {box!r} must be four numbers (x, y, w, h)")
        if not all(np.isfinite(box)):
            raise SpotitError(f"box {box!r} has a non-finite number")
        out.append(tuple(int(round(v)) for v in box))
    return out


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


_EXIF_IFD, _DATE_TIME_ORIGINAL, _DATE_TIME = 0x8769, 0x9003, 0x0132  # EXIF tags


def taken(path: str | os.PathLike) -> int | None:
    """When the photo was taken, from its EXIF, as seconds since 1970 read as UTC; None if it says not."""
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            text = exif.get_ifd(_EXIF_IFD).get(_DATE_TIME_ORIGINAL) or exif.get(_DATE_TIME)
        when = dt.datetime.strptime(str(text).strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except Exception:  # no EXIF, a format Pillow cannot open (some camera raws), a malformed date
        return None
    return int(when.replace(tzinfo=dt.timezone.utc).timestamp())
