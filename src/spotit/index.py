"""The Python API: build an index of a gallery folder, keep it up to date, and search it.

    index = Index.open_or_create("~/.local/share/spotit/index", gallery="photos/")
    index.update()                                   # extracts only new or changed images
    for hit in index.search("query.jpg", boxes=[(40, 60, 200, 150)], top=10):
        print(hit.id, hit.score, hit.path, hit.box)
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from .errors import SpotitError
from .features import backbones
from .features.extractors import METHOD_KINDS, Extractors
from .images import DEFAULT_MAX_PIXELS, Box, as_boxes, as_image, check_box
from .indexing import lifecycle
from .indexing.lifecycle import METHODS, default_index_dir, feature_settings, kinds_of, parse_methods
from .indexing.updater import Updater, UpdateReport
from .search.scope import Scope
from .search.searcher import Result, Searcher
from .search.snapshot import Snapshot
from .storage.lock import WriterLock, update_running
from .storage.store import SnapshotGone, Store

__all__ = ["Index", "Result", "UpdateReport", "METHODS", "DEFAULT_METHOD", "default_index_dir", "parse_methods"]

DEFAULT_METHOD = "hybrid"


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
            self.features = Extractors(store.root, manifest, self._weights)
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
               confs: dict | None = None, wait: bool = False, vectors: str | None = None,
               catalogue: str | None = None, exclude: list[str] | None = None) -> "Index":
        """A new, empty index at `path` (absent or an empty folder). `confs` overrides the named configuration
        of a feature kind, e.g. {"regions": "gem-672"}."""
        return cls.open_or_create(path, gallery, methods, backbone, weights, confs=confs, wait=wait, vectors=vectors,
                                  catalogue=catalogue, exclude=exclude, _new=True)

    @classmethod
    def open_or_create(cls, path=None, gallery=None, methods=(DEFAULT_METHOD,), backbone=backbones.DEFAULT_BACKBONE,
                       weights=None, rebuild=False, confs: dict | None = None, moved: bool = False,
                       wait: bool = False, vectors: str | None = None, catalogue: str | None = None,
                       exclude: list[str] | None = None, _new: bool = False) -> "Index":
        """Open the index at `path` for `gallery`, creating it (with `confs`) if needed; refuse a mismatching one.

        `rebuild` extracts every photo again (deleting spotit's own files only; with unchanged settings the
        old features serve searches until replaced); `moved` re-points it to `gallery` when the gallery
        folder was moved, keeping the features of unchanged photos; `wait` waits for another writer;
        `vectors` chooses the vector index, made by the next update: in faiss, inside the index, "exact",
        "ivfpq" (approximate) or "auto" (by the gallery's size; the default; "faiss" too); or in Milvus:
        a Milvus Lite file ("regions.db") or a server ("http://host:19530", token from $SPOTIT_MILVUS_TOKEN).
        `catalogue` says where the catalogue is: "sqlite" (in the folder; the default), or a Milvus server
        for a folder that several machines share (on a shared file system); moving it needs `rebuild`.
        `exclude` globs leave files or folders out (on their name; with a "/", on their path in the gallery),
        beside what always is: hidden files, AppleDouble, NAS and recycle-bin folders (images.DEFAULT_EXCLUDES).
        They are recorded in the index; given again, they replace the recorded ones."""
        store = lifecycle.open_or_create(Path(path or default_index_dir()).absolute(), gallery, methods, backbone,
                                         weights, rebuild, confs, moved, wait, _new, vectors, catalogue, exclude)
        return cls(store, weights)

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
        return lifecycle.served_methods(self.kinds)

    @property
    def default_method(self) -> str:
        """The search method used when none is named: hybrid if the index serves it."""
        return DEFAULT_METHOD if DEFAULT_METHOD in self.methods else self.methods[0]

    @property
    def kinds(self) -> list[str]:
        return kinds_of(self.methods_built)

    def __len__(self) -> int:
        return len(self.snapshot().names)

    # ---- updating ------------------------------------------------------------------------------
    def update(self, progress: bool = True, shard_size: int = 256, workers: int | None = None, wait: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, on_progress=None, ray: str | None = None) -> UpdateReport:
        """Extract features of new and changed gallery images, drop vanished ones.

        `on_progress(done, total)` follows the extraction; an exception it raises stops the update
        (finished photos are committed) and propagates.
        Finished work is committed every `shard_size` images and when interrupted, so an interrupted
        update keeps it and resumes there. Another running update is refused, or awaited with `wait`."""
        with WriterLock(self.store.root).acquire(wait):
            with self._swap:  # the latest state: another writer may have committed since we opened
                self._take(self.store.reload())
            writer = self.store.reload()  # the writer's own copy: searches in this process never see it half-done
            try:
                return Updater(self.features, writer, max_pixels).run(progress, shard_size, workers, on_progress, ray)
            finally:
                with self._swap:
                    self._take(self.store.reload())

    # ---- searching -----------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """The latest committed state, re-read only when a writer has committed since (one stat)."""
        with self._swap:
            for _ in range(5):
                if self._snapshot is not None and not self._snapshot.store.changed():
                    return self._snapshot
                self._take(self.store if not self.store.changed() else self.store.reload())
                try:
                    self._snapshot = Snapshot(self.store)
                except SnapshotGone:  # a writer committed again while this state was read: read the newer one
                    continue
                self._snapshot.prepare()
                return self._snapshot
        raise SpotitError(f"index {self.store.root} changed during five reads in a row; try again")

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

    def search(self, query, boxes=None, method: str | None = None, top: int | None = 10, progress: bool = False,
               max_pixels: int | None = DEFAULT_MAX_PIXELS, matches: str | None = None, under: str | None = None,
               since=None, until=None) -> list[Result]:
        """Rank the gallery for a query photo (a path or RGB array) cropped to each of its boxes, or for
        several photos of one object (a list of them, with `boxes` a list holding each one's box, boxes or
        None); every crop is searched on its own and they merge by best score.

        top=None ranks the whole gallery; method=None is the index's default method. With `hybrid`,
        verified results carry `inliers` and `quad`/`box`: where the query box lands in that gallery image,
        and every result a verdict, `match` ("yes", "maybe", "no") with its `confidence` (search/verdict.py);
        `matches="yes"` (or "maybe": yes and maybe) returns only those, up to `top`.
        `under` (a folder in the gallery), `since` and `until` (dates or datetimes, inclusive; photos
        without a date taken are left out) restrict the search to part of the gallery.
        Results whose photo was deleted or changed since indexing say so in `stale`."""
        if top is not None and (isinstance(top, bool) or not isinstance(top, (int, np.integer)) or top < 1):
            raise SpotitError(f"top must be a whole number of at least 1, or None for the whole gallery; got {top!r}")
        if matches not in (None, "yes", "maybe"):
            raise SpotitError(f"matches must be 'yes', 'maybe' (yes and maybe) or None; got {matches!r}")
        if under is not None and os.path.isabs(under):
            try:
                under = Path(under).resolve().relative_to(self.gallery.resolve()).as_posix()
            except ValueError:
                raise SpotitError(f"--under {under} is not inside the gallery {self.gallery}") from None
        scope = Scope.of(under, since, until)
        images, boxes = query_photos(query, boxes, max_pixels)
        for _ in range(5):
            try:  # a writer may commit while this state is read (its catalogue) or searched (its files)
                with ThreadPoolExecutor(1) as pool:  # a first search loads the model while it reads the catalogue
                    loading = pool.submit(self.features.load, METHOD_KINDS.get(method or self.default_method, []))
                    snap = self.snapshot()
                    loading.result()
                searcher = Searcher(self.features.get, self.search_conf)  # after the snapshot: its extractors
                method = method or self.default_method
                self._require(method, snap)
                if matches and method != "hybrid":
                    raise SpotitError(f"matches need the hybrid method, which verifies each result; not {method}")
                return searcher.search(snap, images, boxes, method, top, progress, scope.mask(snap), matches)
            except SnapshotGone:
                continue  # search the new state
        raise SpotitError(f"index {self.store.root} changed during five searches in a row; try again")


def query_photos(query, boxes, max_pixels: int | None) -> tuple[list[np.ndarray], list[list[Box]]]:
    """(RGB images, the boxes of each) of one query photo, or of several: a list or tuple of them, whose
    `boxes` is None or a list with an entry per photo (a box, a list of boxes, or None: the whole photo)."""
    several = isinstance(query, (list, tuple))
    photos = list(query) if several else [query]
    if not photos:
        raise SpotitError("give at least one query photo")
    per_photo = [boxes] if not several else [None] * len(photos) if boxes is None else list(boxes)
    if len(per_photo) != len(photos):
        raise SpotitError(f"{len(photos)} query photos but {len(per_photo)} entries of boxes; give one per photo "
                          f"(None: the whole photo)")
    images = [as_image(photo, max_pixels=max_pixels) for photo in photos]
    return images, [[check_box(box, image.shape[1], image.shape[0]) for box in as_boxes(entry)]
                    for image, entry in zip(images, per_photo)]
