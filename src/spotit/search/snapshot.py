"""One committed state of an index as searches hold it (a snapshot): its photos, and each of the arrays
and vector indexes that searches read, loaded on first use and kept."""

from __future__ import annotations

import threading

import numpy as np

from .. import vectors
from ..errors import BackendError
from ..features.global_features import region_values
from ..features.local_features import expand, readable
from ..features.whitening import Whitening
from ..images import assign_ids
from ..storage.derived import Learned
from ..storage.store import SnapshotGone, Store


def whiten_regions(regions: np.ndarray, conf: dict, whitening: Whitening | None = None):
    """(whitening, whitened (images * regions, D) matrix) of (images, regions, C) descriptors.

    With `whitening` None it is learned from these descriptors (None again when they are too few)."""
    flat = regions.reshape(-1, regions.shape[-1]).astype(np.float32)
    if whitening is None and len(flat):
        whitening = Whitening.fit(flat, conf["whiten"], conf["whiten_power"])
    return whitening, (whitening(flat) if whitening else flat)


class Snapshot:
    """One committed state of an index and what searches derive from it, each loaded on first use."""

    def __init__(self, store: Store):
        self.store = store
        self.manifest = store.manifest
        self._lock = threading.Lock()
        self._locks: dict[str, threading.RLock] = {}
        self._cache: dict = {}
        if store.learned and store.learned.get("vectors") != "milvus":
            # the learned parts (and faiss's import) load on a thread while the catalogue is read
            threading.Thread(target=self._warm_learned, name="spotit-learned", daemon=True).start()
        self.names = store.names()

    def _warm_learned(self) -> None:
        try:
            self.learned()
        except Exception:  # noqa: BLE001 - nothing cached: a search reads them again and reports the error
            pass

    def learned(self) -> Learned:
        """The learned parts of this state (whitening, trained vector index)."""
        return self.cached("learned", lambda: Learned.read(self.store))

    def prepare(self) -> None:
        """Start deriving the photos' ids on a thread: at a million photos they take a second and a half of
        pure Python, which a first search's CNN and faiss work (outside the GIL) hides."""
        threading.Thread(target=lambda: self.ids, name="spotit-ids", daemon=True).start()

    def cached(self, key: str, make):
        """What `make` gives, made once however many searches ask at once. One lock per thing: a search that
        needs the regions must not wait while another thread derives the ids."""
        with self._lock:
            lock = self._locks.setdefault(key, threading.RLock())
        with lock:
            if key not in self._cache:
                self._cache[key] = make()
            return self._cache[key]

    @property
    def ids(self) -> list[str]:
        return self.cached("ids", lambda: assign_ids(self.names))

    def global_vectors(self) -> vectors.GlobalVectors:
        """The cnn method's descriptors, searchable (vectors.global_kind says how, from the index's --vectors):
        in flat-fp16, the base file mapped and the shards added since it in memory."""
        def make():
            kind = vectors.global_kind(self.manifest.get("vectors", "auto"), len(self.names))
            placements = sorted(self.store.placements().items())
            if not placements:
                return vectors.GlobalVectors("exact", 0, 1)
            dims = self.store.shards.dense_shape(placements[0][0], "global")[1]
            out = vectors.GlobalVectors(kind, len(self.names), dims)
            if kind == "exact":
                for shard, members in placements:
                    positions, rows = zip(*members)
                    out.put(list(positions), self.store.shards.read_rows(shard, "global")[list(rows)])
                return out
            base, layout = self.store.derived_files.read_global_base()
            if base is not None:
                out.add(base, file_positions(layout, dict(placements)))
            included = {shard for shard, _ in layout}
            rest = [(shard, members) for shard, members in placements if shard not in included]
            if rest:
                positions = np.array([position for _, members in rest for position, _ in members], np.int64)
                blocks = (self.store.shards.read_rows(shard, "global")[[row for _, row in members]] for shard, members in rest)
                out.add(vectors.fp16_flat(dims, len(positions), blocks), positions)
            return out
        return self.cached("global-vectors", make)

    def local(self, kind: str) -> dict:
        return self.cached(f"local-{kind}", lambda: {n: expand(f) for n, f in self.store.shards.load_local(kind).items()})

    def reader(self, kind: str):
        """Reads one photo's local features of `kind` (by name, and position where known), ready to match."""
        def make():
            read = self.store.shards.local_reader(kind)
            return lambda name, position=None: readable(read(name, position))
        return self.cached(f"reader-{kind}", make)

    @property
    def sizes(self) -> np.ndarray:
        """(photos, 2): (width, height) of each gallery photo, upright: verification's geometry needs them."""
        def make():
            columns = self.store.columns()
            return np.stack([columns.width, columns.height], axis=1)
        return self.cached("sizes", make)

    @property
    def taken(self) -> np.ndarray:
        """When each photo was taken (seconds; catalogue.NO_DATE where it says not)."""
        return self.cached("taken", lambda: self.store.columns().taken)

    def regions(self):
        """(region search, whitening): the regions of every photo in the whitened space, searchable by
        similarity (vectors.py), and the whitening a query must go through to be compared with them."""
        return self.cached("regions", self._regions)

    def exact_regions(self, per_image: int) -> vectors.ExactRegions:
        """Every photo's stored whitened regions, in memory: exact search."""
        matrix = None
        for shard, members in self.store.placements().items():
            whitened = self.store.derived_files.read_whitened(shard)
            if matrix is None:
                matrix = np.empty((len(self.names), *whitened.shape[1:]), np.float32)
            positions, rows = zip(*members)
            matrix[list(positions)] = whitened[list(rows)]
        return vectors.ExactRegions(matrix, per_image)

    def _regions(self):
        store, learned = self.store, self.store.learned
        shards = store.live_shards()
        if learned is not None and not all(store.derived_files.has(shard) for shard in shards):
            if store.changed():
                raise SnapshotGone("derived files of this state were replaced by a newer commit")
            learned = None  # an update was interrupted before it derived them: the next one will
        if learned is None:
            # the first update is still running, or it was interrupted: whiten in memory (a reader never writes)
            whitening = self.learned().whitening if store.learned else None
            raw = region_values(store.shards.load_dense("regions")[1])
            whitening, matrix = whiten_regions(raw, self.manifest["feature_settings"]["regions"], whitening)
            return vectors.ExactRegions(matrix.reshape(len(raw), raw.shape[1], -1), raw.shape[1]), whitening
        parts = self.learned()
        if learned["vectors"] == "exact":
            return self.exact_regions(parts.per_image), parts.whitening
        if learned["vectors"] == "milvus":
            from ..cluster.milvus import confs as milvus_confs

            indexes, conf = [MilvusSearch(parts.milvus, store)], milvus_confs["milvus"]
        else:
            indexes, conf = self.faiss_indexes(parts), vectors.confs["ivfpq"]
        columns = store.columns()
        numbers = np.array([vectors.shard_number(shard) for shard in columns.shards], np.int64)
        vids = (numbers[columns.shard] << vectors.ROW_BITS) | columns.row
        order = np.argsort(vids)
        sorted_vids = vids[order]

        def positions(wanted: np.ndarray) -> np.ndarray:
            at = np.minimum(np.searchsorted(sorted_vids, wanted), len(sorted_vids) - 1)
            return np.where(sorted_vids[at] == wanted, order[at], -1)

        maps: dict[int, vectors.QuantisedRows] = {}

        def read(positions: np.ndarray) -> np.ndarray:
            """(n, per_image, D) stored regions of the photos at `positions`, read shard by shard."""
            out = None
            shards, rows = columns.shard[positions], columns.row[positions]
            for shard in np.unique(shards).tolist():
                if shard not in maps:
                    maps[shard] = store.derived_files.read_whitened(columns.shards[shard])
                chosen = np.flatnonzero(shards == shard)
                try:
                    block = maps[shard][rows[chosen]]
                except FileNotFoundError as exc:  # removed by a later commit: the search retries on it
                    raise store.unreadable(store.derived_files.path(columns.shards[shard], "w"), exc) from None
                if out is None:
                    out = np.empty((len(positions), *block.shape[1:]), np.float32)
                out[chosen] = block
            return out

        search = vectors.ApproximateRegions(indexes, parts.per_image, len(self.names), positions, read, conf)
        return search, parts.whitening

    def faiss_indexes(self, parts: Learned) -> list:
        """The mapped base file of the IVF-PQ index, and the shards added since assembled from their codes."""
        base, included = self.store.derived_files.read_vector_base()
        delta = parts.trained
        for shard in self.store.live_shards():
            if shard not in included:
                vectors.add_shard(delta, shard, self.store.derived_files.read_codes(shard), parts.per_image)
        return [index for index in (base, delta) if index is not None and index.ntotal]


class MilvusSearch:
    """A snapshot's Milvus collection, searched like a faiss index: a collection dropped by a newer commit
    makes the search start again on that commit."""

    def __init__(self, regions, store: Store):
        self.regions, self.store, self.nprobe = regions, store, None

    def search(self, vectors_: np.ndarray, k: int):
        from ..cluster.milvus import MilvusGone

        try:
            return self.regions.search(vectors_, k)
        except MilvusGone as exc:
            if self.store.changed():
                raise SnapshotGone(f"Milvus collection {self.regions.name} was replaced by a newer commit") from None
            from ..cluster import public

            raise BackendError(f"searching Milvus at {public(self.regions.uri)} failed: {exc}") from None


def file_positions(layout: list[tuple[str, int]], placements: dict) -> np.ndarray:
    """For each row of a file holding `layout`'s shards' rows one after another: the position of its photo
    in the snapshot, or -1 where that row's photo is gone."""
    out = np.full(sum(rows for _, rows in layout), -1, np.int64)
    start = 0
    for shard, rows in layout:
        members = placements.get(shard)
        if members:
            positions, at = np.array(members, np.int64).T
            out[start + at] = positions
        start += rows
    return out
