"""The Python API: build an index of a gallery folder, keep it up to date, and search it.

    index = Index.open_or_create("~/.local/share/spotit/index", gallery="photos/")
    index.update()                                   # extracts only new or changed images
    for hit in index.search("query.jpg", boxes=[(40, 60, 200, 150)], top=10):
        print(hit.id, hit.score, hit.path)
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import backbones, global_features, local_features
from .errors import SpotitError
from .images import Box, ImageError, as_image, crop, image_id, list_images, load_image
from .local_features import LocalFeatures, SiftExtractor
from .matching import ratio_matches
from .ranking import merge_max
from .store import Store

METHODS = ("cnn", "sift")
SEARCH_METHODS = ("cnn", "sift")


def default_index_dir() -> Path:
    """$SPOTIT_INDEX, else $XDG_DATA_HOME/spotit/index, else ~/.local/share/spotit/index."""
    if os.environ.get("SPOTIT_INDEX"):
        return Path(os.environ["SPOTIT_INDEX"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "spotit" / "index"


def parse_methods(method: str) -> list[str]:
    """'cnn', 'sift' or 'all' -> the feature kinds to extract."""
    if method == "all":
        return list(METHODS)
    if method not in METHODS:
        raise SpotitError(f"unknown method {method!r}; choose cnn, sift or all")
    return [method]


@dataclass
class Result:
    id: str  # gallery file name relative to the gallery, without extension
    path: str  # absolute path of the gallery image
    score: float

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": round(float(self.score), 6)}


@dataclass
class UpdateReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.added + self.updated

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


class Index:
    def __init__(self, store: Store, weights: str | os.PathLike | None = None):
        self.store = store
        self._weights = weights
        self._global_extractor = None
        self._sift = None
        self._cache: dict = {}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | os.PathLike | None = None, weights: str | os.PathLike | None = None) -> "Index":
        return cls(Store.open(path or default_index_dir()), weights)

    @classmethod
    def create(cls, path, gallery, methods=METHODS, backbone=backbones.DEFAULT_BACKBONE, weights=None) -> "Index":
        backbones.check_backbone(backbone)
        gallery = Path(gallery).resolve()
        if not gallery.is_dir():
            raise SpotitError(f"gallery folder not found: {gallery}")
        path = Path(path or default_index_dir()).resolve()
        if path == gallery or gallery in path.parents:
            raise SpotitError(f"the index {path} must be outside the gallery {gallery}")
        settings = {
            "gallery": str(gallery),
            "methods": sorted(set(methods)),
            "backbone": backbone,
            "weights": str(Path(weights).resolve()) if weights else None,
            "weights_sha256": None,
            "global_conf": "seed",
            "local_conf": "seed",
        }
        return cls(Store.create(path, settings), weights)

    @classmethod
    def open_or_create(cls, path=None, gallery=None, methods=METHODS, backbone=backbones.DEFAULT_BACKBONE,
                       weights=None, rebuild=False) -> "Index":
        """Open the index at `path` for `gallery`, creating it if needed; refuse a mismatching one."""
        path = Path(path or default_index_dir())
        if rebuild and Store.exists(path):
            import shutil

            shutil.rmtree(path)
        if not Store.exists(path):
            return cls.create(path, gallery, methods, backbone, weights)
        index = cls.open(path, weights)
        manifest = index.store.manifest
        if gallery is not None and Path(gallery).resolve() != Path(manifest["gallery"]):
            raise SpotitError(
                f"index {path} belongs to gallery {manifest['gallery']}; "
                f"use another --index for {Path(gallery).resolve()}, or --rebuild to replace it"
            )
        if backbone != manifest["backbone"]:
            raise SpotitError(
                f"index {path} was built with backbone {manifest['backbone']}, not {backbone}; "
                f"use another --index, or --rebuild"
            )
        new_methods = sorted(set(manifest["methods"]) | set(methods))
        if new_methods != manifest["methods"]:
            # every image must hold every method's features, so adding a method re-extracts all
            manifest["methods"] = new_methods
            for entry in manifest["images"].values():
                entry["stale"] = True
            index.store.commit()
        return index

    @property
    def manifest(self) -> dict:
        return self.store.manifest

    @property
    def gallery(self) -> Path:
        return Path(self.manifest["gallery"])

    @property
    def methods(self) -> list[str]:
        return self.manifest["methods"]

    def __len__(self) -> int:
        return len(self.manifest["images"])

    # ---- extractors ----------------------------------------------------------------------------
    def global_extractor(self) -> global_features.GlobalExtractor:
        if self._global_extractor is None:
            weights = self._weights or self.manifest.get("weights")
            backbone = backbones.Backbone.load(self.manifest["backbone"], weights)
            expected = self.manifest.get("weights_sha256")
            if expected and expected != backbone.weights_sha256:
                raise SpotitError(
                    f"index {self.store.root} was built with other {self.manifest['backbone']} weights; "
                    f"pass the same --weights, or rebuild"
                )
            if not expected:
                self.manifest["weights_sha256"] = backbone.weights_sha256
            self._global_extractor = global_features.GlobalExtractor(backbone, self.manifest["global_conf"])
        return self._global_extractor

    def sift_extractor(self) -> SiftExtractor:
        if self._sift is None:
            self._sift = SiftExtractor(self.manifest["local_conf"])
        return self._sift

    # ---- updating ------------------------------------------------------------------------------
    def plan(self) -> tuple[list[str], list[str], list[str]]:
        """(new files, changed files, vanished files) relative to the gallery."""
        images = self.manifest["images"]
        new, changed = [], []
        for name in list_images(self.gallery):
            entry = images.get(name)
            if entry is None:
                new.append(name)
                continue
            stat = (self.gallery / name).stat()
            if entry.get("stale") or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
                changed.append(name)
        present = set(new) | set(changed) | {n for n in images if (self.gallery / n).is_file()}
        gone = sorted(set(images) - present)
        return new, changed, gone

    def update(self, progress: bool = True, batch_size: int = 16, shard_size: int = 256) -> UpdateReport:
        """Extract features of new and changed gallery images, drop vanished ones.

        Finished work is committed every `shard_size` images, so an interrupted update resumes there.
        """
        report = UpdateReport()
        self.store.remove_orphans()
        new, changed, gone = self.plan()
        images = self.manifest["images"]
        for name in gone:
            del images[name]
        report.removed = len(gone)
        report.unchanged = len(images) - len(changed)
        if gone:
            self.store.commit()
        todo = new + changed
        use_cnn, use_sift = "cnn" in self.methods, "sift" in self.methods
        if todo and use_cnn:
            self.global_extractor()  # loads (or exports) the model before the clock starts
        started = time.perf_counter()
        pending: list[tuple[str, np.ndarray, dict]] = []
        done: list[tuple[str, dict]] = []
        vectors: list[np.ndarray] = []
        local: list[LocalFeatures] = []

        def run_batch():
            if use_cnn and pending:
                vectors.append(self.global_extractor()([image for _, image, _ in pending]))
            for name, image, stamp in pending:
                if use_sift:
                    local.append(self.sift_extractor()(image))
                done.append((name, stamp))
            pending.clear()

        def flush():
            run_batch()
            if not done:
                return
            names = [name for name, _ in done]
            shard = self.store.write_shard(
                names, np.concatenate(vectors) if use_cnn else None, list(local) if use_sift else None
            )
            for row, (name, stamp) in enumerate(done):
                if name in images:
                    report.updated += 1
                else:
                    report.added += 1
                images[name] = {"shard": shard, "row": row, **stamp}
            self.store.commit()
            done.clear(), vectors.clear(), local.clear()

        bar = tqdm(todo, desc="indexing", unit="img", disable=not progress or not todo, dynamic_ncols=True)
        for name in bar:
            path = self.gallery / name
            try:
                stat = path.stat()
                image = load_image(path)
            except (ImageError, OSError) as exc:
                report.skipped.append((name, str(exc).removeprefix(f"{path}: ")))
                continue
            stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "width": image.shape[1], "height": image.shape[0]}
            pending.append((name, image, stamp))
            if len(pending) >= batch_size:
                run_batch()
            if len(done) >= shard_size:
                flush()
        flush()
        self.manifest["skipped"] = dict(report.skipped)
        self.store.commit()
        self._compact_if_sparse()
        self._cache.clear()
        report.seconds = time.perf_counter() - started
        return report

    def _compact_if_sparse(self) -> None:
        """Rewrite shards once more than half of their rows belong to removed or re-extracted images."""
        totals = self.store.shard_rows()
        live = len(self.manifest["images"])
        if not totals or sum(totals.values()) <= 2 * live:
            return
        names, vectors = self.store.load_global() if "cnn" in self.methods else (sorted(self.manifest["images"]), None)
        local = self.store.load_local() if "sift" in self.methods else None
        shard = self.store.write_shard(names, vectors, [local[n] for n in names] if local is not None else None)
        for row, name in enumerate(names):
            self.manifest["images"][name].update(shard=shard, row=row)
        self.store.commit()
        self.store.remove_orphans()

    # ---- searching -----------------------------------------------------------------------------
    def _gallery_global(self) -> tuple[list[str], np.ndarray]:
        if "global" not in self._cache:
            self._cache["global"] = self.store.load_global()
        return self._cache["global"]

    def _gallery_local(self) -> dict[str, LocalFeatures]:
        if "local" not in self._cache:
            self._cache["local"] = self.store.load_local()
        return self._cache["local"]

    def _require(self, method: str) -> None:
        if method not in SEARCH_METHODS:
            raise SpotitError(f"unknown search method {method!r}; choose one of: {', '.join(SEARCH_METHODS)}")
        if method not in self.methods:
            raise SpotitError(
                f"index {self.store.root} was built with method {', '.join(self.methods)}, not {method}; "
                f"run `spotit index {self.gallery} --method {method}` to add it"
            )
        if not self.manifest["images"]:
            raise SpotitError(f"index {self.store.root} holds no images; run `spotit index GALLERY` first")

    def scores(self, query: np.ndarray, method: str = "cnn", progress: bool = False) -> tuple[list[str], np.ndarray]:
        """Similarity of one query image (already cropped) to every gallery image: (names, scores)."""
        self._require(method)
        if method == "cnn":
            names, matrix = self._gallery_global()
            return names, matrix @ self.global_extractor()([query])[0]
        gallery = self._gallery_local()
        names = sorted(gallery)
        features = self.sift_extractor()(query)
        counts = np.array(
            [len(ratio_matches(features.descriptors, gallery[n].descriptors)) for n in tqdm(names, desc="matching", disable=not progress)],
            np.float32,
        )
        return names, counts

    def search(self, query, boxes: list[Box] | None = None, method: str = "cnn", top: int | None = 10,
               progress: bool = False) -> list[Result]:
        """Rank the gallery for a query path or RGB array, cropped to each box; several boxes merge by best score.

        top=None ranks the whole gallery.
        """
        self._require(method)
        image = as_image(query)
        crops = [crop(image, box) for box in boxes] if boxes else [image]
        per_crop = [self.scores(c, method, progress) for c in crops]
        names = per_crop[0][0]
        order, merged = merge_max([s for _, s in per_crop])
        if top is not None:
            order = order[:top]
        return [Result(image_id(names[i]), str(self.gallery / names[i]), float(merged[i])) for i in order]
