"""One writer per index: an advisory OS lock (flock) that the kernel releases when its holder dies.

The lock file says who holds it, so a refused writer can name the running one."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from ..errors import SpotitError

LOCK_FILE = "write.lock"


def _holder_text(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another spotit process"
    since = time.strftime("%H:%M:%S", time.localtime(holder.get("since", 0)))
    command = holder.get("command") or "spotit"
    return f"`{command}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, since {since})"


def update_running(root: str | os.PathLike) -> str | None:
    """Who is updating the index at `root` right now, or None; asks the kernel without taking the lock."""
    path = Path(root) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder_text(path)
    finally:
        os.close(fd)  # closing drops a shared lock we may have taken
    return None


class WriterLock:
    """Exclusive right to change one index folder; `wait=False` refuses at once when another writer holds it."""

    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / LOCK_FILE
        self._fd: int | None = None
        self._depth = 0

    def acquire(self, wait: bool = False) -> "WriterLock":
        """Take the lock (re-entrant within this object); every acquire needs one release."""
        if self._fd is not None:
            self._depth += 1
            return self
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise SpotitError(f"cannot update the index {self.path.parent}: {exc.strerror} (it can still be searched)") from None
        try:
            try:
                for attempt in range(3):  # a search may hold it shared for an instant (update_running)
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if attempt == 2:
                            raise
                        time.sleep(0.05)
            except BlockingIOError:
                if not wait:
                    raise SpotitError(
                        f"the index {self.path.parent} is being updated by {_holder_text(self.path)}; "
                        f"wait for it to finish, or add --wait"
                    ) from None
                print(f"waiting for {_holder_text(self.path)} to finish updating {self.path.parent}...",
                      file=sys.stderr, flush=True)
                fcntl.flock(fd, fcntl.LOCK_EX)
            holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time(),
                      "command": " ".join(["spotit", *sys.argv[1:]]) if sys.argv and sys.argv[0].endswith("spotit") else None}
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except BaseException:
            os.close(fd)  # closing releases the lock too
            raise
        self._fd, self._depth = fd, 1
        return self

    def release(self) -> None:
        self._depth -= 1
        if self._fd is not None and self._depth <= 0:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> "WriterLock":
        """`with WriterLock(root).acquire(wait):` holds the lock for the block."""
        if not self.held:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
