"""What `spotit serve` does behind its routes: searches an uploaded photo, finds a gallery photo by id
(and never anything outside the gallery), makes thumbnails, and runs one background update.

Plain Python, no HTTP: the routes in server.py translate its answers and its errors."""

from __future__ import annotations

import io
import os
import threading
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from .. import __version__
from ..errors import SpotitError
from ..images import DEFAULT_MAX_PIXELS, check_box, decode_image, file_problem, load_image
from ..index import Index
from ..storage.lock import update_running


class NotFound(SpotitError):
    """No photo of the gallery answers to this id."""


class Busy(SpotitError):
    """An update is already running."""


class Stopped(Exception):
    """Raised into a running update to stop it (its finished photos are committed)."""


def jpeg(image: np.ndarray, max_side: int | None = None, quality: int = 90) -> bytes:
    """An RGB array as JPEG bytes, shrunk to at most `max_side` pixels on its longer side."""
    picture = Image.fromarray(image)
    if max_side is not None and max(picture.size) > max_side:
        picture.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    out = io.BytesIO()
    picture.save(out, "JPEG", quality=quality)
    return out.getvalue()


@lru_cache(maxsize=2048)
def _thumbnail(path: str, max_side: int, stamp: tuple, max_pixels: int | None) -> bytes:
    """A thumbnail of the photo at `path`, upright; cached by its size and time (`stamp`): a changed file is re-read."""
    return jpeg(load_image(path, max_pixels), max_side, 85)


PREVIEW_SIDE = 2048  # a query preview: enough to draw boxes on, small enough to send at once


class UpdateJob:
    """At most one background update of the index, and what it has done so far (for the status)."""

    def __init__(self, index: Index, max_pixels: int | None):
        self.index, self.max_pixels = index, max_pixels
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self.state: dict = {"running": False}

    def start(self) -> dict:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                raise Busy("an update started here is already running")
            other = update_running(self.index.store.root)
            if other:
                raise Busy(f"{other} is updating this index")
            self._stop.clear()
            self.state = {"running": True, "done": 0, "total": None, "started": time.time()}
            self._thread = threading.Thread(target=self._run, name="spotit-update", daemon=True)
            self._thread.start()
            return dict(self.state)

    def _progress(self, done: int, total: int) -> None:
        if self._stop.is_set():
            raise Stopped
        self.state.update(done=done, total=total)

    def _run(self) -> None:
        outcome: dict = {}
        try:
            report = self.index.update(progress=False, max_pixels=self.max_pixels, on_progress=self._progress)
            outcome["report"] = {"added": report.added, "updated": report.updated, "removed": report.removed,
                                 "unchanged": report.unchanged, "skipped": [list(s) for s in report.skipped],
                                 "seconds": round(report.seconds, 2)}
        except Stopped:
            outcome["error"] = "stopped when the server shut down; finished photos are saved"
        except (SpotitError, OSError) as exc:
            outcome["error"] = str(exc)
        except Exception as exc:  # the status must say why; the server goes on serving searches
            outcome["error"] = f"{type(exc).__name__}: {exc}"
        self.state = {**self.state, **outcome, "running": False, "finished": time.time()}

    def stop(self, timeout: float = 30) -> None:
        """Stop a running update at its next photo and wait for it to commit."""
        self._stop.set()
        self.wait(timeout)

    def wait(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


class Service:
    """One loaded index and model, shared by every request; safe to call from many threads at once."""

    def __init__(self, index: Index, max_pixels: int | None = DEFAULT_MAX_PIXELS):
        self.index, self.max_pixels = index, max_pixels
        self.update = UpdateJob(index, max_pixels)
        # searches beyond one per core only queue for the cores and add to the memory in use
        self._searches = threading.BoundedSemaphore(max(2, os.cpu_count() or 1))
        self._ids_lock = threading.Lock()
        self._ids: tuple[object, dict[str, str]] | None = None
        self.watcher = None

    def watch(self, settle: float, poll: float | None) -> None:
        """Keep the index current as the gallery changes (indexing/watch.py), on a thread of its own, through the
        same background update as the page's button."""
        from ..indexing.watch import Watcher

        def update() -> None:
            while not self.watcher.stopped.is_set():
                try:
                    self.update.start()
                    break
                except Busy:  # an update from the page, or another process: the change is seen after it
                    self.watcher.stopped.wait(2)
            self.update.wait()

        self.watcher = Watcher(self.index.gallery, update, settle, poll, on_error=lambda exc: None)
        threading.Thread(target=self.watcher.run, name="spotit-watch", daemon=True).start()

    def stop(self) -> None:
        """Stop watching and any update (which commits the photos it finished)."""
        if self.watcher is not None:
            self.watcher.stop()
        self.update.stop()

    def warm_up(self) -> None:
        """Load the model and the searchable state now, not on the first search."""
        if len(self.index):
            self.index.features.load(self.index.kinds)

    # ---- searching -----------------------------------------------------------------------------
    def search(self, uploads: list[tuple[bytes, str]], boxes: list[list], method: str | None, top: int,
               **options) -> dict:
        """The `spotit search --json` answer for uploaded photos of one object ((bytes, file name) each, with
        each one's boxes); `options` are Index.search's matches, under, since and until. ImageError if one
        is no image, SpotitError for boxes, options or a method that cannot apply."""
        images = [decode_image(data, filename or "upload", self.max_pixels) for data, filename in uploads]
        boxes = [[check_box(box, image.shape[1], image.shape[0]) for box in entry] for image, entry in zip(images, boxes)]
        method = method or self.index.default_method
        several = len(images) > 1
        with self._searches:
            results = self.index.search(images if several else images[0], boxes if several else boxes[0],
                                        method=method, top=top, **options)
        hits = []
        for hit in results:
            entry = hit.to_dict()
            entry.update(width=hit.width, height=hit.height)
            hits.append(entry)
        names = [filename for _, filename in uploads]
        return {"query": names if several else names[0], "boxes": boxes if several else boxes[0], "method": method,
                "width": images[0].shape[1], "height": images[0].shape[0], "results": hits}

    def preview(self, data: bytes, filename: str) -> tuple[bytes, int, int]:
        """(JPEG of an uploaded photo as spotit reads it, at most PREVIEW_SIDE pixels, its width, its height)."""
        image = decode_image(data, filename or "upload", self.max_pixels)
        return jpeg(image, PREVIEW_SIDE), image.shape[1], image.shape[0]

    # ---- gallery photos ------------------------------------------------------------------------
    def _names_by_id(self) -> dict[str, str]:
        snap = self.index.snapshot()
        with self._ids_lock:
            if self._ids is None or self._ids[0] is not snap:
                self._ids = (snap, dict(zip(snap.ids, snap.names)))
            return self._ids[1]

    def photo_path(self, photo_id: str) -> Path:
        """The file of an indexed photo, which must lie inside the gallery once every symlink is resolved."""
        name = self._names_by_id().get(photo_id)
        if name is None:
            raise NotFound(f"no photo with id {photo_id!r} in the index")
        gallery = os.path.realpath(self.index.gallery)
        path = os.path.realpath(os.path.join(gallery, name))
        if os.path.commonpath([gallery, path]) != gallery:
            raise NotFound(f"photo {photo_id!r} lies outside the gallery folder; it is not served")
        problem = file_problem(path)
        if problem:
            raise NotFound(f"photo {photo_id!r} cannot be read now: {problem}")
        return Path(path)

    def photo(self, photo_id: str, max_side: int | None = None) -> tuple[bytes, str]:
        """(JPEG bytes, an ETag) of an indexed photo, upright, at most `max_side` pixels on its longer side."""
        path = self.photo_path(photo_id)
        stat = path.stat()
        stamp = (stat.st_size, stat.st_mtime_ns)
        try:
            if max_side is None:  # whole photos are too big to keep; re-encoded to be upright for any client
                data = jpeg(load_image(path, self.max_pixels), quality=92)
            else:
                data = _thumbnail(str(path), max_side, stamp, self.max_pixels)
        except SpotitError as exc:
            raise NotFound(f"photo {photo_id!r} cannot be read now: {str(exc).removeprefix(f'{path}: ')}") from None
        return data, f'"{stat.st_size:x}-{stat.st_mtime_ns:x}-{max_side or 0}"'

    # ---- status --------------------------------------------------------------------------------
    def status(self) -> dict:
        index = self.index
        photos = len(index)
        manifest = index.manifest
        update = dict(self.update.state)
        if not update["running"]:
            update["by"] = update_running(index.store.root)  # another process's `spotit index`
        return {"spotit": __version__, "index": str(index.store.root), "gallery": str(index.gallery),
                "photos": photos, "methods": index.methods, "default_method": index.default_method,
                "backbone": manifest.get("backbone"), "vectors": manifest.get("vectors", "auto"),
                "last_update": manifest.get("updated"), "update": update,
                "watching": None if self.watcher is None else ("polling" if self.watcher.polling else "file events")}
