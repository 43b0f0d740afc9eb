"""Bringing an index up to date with its gallery: the one writer, under the index's write lock.

It extracts new and changed photos on worker threads and commits every `shard_size` photos; an
interruption (Ctrl-C, SIGTERM) commits what is finished before it stops. Vanished photos drop out, shards
that are mostly dead are compacted, and what searches derive from the features is brought up to date
(storage/derived.py)."""

from __future__ import annotations

import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from ..cluster import EXTRA, available, require
from ..errors import BackendError
from ..features.extractors import DENSE_KINDS, Extractors
from ..images import DEFAULT_MAX_PIXELS, scan_images
from ..storage.derived import Learned, bring_global_base_up_to_date, bring_up_to_date, remove_unused_vectors
from ..storage.store import Store
from .extract import load_and_extract
from .lifecycle import kinds_of


@dataclass
class UpdateReport:
    added: int = 0
    updated: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    left_out: dict[str, int] = field(default_factory=dict)  # "image files (hidden)" -> how many, by rule
    notes: list[str] = field(default_factory=list)  # what the user should know, e.g. a fallback taken
    seconds: float = 0.0

    @property
    def processed(self) -> int:
        return self.added + self.updated

    @property
    def images_per_s(self) -> float:
        return self.processed / self.seconds if self.seconds > 0 else 0.0


def plan(store: Store, gallery):
    """(new files, changed files, vanished files, skipped entries, left out by rule) of the gallery against
    the index; photos the index's --exclude globs now leave out count as vanished."""
    images = store.images
    found, skipped, left_out = scan_images(gallery, store.manifest.get("exclude", []))
    new, changed, present = [], [], set()
    for name in found:
        entry = images.get(name)
        if entry is None:
            new.append(name)
            continue
        try:
            stat = os.stat(os.path.join(gallery, name))
        except OSError:
            continue  # vanished since the scan
        present.add(name)
        if entry.get("stale") or (entry["size"], entry["mtime_ns"]) != (stat.st_size, stat.st_mtime_ns):
            changed.append(name)
    gone = sorted(set(images) - present)
    return new, changed, gone, skipped, dict(left_out)


def ordered_map(pool: ThreadPoolExecutor, work, items, ahead: int):
    """pool.map with at most `ahead` items in flight, so an interruption waits for little."""
    pending: deque = deque()
    try:
        for item in items:
            pending.append(pool.submit(work, item))
            if len(pending) >= ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


class Updater:
    """Writes one update into `store` (a writer's own copy of the state) with the features `features` extracts."""

    def __init__(self, features: Extractors, store: Store, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.features, self.store, self.max_pixels = features, store, max_pixels
        self.gallery = store.manifest["gallery"]
        # the served methods' kinds, and those of methods being added (served once every photo has them)
        self.kinds = kinds_of(store.manifest["methods"] + store.manifest.get("pending_methods", []))
        self.done: list[tuple[str, dict, dict]] = []
        # new shards are derived as they are written, with the learned parts in use (if regions are served)
        self.learned = Learned.read(store) if store.learned and "regions" in kinds_of(store.manifest["methods"]) else None

    def _load_and_extract(self, name: str):
        return load_and_extract(self.features, self.gallery, name, self.kinds, self.max_pixels)

    def extract_locally(self, todo: list[str], workers: int):
        """(name, stamp or None, features or the reason it was skipped) of each photo, on local threads."""
        with self.features.worker_threads(workers), ThreadPoolExecutor(workers) as pool:
            yield from ordered_map(pool, self._load_and_extract, todo, 2 * workers)

    def _flush(self, report: UpdateReport) -> None:
        """Write the finished photos to a new shard and commit them."""
        if not self.done:
            return
        features = {}
        for kind in self.kinds:
            column = [feats[kind] for _, _, feats in self.done]
            features[kind] = np.stack(column) if kind in DENSE_KINDS else column
        shard = self.store.shards.write([name for name, _, _ in self.done], features)
        if self.learned is not None:
            self.learned.derive(self.store, shard)
        images = self.store.images
        for row, (name, stamp, _) in enumerate(self.done):
            if name in images:
                report.updated += 1
            else:
                report.added += 1
            images[name] = {"shard": shard, "row": row, **stamp}
        self.store.commit()
        self.done.clear()

    def run(self, progress: bool = True, shard_size: int = 256, workers: int | None = None,
            on_progress=None, ray: str | None = None) -> UpdateReport:
        """`on_progress(done, total)` is called as photos finish; an exception it raises stops the update
        as Ctrl-C does, committing every finished photo first. `ray` extracts on a Ray cluster ("local":
        one started here) instead of local threads."""
        report = UpdateReport()
        manifest = self.store.manifest
        learned_before, shards_before = dict(self.store.learned or {}), set(self.store.live_shards())
        new, changed, gone, report.skipped, report.left_out = plan(self.store, self.gallery)
        for name in gone:
            del self.store.images[name]
        report.removed = len(gone)
        report.unchanged = len(self.store.images) - len(changed)
        if gone:
            self.store.commit()
        todo = new + changed
        if todo:
            self.features.load(self.kinds)  # loads (or exports) the model before the clock starts
            if any(kind in DENSE_KINDS for kind in self.kinds):
                manifest["weights_sha256"] = self.features.backbone().weights_sha256
        started = time.perf_counter()
        ray_workers = workers  # a local Ray gets one worker per core unless told
        workers = workers or min(2, os.cpu_count() or 1)
        bar = tqdm(total=len(todo), desc="indexing", unit="img", disable=not progress or not todo, dynamic_ncols=True)
        if on_progress is not None:
            on_progress(0, len(todo))
        if ray is not None and todo and not available("ray"):
            if ray != "local":  # a cluster was named: threads here are not what was asked for
                require("ray", f"--ray {ray}")
            report.notes.append(f"Ray is not installed ({EXTRA}): extracted with local threads")
            ray = None
        if ray is not None and todo:
            from ..cluster.ray_extract import extract_on_ray

            extracted = extract_on_ray(ray, self.features, self.gallery, todo, self.kinds, self.max_pixels,
                                       ray_workers or os.cpu_count() or 1)
        else:
            extracted = self.extract_locally(todo, workers)
        try:
            for done, (name, stamp, result) in enumerate(extracted, 1):
                # kept before it is shown as done, so an interruption between the two never drops it
                if stamp is None:
                    report.skipped.append((name, result))
                else:
                    self.done.append((name, stamp, result))
                bar.update()
                if on_progress is not None:
                    on_progress(done, len(todo))
                if len(self.done) >= shard_size:
                    self._flush(report)
        finally:
            extracted.close()  # stops the workers: their threads, or the Ray pipeline
            bar.close()
            # also on Ctrl-C: every finished photo is committed before the interruption goes on
            report.seconds = time.perf_counter() - started
            self._flush(report)
        manifest["skipped"] = dict(report.skipped)
        for name, _ in report.skipped:  # a changed photo that cannot be read now: its old features go too
            if self.store.images.pop(name, None) is not None:
                report.removed += 1
        if report.processed:
            manifest["images_per_s"] = report.images_per_s
        if manifest.get("pending_methods") and not any(e.get("stale") for e in self.store.images.values()):
            manifest["methods"] = sorted(set(manifest["methods"]) | set(manifest.pop("pending_methods")))
        if not manifest.get("pending_methods"):  # until then old shards lack the new kinds
            self._compact_if_sparse()
        if "regions" in kinds_of(manifest["methods"]):
            bring_up_to_date(self.store, manifest["feature_settings"]["regions"], manifest.get("vectors", "auto"),
                             progress)
        if "global" in kinds_of(manifest["methods"]):
            bring_global_base_up_to_date(self.store, manifest.get("vectors", "auto"))
        manifest["updated"] = time.time()
        self.store.commit()
        self.store.remove_unused()
        try:
            remove_unused_vectors(self.store, learned_before, shards_before)
        except BackendError as exc:  # committed already: what is left in Milvus is dropped by a later update
            report.notes.append(f"old regions stay in Milvus for now: {exc}")
        return report

    def _compact_if_sparse(self, batch: int = 4096) -> None:
        """Rewrite the shards more than half of whose rows belong to removed or re-extracted photos: their live
        photos move to new shards, so the work is in proportion to what was removed, not to the index."""
        totals = self.store.shards.row_counts()
        placements = self.store.placements()
        sparse = sorted(shard for shard, members in placements.items() if 2 * len(members) < totals[shard])
        if not sparse:
            return
        names = self.store.names()
        moving = [(names[position], shard, row) for shard in sparse for position, row in placements[shard]]
        images = self.store.images
        for start in range(0, len(moving), batch):
            chunk = moving[start : start + batch]
            features = {}
            for kind in self.kinds:
                if kind in DENSE_KINDS:
                    features[kind] = self.store.shards.read_dense(kind, [(shard, row) for _, shard, row in chunk])
                else:
                    read = self.store.shards.local_reader(kind)
                    features[kind] = [read(name) for name, _, _ in chunk]
            shard = self.store.shards.write([name for name, _, _ in chunk], features)
            if self.learned is not None:
                self.learned.derive(self.store, shard)
            for row, (name, _, _) in enumerate(chunk):
                images[name] = {**images[name], "shard": shard, "row": row}
        self.store.commit()
