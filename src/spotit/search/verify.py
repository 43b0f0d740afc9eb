"""Spatial verification: do the local matches between query and gallery image agree on one geometric transform?"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..features.local_features import LocalFeatures, unpack_levels
from .matching import ratio_matches_unit

confs = {
    # The ratio is looser than the seed's 0.75: RootSIFT plus a geometric check rejects what it lets through.
    # A fit is sound only if it maps the query box to a convex quadrilateral of at least `min_side` px
    # squared, stretched at most `max_anisotropy` times more in one direction than the other (steep
    # foreshortening; squashed slivers are what chance matches fit), whose depth (the homography's
    # denominator) varies at most `max_depth_ratio` times across the box (a corner near the horizon line
    # is flung towards infinity) and, for a boxed object, mostly
    # (`min_inside`) within the photo. (A whole photo as query maps beyond a photo showing part of its scene.)
    # With a box, inliers in the box's inner `centre` part count fully and those nearer its border count
    # `border_weight`: a box around an object holds background at its edges, which matches other photos
    # of the same place that lack the object. A fit with under `min_centre` inliers in the centre, where
    # the object is, matched only those surroundings: it is no evidence at all.
    "default": {"ratio": 0.8, "min_matches": 6, "threshold": 0.012, "max_iters": 1000, "confidence": 0.999,
                "check_shape": True, "max_anisotropy": 4.0, "max_depth_ratio": 3.0, "min_side": 24, "min_inside": 0.5,
                "centre": 0.6, "border_weight": 0.25, "min_centre": 1},
}
# steps of the ablation in benchmarks/ablation.py: spotit 0.1's verification, the shape checks alone, then
# the border discounted
confs["weighted"] = {**confs["default"], "min_centre": 0}
confs["shape"] = {**confs["weighted"], "border_weight": 1.0}
confs["plain"] = {**confs["shape"], "check_shape": False}


@dataclass
class Verification:
    inliers: int  # matches consistent with the transform
    transform: np.ndarray | None  # 3x3, query pixels -> gallery pixels
    # the evidence: inliers weighted by where they lie in the query box (see confs); rerank.confirm raises
    # a weak fit's to the verification threshold where its photo looks like the object
    score: float = 0.0
    matches: int = 0  # ratio-test matches the fit was sought through, consistent or not


_SQRT = np.sqrt(np.arange(256, dtype=np.float32))


def rootsift(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelovic & Zisserman, 2012) of uint8 SIFT descriptors: L1-normalise, then square root;
    compare with L2. sqrt(d / sum) is computed as a table look-up of sqrt(d) over sqrt(sum): one pass.

    Descriptors stored at 4 bits (local_features.compact: 64 bytes a row) already hold square roots, so
    their RootSIFT is those levels L2-normalised."""
    if descriptors.shape[1] == 64:
        levels = unpack_levels(descriptors, np.float32)
        levels *= (1.0 / np.sqrt(np.maximum(np.einsum("ij,ij->i", levels, levels), 1e-7)))[:, None]
        return levels
    total = descriptors.sum(axis=1, dtype=np.float32)
    out = _SQRT[descriptors]
    out *= (1.0 / np.sqrt(np.maximum(total, 1e-7)))[:, None]
    return out


def plausible(transform: np.ndarray | None) -> bool:
    """Reject fits that flip, collapse or explode the image: no real view of an object does that."""
    if transform is None or not np.all(np.isfinite(transform)):
        return False
    linear = transform[:2, :2] / (transform[2, 2] if abs(transform[2, 2]) > 1e-9 else 1.0)
    det = float(np.linalg.det(linear))
    return 1e-3 < det < 1e3 and np.all(np.abs(transform[2, :2]) < 0.01)


def anisotropy(transform: np.ndarray, x: float, y: float) -> float:
    """How much more the transform stretches one direction than another at (x, y): the ratio of the
    singular values of its Jacobian there (1 for a similarity)."""
    p = transform @ np.array([x, y, 1.0])
    z = p[2]
    jacobian = (transform[:2, :2] * z - np.outer(p[:2], transform[2, :2])) / (z * z)
    high, low = np.linalg.svd(jacobian, compute_uv=False)
    return float(high / low) if low > 0 else float("inf")


def sound(transform: np.ndarray | None, query_size: tuple[float, float], gallery_size: tuple[float, float],
          boxed: bool = True, conf: dict = confs["default"]) -> bool:
    """Whether the fit is a geometrically sound view of the query box in the gallery photo (see confs)."""
    if not plausible(transform):
        return False
    if not conf["check_shape"]:
        return True
    width, height = query_size
    corners = np.array([[0, 0, 1], [width, 0, 1], [width, height, 1], [0, height, 1]], np.float64)
    depth = (corners @ transform[2]) / (np.array([width / 2, height / 2, 1.0]) @ transform[2])
    if not np.all(depth > 0) or max(depth.max(), 1 / depth.min()) > conf["max_depth_ratio"]:
        return False
    quad = map_box(transform, width, height).astype(np.float32)
    if not np.all(np.isfinite(quad)) or not cv2.isContourConvex(quad.reshape(-1, 1, 2)):
        return False  # self-crossing or folded: no view of a flat box does that
    area = abs(cv2.contourArea(quad))
    if area < conf["min_side"] ** 2 or anisotropy(transform, width / 2, height / 2) > conf["max_anisotropy"]:
        return False
    if not boxed:
        return True
    photo = np.array([[0, 0], [gallery_size[0], 0], [gallery_size[0], gallery_size[1]], [0, gallery_size[1]]], np.float32)
    inside, _ = cv2.intersectConvexConvex(quad, photo)
    return inside >= conf["min_inside"] * area


def box_offset(x, y, width: float, height: float):
    """How far points (x, y) lie from the centre of a width x height box, by the larger of their two
    normalised offsets: 0 at the centre, 1 on the edge."""
    return np.maximum(np.abs(x / width - 0.5), np.abs(y / height - 0.5)) * 2


def centre_weighted(points: np.ndarray, query_size: tuple[float, float], conf: dict = confs["default"]) -> float:
    """Inlier count with those near the border of the query box discounted, and none at all without
    `min_centre` in its centre (see confs)."""
    central = box_offset(points[:, 0], points[:, 1], *query_size) < conf["centre"]
    if central.sum() < conf["min_centre"]:
        return 0.0
    return float(np.where(central, 1.0, conf["border_weight"]).sum())


def fit(query: LocalFeatures, gallery: LocalFeatures, matches: np.ndarray, query_size: tuple[float, float],
        gallery_size: tuple[float, float], boxed: bool = True, conf: dict = confs["default"]) -> Verification:
    """A robust homography (MAGSAC) through the matches, falling back to an affine fit when the homography
    is not sound. Inliers count only for a sound transform. `boxed`: the query is a box cut from a photo."""
    unsound = Verification(0, None, matches=len(matches))
    if len(matches) < conf["min_matches"]:
        return unsound
    src = query.keypoints[matches[:, 0], :2].astype(np.float32)
    dst = gallery.keypoints[matches[:, 1], :2].astype(np.float32)
    threshold = max(2.0, conf["threshold"] * max(gallery_size))
    transform, mask = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, threshold, maxIters=conf["max_iters"],
                                         confidence=conf["confidence"])
    if transform is None or not sound(transform, query_size, gallery_size, boxed, conf):
        affine, mask = cv2.estimateAffine2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=threshold,
                                            maxIters=conf["max_iters"], confidence=conf["confidence"])
        if affine is None:
            return unsound
        transform = np.vstack([affine, [0.0, 0.0, 1.0]])
        if not sound(transform, query_size, gallery_size, boxed, conf):
            return unsound
    inlying = mask.ravel().astype(bool) if mask is not None else np.zeros(len(src), bool)
    inliers = int(inlying.sum())
    score = centre_weighted(src[inlying], query_size, conf) if boxed else float(inliers)
    return Verification(inliers, transform, score, len(matches))


def verify_many(query: LocalFeatures, galleries: list[LocalFeatures], query_size: tuple[float, float],
                gallery_sizes: list[tuple[float, float]], boxed: bool = True,
                conf: dict = confs["default"]) -> list[Verification]:
    """Verify the query (of `query_size` pixels) against each gallery image: RootSIFT ratio-test matches,
    then `fit`."""
    matches = ratio_matches_unit(rootsift(query.descriptors), [rootsift(g.descriptors) for g in galleries], conf["ratio"])
    return [fit(query, g, m, query_size, size, boxed, conf) for g, m, size in zip(galleries, matches, gallery_sizes)]


def verify(query: LocalFeatures, gallery: LocalFeatures, query_size: tuple[float, float],
           gallery_size: tuple[float, float], boxed: bool = True, conf: dict = confs["default"]) -> Verification:
    """Verify one pair (see `verify_many`)."""
    return verify_many(query, [gallery], query_size, [gallery_size], boxed, conf)[0]


def map_box(transform: np.ndarray, width: float, height: float) -> np.ndarray:
    """Corners (4, 2) of the query rectangle (0, 0, width, height) in gallery pixels."""
    corners = np.array([[[0, 0], [width, 0], [width, height], [0, height]]], np.float32)
    return cv2.perspectiveTransform(corners, transform.astype(np.float64))[0]
