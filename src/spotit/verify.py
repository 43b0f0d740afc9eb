"""Spatial verification: do the local matches between query and gallery image agree on one geometric transform?"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .local_features import LocalFeatures
from .matching import ratio_matches_unit

confs = {
    # the ratio is looser than the seed's 0.75: RootSIFT plus a geometric check rejects what it lets through
    "default": {"ratio": 0.8, "min_matches": 6, "threshold": 0.012, "max_iters": 1000, "confidence": 0.999},
}


@dataclass
class Verification:
    inliers: int
    transform: np.ndarray | None  # 3x3, query pixels -> gallery pixels


_SQRT = np.sqrt(np.arange(256, dtype=np.float32))


def rootsift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman, 2012) of uint8 SIFT descriptors: L1-normalise, then square root;
    compare with L2. sqrt(d / sum) is computed as a table look-up of sqrt(d) over sqrt(sum): one pass."""
    total = descriptors.sum(axis=1, dtype=np.float32)
    out = _SQRT[descriptors]
    out *= (1.0 / np.sqrt(np.maximum(total, 1e-7)))[:, None]
    return out


def plausible(transform: np.ndarray) -> bool:
    """Reject fits that flip, collapse or explode the image: no real view of an object does that."""
    if transform is None or not np.all(np.isfinite(transform)):
        return False
    linear = transform[:2, :2] / (transform[2, 2] if abs(transform[2, 2]) > 1e-9 else 1.0)
    det = float(np.linalg.det(linear))
    return 1e-3 < det < 1e3 and np.all(np.abs(transform[2, :2]) < 0.01)


def fit(query: LocalFeatures, gallery: LocalFeatures, matches: np.ndarray, gallery_side: float,
        conf: dict = confs["default"]) -> Verification:
    """A robust homography (MAGSAC) through the matches, falling back to an affine fit when the homography
    is implausible. Inliers count only for a plausible transform."""
    if len(matches) < conf["min_matches"]:
        return Verification(0, None)
    src = query.keypoints[matches[:, 0], :2].astype(np.float32)
    dst = gallery.keypoints[matches[:, 1], :2].astype(np.float32)
    threshold = max(2.0, conf["threshold"] * gallery_side)
    transform, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold, maxIters=conf["max_iters"],
                                         confidence=conf["confidence"])
    if transform is None or not plausible(transform):
        affine, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                            maxIters=conf["max_iters"], confidence=conf["confidence"])
        if affine is None:
            return Verification(0, None)
        transform = np.vstack([affine, [0.0, 0.0, 1.0]])
        if not plausible(transform):
            return Verification(0, None)
    inliers = int(mask.sum()) if mask is not None else 0
    return Verification(inliers, transform)


def verify_many(query: LocalFeatures, galleries: list[LocalFeatures], gallery_sides: list[float],
                conf: dict = confs["default"]) -> list[Verification]:
    """Verify the query against each gallery image: RootSIFT ratio-test matches, then `fit`."""
    matches = ratio_matches_unit(rootsift(query.descriptors), [rootsift(g.descriptors) for g in galleries], conf["ratio"])
    return [fit(query, g, m, side, conf) for g, m, side in zip(galleries, matches, gallery_sides)]


def verify(query: LocalFeatures, gallery: LocalFeatures, gallery_side: float, conf: dict = confs["default"]) -> Verification:
    """Verify one pair (see `verify_many`)."""
    return verify_many(query, [gallery], [gallery_side], conf)[0]


def map_box(transform: np.ndarray, width: float, height: float) -> np.ndarray:
    """Corners (4, 2) of the query rectangle (0, 0, width, height) in gallery pixels."""
    corners = np.array([[[0, 0], [width, 0], [width, height], [0, height]]], np.float32)
    return cv2.perspectiveTransform(corners, transform.astype(np.float64))[0]
