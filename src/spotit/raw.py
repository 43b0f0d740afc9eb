"""Camera RAW files (CR2, CR3, NEF, ARW, DNG, RAF, ORF, ...), through LibRaw (rawpy).

The JPEG preview that cameras embed is what their own viewers show, and decodes in a fraction of the time
of the raw data: it is used when it is large enough for the features, else the raw data are demosaiced.
Either way the photo has the raw's size and orientation, so boxes and found locations mean the same
pixels whichever was used."""

from __future__ import annotations

import io
from typing import BinaryIO

import cv2
import numpy as np
from PIL import Image, ImageOps

RAW_EXTENSIONS = (".3fr", ".arw", ".cr2", ".cr3", ".crw", ".dcr", ".dng", ".erf", ".iiq", ".k25", ".kdc", ".mef",
                  ".mos", ".mrw", ".nef", ".nrw", ".orf", ".pef", ".raf", ".raw", ".rw2", ".rwl", ".sr2", ".srf",
                  ".srw", ".x3f")
MIN_PREVIEW_SIDE = 1024  # the largest side any feature is extracted at (local_features' "seed" conf)
# LibRaw's `flip` -> quarter turns counter-clockwise that make the photo upright
_TURNS = {0: 0, 3: 2, 5: 1, 6: 3}


def is_raw(name: str) -> bool:
    return str(name).lower().endswith(RAW_EXTENSIONS)


def raw_size(raw) -> tuple[int, int]:
    """(width, height) of the upright photo."""
    sizes = raw.sizes
    turned = _TURNS.get(sizes.flip, 0) % 2
    return (sizes.height, sizes.width) if turned else (sizes.width, sizes.height)


def decode_raw(file: BinaryIO, check_pixels) -> np.ndarray:
    """RGB uint8, upright; `check_pixels(width, height)` refuses a photo over the limit before decoding.
    Raises rawpy's errors (LibRawError) and ValueError for what is no raw file."""
    import rawpy

    file.seek(0)
    with rawpy.imread(file) as raw:
        width, height = raw_size(raw)
        check_pixels(width, height)
        preview = _preview(raw)
        if preview is not None:
            if preview.shape[:2] != (height, width):
                preview = cv2.resize(preview, (width, height), interpolation=cv2.INTER_LINEAR)
            return preview
        # LibRaw applies the flip itself; the camera's white balance is what its preview would show
        return np.ascontiguousarray(raw.postprocess(use_camera_wb=True, output_bps=8))


def _preview(raw) -> np.ndarray | None:
    """The embedded JPEG preview, upright, when its longer side reaches MIN_PREVIEW_SIDE; else None."""
    import rawpy

    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawNoThumbnailError, rawpy.LibRawUnsupportedThumbnailError):
        return None
    if thumb.format != rawpy.ThumbFormat.JPEG:
        return None
    try:
        with Image.open(io.BytesIO(thumb.data)) as img:
            if max(img.size) < MIN_PREVIEW_SIDE:
                return None
            # a preview with its own orientation tag follows it; else it is stored as the sensor saw it
            tagged = img.getexif().get(0x0112, 1) != 1
            rgb = np.asarray((ImageOps.exif_transpose(img) if tagged else img).convert("RGB"))
    except (OSError, ValueError, SyntaxError):
        return None  # a damaged preview: the raw data may still be fine
    return rgb if tagged else np.ascontiguousarray(np.rot90(rgb, _TURNS.get(raw.sizes.flip, 0)))
