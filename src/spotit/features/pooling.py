"""Pooling of (N, C, H, W) feature maps into (N, C) descriptors, as small interchangeable functions."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray, axis: int = -1) -> np.ndarray:
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, 1e-12)


def average(fmap: np.ndarray) -> np.ndarray:
    """SPoC / global average pooling: what torchvision's `avgpool` layer computes."""
    return fmap.mean(axis=(2, 3))


def max_(fmap: np.ndarray) -> np.ndarray:
    """MAC: the maximum activation of each channel."""
    return fmap.max(axis=(2, 3))


def gem(fmap: np.ndarray, p: float = 3.0, eps: float = 1e-6) -> np.ndarray:
    """Generalised mean (Radenovic et al., 2018): p=1 is average pooling, p -> inf is max pooling."""
    clipped = np.maximum(fmap, eps)
    return np.power(np.power(clipped, p).mean(axis=(2, 3)), 1.0 / p)


POOLINGS = {"avg": average, "mac": max_, "gem": gem}
