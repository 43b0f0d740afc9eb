"""A watched gallery: file events (watchdog: inotify, FSEvents, ReadDirectoryChangesW; polling on network
file systems, where those see no other machine's changes) start an update once a burst of them settles.

The update itself is the ordinary one (it scans the gallery and takes the write lock), so a watch keeps the
single-writer and reader guarantees, and a missed or merged event costs nothing but a later update."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from ..errors import SpotitError
from ..images import IMAGE_EXTENSIONS

SETTLE_S = 2.0  # quiet time after the last event before updating: a copy of 500 photos is one update
LONGEST_S = 60.0  # an endless stream of events still gets an update this often
NETWORK_FS = {"nfs", "nfs4", "cifs", "smb3", "smbfs", "fuse.sshfs", "9p", "afs", "ceph", "glusterfs", "lustre",
              "fuse.rclone", "davfs"}


def file_system_type(path: str | os.PathLike) -> str | None:
    """The type of the file system holding `path` (Linux: from /proc/mounts), or None when unknown."""
    try:
        mounts = [line.split()[1:3] for line in Path("/proc/mounts").read_text().splitlines()]
    except OSError:
        return None
    real = os.path.realpath(path)
    best = max((point for point, _ in mounts if real == point or real.startswith(point.rstrip("/") + "/")),
               key=len, default=None)
    return next((kind for point, kind in mounts if point == best), None)


def relevant(path: str, is_directory: bool) -> bool:
    """Whether an event at `path` may change the index: a photo, or a folder (a moved folder moves photos)."""
    name = os.path.basename(path)
    if name.startswith("."):
        return False
    return is_directory or name.lower().endswith(IMAGE_EXTENSIONS)


class Watcher:
    """Calls `update()` in the calling thread of `run` each time file events in `gallery` settle."""

    def __init__(self, gallery: str | os.PathLike, update, settle: float = SETTLE_S, poll: float | None = None,
                 on_error=None):
        self.gallery, self.update, self.settle, self.on_error = str(gallery), update, settle, on_error
        self.polling = poll is not None or file_system_type(gallery) in NETWORK_FS
        self.poll = poll or 10.0
        self._changed = threading.Condition()
        self._first = self._last = None
        self.stopped = threading.Event()

    def _event(self, event) -> None:
        paths = [getattr(event, "src_path", ""), getattr(event, "dest_path", "")]
        if event.event_type in ("opened", "closed_no_write") or not any(
                relevant(os.fsdecode(p), event.is_directory) for p in paths if p):
            return
        with self._changed:
            now = time.monotonic()
            self._first = self._first or now
            self._last = now
            self._changed.notify()

    def _observer(self):
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        handler = FileSystemEventHandler()
        handler.on_any_event = self._event
        observer = PollingObserver(timeout=self.poll) if self.polling else Observer()
        try:
            observer.schedule(handler, self.gallery, recursive=True)
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit: polling sees the same changes, later
            if self.polling:
                raise SpotitError(f"cannot watch {self.gallery}: {exc.strerror or exc}") from None
            self.polling = True
            return self._observer()
        return observer

    def run(self) -> None:
        """Watch until `stop()` (or KeyboardInterrupt), updating after each settled burst of changes, and
        once at the start: what changed before the watch began is seen too."""
        observer = self._observer()
        with self._changed:
            self._first = self._last = time.monotonic() - self.settle
        try:
            while not self.stopped.is_set():
                with self._changed:
                    while self._last is None and not self.stopped.is_set():
                        self._changed.wait(0.5)
                    if self.stopped.is_set():
                        return
                    now = time.monotonic()
                    settled = now - self._last >= self.settle or now - self._first >= LONGEST_S
                    if not settled:
                        self._changed.wait(min(self.settle - (now - self._last), 0.5))
                        continue
                    self._first = self._last = None
                try:
                    self.update()
                except SpotitError as exc:  # e.g. another writer, a disk that filled up: the next change tries again
                    if self.on_error is None:
                        raise
                    self.on_error(exc)
        finally:
            observer.stop()
            observer.join(timeout=10)

    def stop(self) -> None:
        self.stopped.set()
        with self._changed:
            self._changed.notify_all()
