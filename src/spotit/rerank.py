"""Re-ranking a CNN shortlist by spatial verification, and fusing the two scores."""

from __future__ import annotations

import numpy as np

from .local_features import LocalFeatures
from .ranking import rank
from .verify import Verification, confs as verify_confs, map_box, rootsift, verify

confs = {
    # bonus = weight * inliers / (inliers + half) once inliers >= min_inliers: a verified image outranks
    # unverified ones with a similar CNN score, and more inliers mean more confidence, with diminishing returns
    "default": {"shortlist": 100, "min_inliers": 10, "weight": 1.0, "half": 20, "verify": "default"},
}


def fuse(cnn: np.ndarray, inliers: np.ndarray, conf: dict) -> np.ndarray:
    inliers = np.asarray(inliers, np.float64)
    bonus = np.where(inliers >= conf["min_inliers"], inliers / (inliers + conf["half"]), 0.0)
    return cnn + conf["weight"] * bonus


def verify_shortlist(query: LocalFeatures, names: list[str], scores: np.ndarray, read, sides: list[float],
                     conf: dict) -> tuple[np.ndarray, dict[int, Verification]]:
    """Verify the `shortlist` best images by CNN score; returns fused scores and each verification by row."""
    shortlist = rank(scores)[: conf["shortlist"]]
    query_root = rootsift(query.descriptors)
    checks = {}
    for i in shortlist:
        checks[int(i)] = verify(query, read(names[i]), sides[i], verify_confs[conf["verify"]], query_root=query_root)
    inliers = np.zeros(len(names))
    for i, check in checks.items():
        inliers[i] = check.inliers
    return fuse(scores, inliers, conf), checks


def locate(check: Verification | None, width: int, height: int, conf: dict = confs["default"]):
    """Where the query box lies in the gallery image: (4, 2) corners, or None when not verified.

    The crop's keypoints are in crop pixels, so the box is the crop's own rectangle."""
    if check is None or check.transform is None or check.inliers < conf["min_inliers"]:
        return None
    return map_box(check.transform, width, height)
