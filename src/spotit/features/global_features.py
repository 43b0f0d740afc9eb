"""Global CNN descriptors: one L2-normalised vector per image, compared by cosine similarity."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .backbones import Backbone
from .pooling import POOLINGS, l2_normalise

# Named configurations; "seed" reproduces the assignment's notebook exactly.
confs = {
    "seed": {"resize": 256, "crop": 224, "pooling": "avg"},
}


def resize_shorter_side(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = size / min(height, width)
    new = (max(size, round(width * scale)), max(size, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(new, Image.BILINEAR))


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    height, width = image.shape[:2]
    top, left = (height - size) // 2, (width - size) // 2
    return image[top : top + size, left : left + size]


def preprocess(image: np.ndarray, conf: dict) -> np.ndarray:
    """RGB uint8 -> the fixed-size uint8 crop the network sees."""
    return centre_crop(resize_shorter_side(image, conf["resize"]), conf["crop"])


class GlobalExtractor:
    """Maps RGB images to (N, C) float32 L2-normalised descriptors."""

    def __init__(self, backbone: Backbone, conf: str = "seed"):
        self.backbone = backbone
        self.conf_name = conf
        self.conf = confs[conf]

    @property
    def dim(self) -> int:
        return self.backbone.channels

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        if not images:
            return np.zeros((0, self.dim), np.float32)
        batch = np.stack([preprocess(image, self.conf) for image in images])
        pooled = POOLINGS[self.conf["pooling"]](self.backbone(batch))
        return l2_normalise(pooled).astype(np.float32)


# Descriptors that see small objects: GeM over a grid of regions of larger, multi-scale inputs.
# Photos are seen at 672 px on their longest side (724 px scored +0.015 mAP on boxed queries, the same on
# Holidays, but with SIFT it held indexing under 8 images/s: benchmarks/NOTES.md); a query crop is resized by the same factor as its whole
# photo would be, so an object keeps the scale it has in a photo, and regions (an R-MAC grid) let it match
# part of a gallery photo. Which views of the query are described (scales, right-angle turns) is the
# searcher's choice: rerank.confs.
# Whitening keeps 512 PCA directions and scales each by eigenvalue^-power: 0.25 is a gentle whitening
# that helped both whole-image and boxed queries, where full whitening (0.5) hurt whole-image ones.
# A gallery photo's region descriptors are stored in `stored_bits` a value (store_regions).
regional_confs = {
    "gem-regions": {"max_side": 672, "min_query_side": 64, "p": 3.0, "levels": 3, "whiten": 512, "whiten_power": 0.25,
                    "stored_bits": 8},
    # steps of the ablation in benchmarks/ablation.py
    "gem-224": {"max_side": 224, "min_query_side": 64, "p": 3.0, "levels": 1, "whiten": 0, "whiten_power": 0.25},
    "gem-672": {"max_side": 672, "min_query_side": 64, "p": 3.0, "levels": 1, "whiten": 0, "whiten_power": 0.25},
    "gem-672-regions": {"max_side": 672, "min_query_side": 64, "p": 3.0, "levels": 3, "whiten": 0, "whiten_power": 0.25},
}


def store_regions(regions: np.ndarray, bits: int) -> np.ndarray:
    """Region descriptors (non-negative, L2-normalised) as stored: with `bits` 8 the square root of each value
    in 255 steps (uint8: fine steps where most values are, near zero), else float16."""
    if bits == 8:
        return np.round(np.sqrt(np.clip(regions, 0, 1)) * 255).astype(np.uint8)
    return regions.astype(np.float16)


def region_values(stored: np.ndarray) -> np.ndarray:
    """Stored region descriptors back as float32 values."""
    if stored.dtype == np.uint8:
        return np.square(stored.astype(np.float32) / 255)
    return stored.astype(np.float32)


def round32(value: float) -> int:
    return max(32, int(round(value / 32)) * 32)


def resize_for_network(image: np.ndarray, side: int) -> np.ndarray:
    """Resize so that the longest side is about `side`, both sides multiples of 32 (the network's stride)."""
    height, width = image.shape[:2]
    scale = side / max(height, width)
    size = (round32(width * scale), round32(height * scale))
    return np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR))


def region_grid(levels: int) -> list[tuple[float, float, float, float]]:
    """R-MAC-style square-ish regions as fractions (y0, y1, x0, x1): level l has l x l windows of
    side 2/(l+1), overlapping by half; level 1 is the whole image."""
    regions = []
    for level in range(1, levels + 1):
        size = 2.0 / (level + 1) if level > 1 else 1.0
        starts = np.linspace(0.0, 1.0 - size, level)
        regions += [(y, y + size, x, x + size) for y in starts for x in starts]
    return regions


def pool_regions(fmap: np.ndarray, grid, p: float) -> np.ndarray:
    """GeM of each region of one (C, H, W) feature map: (R, C).

    x**3 is multiplied out (25x faster than np.power) and regions are summed channels-last, which
    together make pooling 3x cheaper: it is paid for every gallery photo."""
    channels, height, width = fmap.shape
    clipped = np.maximum(fmap, 1e-6)
    powered = clipped * clipped * clipped if p == 3 else np.power(clipped, p)
    powered = np.ascontiguousarray(powered.transpose(1, 2, 0))
    out = np.empty((len(grid), channels), np.float32)
    for i, (y0, y1, x0, x1) in enumerate(grid):
        top, left = min(int(np.floor(y0 * height)), height - 1), min(int(np.floor(x0 * width)), width - 1)
        bottom, right = max(int(np.ceil(y1 * height)), top + 1), max(int(np.ceil(x1 * width)), left + 1)
        out[i] = powered[top:bottom, left:right].reshape(-1, channels).sum(axis=0) / ((bottom - top) * (right - left))
    return np.power(out, 1.0 / p)


class RegionalExtractor:
    """Gallery images -> (R, C) region descriptors (row 0: whole image); query crops -> (k, C), one per rotation."""

    def __init__(self, backbone: Backbone, conf: str = "gem-regions"):
        self.backbone = backbone
        self.conf_name = conf
        self.conf = regional_confs[conf]
        self.grid = region_grid(self.conf["levels"])

    def gallery(self, image: np.ndarray) -> np.ndarray:
        fmap = self.backbone(resize_for_network(image, self.conf["max_side"])[None])[0]
        return store_regions(l2_normalise(pool_regions(fmap, self.grid, self.conf["p"])), self.conf.get("stored_bits", 16))

    def query(self, image: np.ndarray, photo_side: int | None = None,
              views: tuple[tuple[float, int], ...] = ((1.0, 0),)) -> np.ndarray:
        """(len(views), C) descriptors of the query crop `image`, one per view (scale, quarter turns): the
        crop is seen at `scale` times the scale its whole photo (longest side `photo_side`) would be seen
        at, turned by that many times 90 degrees. Views of one shape run as one batch."""
        base = self.conf["max_side"] / (photo_side or max(image.shape[:2]))
        side = max(image.shape[:2]) * base
        resized = {scale: resize_for_network(image, max(self.conf["min_query_side"], side * scale)) for scale, _ in views}
        inputs = [np.ascontiguousarray(np.rot90(resized[scale], turns)) for scale, turns in views]
        out = np.empty((len(views), self.backbone.channels), np.float32)
        whole = [(0.0, 1.0, 0.0, 1.0)]
        for shape in dict.fromkeys(x.shape for x in inputs):
            rows = [i for i, x in enumerate(inputs) if x.shape == shape]
            fmaps = self.backbone(np.stack([inputs[i] for i in rows]))
            for i, fmap in zip(rows, fmaps):
                out[i] = l2_normalise(pool_regions(fmap, whole, self.conf["p"]))[0]
        return out
