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

from . import backbones, global_features, local_features
from .errors import SpotitError
from .extractors import Extractors
from .images import DEFAULT_MAX_PIXELS, Box, as_image, check_box
from .lock import WriterLock
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
        self.features = Extractors(store.root, manifest, kinds_of(manifest["methods"]), weights)
        self._snapshot: Snapshot | None = None
        self._swap = threading.Lock()

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

        `rebuild` empties it first (spotit's own files only); `moved` re-points it to `gallery` when the
        gallery folder was moved, keeping the features of unchanged photos; `wait` waits for another writer."""
        path = Path(path or default_index_dir()).absolute()
        check_index_folder(path)
        gallery_path = Path(gallery).resolve() if gallery is not None else None
        if gallery_path is not None:
            if not gallery_path.is_dir():
                raise SpotitError(f"gallery folder not found: {gallery_path}")
            if path.resolve() == gallery_path or gallery_path in path.resolve().parents:
                raise SpotitError(f"the index {path} must be outside the gallery {gallery_path}")
        if _new and Store.exists(path):
            raise SpotitError(f"{path} already holds an index; open it, or rebuild it")
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpotitError(f"cannot create the index folder {path}: {exc.strerror}") from None
        with WriterLock(path).acquire(wait):
            if Store.exists(path) and not rebuild:
                store = Store.open(path)
            else:
                if gallery_path is None:
                    raise SpotitError("give the gallery folder to build a new index")
                confs = {**DEFAULT_CONFS, **(confs or {})}
                backbones.check_backbone(backbone)
                old = Store.open(path) if Store.exists(path) else None
                store = Store.create(path, {
                    "gallery": str(gallery_path), "methods": sorted(set(methods)), "backbone": backbone,
                    "weights": str(Path(weights).resolve()) if weights else None, "weights_sha256": None,
                    "confs": confs, "feature_settings": feature_settings(backbone, confs),
                    "next_shard": old.manifest.get("next_shard", 0) if old else 0,
                })
                store.remove_unused()  # a rebuild: the old state's files, now that nothing points to them
                return cls(store, weights)
            index = cls(store, weights)
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
            writer = self.store.reload()  # the latest state: another writer may have committed since we opened
            self._check_same_index(writer)
            self.features.kinds = kinds_of(writer.manifest["methods"])  # another process may have added a method
            try:
                return Updater(self.features, writer, max_pixels).run(progress, shard_size, workers)
            finally:
                self.store = writer

    def _check_same_index(self, store: Store) -> None:
        if store.manifest.get("feature_settings") != self.manifest.get("feature_settings") \
                or store.manifest.get("gallery") != self.manifest.get("gallery"):
            raise SpotitError(f"index {store.root} was rebuilt or re-pointed by another process; open it again")

    # ---- searching -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The latest committed state, re-read only when a writer has committed since (one stat)."""
        with self._swap:
            if self._snapshot is None or self._snapshot.store.changed():
                store = self.store if not self.store.changed() else self.store.reload()
                self._check_same_index(store)
                self.store = store
                self._snapshot = Snapshot(store)
            return self._snapshot

    def _require(self, method: str, snap: Snapshot) -> None:
        if method not in METHODS:
            raise SpotitError(f"unknown search method {method!r}; choose one of: {', '.join(METHODS)}")
        if method not in self.methods:
            raise SpotitError(
                f"index {self.store.root} serves {', '.join(self.methods)}, not {method}; "
                f"run `spotit index {self.gallery} --method {method}` to add it"
            )
        if not snap.names:
            raise SpotitError(f"index {self.store.root} holds no images; run `spotit index GALLERY` first")

    def search(self, query, boxes: list[Box] | None = None, method: str | None = None, top: int | None = 10,
               progress: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> list[Result]:
        """Rank the gallery for a query path or RGB array, cropped to each box; several boxes merge by best score.

        top=None ranks the whole gallery; method=None is the index's default method. With `hybrid`,
        verified results carry `inliers` and `quad`/`box`: where the query box lands in that gallery image.
        Results whose photo was deleted or changed since indexing say so in `stale`."""
        image = as_image(query, max_pixels=max_pixels)
        boxes = [check_box(box, image.shape[1], image.shape[0]) for box in boxes or []]
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


def kinds_of(methods) -> list[str]:
    return sorted({kind for method in methods for kind in METHOD_KINDS[method]})
