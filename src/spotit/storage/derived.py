"""What an index derives from its features for searching: the learned parts (the regions' PCA-whitening, the
trained vector index), per shard its regions whitened and encoded with them, and the files that searches
map instead of assembling (the vector index's base, the cnn method's descriptors).

Learning reads a sample of the gallery, so it is done again only when the gallery has doubled or halved
since (or the vector index kind changes); in between, each new shard is whitened and encoded on its own,
so an update costs time in proportion to the photos it adds. New learned parts are written under a new
version, every shard is derived again with them, and one commit switches to them."""

from __future__ import annotations

import os
import secrets

import numpy as np
from tqdm import tqdm

from .. import vectors
from ..features.global_features import region_values
from ..features.whitening import MAX_SAMPLES, Whitening
from .store import Store

GROWTH = 2.0  # learn again when the gallery has grown or shrunk by this factor since the last learning
BASE_DELTA = 0.25  # write the vector index's base again when a quarter of the photos are outside it


class Learned:
    """The learned parts in use: whitening (None: too few photos to learn one) and the trained vector index,
    or the Milvus collection that holds the regions."""

    def __init__(self, version: int, whitening: Whitening | None, trained, per_image: int, milvus=None):
        self.version, self.whitening, self.trained, self.per_image = version, whitening, trained, per_image
        self.milvus = milvus

    @classmethod
    def read(cls, store: Store) -> "Learned":
        arrays, index_bytes = store.derived_files.read_learned()
        whitening = Whitening(arrays["mean"], arrays["projection"]) if "mean" in arrays else None
        trained = None
        if index_bytes is not None:
            import faiss

            trained = faiss.deserialize_index(np.frombuffer(index_bytes, np.uint8))
        return cls(store.learned["version"], whitening, trained, int(arrays["per_image"]), milvus_regions(store.learned))

    def whiten_flat(self, vectors: np.ndarray) -> np.ndarray:
        vectors = vectors.astype(np.float32)
        return self.whitening(vectors) if self.whitening is not None else vectors

    def whiten(self, regions: np.ndarray) -> np.ndarray:
        """(rows, per_image, C) raw regions -> (rows, per_image, D) whitened, as float32."""
        flat = region_values(regions.reshape(-1, regions.shape[-1]))
        return self.whiten_flat(flat).reshape(len(regions), regions.shape[1], -1)

    def derive(self, store: Store, shard: str) -> None:
        """Write a shard's whitened regions (and their codes) for these learned parts."""
        whitened = self.whiten(store.shards.read_rows(shard, "regions"))
        codes = None if self.trained is None else vectors.encode(self.trained, whitened.reshape(-1, whitened.shape[-1]))
        if self.milvus is not None:  # before the derived files: their presence says the shard is complete
            stored = vectors.QuantisedRows(*vectors.quantise(whitened))[:]  # what searches re-score with
            ids = vectors.region_ids(vectors.photo_vid(vectors.shard_number(shard), np.arange(len(stored))), self.per_image)
            self.milvus.add(ids, stored.reshape(-1, stored.shape[-1]))
        store.derived_files.write(shard, self.version, whitened, codes)


def milvus_regions(learned: dict | None):
    """The Milvus collection of `learned` parts, or None when they keep their regions in faiss."""
    if not learned or learned.get("vectors") != "milvus":
        return None
    from ..cluster.milvus import MilvusRegions

    return MilvusRegions(learned["uri"], learned["collection"])


def due(store: Store, choice: str) -> bool:
    learned, photos = store.learned, len(store.images)
    if not photos:
        return False
    if learned is None or (choice != "auto" and (learned["vectors"], learned.get("uri")) != wanted(choice)):
        return True
    if choice == "auto" and learned["vectors"] == "milvus":  # back from Milvus to faiss
        return True
    if learned["vectors"] == "milvus" and store.manifest.get("uid_root") != os.path.realpath(store.root):
        return True  # a copy of an index: it must not write into the collection of the one it was copied from
    # "auto" changes kind only with a re-learning: a gallery near the threshold must not flip back and forth
    return photos >= GROWTH * learned["photos"] or photos * GROWTH <= learned["photos"]


def wanted(choice: str) -> tuple[str, str | None]:
    """(kind, Milvus URI or None) that a --vectors choice other than "auto" asks for."""
    kind = vectors.resolve(choice, 0)
    return kind, choice if kind == "milvus" else None


def sample_regions(store: Store, limit: int = MAX_SAMPLES, seed: int = 0) -> tuple[np.ndarray, int]:
    """Raw regions of randomly chosen photos, about `limit` in all, as (n, C); and the regions per photo."""
    rng = np.random.default_rng(seed)
    members = store.placements()
    first = store.shards.read_rows(next(iter(members)), "regions", [members[next(iter(members))][0][1]])
    per_image = first.shape[1]
    photos = [(shard, row) for shard, rows in members.items() for _, row in rows]
    chosen = rng.choice(len(photos), min(len(photos), max(1, limit // per_image)), replace=False)
    by_shard: dict[str, list[int]] = {}
    for i in chosen:
        by_shard.setdefault(photos[i][0], []).append(photos[i][1])
    blocks = [store.shards.read_rows(shard, "regions", sorted(set(rows))) for shard, rows in sorted(by_shard.items())]
    return region_values(np.concatenate(blocks).reshape(-1, first.shape[-1])), per_image


def learn(store: Store, conf: dict, choice: str) -> Learned:
    """Learn new parts from a sample of the gallery and write them (not yet committed)."""
    sample, per_image = sample_regions(store)
    version = store.derived_files.next_version()
    whitening = Whitening.fit(sample.astype(np.float32), conf["whiten"], conf["whiten_power"])
    kind = vectors.resolve(choice, len(store.images))
    trained = None
    if kind == "ivfpq":
        import faiss

        whitened = whitening(sample) if whitening is not None else sample.astype(np.float32)
        trained = vectors.train(whitened[: vectors.confs["ivfpq"]["train"]], len(store.images) * per_image,
                                vectors.confs["ivfpq"])
        index_bytes = faiss.serialize_index(trained)
    else:
        index_bytes = None
    arrays = {"per_image": np.array(per_image)}
    if whitening is not None:
        arrays.update(mean=whitening.mean, projection=whitening.projection)
    store.derived_files.write_learned(version, arrays, index_bytes)
    learned = {"version": version, "photos": len(store.images), "vectors": kind}
    if kind == "milvus":
        from ..cluster.milvus import MilvusRegions, collection_name

        if store.manifest.get("uid_root") != os.path.realpath(store.root):  # a copy: collections of its own
            store.manifest.update(uid=secrets.token_hex(6), uid_root=os.path.realpath(store.root))
        uid = store.manifest["uid"]
        learned.update(uri=choice, collection=collection_name(uid, version))
        dims = whitening(sample[:1]).shape[1] if whitening is not None else sample.shape[1]
        MilvusRegions(choice, learned["collection"]).create(dims)
    store.manifest["learned"] = learned
    return Learned(version, whitening, trained, per_image, milvus_regions(learned))


def bring_up_to_date(store: Store, conf: dict, choice: str, progress: bool = False) -> bool:
    """Learn again if due, and derive every live shard that lacks its derived files; whether anything changed
    (the caller commits)."""
    if not store.images:
        return False
    learned = None
    if due(store, choice):
        learned, todo = learn(store, conf, choice), store.live_shards()
    else:
        todo = [shard for shard in store.live_shards() if not store.derived_files.has(shard)]
    if todo:
        learned = learned or Learned.read(store)
        for shard in tqdm(todo, desc="deriving", unit="shard", disable=not progress or len(todo) < 8):
            learned.derive(store, shard)
    if store.learned["vectors"] == "ivfpq" and base_due(store, store.learned.get("base")):
        write_base(store, learned or Learned.read(store))
        return True
    return bool(todo)


def base_due(store: Store, base: dict | None) -> bool:
    """Whether a base file should be written again: none yet, or the shards added since hold more than
    BASE_DELTA of the photos (searched from their own features meanwhile)."""
    if base is None:
        return True
    included = set(base["shards"])
    photos = store.placements()
    outside = sum(len(members) for shard, members in photos.items() if shard not in included)
    return outside > BASE_DELTA * sum(len(members) for members in photos.values())


def write_base(store: Store, learned: "Learned") -> None:
    """Assemble every live shard's codes into one faiss index file, which searches map instead of assembling
    (not yet committed)."""
    import faiss

    index = faiss.clone_index(learned.trained)
    shards = store.live_shards()
    for shard in shards:
        vectors.add_shard(index, shard, store.derived_files.read_codes(shard), learned.per_image)
    name = f"vectors-{store.derived_files.next_version()}.faiss"
    store.derived_files.write_vector_base(name, faiss.serialize_index(index))
    store.manifest["learned"] = {**store.learned, "base": {"file": name, "shards": shards}}


def bring_global_base_up_to_date(store: Store, choice: str) -> bool:
    """Where the cnn method's descriptors are searched through faiss (`vectors.global_kind`), keep them in a base
    file that searches map instead of assembling; whether the manifest changed (the caller commits)."""
    if vectors.global_kind(choice, len(store.images)) == "exact" or not store.images:
        return store.manifest.pop("global_base", None) is not None
    if not base_due(store, store.manifest.get("global_base")):
        return False
    shards = store.live_shards()
    shapes = [store.shards.dense_shape(shard, "global") for shard in shards]
    index = vectors.fp16_flat(shapes[0][1], sum(rows for rows, _ in shapes),
                              (store.shards.read_rows(shard, "global") for shard in shards))
    name = f"globals-{store.derived_files.next_version()}.faiss"
    store.derived_files.write_global_base(name, index)
    store.manifest["global_base"] = {"file": name, "shards": shards, "rows": [rows for rows, _ in shapes]}
    return True


def remove_unused_vectors(store: Store, before: dict | None, shards_before: set[str]) -> None:
    """After a commit: drop the Milvus collections of this index that no committed state uses (learned
    versions replaced, a Milvus left for faiss), and the regions of shards that compaction replaced."""
    now, before = store.learned or {}, before or {}
    from ..cluster.milvus import drop_unused

    if (before.get("uri"), before.get("collection")) != (now.get("uri"), now.get("collection")):
        for learned in (before, now):  # only when the learned parts changed: else there is nothing to drop
            if learned.get("vectors") == "milvus":
                keep = now.get("collection") if learned["uri"] == now.get("uri") else None
                drop_unused(learned["uri"], store.manifest.get("uid", ""), keep)
    current = milvus_regions(now)
    if current is not None and before.get("collection") == now.get("collection"):
        for shard in shards_before - set(store.live_shards()):
            low = vectors.photo_vid(vectors.shard_number(shard), 0) * vectors.ID_STRIDE
            current.delete_range(low, low + (vectors.ID_STRIDE << vectors.ROW_BITS))
