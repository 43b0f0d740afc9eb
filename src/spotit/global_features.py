"""Global CNN descriptors: one L2-normalised vector per image, compared by cosine similarity."""

from __future__ import annotations

import numpy as np
from PIL import Image

from .backbones import Backbone, normalise
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
        batch = normalise(np.stack([preprocess(image, self.conf) for image in images]))
        pooled = POOLINGS[self.conf["pooling"]](self.backbone.feature_maps(batch))
        return l2_normalise(pooled).astype(np.float32)
