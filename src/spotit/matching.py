"""Descriptor matching between two images."""

from __future__ import annotations

import cv2
import numpy as np

RATIO = 0.75  # Lowe's ratio test, as in the seed notebook


def ratio_matches(query: np.ndarray, gallery: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """Brute-force k=2 matching with Lowe's ratio test; returns (m, 2) int32 [query index, gallery index]."""
    if len(query) < 1 or len(gallery) < 2:
        return np.zeros((0, 2), np.int32)
    matcher = cv2.BFMatcher(cv2.NORM_L2)
    pairs = matcher.knnMatch(query.astype(np.float32), gallery.astype(np.float32), k=2)
    good = [(m.queryIdx, m.trainIdx) for m, n in (p for p in pairs if len(p) == 2) if m.distance < ratio * n.distance]
    return np.array(good, np.int32).reshape(-1, 2)
