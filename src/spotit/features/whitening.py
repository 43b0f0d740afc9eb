"""PCA-whitening learned from the gallery's own descriptors (no training set needed)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .pooling import l2_normalise

MAX_SAMPLES = 100_000  # descriptors used to fit; more add little but cost memory


@dataclass
class Whitening:
    mean: np.ndarray  # (C,)
    projection: np.ndarray  # (C, D)

    @classmethod
    def fit(cls, vectors: np.ndarray, dims: int = 512, power: float = 0.5, seed: int = 0) -> "Whitening | None":
        """Learn from (n, C) vectors; None when there are too few to estimate dims directions reliably.

        power 0.5 is full PCA-whitening; smaller powers whiten partially."""
        dims = min(dims, len(vectors) // 4, vectors.shape[1])
        if dims < 32:
            return None
        if len(vectors) > MAX_SAMPLES:
            vectors = vectors[np.random.default_rng(seed).choice(len(vectors), MAX_SAMPLES, replace=False)]
        x = vectors.astype(np.float64)
        mean = x.mean(axis=0)
        centred = x - mean
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / len(x))
        top = np.argsort(eigenvalues)[::-1][:dims]
        # a small floor keeps near-zero directions from being blown up into noise
        scale = (eigenvalues[top] + 1e-6 * eigenvalues.max()) ** -power
        return cls(mean.astype(np.float32), (eigenvectors[:, top] * scale).astype(np.float32))

    def __call__(self, vectors: np.ndarray) -> np.ndarray:
        return l2_normalise((vectors.astype(np.float32) - self.mean) @ self.projection)
