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


def ratio_matches_unit(query: np.ndarray, galleries: list[np.ndarray], ratio: float, chunk: int = 16) -> list[np.ndarray]:
    """Ratio-test matches of unit-norm float descriptors (e.g. RootSIFT) against many images at once.

    One matrix product per chunk of images replaces a matcher call per image: for unit vectors the
    squared distance is 2 - 2 * dot, so the two nearest neighbours are the two largest dot products.
    Images are padded to the chunk's largest keypoint count so that the top-2 search is one vectorised pass.
    """
    out = []
    dim = query.shape[1] if query.ndim == 2 else 128
    for start in range(0, len(galleries), chunk):
        block = galleries[start : start + chunk]
        width = max(2, max(len(g) for g in block))
        if len(query) == 0:
            out += [np.zeros((0, 2), np.int32) for _ in block]
            continue
        padded = np.zeros((len(block), width, dim), np.float32)
        for j, gallery in enumerate(block):
            padded[j, : len(gallery)] = gallery
        sims = (query @ padded.reshape(-1, dim).T).reshape(len(query), len(block), width)
        for j, gallery in enumerate(block):
            sims[:, j, len(gallery) :] = -np.inf
        best = sims.argmax(axis=2)
        first = np.take_along_axis(sims, best[..., None], axis=2)[..., 0]
        np.put_along_axis(sims, best[..., None], -np.inf, axis=2)
        second = sims.max(axis=2)
        keep = (2 - 2 * first) < ratio**2 * np.maximum(2 - 2 * second, 0)  # squared distances
        for j, gallery in enumerate(block):
            rows = np.flatnonzero(keep[:, j]) if len(gallery) >= 2 else np.zeros(0, np.int64)
            out.append(np.stack([rows, best[rows, j]], axis=1).astype(np.int32))
    return out
