"""The vector shortlist: how similar each gallery photo's best region is to the query, through faiss.

Every photo holds `per_image` whitened region descriptors. Up to `AUTO_EXACT_PHOTOS` photos, they are all
held in memory and scored exactly (one matrix product). Above, an IVF index with product-quantised codes
(faiss) finds the photos holding the nearest regions, and those candidates are re-scored exactly from the
stored float16 descriptors; photos that are no candidate score -1 (below any cosine similarity).

The cnn method's one descriptor a photo (`GlobalVectors`) is held the same way up to that size; above, in a
faiss flat index of float16 codes: exact up to float16 rounding, in half the memory, the k best found with
SIMD without a float32 copy of the gallery.

A region's faiss id is `vid * ID_STRIDE + region`, where a photo's `vid` (`photo_vid`) is fixed by the
shard and row its features were written to: ids stay valid while other photos come and go.
"""

from __future__ import annotations

import threading

import numpy as np

from .errors import SpotitError

confs = {
    # exact: every region in memory as float32, scored by one product (what spotit 0.1 did)
    "exact": {"kind": "exact"},
    # IVF over `lists` coarse cells (None: 4 * sqrt(regions), within [64, 1024]), `m` 8-bit PQ codes a
    # region; `probe` cells searched per query view; `neighbours` regions fetched per view; the best
    # `rescore` photos re-scored exactly
    "ivfpq": {"kind": "ivfpq", "lists": None, "m": 64, "probe": 48, "neighbours": 2048, "rescore": 1500,
              "train": 100_000},
}
CHOICES = ("auto", *confs)
AUTO_EXACT_PHOTOS = 50_000  # exact search keeps 4 B x (regions + 1) x dims per photo in memory (+1: Neighbourhood)
ID_STRIDE = 16  # regions per photo at most
ROW_BITS = 24  # rows per shard at most: 16.7M


def shard_number(shard: str) -> int:
    """The number of a shard file ("000012.h5" -> 12), which fixes its photos' vids."""
    return int(shard.removesuffix(".h5"))


def photo_vid(shard_number: int, row):
    """A photo's id in the vector index, from where its features lie (`row` may be an array of rows)."""
    return (shard_number << ROW_BITS) | row


def parse_choice(choice: str) -> str:
    """--vectors as the index records it: a faiss kind ("faiss" is "auto") or a Milvus URI (cluster/milvus.py)."""
    from .cluster.milvus import is_uri, normalise_uri

    if choice == "faiss":
        return "auto"
    if choice in CHOICES:
        return choice
    if is_uri(choice):
        return normalise_uri(choice)
    raise SpotitError(f"unknown --vectors {choice!r}; choose faiss (or one of its kinds: {', '.join(CHOICES)}), "
                      "a Milvus Lite file (*.db) or a Milvus server (http://host:19530)")


def resolve(choice: str, photos: int) -> str:
    """The vector index kind for a gallery of `photos`: "milvus" for a Milvus URI, else `choice` itself
    unless it is "auto"."""
    from .cluster.milvus import is_uri

    if is_uri(choice):
        return "milvus"
    if choice not in CHOICES:
        raise SpotitError(f"unknown --vectors {choice!r}; choose {', '.join(CHOICES)}")
    if choice != "auto":
        return choice
    return "exact" if photos <= AUTO_EXACT_PHOTOS else "ivfpq"


def train(sample: np.ndarray, regions: int, conf: dict):
    """A trained, empty faiss IVF-PQ index for (n, D) float32 `sample` vectors, sized for `regions` in all."""
    import faiss

    dims = sample.shape[1]
    # more cells would search faster, but k-means and assigning 14M regions to them cost hours on 2 cores
    lists = conf["lists"] or int(np.clip(4 * np.sqrt(regions), 64, 1024))
    # faiss's k-means wants 39 training points per centroid: a small gallery gets fewer cells and code bits
    lists = max(1, min(lists, len(sample) // 39))
    bits = int(np.clip(np.floor(np.log2(max(len(sample), 1) / 39)), 1, 8))
    m = conf["m"] if dims % conf["m"] == 0 else next(d for d in (32, 16, 8, 4, 2, 1) if dims % d == 0)
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dims), dims, lists, m, bits, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = 0
    index.train(np.ascontiguousarray(sample, np.float32))
    return index


def encode(trained, vectors: np.ndarray) -> np.ndarray:
    """(n, D) vectors as the codes `trained` stores (coarse cell and PQ code, uint8 (n, code size)): a
    shard's share of the index, without the quantisers every shard would otherwise repeat."""
    if not len(vectors):
        return np.zeros((0, trained.sa_code_size()), np.uint8)
    return trained.sa_encode(np.ascontiguousarray(vectors, np.float32))


def add_codes(index, codes: np.ndarray, ids: np.ndarray) -> None:
    """Add `encode`d regions to `index` (a copy of the trained one) under their faiss `ids`."""
    if len(codes):
        index.add_sa_codes(np.ascontiguousarray(codes), np.ascontiguousarray(ids, np.int64))


def add_shard(index, shard: str, codes: np.ndarray, per_image: int) -> None:
    """Add one shard's codes (all its rows, `per_image` regions each) under the ids its rows fix."""
    rows = np.arange(len(codes) // per_image)
    add_codes(index, codes, region_ids(photo_vid(shard_number(shard), rows), per_image))


def quantise(whitened: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., D) float vectors -> int8 codes and a float32 scale per vector (its largest value / 127)."""
    scales = np.maximum(np.abs(whitened).max(axis=-1), 1e-12) / 127
    return np.round(whitened / scales[..., None]).astype(np.int8), scales.astype(np.float32)


class QuantisedRows:
    """A shard's whitened regions as int8 codes and scales (mapped from files): rows read as float32."""

    def __init__(self, codes: np.ndarray, scales: np.ndarray):
        self.codes, self.scales = codes, scales

    @property
    def shape(self) -> tuple:
        return self.codes.shape

    def __getitem__(self, rows) -> np.ndarray:
        return self.codes[rows].astype(np.float32) * self.scales[rows][..., None]


def region_ids(vids: np.ndarray, per_image: int) -> np.ndarray:
    if per_image > ID_STRIDE:
        raise SpotitError(f"{per_image} regions per photo: the vector index holds at most {ID_STRIDE}")
    return (np.asarray(vids, np.int64)[:, None] * ID_STRIDE + np.arange(per_image)).ravel()


def region_scores(columns: np.ndarray, per_image: int, vectors: np.ndarray) -> np.ndarray:
    """Best similarity of each of the (k, D) `vectors` to any region of each image: (k, images).

    `columns` is (D, images * per_image), one column per region: a row-major product over the long
    axis runs 1.6x faster than (images * per_image, D) times a few vectors."""
    vectors = np.atleast_2d(vectors)
    return (vectors @ columns).reshape(len(vectors), -1, per_image).max(axis=2)


class ExactRegions:
    """Every region of every photo in memory, scored exactly."""

    def __init__(self, matrix: np.ndarray, per_image: int):
        self.per_image = per_image
        self.columns = np.ascontiguousarray(np.asarray(matrix, np.float32).reshape(-1, matrix.shape[-1]).T)
        self.neighbourhood = Neighbourhood(self.columns[:, ::per_image])  # region 0: the whole photo

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        return region_scores(self.columns, self.per_image, vectors)

    def requery(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of a refined query (query expansion): every photo again."""
        return self.scores(vectors)

    def block(self, image: int) -> np.ndarray:
        """(D, per_image) regions of one photo."""
        return self.columns[:, image * self.per_image : (image + 1) * self.per_image]

    def density(self, images: np.ndarray, k: int) -> np.ndarray:
        return self.neighbourhood.density(images, k)


class Neighbourhood:
    """How alike photos are to their nearest other photos, from every photo's whole-photo descriptor:
    `wholes` is (D, photos). Each photo's density is computed once (a snapshot's gallery does not change),
    when a search first asks for it."""

    def __init__(self, wholes: np.ndarray):
        self.wholes = np.ascontiguousarray(wholes, np.float32)
        self._known: dict[int, np.ndarray] = {}  # k -> each photo's density, NaN until asked for

    def density(self, images: np.ndarray, k: int) -> np.ndarray:
        """The mean similarity of each of `images` to its `k` nearest other photos (all of them if fewer)."""
        k = min(k, self.wholes.shape[1] - 1)
        if k < 1:
            return np.zeros(len(images), np.float32)
        if k not in self._known:
            self._known[k] = np.full(self.wholes.shape[1], np.nan, np.float32)
        known = self._known[k]
        missing = np.unique(images[np.isnan(known[images])])
        if len(missing):
            sims = self.wholes[:, missing].T @ self.wholes
            sims[np.arange(len(missing)), missing] = -np.inf  # not its own neighbour
            known[missing] = -np.partition(-sims, k - 1, axis=1)[:, :k].mean(axis=1)
        return known[images]


class ApproximateRegions:
    """Regions found through faiss IVF-PQ indexes (a mapped base file, and the shards added since), the best
    photos re-scored from their stored regions.

    `positions(vids)` maps photo vids to their position in the snapshot (-1: not in it any more);
    `read(positions)` gives those photos' (n, per_image, D) stored regions."""

    def __init__(self, indexes: list, per_image: int, images: int, positions, read, conf: dict):
        self.indexes, self.per_image, self.images = indexes, per_image, images
        self.positions, self.read, self.conf = positions, read, conf
        self._last = threading.local()  # each search thread's last candidates and their regions (requery)
        self._reading, self._neighbourhood = threading.Lock(), None  # see density
        for index in indexes:
            index.nprobe = conf["probe"]

    def candidates(self, vectors: np.ndarray) -> np.ndarray:
        """Positions of the photos holding the regions nearest to any of `vectors`, best first."""
        found = [index.search(np.ascontiguousarray(vectors, np.float32), self.conf["neighbours"]) for index in self.indexes]
        sims, ids = np.concatenate([f[0].ravel() for f in found]), np.concatenate([f[1].ravel() for f in found])
        found = ids >= 0
        positions = self.positions(ids[found] // ID_STRIDE)
        sims = sims[found][positions >= 0]
        positions = positions[positions >= 0]
        order = np.argsort(-sims, kind="stable")
        _, first = np.unique(positions[order], return_index=True)
        best = positions[order][np.sort(first)]
        return best[: self.conf["rescore"]]

    def scores(self, vectors: np.ndarray) -> np.ndarray:
        rows = self.candidates(np.atleast_2d(vectors))
        regions = self.read(rows) if len(rows) else None  # (n, per_image, D)
        self._last.found = rows, regions
        return self._rescore(rows, regions, vectors)

    def requery(self, vectors: np.ndarray) -> np.ndarray:
        """Scores of a refined query (query expansion) over the photos that this thread's last search found:
        their regions are read already, and a second vector search would mostly find them again."""
        found = self._last.__dict__.pop("found", None)
        return self.scores(vectors) if found is None else self._rescore(*found, vectors)

    def _rescore(self, rows: np.ndarray, regions: np.ndarray | None, vectors: np.ndarray) -> np.ndarray:
        vectors = np.atleast_2d(vectors).astype(np.float32)
        out = np.full((len(vectors), self.images), -1.0, np.float32)
        if len(rows):
            sims = regions.reshape(-1, regions.shape[-1]) @ vectors.T  # (n * per_image, k)
            out[:, rows] = sims.reshape(len(rows), self.per_image, -1).max(axis=1).T
        return out

    def block(self, image: int) -> np.ndarray:
        return self.read(np.array([image]))[0].T

    def density(self, images: np.ndarray, k: int) -> np.ndarray | None:
        """As ExactRegions', from every photo's stored whole-photo descriptor, read once; None above
        AUTO_EXACT_PHOTOS, where those would not be held in memory."""
        if self.images > AUTO_EXACT_PHOTOS:
            return None
        with self._reading:
            if self._neighbourhood is None:
                wholes = [self.read(np.arange(at, min(at + 4096, self.images)))[:, 0] for at in range(0, self.images, 4096)]
                self._neighbourhood = Neighbourhood(np.concatenate(wholes).T)
        return self._neighbourhood.density(images, k)


def global_kind(choice: str, photos: int) -> str:
    """How the cnn method's descriptors are searched: "exact" (float32 in memory) where the regions would be,
    else "flat-fp16" (also for a Milvus choice: one vector a photo stays on this machine)."""
    return "exact" if resolve(choice, photos) == "exact" else "flat-fp16"


def fp16_flat(dims: int, total: int, blocks):
    """A faiss flat index of float16 codes holding the `total` rows of `blocks` ((n, dims) arrays, read one at a
    time) in order, scored by inner product."""
    import faiss

    index = faiss.IndexScalarQuantizer(dims, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_INNER_PRODUCT)
    # the codes are the float16 values: copied in, where add() would make a float32 copy of all first
    index.codes.resize(total * index.code_size)
    index.ntotal = total
    if total:
        codes = faiss.rev_swig_ptr(index.codes.data(), total * index.code_size).view(np.float16).reshape(total, dims)
        at = 0
        for block in blocks:
            codes[at:at + len(block)] = block
            at += len(block)
    return index


class GlobalVectors:
    """One L2-normalised descriptor per photo (`photos` in snapshot order), scored by cosine similarity:
    "exact" (a float32 matrix in memory, filled by `put`) or "flat-fp16": faiss flat indexes of float16 codes
    (`add`: one mapped from the index's base file, one in memory for the shards added since), which give
    the `k` best (others score -1)."""

    def __init__(self, kind: str, photos: int, dims: int):
        self.kind, self.photos, self.parts = kind, photos, []
        self.matrix = np.zeros((photos, dims), np.float32) if kind == "exact" else None

    def put(self, positions, rows: np.ndarray) -> None:
        """Set the descriptors of the photos at `positions` (exact)."""
        self.matrix[positions] = rows

    def add(self, index, positions: np.ndarray) -> None:
        """Search `index` too (flat-fp16); its row i holds the photo at `positions[i]` (-1: no photo now)."""
        self.parts.append((index, np.asarray(positions, np.int64)))

    def scores(self, vector: np.ndarray, k: int | None = None, mask: np.ndarray | None = None) -> np.ndarray:
        """(photos,) similarities to `vector`; with flat indexes only the `k` best (of those in `mask`)."""
        vector = np.asarray(vector, np.float32).ravel()
        if self.kind == "exact":
            return self.matrix @ vector
        import faiss

        out = np.full(self.photos, -1.0, np.float32)
        for index, positions in self.parts:
            live = positions >= 0
            if mask is not None:
                live[live] = mask[positions[live]]
            params, wanted = None, int(live.sum())
            if wanted < len(positions):  # a bitmap: no hash set of a million ids built per query
                bits = np.packbits(live, bitorder="little")
                params = faiss.SearchParameters(sel=faiss.IDSelectorBitmap(len(positions), faiss.swig_ptr(bits)))
            wanted = min(k or wanted, wanted)
            if wanted:
                sims, rows = index.search(vector[None], wanted, params=params)
                found = rows[0] >= 0
                out[positions[rows[0][found]]] = sims[0][found]
        scored = np.flatnonzero(out > -1)
        if k and len(scored) > k:  # each part gave its k best: keep the k best of all
            out[scored[np.argpartition(-out[scored], k)[k:]]] = -1.0
        return out
