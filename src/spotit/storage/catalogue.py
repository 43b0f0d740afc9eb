"""The catalogue of an index: its settings and, for every photo, its file stamp and where its features are.

It lives in one SQLite database (`catalogue.db`, write-ahead log): a commit is one transaction that writes
only the photos that changed, so indexing N photos writes O(N) bytes, and readers keep reading the state
they started with while a writer commits (WAL readers see one committed state per transaction).

Photo names are stored as the file system's bytes (surrogateescape): a name that is not valid UTF-8 must
not stop the whole gallery. Their order, the catalogue's order, is the order of those bytes.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import sqlite3
import threading
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import SpotitError

FILE = "catalogue.db"
SIDE_FILES = (FILE + "-wal", FILE + "-shm", FILE + "-journal")  # SQLite's own, never touched by spotit
_SCHEMA = """
CREATE TABLE IF NOT EXISTS state (id INTEGER PRIMARY KEY CHECK (id = 0), value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS images (
    name BLOB PRIMARY KEY, shard TEXT NOT NULL, row INTEGER NOT NULL, size INTEGER, mtime_ns INTEGER,
    width INTEGER, height INTEGER, stale INTEGER NOT NULL DEFAULT 0, taken INTEGER
) WITHOUT ROWID;
"""
_FIELDS = ("shard", "row", "size", "mtime_ns", "width", "height", "taken")  # taken: EXIF date, seconds (search/scope.py)
_COLUMNS = ", ".join(("name", *_FIELDS, "stale"))
NO_DATE = np.iinfo(np.int64).min  # `taken` of a photo without a date, in Columns
_ALL = f"SELECT {_COLUMNS} FROM images ORDER BY name"  # every photo's row as it is
# what a search process reads before its first answer, with each shard as its number; the file stamps and
# dates, which only its results and date scopes need, follow in a second read on a thread
_NUMBERED = "SELECT name, CAST(shard AS INTEGER), row, IFNULL(width, 0), IFNULL(height, 0) FROM images ORDER BY name"
_STAMPS = f"SELECT IFNULL(size, 0), IFNULL(mtime_ns, 0), IFNULL(taken, {NO_DATE}) FROM images ORDER BY name"


def encode(name: str) -> bytes:
    return name.encode("utf-8", "surrogateescape")


def decode(raw: bytes) -> str:
    return bytes(raw).decode("utf-8", "surrogateescape")


def decode_all(raws) -> list[str]:
    """Names as stored back to str, a million at once in one decode: file names never hold a NUL byte."""
    try:
        names = b"\0".join(raws).decode("utf-8", "surrogateescape").split("\0")
    except TypeError:  # not bytes (a catalogue kept elsewhere): one at a time
        return list(map(decode, raws))
    return names if len(names) == len(raws) else list(map(decode, raws))


def in_order(names) -> list[str]:
    """`names` in the catalogue's order."""
    return sorted(names, key=encode)


class Images(dict):
    """A photo name -> entry dict that remembers which names were set or removed since the last commit."""

    def __init__(self, *args):
        super().__init__(*args)
        self.changed: set[str] = set()

    def __setitem__(self, name, entry):
        super().__setitem__(name, entry)
        self.changed.add(name)

    def __delitem__(self, name):
        super().__delitem__(name)
        self.changed.add(name)

    def pop(self, name, *default):
        self.changed.add(name)
        return super().pop(name, *default)

    def update(self, *args, **kwargs):
        for name, entry in dict(*args, **kwargs).items():
            self[name] = entry

    def setdefault(self, name, entry=None):
        if name not in self:
            self[name] = entry
        return self[name]

    def popitem(self):
        name, entry = super().popitem()
        self.changed.add(name)
        return name, entry

    def clear(self):
        self.changed.update(self)
        super().clear()


Stamps = tuple[np.ndarray, np.ndarray, np.ndarray]  # size, mtime_ns, taken of every photo


@dataclass
class Columns:
    """Every photo of one committed state, in catalogue order, as arrays (what a search process holds).
    The file stamps and dates come from `stamps_of` on first use (maybe read on a thread meanwhile)."""

    names: list[str]
    shards: list[str]  # shard file names; `shard` indexes into them
    shard: np.ndarray
    row: np.ndarray
    width: np.ndarray
    height: np.ndarray
    stamps_of: Callable[[], Stamps]
    _stamps: Stamps | None = field(default=None, repr=False)

    def stamps(self) -> Stamps:
        if self._stamps is None:
            self._stamps = self.stamps_of()
        return self._stamps

    @property
    def size(self) -> np.ndarray:
        return self.stamps()[0]

    @property
    def mtime_ns(self) -> np.ndarray:
        return self.stamps()[1]

    @property
    def taken(self) -> np.ndarray:  # NO_DATE where the photo says not
        return self.stamps()[2]

    def entry(self, i: int) -> dict:
        size, mtime_ns, taken = self.stamps()
        return {"shard": self.shards[self.shard[i]], "row": int(self.row[i]), "width": int(self.width[i]),
                "height": int(self.height[i]), "size": int(size[i]), "mtime_ns": int(mtime_ns[i]),
                "taken": None if taken[i] == NO_DATE else int(taken[i])}


def read_ahead(path: Path) -> None:
    """Ask the system to read the whole file into its cache now: a search process reads every row of the
    catalogue, and SQLite alone asks for it a page at a time (slow from a cold disk)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # SQLite reports what is wrong with the file
    try:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
    finally:
        os.close(fd)


def in_background(read: Callable):
    """Start `read()` on a thread; returns what waits for its result (or raises its error, in the caller)."""
    future: Future = Future()

    def run():
        try:
            future.set_result(read())
        except BaseException as exc:  # noqa: BLE001 - handed to whoever asks for the result
            future.set_exception(exc)

    threading.Thread(target=run, name="spotit-catalogue", daemon=True).start()
    return future.result


class Changed(Exception):
    """The catalogue holds a newer commit than the generation asked for."""


def row_of(name: str, entry: dict) -> tuple:
    """A photo's catalogue row: (name as bytes, *_FIELDS, stale)."""
    return (encode(name), *(entry.get(k) for k in _FIELDS), int(bool(entry.get("stale"))))


def images_of(rows) -> Images:
    """The entries of catalogue rows (in catalogue order)."""
    images = Images()
    for name, *values, stale in rows:
        entry = dict(zip(_FIELDS, values))
        if stale:
            entry["stale"] = True
        dict.__setitem__(images, decode(name), entry)
    return images


@contextlib.contextmanager
def gc_paused():
    """No garbage collection while a million rows become long-lived objects: its passes over them free
    nothing and cost a search process much of its opening time. Counted, since reads on several threads
    may overlap (collection is the process's, not a thread's)."""
    global _pauses, _was_enabled
    with _pause_lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _pause_lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


_pause_lock = threading.Lock()
_pauses, _was_enabled = 0, False


def _ints(values, dtype=np.int64, missing=0) -> np.ndarray:
    try:
        return np.fromiter(values, dtype, len(values))  # no missing value: numpy's own loop
    except TypeError:
        return np.fromiter((missing if v is None else v for v in values), dtype, len(values))


def stamps_of(size, mtime_ns, taken) -> Stamps:
    return _ints(size), _ints(mtime_ns), _ints(taken, missing=NO_DATE)


def columns_of(rows, shard_names: dict[int, str] | None = None, stamps: Callable[[], Stamps] | None = None) -> Columns:
    """Catalogue rows (in catalogue order) as arrays, column by column: every field (`_ALL`'s), or, with
    `shard_names`, the fast read's (`_NUMBERED`: each row names its shard by number, no million strings, and
    they map numbers to file names), whose stamps come from `stamps`."""
    if not rows:
        empty = np.zeros(0, np.int64)
        return Columns([], [], *(empty.astype(np.int32),) * 4, lambda: (empty, empty, empty))
    if shard_names is None:
        names, shard, row, size, mtime, width, height, taken, *_ = zip(*rows)
        shards: dict[str, int] = {}
        number = shards.setdefault
        shard = np.fromiter((number(s, len(shards)) for s in shard), np.int32, len(shard))
        files = list(shards)
        every = stamps_of(size, mtime, taken)
        stamps = lambda: every  # noqa: E731
    else:
        names, shard, row, width, height = zip(*rows)
        numbers, shard = np.unique(_ints(shard), return_inverse=True)
        files = [shard_names[n] for n in numbers.tolist()]
    return Columns(decode_all(names), files, shard.astype(np.int32), _ints(row, np.int32), _ints(width, np.int32),
                   _ints(height, np.int32), stamps)


class Catalogue:
    def __init__(self, root: str | os.PathLike):
        self.path = Path(root) / FILE

    def __str__(self) -> str:
        return str(self.path)

    def exists(self) -> bool:
        return self.path.is_file()

    def _connect(self) -> sqlite3.Connection:
        try:
            return sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise SpotitError(f"cannot open the catalogue {self.path}: {exc}") from None

    def _read(self) -> sqlite3.Connection:
        """A connection for reading. In a folder this process cannot write, SQLite cannot make the WAL's
        shared-memory file, and the file is read as it is (a read-only index has no writer)."""
        mode = "mode=ro" if os.access(self.path.parent, os.W_OK) else "immutable=1"
        return sqlite3.connect(f"file:{self.path}?{mode}", uri=True, timeout=60, isolation_level=None,
                               check_same_thread=False)

    def create(self, state: dict) -> None:
        """A new, empty catalogue holding `state`, replacing any photos it held (one transaction)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        connection = self._connect()
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(_SCHEMA)
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("DELETE FROM images")
            self._put_state(connection, state)
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            raise SpotitError(f"cannot write the catalogue {self.path}: {exc}") from None
        finally:
            connection.close()

    @staticmethod
    def _put_state(connection: sqlite3.Connection, state: dict) -> None:
        connection.execute("INSERT OR REPLACE INTO state VALUES (0, ?)", (json.dumps(state, sort_keys=True),))

    def commit(self, state: dict, images: Images) -> None:
        """Write `state` and the photos of `images` changed since the last commit, in one transaction."""
        rows, gone = [], []
        for name in images.changed:
            entry = images.get(name)
            if entry is None:
                gone.append((encode(name),))
            else:
                rows.append(row_of(name, entry))
        connection = self._connect()
        try:
            connection.execute("PRAGMA synchronous = FULL")
            connection.execute("BEGIN IMMEDIATE")
            if "taken" not in {column[1] for column in connection.execute("PRAGMA table_info(images)")}:
                connection.execute("ALTER TABLE images ADD COLUMN taken INTEGER")  # made before dates were kept
            connection.executemany("DELETE FROM images WHERE name = ?", gone)
            connection.executemany(f"INSERT OR REPLACE INTO images ({_COLUMNS}) VALUES ({', '.join('?' * 9)})", rows)
            self._put_state(connection, state)
            connection.execute("COMMIT")
        except sqlite3.Error as exc:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise SpotitError(f"cannot write the catalogue {self.path}: {exc}") from None
        finally:
            connection.close()
        images.changed.clear()

    def state(self) -> dict | None:
        """The committed settings and counters, or None when this is no catalogue (absent, or another
        program's file); a catalogue that cannot be read now is an error, never "no index"."""
        if not self.path.is_file():
            return None
        try:
            connection = self._read()
            try:
                row = connection.execute("SELECT value FROM state WHERE id = 0").fetchone()
            finally:
                connection.close()
            return json.loads(row[0]) if row else None
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise SpotitError(f"cannot read the catalogue {self.path}: {exc}") from None
        except (sqlite3.DatabaseError, ValueError, UnicodeDecodeError):
            return None  # not a SQLite database, or not spotit's

    def _snapshot_query(self, generation: int, *queries: str):
        """The rows of each of `queries` in the commit `generation` (raises Changed when a newer one was made)."""
        connection = self._read()
        try:
            connection.execute("BEGIN")  # one read transaction: state and rows of the same commit
            row = connection.execute("SELECT value FROM state WHERE id = 0").fetchone()
            if row is None or json.loads(row[0]).get("generation") != generation:
                raise Changed
            dated = "taken" in {column[1] for column in connection.execute("PRAGMA table_info(images)")}
            # a catalogue made before dates were kept, and not written since, has no `taken`
            results = [connection.execute(q if dated else q.replace("taken", "NULL")).fetchall() for q in queries]
            connection.execute("COMMIT")
            return results
        except sqlite3.Error as exc:
            raise SpotitError(f"cannot read the catalogue {self.path}: {exc}") from None
        finally:
            connection.close()

    def images(self, generation: int) -> Images:
        """Every photo's entry in the commit `generation` (what a writer works on)."""
        return images_of(self._snapshot_query(generation, _ALL)[0])

    def columns(self, generation: int) -> Columns:
        """Every photo of the commit `generation` as arrays (what a search process holds). SQLite numbers the
        shards and fills in missing values itself: Python then makes no object a row does not need."""
        read_ahead(self.path)
        with gc_paused():
            rows, shards = self._snapshot_query(generation, _NUMBERED,
                                                "SELECT DISTINCT CAST(shard AS INTEGER), shard FROM images")
            names = dict(shards)
            if len(names) < len(shards):  # two shard files of one number: not spotit's naming
                return columns_of(self._snapshot_query(generation, _ALL)[0])
            if not rows:
                return columns_of(rows)
            return columns_of(rows, names, in_background(lambda: self._stamps(generation)))

    def _stamps(self, generation: int) -> Stamps:
        with gc_paused():
            return stamps_of(*zip(*self._snapshot_query(generation, _STAMPS)[0]))

    def generation(self) -> int | None:
        state = self.state()
        return None if state is None else state.get("generation")
