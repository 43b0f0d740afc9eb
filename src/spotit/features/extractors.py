"""The feature extractors of one index: the CNN backbone (loaded once, on first use) and SIFT, by feature kind."""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

import cv2
import numpy as np

from ..errors import SpotitError
from . import backbones, global_features
from .local_features import SiftExtractor

DENSE_KINDS = ("global", "regions")  # one fixed-size array per image; the others are keypoint lists
# search method -> the feature kinds it reads from the index
METHOD_KINDS = {"cnn": ["global"], "sift": ["sift"], "regional": ["regions"], "hybrid": ["regions", "verify"]}


class Extractors:
    """`get(kind)` turns an RGB image into features of `kind`, configured as the index's manifest says."""

    def __init__(self, root: Path, manifest: dict, weights: str | os.PathLike | None = None):
        self.root, self.manifest = root, manifest
        self._weights = weights
        self._backbone: backbones.Backbone | None = None
        self._extractors: dict = {}
        self._lock = threading.RLock()  # threads that ask at once load the model once

    @property
    def weights(self) -> str | os.PathLike | None:
        """The weights file given when opening the index (None: the manifest's)."""
        return self._weights

    def backbone(self) -> backbones.Backbone:
        if self._backbone is None:
            weights = self._weights or self.manifest.get("weights")
            backbone = backbones.Backbone.load(self.manifest["backbone"], weights)
            expected = self.manifest.get("weights_sha256")
            if expected and expected != backbone.weights_sha256:
                raise SpotitError(
                    f"index {self.root} was built with other {self.manifest['backbone']} weights; "
                    f"pass the same --weights, or rebuild"
                )
            self._backbone = backbone
        return self._backbone

    def get(self, kind: str):
        with self._lock:
            return self._get(kind)

    def _get(self, kind: str):
        if kind not in self._extractors:
            conf = self.manifest["confs"][kind]
            if kind == "global":
                extract = global_features.GlobalExtractor(self.backbone(), conf)
                self._extractors[kind] = lambda image: extract([image])[0]
            elif kind == "regions":
                self._extractors[kind] = global_features.RegionalExtractor(self.backbone(), conf)
            else:
                self._extractors[kind] = SiftExtractor(conf)
        return self._extractors[kind]

    def load(self, kinds: list[str]) -> None:
        """Load (or export) the models of `kinds` now, e.g. before a clock starts."""
        for kind in kinds:
            self.get(kind)

    def extract(self, image: np.ndarray, kinds: list[str]) -> dict:
        """The features of each of `kinds` of one gallery image."""
        out = {}
        for kind in kinds:
            extractor = self.get(kind)
            # a gallery's CNN descriptors are stored as float16: what a large gallery's faiss index holds
            out[kind] = extractor(image).astype(np.float16) if kind == "global" else extractor.gallery(image)
        return out

    @contextlib.contextmanager
    def worker_threads(self, workers: int):
        """One thread per worker inside onnxruntime and OpenCV while `workers` threads extract: their own
        pools beside two workers oversubscribe the cores. Searches get every core back afterwards."""
        opencv_threads = cv2.getNumThreads()
        if workers > 1:
            cv2.setNumThreads(1)
            if self._backbone is not None:
                self._backbone.set_threads(1)
        try:
            yield
        finally:
            cv2.setNumThreads(opencv_threads)
            if self._backbone is not None and self._backbone.threads != 0:
                self._backbone.set_threads(0)
