"""Local features: SIFT keypoints and descriptors (OpenCV)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..images import resize_max_side

# "seed" is the assignment's notebook: OpenCV's default SIFT, no keypoint cap.
# Photos are first brought to at most 1024 px so that a 12-megapixel phone photo
# costs what a benchmark photo costs; benchmark photos are smaller and untouched.
# "verify" keeps the strongest 1000 keypoints of a photo at most 512 px: enough for a geometric fit,
# and cheap enough to match a 100-image shortlist per query. OpenCV doubles the image before its first
# octave, so SIFT time grows fast with size: 800 px took twice as long for +0.02 mAP on boxed queries.
# A gallery photo's are stored compact (`compact`): the `stored_keypoints` largest, descriptors in
# `stored_bits` a value; a query's are used whole (benchmarks/compression.py measures the trade).
confs = {
    "seed": {"max_side": 1024, "nfeatures": 0, "stored_keypoints": None, "stored_bits": 8},
    "verify": {"max_side": 512, "nfeatures": 1000, "stored_keypoints": None, "stored_bits": 4},
}


@dataclass
class LocalFeatures:
    """Keypoints as (n, 4) float32 [x, y, size, angle] in original image pixels, and (n, 128) descriptors."""

    keypoints: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.keypoints)


def compact(features: LocalFeatures, keypoints: int | None, bits: int) -> LocalFeatures:
    """A gallery photo's features as stored: its `keypoints` largest ones (by scale: the most repeatable),
    geometry as float16 where it fits, and with `bits` 4 each descriptor value square-root quantised to
    0..15, two to a byte (RootSIFT compares square roots, so the error is even across values)."""
    order = np.argsort(-features.keypoints[:, 2], kind="stable")[:keypoints]
    points = features.keypoints[order]
    if not len(points) or np.abs(points).max() < np.finfo(np.float16).max:
        points = points.astype(np.float16)
    descriptors = features.descriptors[order]
    if bits == 4:
        levels = np.clip(np.round(np.sqrt(descriptors.astype(np.float32))), 0, 15).astype(np.uint8)
        descriptors = (levels[:, 0::2] << 4) | levels[:, 1::2]
    return LocalFeatures(points, descriptors)


def unpack_levels(packed: np.ndarray, dtype=np.uint8) -> np.ndarray:
    """(n, 64) descriptors stored at 4 bits a value, two to a byte -> (n, 128) square-root levels 0..15."""
    levels = np.empty((len(packed), 128), dtype)
    levels[:, 0::2], levels[:, 1::2] = packed >> 4, packed & 15
    return levels


def expand(features: LocalFeatures) -> LocalFeatures:
    """Stored features back in the form the seed's matching takes: float32 geometry, 128 values of 8 bits."""
    descriptors = features.descriptors
    if descriptors.shape[1] == 64:
        levels = unpack_levels(descriptors)
        descriptors = levels * levels
    return LocalFeatures(features.keypoints.astype(np.float32), descriptors)


def readable(features: LocalFeatures) -> LocalFeatures:
    """Stored features with float32 geometry and descriptors as stored: verification turns 4-bit ones into
    RootSIFT directly (verify.rootsift), without the 8-bit detour of `expand`."""
    return LocalFeatures(features.keypoints.astype(np.float32), features.descriptors)


def empty_features() -> LocalFeatures:
    return LocalFeatures(np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8))


class SiftExtractor:
    def __init__(self, conf: str = "seed"):
        self.conf_name = conf
        self.conf = confs[conf]
        self._sift = cv2.SIFT_create(nfeatures=self.conf["nfeatures"])

    def gallery(self, image: np.ndarray) -> LocalFeatures:
        """A gallery photo's features, as they are stored."""
        return compact(self(image), self.conf["stored_keypoints"], self.conf["stored_bits"])

    def __call__(self, image: np.ndarray) -> LocalFeatures:
        small, scale = resize_max_side(image, self.conf["max_side"])
        grey = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)
        keypoints, descriptors = self._sift.detectAndCompute(grey, None)
        if descriptors is None or not keypoints:
            return empty_features()
        points = np.array([(k.pt[0], k.pt[1], k.size, k.angle) for k in keypoints], np.float32)
        points[:, :3] /= scale
        # SIFT descriptors are floats in [0, 255] after OpenCV's internal scaling; uint8 halves storage x4
        return LocalFeatures(points, np.clip(np.round(descriptors), 0, 255).astype(np.uint8))
