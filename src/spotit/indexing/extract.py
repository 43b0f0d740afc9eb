"""What is done for one gallery photo, on an updater's thread or a Ray worker: load it, note its file
stamp and the date it was taken, and extract its features."""

from __future__ import annotations

import os

from ..features.extractors import Extractors
from ..images import ImageError, load_image, taken


def load_and_extract(features: Extractors, gallery: str, name: str, kinds: list[str], max_pixels: int | None):
    """(name, stamp, features) of one gallery photo, or (name, None, why it was skipped)."""
    path = os.path.join(gallery, name)
    try:
        stat = os.stat(path)
        image = load_image(path, max_pixels=max_pixels)
    except (ImageError, OSError) as exc:
        return name, None, str(exc).removeprefix(f"{path}: ")
    stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "width": image.shape[1], "height": image.shape[0],
             "taken": taken(path)}
    return name, stamp, features.extract(image, kinds)
