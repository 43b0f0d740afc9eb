"""The Python API: build an index of a gallery folder, keep it up to date, and search it.

    index = Index.open_or_create("~/.local/share/spotit/index", gallery="photos/")
    index.update()                                   # extracts only new or changed images
    for hit in index.search("query.jpg", boxes=[(40, 60, 200, 150)], top=10):
        print(hit.id, hit.score, hit.path, hit.box)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np

from . import backbones, global_features, local_features
from .errors import SpotitError
from .extractors import Extractors
from .images import DEFAULT_MAX_PIXELS, Box, as_boxes, as_image, check_box
from .lock import WriterLock, update_running
from .searcher import METHOD_KINDS, Result, Searcher, Snapshot
from .store import SnapshotGone, Store, check_index_folder
from .updater import Updater, UpdateReport

__all__ = ["Index", "Result", "UpdateReport", "METHODS", "DEFAULT_METHOD", "default_index_dir", "parse_methods"]

METHODS = tuple(METHOD_KINDS)
DEFAULT_METHOD = "hybrid"


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


class Index:
    """A gallery's index: the friendly facade over its storage, the updater and the searcher.

    Searches read the latest committed state and never write; `update` is the one writer (an OS lock
    refuses a second one). Both may run at once, in any number of processes."""

    def __init__(self, store: Store, weights: str | os.PathLike | None = None):
        self.search_conf = "default"  # a name in rerank.confs: shortlist, query rotations, fusion, expansion
        self._weights = weights
        self.features: Extractors | None = None
        self._snapshot: Snapshot | None = None
        self._swap = threading.Lock()
        self._take(store)

    def _take(self, store: Store) -> None:
        """Make `store` (a committed state) this index's; new extractors when another process rebuilt it."""
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
        if self.features is None or any(manifest.get(k) != self.features.manifest.get(k)
                                         for k in ("backbone", "weights", "confs")):
            self.features = Extractors(store.root, manifest, kinds_of(manifest["methods"]), self._weights)
        self.features.kinds = kinds_of(manifest["methods"])  # another process may have added a method
        self.store = store

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
        """Open an index for searching (it may be read-only)."""
        return cls(Store.open(path or default_index_dir()), weights)

    @classmethod
    def create(cls, path, gallery, methods=(DEFAULT_METHOD,), backbone=backbones.DEFAULT_BACKBONE, weights=None,
               confs: dict | None = None, wait: bool = False) -> "Index":
        """A new, empty index at `path` (absent or an empty folder). `confs` overrides the named configuration
        of a feature kind, e.g. {"regions": "gem-672"}."""
        return cls.open_or_create(path, gallery, methods, backbone, weights, confs=confs, wait=wait, _new=True)

    @classmethod
    def open_or_create(cls, path=None, gallery=None, methods=(DEFAULT_METHOD,), backbone=backbones.DEFAULT_BACKBONE,
                       weights=None, rebuild=False, confs: dict | None = None, moved: bool = False,
                       wait: bool = False, _new: bool = False) -> "Index":
        """Open the index at `path` for `gallery`, creating it (with `confs`) if needed; refuse a mismatching one.

        `rebuild` extracts every photo again (deleting spotit's own files only; with unchanged settings the
        old features serve searches until replaced); `moved` re-points it to `gallery` when the gallery
        folder was moved, keeping the features of unchanged photos; `wait` waits for another writer."""
        path = Path(path or default_index_dir()).absolute()
        methods = check_methods(methods)
        backbones.check_backbone(backbone)
        check_index_folder(path)
        gallery_path = Path(gallery).resolve() if gallery is not None else None
        if gallery_path is not None:
            if not gallery_path.is_dir():
                raise SpotitError(f"gallery folder not found: {gallery_path}")
            if path.resolve() == gallery_path or gallery_path in path.resolve().parents:
                raise SpotitError(f"the index {path} must be outside the gallery {gallery_path}")
        if moved and (rebuild or not Store.exists(path)):
            raise SpotitError("--moved re-points an existing index to its moved gallery; "
                              f"{'--rebuild extracts every photo anyway' if rebuild else f'{path} holds no index yet'}")
        if _new and Store.exists(path):
            raise SpotitError(f"{path} already holds an index; open it, or rebuild it")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpotitError(f"cannot create the index folder {path}: {exc.strerror}") from None
        with WriterLock(path).acquire(wait):
            old = Store.open(path) if Store.exists(path) else None
            if old is None and gallery_path is None:
                raise SpotitError(f"no index at {path}: give the gallery folder to build one")
            settings = None if gallery_path is None else {
                "gallery": str(gallery_path), "methods": sorted(set(methods)), "backbone": backbone,
                "weights": str(Path(weights).resolve()) if weights else None,
                "confs": {**DEFAULT_CONFS, **(confs or {})},
            }
            if settings is not None:
                settings["feature_settings"] = feature_settings(backbone, settings["confs"])
            if old is not None and rebuild and same_features(old.manifest, settings):
                # extract every photo again; until each is replaced, its old features keep serving searches
                for entry in old.manifest["images"].values():
                    entry["stale"] = True
                old.manifest.update(methods=settings["methods"], skipped={})
                old.commit()
                return cls(old, weights)
            if old is None or rebuild or (not old.manifest["images"] and not same_features(old.manifest, settings)):
                store = Store.create(path, {**settings, "weights_sha256": None}, previous=old)
                store.remove_unused()  # the old state's files, now that nothing points to them
                return cls(store, weights)
            index = cls(old, weights)
            index._adopt(gallery_path, methods, backbone, moved)
        return index

    def _adopt(self, gallery: Path | None, methods, backbone: str, moved: bool) -> None:
        """Check an existing index against what the caller asked for; add methods, re-point a moved gallery."""
        manifest, root = self.manifest, self.store.root
        if gallery is not None and gallery != Path(manifest["gallery"]):
            if not moved:
                raise SpotitError(
                    f"index {root} belongs to gallery {manifest['gallery']}; if that folder was moved to {gallery}, "
                    f"add --moved to re-point the index; else use another --index, or --rebuild to replace it"
                )
            manifest["gallery"] = str(gallery)
        elif moved:
            raise SpotitError(f"--moved: index {root} already belongs to {manifest['gallery']}")
        if backbone != manifest["backbone"]:
            raise SpotitError(
                f"index {root} was built with backbone {manifest['backbone']}, not {backbone}; "
                f"use another --index, or --rebuild"
            )
        wanted, built = set(methods) - set(self.methods), self.kinds
        if wanted:
            manifest["methods"] = sorted(set(manifest["methods"]) | wanted)
            if set(kinds_of(wanted)) - set(built):
                # every image must hold every kind of feature, so a method needing new kinds re-extracts all
                for entry in manifest["images"].values():
                    entry["stale"] = True
        if wanted or moved:
            self.store.commit()
            self.features.kinds = self.kinds

    # ---- what it holds -------------------------------------------------------------------------
    @property
    def manifest(self) -> dict:
        return self.store.manifest

    @property
    def gallery(self) -> Path:
        return Path(self.manifest["gallery"])

    @property
    def methods_built(self) -> list[str]:
        """The methods the index was asked to serve (its features are those they need)."""
        return self.manifest["methods"]

    @property
    def methods(self) -> list[str]:
        """Every method the stored features serve: a hybrid index also serves `regional`."""
        kinds = set(self.kinds)
        return [m for m in METHODS if set(METHOD_KINDS[m]) <= kinds]

    @property
    def default_method(self) -> str:
        """The search method used when none is named: hybrid if the index serves it."""
        return DEFAULT_METHOD if DEFAULT_METHOD in self.methods else self.methods[0]

    @property
    def kinds(self) -> list[str]:
        return kinds_of(self.methods_built)

    def __len__(self) -> int:
        return len(self.manifest["images"])

    # ---- updating ------------------------------------------------------------------------------
    def update(self, progress: bool = True, shard_size: int = 256, workers: int | None = None, wait: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS) -> UpdateReport:
        """Extract features of new and changed gallery images, drop vanished ones.

        Finished work is committed every `shard_size` images and when interrupted, so an interrupted
        update keeps it and resumes there. Another running update is refused, or awaited with `wait`."""
        with WriterLock(self.store.root).acquire(wait):
            self._take(self.store.reload())  # the latest state: another writer may have committed since we opened
            writer = self.store.reload()  # the writer's own copy: searches in this process never see it half-done
            try:
                return Updater(self.features, writer, max_pixels).run(progress, shard_size, workers)
            finally:
                self._take(self.store.reload())

    # ---- searching -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The latest committed state, re-read only when a writer has committed since (one stat)."""
        with self._swap:
            if self._snapshot is None or self._snapshot.store.changed():
                self._take(self.store if not self.store.changed() else self.store.reload())
                self._snapshot = Snapshot(self.store)
            return self._snapshot

    def _require(self, method: str, snap: Snapshot) -> None:
        if method not in METHODS:
            raise SpotitError(f"unknown search method {method!r}; choose one of: {', '.join(METHODS)}")
        if method not in self.methods:
            raise SpotitError(
                f"index {self.store.root} serves {', '.join(self.methods)}, not {method}; "
                f"run `spotit index {self.gallery} --index {self.store.root} --method {method}` to add it"
            )
        if not snap.names:
            running = update_running(self.store.root)
            if running:
                raise SpotitError(f"index {self.store.root} holds no images yet: {running} is building it; try again soon")
            raise SpotitError(f"index {self.store.root} holds no images; run `spotit index GALLERY --index {self.store.root}` first")

    def search(self, query, boxes: list[Box] | None = None, method: str | None = None, top: int | None = 10,
               progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Result]:
        """Rank the gallery for a query path or RGB array, cropped to each box; several boxes merge by best score.

        top=None ranks the whole gallery; method=None is the index's default method. With `hybrid`,
        verified results carry `inliers` and `quad`/`box`: where the query box lands in that gallery image.
        Results whose photo was deleted or changed since indexing say so in `stale`."""
        if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
            raise SpotitError(f"top must be a whole number of at least 1, or None for the whole gallery; got {top!r}")
        image = as_image(query, max_pixels=max_pixels)
        boxes = [check_box(box, image.shape[1], image.shape[0]) for box in as_boxes(boxes)]
        searcher = Searcher(self.features.get, self.search_conf)
        for _ in range(5):
            snap = self.snapshot()
            method = method or self.default_method
            self._require(method, snap)
            try:
                return searcher.search(snap, image, boxes, method, top, progress)
            except SnapshotGone:
                continue  # a writer committed and removed a file of this state: search the new one
        raise SpotitError(f"index {self.store.root} changed during five searches in a row; try again")


def same_features(manifest: dict, settings: dict | None) -> bool:
    """Whether an index holds the features `settings` ask for, of the same gallery."""
    if settings is None:
        return True
    keys = ("gallery", "backbone", "weights", "feature_settings")
    return all(manifest.get(k) == settings[k] for k in keys) and \
        set(kinds_of(manifest["methods"])) == set(kinds_of(settings["methods"]))


def check_methods(methods) -> list[str]:
    """The methods an index must serve, refused with the reason when they are not a list of known ones."""
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if not methods or unknown:
        raise SpotitError(f"unknown method(s) {', '.join(map(repr, unknown)) or '(none given)'}; "
                          f"choose from {', '.join(METHODS)}")
    return methods


def kinds_of(methods) -> list[str]:
    return sorted({kind for method in methods for kind in METHOD_KINDS[method]})
