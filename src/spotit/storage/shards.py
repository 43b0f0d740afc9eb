"""Feature shards: the HDF5 files that hold the features of a batch of photos each (layout: store.py).

A shard is written once and never changed; a state of the index (`Store`) says which of its rows are live.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import SpotitError
from ..features.local_features import LocalFeatures
from ..fileio import FileArray, atomic_path


class ShardFiles:
    """The shards of one state of an index folder: writing new ones, reading features from them."""

    def __init__(self, store):
        """`store`: the state (store.Store) whose files these are."""
        self.store = store

    @property
    def folder(self) -> Path:
        return self.store.shard_dir

    def write(self, names: list[str], features: dict[str, np.ndarray | list[LocalFeatures]]) -> str:
        """Write the features of `names` to a new shard; returns its file name. Of the manifest, only
        the shard counter moves on: the photos' entries are the caller's to change.

        `features` maps a feature kind to a dense array with one row per name, or to a list of
        LocalFeatures, stored ragged as `KIND/offsets`, `KIND/keypoints`, `KIND/descriptors` (and
        `KIND/rows` when some are shared).
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"{self.store.manifest['next_shard']:06d}.h5"
        self.store.manifest["next_shard"] += 1
        with atomic_path(self.folder / name) as tmp, h5py.File(tmp, "w") as out:
            # as the file system's bytes: a name that is not valid UTF-8 must not stop the whole gallery
            raw = [name.encode("utf-8", "surrogateescape") for name in names]
            out.create_dataset("names", data=np.array(raw, dtype=object), dtype=h5py.string_dtype(encoding="ascii"))
            for kind, data in features.items():
                if isinstance(data, np.ndarray):
                    out.create_dataset(kind, data=data)
                    continue
                group = out.create_group(kind)
                # one object listed for several names is stored once, and `rows` maps each name to it
                stored = list({id(f): f for f in data}.values())
                if len(stored) < len(data):
                    slot = {id(f): i for i, f in enumerate(stored)}
                    group.create_dataset("rows", data=np.array([slot[id(f)] for f in data], np.int64))
                counts = [len(f) for f in stored]
                group.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
                for key in ("keypoints", "descriptors"):  # stored as given (compact ones: local_features.compact)
                    group.create_dataset(key, data=np.concatenate([getattr(f, key) for f in stored]))
        return name

    def open(self, shard: str):
        path = self.folder / shard
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise self.store.unreadable(path, exc) from None

    def missing(self, kind: str) -> SpotitError:
        return SpotitError(f"index at {self.store.root} holds no {kind} features; run `spotit index` with a method that needs them")

    def load_dense(self, kind: str) -> tuple[list[str], np.ndarray]:
        """Names of all indexed images (catalogue order) and their dense features of `kind`, row for row."""
        names = self.store.names()
        out = None
        for shard, members in sorted(self.store.placements().items()):
            with self.open(shard) as data:
                if kind not in data:
                    raise self.missing(kind)
                matrix = data[kind][()]
            if out is None:
                out = np.zeros((len(names), *matrix.shape[1:]), matrix.dtype)
            positions, rows = zip(*members)
            out[list(positions)] = matrix[list(rows)]
        if out is None:
            return [], np.zeros((0, 1), np.float32)
        return names, out

    def load_local(self, kind: str) -> dict[str, LocalFeatures]:
        """Local features of `kind` of every indexed image."""
        features: dict[str, LocalFeatures] = {}
        names = self.store.names()
        for shard, members in sorted(self.store.placements().items()):
            with self.open(shard) as data:
                if kind not in data:
                    raise self.missing(kind)
                offsets, keypoints, descriptors = (data[kind][k][()] for k in ("offsets", "keypoints", "descriptors"))
                slots = data[kind]["rows"][()] if "rows" in data[kind] else None
            for position, row in members:
                row = row if slots is None else slots[row]
                a, b = offsets[row], offsets[row + 1]
                features[names[position]] = LocalFeatures(keypoints[a:b], descriptors[a:b])
        return features

    def local_reader(self, kind: str) -> "LocalReader":
        return LocalReader(self, kind)

    def row_counts(self) -> dict[str, int]:
        """Total rows per shard file, live or not (for compaction)."""
        totals = {}
        for shard in self.store.placements():
            with self.open(shard) as data:
                totals[shard] = len(data["names"])
        return totals

    def read_dense(self, kind: str, places: list[tuple[str, int]]) -> np.ndarray:
        """The dense `kind` features at each (shard, row) of `places`, in that order."""
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for i, (shard, row) in enumerate(places):
            by_shard.setdefault(shard, []).append((row, i))
        out = None
        for shard, items in by_shard.items():
            items.sort()
            data = self.read_rows(shard, kind, [row for row, _ in items])
            if out is None:
                out = np.empty((len(places), *data.shape[1:]), data.dtype)
            out[[i for _, i in items]] = data
        return out

    def dense_shape(self, shard: str, kind: str) -> tuple[int, ...]:
        with self.open(shard) as data:
            if kind not in data:
                raise self.missing(kind)
            return data[kind].shape

    def read_rows(self, shard: str, kind: str, rows=None) -> np.ndarray:
        """The dense `kind` features of a shard's `rows` (increasing, each once; all rows when None)."""
        with self.open(shard) as data:
            if kind not in data:
                raise self.missing(kind)
            return data[kind][()] if rows is None else data[kind][list(rows)]


class LocalReader:
    """Reads the local features of single images on demand (re-ranking needs only a shortlist).

    Shards store their arrays contiguous and uncompressed, so each photo's rows are read straight from the
    file (fileio.FileArray): microseconds where an h5py read costs a third of a millisecond."""

    def __init__(self, shards: ShardFiles, kind: str):
        self.shards, self.kind = shards, kind
        self._opened: dict[str, tuple] = {}

    def _open(self, shard: str) -> tuple:
        with self.shards.open(shard) as data:
            if self.kind not in data:
                raise self.shards.missing(self.kind)
            group = data[self.kind]
            arrays = [group["offsets"][()], group["rows"][()] if "rows" in group else None]
            for key in ("keypoints", "descriptors"):
                dataset = group[key]
                offset = dataset.id.get_offset()  # None when empty or not stored contiguously
                try:
                    arrays.append(FileArray(self.shards.folder / shard, dataset.dtype, offset, dataset.shape))
                except TypeError:
                    arrays.append(dataset[()])
        return tuple(arrays)

    def __call__(self, image: str, position: int | None = None) -> LocalFeatures:
        entry = self.shards.store.entry(image, position)
        if entry["shard"] not in self._opened:
            self._opened[entry["shard"]] = self._open(entry["shard"])
        offsets, slots, keypoints, descriptors = self._opened[entry["shard"]]
        row = entry["row"] if slots is None else slots[entry["row"]]
        a, b = offsets[row], offsets[row + 1]
        try:
            return LocalFeatures(np.asarray(keypoints[a:b]), np.asarray(descriptors[a:b]))
        except FileNotFoundError as exc:  # removed by a later commit: the search retries on it
            raise self.shards.store.unreadable(self.shards.folder / entry["shard"], exc) from None
