"""Writing files the way a user expects: atomically (write, then rename) and with the user's umask."""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path

import numpy as np

from .errors import SpotitError


def current_umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux), so threads never race."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


TEMPORARY_PREFIX = ".spotit-"  # temporary files are named .spotit-NAME.XXXXXXXX.tmp


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = ".tmp", mode: int | None = None):
    """Yield a temporary path beside `path`; on success it replaces `path`, with `mode`, or 0666 less the
    umask. mkstemp creates files as 0600 whatever the umask: without the chmod every output would be private."""
    path = Path(path)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f"{TEMPORARY_PREFIX}{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(tmp)
        os.chmod(tmp, mode if mode is not None else 0o666 & ~current_umask())
        handle = os.open(tmp, os.O_RDONLY)  # on disk before a manifest (or anything) can point to it
        try:
            os.fsync(handle)
        finally:
            os.close(handle)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, mode: int | None = None) -> None:
    with atomic_path(path, mode=mode) as tmp, open(tmp, "wb") as out:
        out.write(data)


def write_output(path: str | os.PathLike, data: bytes) -> None:
    """A file the user asked for (a rank list, a grid), written as the shell's `>` would, but atomically
    where that is safe: through a symlink (the link stays), into a device, FIFO or hard-linked file (never
    replaced by a new file), keeping an existing file's mode."""
    target = Path(os.path.realpath(path))
    try:
        existing = os.stat(target)
    except FileNotFoundError:
        existing = None
    if existing is not None and stat.S_ISREG(existing.st_mode) and not os.access(target, os.W_OK):
        raise SpotitError(f"cannot write {path}: the file is read-only")
    if existing is not None and (not stat.S_ISREG(existing.st_mode) or existing.st_nlink > 1):
        with open(target, "wb") as out:
            out.write(data)
        return
    atomic_write_bytes(target, data, stat.S_IMODE(existing.st_mode) if existing is not None else None)


def _probe_writable(folder: Path, what: str, target: Path) -> None:
    """Create and drop a file in `folder`: the one check that also holds for root and read-only mounts."""
    if not folder.is_dir():
        raise SpotitError(f"cannot write {what} {target}: {folder} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise SpotitError(f"cannot write {what} {target}: {exc.strerror or exc} in {folder}") from None


def _first_existing(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_output_file(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output file that cannot be written (a folder, an unwritable place)."""
    path = Path(path)
    if path.is_dir():
        raise SpotitError(f"{what} {path} is a folder; give a file name")
    if path.exists() and not path.is_file():
        return path  # a device or FIFO: written into, as `>` would
    folder = Path(os.path.realpath(path)).parent
    if not folder.exists():  # as `>`: a mistyped folder is not made
        raise SpotitError(f"cannot write {what} {path}: there is no folder {folder}")
    _probe_writable(folder, what, path)
    return path


def check_output_dir(path: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, an output folder that is a file or cannot be created or written."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SpotitError(f"{what} {path} is a file, not a folder")
    _probe_writable(_first_existing(path), what, path)
    return path


class FileArray:
    """An array stored contiguously in a file at `offset`, read on demand with pread. Unlike a memory map,
    what a long-lived search process has read does not stay in its memory (the page cache keeps it)."""

    def __init__(self, path: str | os.PathLike, dtype, offset: int, shape: tuple):
        self.path, self.dtype, self.offset, self.shape = path, np.dtype(dtype), int(offset), tuple(shape)
        self.row_bytes = int(np.prod(self.shape[1:], dtype=np.int64)) * self.dtype.itemsize

    @classmethod
    def of_npy(cls, path: str | os.PathLike) -> "FileArray":
        mapped = np.load(path, mmap_mode="r")  # for its header only: no page of it is read
        return cls(path, mapped.dtype, mapped.offset, mapped.shape)

    def _read(self, start: int, stop: int) -> np.ndarray:
        with open(self.path, "rb") as file:
            data = os.pread(file.fileno(), (stop - start) * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, self.dtype).reshape(stop - start, *self.shape[1:])

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(self.shape[0])
            return self._read(start, max(start, stop))[::step]
        if isinstance(index, (int, np.integer)):
            return self._read(int(index), int(index) + 1)[0]
        rows = np.asarray(index, np.int64)
        if not len(rows):
            return np.zeros((0, *self.shape[1:]), self.dtype)
        low, high = int(rows.min()), int(rows.max()) + 1
        if high - low <= 4 * len(rows):  # dense enough: one read of the span
            return self._read(low, high)[rows - low]
        out = np.empty((len(rows), *self.shape[1:]), self.dtype)
        with open(self.path, "rb") as file:
            for i, row in enumerate(rows.tolist()):
                data = os.pread(file.fileno(), self.row_bytes, self.offset + row * self.row_bytes)
                out[i] = np.frombuffer(data, self.dtype).reshape(self.shape[1:])
        return out
