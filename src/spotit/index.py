"""The Python API: build an index of a gallery folder, keep it up to date, and search it.

    index = Index.open_or_create("~/.local/share/spotit/index", gallery="photos/")
    index.update()                                   # extracts only new or changed images
    for hit in index.search("query.jpg", boxes=[(40, 60, 200, 150)], top=10):
        print(hit.id, hit.score, hit.path, hit.box)
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from . import backbones, global_features, local_features, rerank
from .errors import SpotitError
from .images import Box, ImageError, as_image, check_box, image_id, list_images, load_image
from .local_features import SiftExtractor
from .matching import ratio_matches
from .ranking import rank
from .store import Store
from .whitening import Whitening

# search method -> the feature kinds it reads from the index
METHOD_KINDS = {"cnn": ["global"], "sift": ["sift"], "regional": ["regions"], "hybrid": ["regions", "verify"]}
METHODS = tuple(METHOD_KINDS)
DEFAULT_METHOD = "hybrid"
DENSE_KINDS = ("global", "regions")


def feature_settings(backbone: str, confs: dict) -> dict:
    """Everything that decides the stored features; an index whose settings differ must be rebuilt."""
    return {
        "backbone": backbones.confs[backbone],
        "global": global_features.confs[confs["global"]],
        "regions": global_features.regional_confs[confs["regions"]],
        "sift": local_features.confs[confs["sift"]],
        "verify": local_features.confs[confs["verify"]],
    }


DEFAULT_CONFS = {"global": "seed", "regions": "gem-regions", "sift": "seed", "verify": "verify"}


def default_index_dir() -> Path:
    """$SPOTIT_INDEX, else $XDG_DATA_HOME/spotit/index, else ~/.local/share/spotit/index."""
    if os.environ.get("SPOTIT_INDEX"):
        return Path(os.environ["SPOTIT_INDEX"])
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "spotit" / "index"


def parse_methods(method: str) -> list[str]:
    """'cnn', 'sift', 'hybrid' or 'all' -> the search methods an index must serve."""
    if method == "all":
        return list(METHODS)
    if method not in METHODS:
        raise SpotitError(f"unknown method {method!r}; choose {', '.join(METHODS)} or all")
    return [method]


@dataclass
class Result:
    id: str  # gallery file name relative to the gallery, without extension
    path: str  # absolute path of the gallery image
    score: float
    inliers: int | None = None  # hybrid: geometrically consistent matches with the query
    quad: np.ndarray | None = None  # hybrid, verified: the query box's corners in this image (4, 2)

    @property
    def box(self) -> Box | None:
        """Bounding box (x, y, w, h) of where the object lies in this gallery image, when verified."""
        if self.quad is None:
            return None
        x0, y0 = np.floor(self.quad.min(axis=0)).astype(int)
        x1, y1 = np.ceil(self.quad.max(axis=0)).astype(int)
        return (int(x0), int(y0), int(x1 - x0), int(y1 - y0))

    def to_dict(self) -> dict:
        out = {"id": self.id, "path": self.path, "score": round(float(self.score), 6)}
        if self.inliers is not None:
            out["inliers"] = self.inliers
        if self.quad is not None:
            out["box"] = list(self.box)
            out["quad"] = np.round(self.quad, 1).tolist()
        return out


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
        manifest = store.manifest
        try:
            current = feature_settings(manifest["backbone"], manifest["confs"])
        except KeyError:
            current = None
        if current is None or manifest.get("feature_settings") != current:
            raise SpotitError(
                f"index {store.root} was built by spotit {manifest.get('spotit_version', '?')} with other feature "
                f"settings; rebuild it with `spotit index GALLERY --index {store.root} --rebuild`"
            )
        self.store = store
        self.search_conf = "default"  # a name in rerank.confs: shortlist, query rotations, fusion, expansion
        self._weights = weights
        self._backbone = None
        self._extractors: dict = {}
        self._cache: dict = {}

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def is_current(cls, path: str | os.PathLike) -> bool:
        """Whether an index exists at `path` and was built with this spotit's feature settings."""
        try:
            cls.open(path)
        except SpotitError:
            return False
        return True

    @classmethod
    def open(cls, path: str | os.PathLike | None = None, weights: str | os.PathLike | None = None) -> "Index":
        return cls(Store.open(path or default_index_dir()), weights)

    @classmethod
    def create(cls, path, gallery, methods=(DEFAULT_METHOD,), backbone=backbones.DEFAULT_BACKBONE, weights=None,
               confs: dict | None = None) -> "Index":
        """`confs` overrides the named configuration of a feature kind, e.g. {"regions": "gem-672"}."""
        confs = {**DEFAULT_CONFS, **(confs or {})}
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
            "confs": confs,
            "feature_settings": feature_settings(backbone, confs),
        }
        return cls(Store.create(path, settings), weights)

    @classmethod
    def open_or_create(cls, path=None, gallery=None, methods=(DEFAULT_METHOD,), backbone=backbones.DEFAULT_BACKBONE,
                       weights=None, rebuild=False, confs: dict | None = None) -> "Index":
        """Open the index at `path` for `gallery`, creating it (with `confs`) if needed; refuse a mismatching one."""
        path = Path(path or default_index_dir())
        if rebuild and Store.exists(path):
            import shutil

            shutil.rmtree(path)
        if not Store.exists(path):
            return cls.create(path, gallery, methods, backbone, weights, confs)
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
            # every image must hold every kind of feature, so adding a method re-extracts all
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

    @property
    def default_method(self) -> str:
        """The search method used when none is named: hybrid if the index serves it."""
        return DEFAULT_METHOD if DEFAULT_METHOD in self.methods else self.methods[0]

    @property
    def kinds(self) -> list[str]:
        return sorted({kind for method in self.methods for kind in METHOD_KINDS[method]})

    def __len__(self) -> int:
        return len(self.manifest["images"])

    # ---- extractors ----------------------------------------------------------------------------
    def backbone(self) -> backbones.Backbone:
        if self._backbone is None:
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
            self._backbone = backbone
        return self._backbone

    def extractor(self, kind: str):
        """The callable that turns an RGB image into features of `kind`."""
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

    def _extract(self, image: np.ndarray) -> dict:
        out = {}
        for kind in self.kinds:
            extractor = self.extractor(kind)
            out[kind] = extractor.gallery(image) if kind == "regions" else extractor(image)
        return out

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

    def _load_and_extract(self, name: str):
        path = self.gallery / name
        try:
            stat = path.stat()
            image = load_image(path)
        except (ImageError, OSError) as exc:
            return name, None, str(exc).removeprefix(f"{path}: ")
        stamp = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "width": image.shape[1], "height": image.shape[0]}
        return name, stamp, self._extract(image)

    def update(self, progress: bool = True, shard_size: int = 256, workers: int | None = None) -> UpdateReport:
        """Extract features of new and changed gallery images, drop vanished ones.

        Finished work is committed every `shard_size` images, so an interrupted update resumes there.
        Images are decoded and described on `workers` threads (OpenCV and onnxruntime release the GIL).
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
        for kind in self.kinds if todo else []:
            self.extractor(kind)  # loads (or exports) the model before the clock starts
        started = time.perf_counter()
        done: list[tuple[str, dict, dict]] = []

        def flush():
            if not done:
                return
            features = {}
            for kind in self.kinds:
                column = [feats[kind] for _, _, feats in done]
                features[kind] = np.stack(column) if kind in DENSE_KINDS else column
            shard = self.store.write_shard([name for name, _, _ in done], features)
            for row, (name, stamp, _) in enumerate(done):
                if name in images:
                    report.updated += 1
                else:
                    report.added += 1
                images[name] = {"shard": shard, "row": row, **stamp}
            self.store.commit()
            done.clear()

        workers = workers or min(2, os.cpu_count() or 1)
        opencv_threads = cv2.getNumThreads()
        if workers > 1:
            # one thread per worker inside onnxruntime and OpenCV beats oversubscribed cores
            # (OpenCV's own pool beside two workers: 6.8 images/s instead of 7.5)
            cv2.setNumThreads(1)
            if self._backbone is not None:
                self._backbone.set_threads(1)
        bar = tqdm(total=len(todo), desc="indexing", unit="img", disable=not progress or not todo, dynamic_ncols=True)
        try:
            with ThreadPoolExecutor(workers) as pool:
                for start in range(0, len(todo), shard_size):
                    for name, stamp, result in pool.map(self._load_and_extract, todo[start : start + shard_size]):
                        bar.update()
                        if stamp is None:
                            report.skipped.append((name, result))
                        else:
                            done.append((name, stamp, result))
                    flush()
        finally:
            bar.close()
            # searches run one image at a time: give them every core again
            cv2.setNumThreads(opencv_threads)
            if self._backbone is not None and self._backbone.threads != 0:
                self._backbone.set_threads(0)
        report.seconds = time.perf_counter() - started
        self.manifest["skipped"] = dict(report.skipped)
        if report.processed:
            self.manifest["images_per_s"] = report.images_per_s
        self.store.commit()
        self._compact_if_sparse()
        self._cache.clear()
        if "regions" in self.kinds and (report.processed or report.removed or self.store.read_arrays("regions-whitened") is None):
            self._whiten_regions()
        return report

    def _whiten_regions(self) -> None:
        """Learn PCA-whitening from the gallery's region descriptors and store them whitened."""
        names, regions = self.store.load_dense("regions")
        flat = regions.reshape(-1, regions.shape[-1]).astype(np.float32) if names else np.zeros((0, 1), np.float32)
        conf = self.manifest["feature_settings"]["regions"]
        whitening = Whitening.fit(flat, conf["whiten"], conf["whiten_power"]) if names else None
        matrix = whitening(flat) if whitening else flat
        arrays = {"names": np.array(names, dtype=str), "matrix": matrix.astype(np.float16),
                  "regions_per_image": np.array(regions.shape[1] if names else 0)}
        if whitening:
            arrays.update(mean=whitening.mean, projection=whitening.projection)
        self.store.write_arrays("regions-whitened", arrays)

    def _compact_if_sparse(self) -> None:
        """Rewrite shards once more than half of their rows belong to removed or re-extracted images."""
        totals = self.store.shard_rows()
        live = len(self.manifest["images"])
        if not totals or sum(totals.values()) <= 2 * live:
            return
        names = sorted(self.manifest["images"])
        features = {}
        for kind in self.kinds:
            if kind in DENSE_KINDS:
                features[kind] = self.store.load_dense(kind)[1]
            else:
                local = self.store.load_local(kind)
                features[kind] = [local[n] for n in names]
        shard = self.store.write_shard(names, features)
        for row, name in enumerate(names):
            self.manifest["images"][name].update(shard=shard, row=row)
        self.store.commit()
        self.store.remove_orphans()

    # ---- searching -----------------------------------------------------------------------------
    def _dense(self, kind: str) -> tuple[list[str], np.ndarray]:
        if kind not in self._cache:
            names, matrix = self.store.load_dense(kind)
            self._cache[kind] = (names, matrix.astype(np.float32))
        return self._cache[kind]

    def _require(self, method: str) -> None:
        if method not in METHODS:
            raise SpotitError(f"unknown search method {method!r}; choose one of: {', '.join(METHODS)}")
        if method not in self.methods:
            raise SpotitError(
                f"index {self.store.root} was built with method {', '.join(self.methods)}, not {method}; "
                f"run `spotit index {self.gallery} --method {method}` to add it"
            )
        if not self.manifest["images"]:
            raise SpotitError(f"index {self.store.root} holds no images; run `spotit index GALLERY` first")

    def cnn_scores(self, query: np.ndarray) -> tuple[list[str], np.ndarray]:
        """Seed CNN: cosine similarity of global descriptors."""
        names, matrix = self._dense("global")
        return names, matrix @ self.extractor("global")(query)

    def _whitened_regions(self) -> tuple[list[str], np.ndarray, Whitening | None, int]:
        if "whitened" not in self._cache:
            data = self.store.read_arrays("regions-whitened")
            if data is None or sorted(self.manifest["images"]) != data["names"].tolist():
                self._whiten_regions()  # missing or stale (e.g. an interrupted update): rebuild it
                data = self.store.read_arrays("regions-whitened")
            whitening = Whitening(data["mean"], data["projection"]) if "mean" in data else None
            columns = np.ascontiguousarray(data["matrix"].T, dtype=np.float32)  # as rerank.region_scores wants
            self._cache["whitened"] = (data["names"].tolist(), columns, whitening, int(data["regions_per_image"]))
        return self._cache["whitened"]

    def regional_scores(self, query: np.ndarray, photo_side: int | None = None):
        """Best cosine similarity between the query and any region of each gallery image, in the whitened
        space: (names, upright scores, best scores of the rotated query, whitened upright query vector).
        `photo_side`: longest side of the photo the query was cropped from."""
        names, columns, whitening, per_image = self._whitened_regions()
        conf = rerank.confs[self.search_conf]
        descriptors = self.extractor("regions").query(query, photo_side, conf["query_rotations"], conf["rotated_scale"])
        if whitening is not None:
            descriptors = whitening(descriptors)
        sims = rerank.region_scores(columns, per_image, descriptors)
        rotated = sims[1:].max(axis=0) if len(sims) > 1 else np.full(len(names), -np.inf)
        return names, sims[0], rotated, descriptors[0]

    def sift_scores(self, query: np.ndarray, progress: bool = False) -> tuple[list[str], np.ndarray]:
        """Seed SIFT: ratio-test match counts against every gallery image."""
        if "sift" not in self._cache:
            self._cache["sift"] = self.store.load_local("sift")
        gallery = self._cache["sift"]
        names = sorted(gallery)
        features = self.extractor("sift")(query)
        counts = [len(ratio_matches(features.descriptors, gallery[n].descriptors))
                  for n in tqdm(names, desc="matching", disable=not progress)]
        return names, np.array(counts, np.float32)

    def _search_crop(self, crop: np.ndarray, method: str, progress: bool, photo_side: int):
        """(names, scores, verifications or None) for one query crop."""
        if method == "cnn":
            return (*self.cnn_scores(crop), None)
        if method == "sift":
            return (*self.sift_scores(crop, progress), None)
        if method == "regional":
            names, scores, _, _ = self.regional_scores(crop, photo_side)
            return names, scores, None
        # the query's SIFT (OpenCV, no GIL) runs beside the CNN
        with ThreadPoolExecutor(1) as pool:
            query_local = pool.submit(self.extractor("verify"), crop)
            names, scores, rotated, query_vector = self.regional_scores(crop, photo_side)
            query_local = query_local.result()
        if "verify_reader" not in self._cache:
            self._cache["verify_reader"] = self.store.local_reader("verify")
        _, columns, _, per_image = self._whitened_regions()
        if "sides" not in self._cache:  # longest side of each gallery photo, for the fit's pixel threshold
            images = self.manifest["images"]
            self._cache["sides"] = [max(images[n]["width"], images[n]["height"]) for n in names]
        sides = self._cache["sides"]
        scores, checks = rerank.rerank(
            query_local, names, scores, rotated, self._cache["verify_reader"], sides,
            rerank.confs[self.search_conf], columns, per_image, query_vector,
        )
        return names, scores, checks

    def search(self, query, boxes: list[Box] | None = None, method: str | None = None, top: int | None = 10,
               progress: bool = False) -> list[Result]:
        """Rank the gallery for a query path or RGB array, cropped to each box; several boxes merge by best score.

        top=None ranks the whole gallery; method=None is the index's default method. With `hybrid`,
        verified results carry `inliers` and `quad`/`box`: where the query box lands in that gallery image.
        """
        method = method or self.default_method
        self._require(method)
        image = as_image(query)
        boxes = [check_box(box, image.shape[1], image.shape[0]) for box in boxes or []]
        crops = [image[y : y + h, x : x + w] for x, y, w, h in boxes] or [image]
        per_crop = [self._search_crop(crop, method, progress, max(image.shape[:2])) for crop in crops]
        names = per_crop[0][0]
        stacked = np.stack([scores for _, scores, _ in per_crop])
        best_crop = stacked.argmax(axis=0)
        merged = stacked.max(axis=0)
        order = rank(merged)
        if top is not None:
            order = order[:top]
        results = []
        gallery = str(self.gallery)  # one Path for all results: top=None builds thousands
        for i in order:
            result = Result(image_id(names[i]), os.path.join(gallery, names[i]), float(merged[i]))
            checks = per_crop[best_crop[i]][2]
            if checks is not None:
                check = checks.get(i)
                result.inliers = check.inliers if check else 0
                crop = crops[best_crop[i]]
                result.quad = rerank.locate(check, crop.shape[1], crop.shape[0])
            results.append(result)
        return results
