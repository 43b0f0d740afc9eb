"""`spotit bench scale DATASET --images N`: a benchmark set's real queries against its gallery plus simulated
distractors, up to N photos in the index.

Extracting a million real photos takes days here, so the distractors are simulated from the set's own
features, and say so in their names (`~distractors/NNNNNNN.jpg`, no file behind them):
- each grid cell's region descriptor of a distractor (hybrid) is that cell of a random real photo, plus
  Gaussian noise scaled by the real descriptors' spread in each dimension, kept non-negative (as GeM
  outputs are) and L2-normalised. The noise level is calibrated per set (`calibrate_noise`): a distractor's
  region is then as near its nearest real region as a real photo's region is to the nearest region of an
  unrelated real photo (one that no query of the set relates to it). Less noise would make near copies of
  the few hundred real photos, repeated thousands of times; calibrating against related photos too (views
  of the same object or scene) would make every distractor as near as a true match. The cnn method's one
  descriptor a photo is made the same way, as a grid of one cell;
- its local features (for verification) are the real descriptors of one of 64 random real photos, at one
  another's positions (shuffled): verification sees real descriptor statistics but no real object's
  geometry. They are stored once per shard and shared by reference, so that a million fit on the disk.
The set's gallery is indexed as `spotit eval` does (cached), its shards are linked into the scale index,
the distractors are added in shards of `CHUNK`, and the learned parts are learned again for N photos.
The queries then run in a fresh process, which measures its own memory and time to first answer. Last, an
update adds 1,000 more distractors and removes them again, timed (`time_add_and_remove`).

What this flatters, and so what to read elsewhere: disk per photo (distractors share 64 sets of local
features; a real photo's size is in the dev sets' table; at small N the set's linked shards, which hold
every method's features, weigh the other way), the page cache (the same 64 sets are read over
and over), and mAP, which is cut at the `top` photos ranked (1,000 by default) where `spotit eval` ranks
the whole gallery.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm import tqdm

from ..errors import SpotitError
from ..features import backbones
from ..features.extractors import DENSE_KINDS
from ..features.global_features import region_values, store_regions
from ..features.local_features import LocalFeatures
from ..images import assign_ids, load_image
from ..index import Index
from ..indexing.lifecycle import kinds_of
from ..search import rerank
from ..storage.derived import Learned, bring_global_base_up_to_date, bring_up_to_date
from ..storage.lock import WriterLock
from ..storage.store import Store, check_index_folder
from ..vectors import global_kind
from .datasets import load_dataset
from .evaluate import eval_index, run_queries

DISTRACTORS = "~distractors"
CHUNK = 4096
LOCAL_POOL = 64
METHODS = ("hybrid", "regional", "cnn")  # what a scale index is measured with (hybrid's index serves regional)
SETTINGS = ("gallery", "backbone", "weights", "confs", "feature_settings", "weights_sha256")


def is_distractor(photo_id: str) -> bool:
    return photo_id.startswith(DISTRACTORS + "/")


def recombine(real: np.ndarray, count: int, noise: float, rng: np.random.Generator) -> np.ndarray:
    """`count` synthetic (regions, C) descriptors from (photos, regions, C) `real` ones: each cell taken from a
    random real photo, plus Gaussian noise of `noise` times the real spread per dimension."""
    real = real.astype(np.float32)
    picks = rng.integers(0, len(real), (count, real.shape[1]))
    mixed = real[picks, np.arange(real.shape[1])[None, :]]
    mixed += noise * real.std(axis=0) * rng.standard_normal(mixed.shape, np.float32)
    mixed = np.maximum(mixed, 0)
    return mixed / np.maximum(np.linalg.norm(mixed, axis=-1, keepdims=True), 1e-12)


def related_groups(dataset, names: list[str]) -> np.ndarray:
    """A label per gallery photo (`names`), shared by the photos that the set's ground truth relates through
    a query: views of one object, or of one scene."""
    ids = assign_ids(names)
    label = {photo_id: i for i, photo_id in enumerate(ids)}
    edges = []
    for query in dataset.queries:
        members = [label[i] for positives, _ in query.protocols.values() for i in positives if i in label]
        query_id = Path(query.name).stem
        members += [label[query_id]] if query_id in label else []
        edges += [(members[0], other) for other in members[1:]]
    rows, cols = np.array(edges, dtype=np.int64).reshape(-1, 2).T
    graph = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(ids), len(ids)))
    return connected_components(graph, directed=False)[1]


def calibrate_noise(real: np.ndarray, whiten, rng: np.random.Generator, groups: np.ndarray | None = None,
                    probes: int = 500) -> float:
    """The noise at which a distractor's region is as near its nearest real region (median, whitened) as a real
    photo's region is to the nearest region of an unrelated real photo (another of `groups`, a label per
    photo; default: any other photo)."""
    photos, regions = real.shape[:2]
    flat = whiten(real.reshape(-1, real.shape[-1]))
    owner = np.repeat(np.arange(photos) if groups is None else groups, regions)
    reference = rng.choice(len(flat), min(len(flat), 20_000), replace=False)
    probe = rng.choice(len(flat), min(len(flat), probes), replace=False)
    sims = flat[probe] @ flat[reference].T
    sims[owner[probe][:, None] == owner[reference][None, :]] = -1
    target = np.median(sims.max(axis=1))
    low, high = 0.0, 8.0
    for _ in range(10):
        noise = (low + high) / 2
        made = whiten(recombine(real, max(1, probes // regions), noise, rng).reshape(-1, real.shape[-1]))
        if np.median((made @ flat[reference].T).max(axis=1)) > target:
            low = noise
        else:
            high = noise
    return (low + high) / 2


def shuffled(features: LocalFeatures, rng: np.random.Generator) -> LocalFeatures:
    """Real descriptors at one another's positions: no geometry of a real object survives."""
    keypoints = features.keypoints.copy()
    keypoints[:, :2] = keypoints[rng.permutation(len(keypoints)), :2]
    return LocalFeatures(keypoints, features.descriptors)


def dense_distractors(base: Store, kind: str, groups: np.ndarray, rng: np.random.Generator):
    """(noise level, make(n)): `n` distractors' `kind` features (regions or global) as stored."""
    _, real = base.shards.load_dense(kind)
    if kind == "regions":
        real = region_values(real)
        bits = base.manifest["feature_settings"]["regions"].get("stored_bits", 16)
        noise = calibrate_noise(real, Learned.read(base).whiten_flat, rng, groups)
        return noise, lambda n: store_regions(recombine(real, n, noise, rng), bits)
    real = real.astype(np.float32)[:, None]  # one cell; compared raw, as the cnn method compares them
    noise = calibrate_noise(real, lambda vectors: vectors.astype(np.float32), rng, groups)
    return noise, lambda n: recombine(real, n, noise, rng)[:, 0].astype(np.float16)


class Distractors:
    """Simulated photos made from `base`'s features of the `kinds` an index holds (`groups`: see
    calibrate_noise): `chunk(n)` gives the features of `n` more, and the photo sizes they borrow."""

    def __init__(self, base: Store, kinds: list[str], groups: np.ndarray | None = None, seed: int = 0):
        self.rng = rng = np.random.default_rng(seed)
        self.dense = {kind: dense_distractors(base, kind, groups, rng) for kind in kinds if kind in DENSE_KINDS}
        self.noise = max(noise for noise, _ in self.dense.values())
        names = base.names()
        donors = rng.choice(len(names), min(LOCAL_POOL, len(names)), replace=False)
        self.pool = {kind: [shuffled(base.shards.local_reader(kind)(names[i]), rng) for i in donors]
                     for kind in kinds if kind not in DENSE_KINDS}
        self.sizes = [(base.images[names[i]]["width"], base.images[names[i]]["height"]) for i in donors]

    def chunk(self, n: int) -> tuple[dict, list[tuple[int, int]]]:
        picks = self.rng.integers(0, len(self.sizes), n)
        features = {**{kind: make(n) for kind, (_, make) in self.dense.items()},
                    **{kind: [local[j] for j in picks] for kind, local in self.pool.items()}}
        return features, [self.sizes[j] for j in picks]


def add_distractors(store: Store, source: Distractors, count: int, first: int = 0, progress: bool = True) -> list[str]:
    """Add `count` photos from `source` to `store` (a writer's state), numbered from `first`; commits per
    chunk. Returns their names."""
    bar = tqdm(total=count, desc="distractors", unit="photo", disable=not progress, dynamic_ncols=True)
    added: list[str] = []
    while len(added) < count:
        n = min(CHUNK, count - len(added))
        features, sizes = source.chunk(n)
        chunk = [f"{DISTRACTORS}/{first + len(added) + i:07d}.jpg" for i in range(n)]
        shard = store.shards.write(chunk, features)
        for row, (name, (width, height)) in enumerate(zip(chunk, sizes)):
            store.images[name] = {"shard": shard, "row": row, "size": 0, "mtime_ns": 0, "width": width, "height": height}
        store.commit()
        added += chunk
        bar.update(n)
    bar.close()
    return added


def derive(store: Store, progress: bool = False) -> None:
    """Bring what searches derive from the features up to date (learning again if due), as an update does."""
    if "regions" in kinds_of(store.manifest["methods"]):
        bring_up_to_date(store, store.manifest["feature_settings"]["regions"], store.manifest.get("vectors", "auto"),
                         progress)
    if "global" in kinds_of(store.manifest["methods"]):
        bring_global_base_up_to_date(store, store.manifest.get("vectors", "auto"))


def time_add_and_remove(path: Path, base: Store, groups: np.ndarray, count: int = 1000) -> tuple[float, float]:
    """Seconds an update of the scale index at `path` spends to add `count` photos (features written, derived,
    committed) and then to remove them (committed, their files deleted): the index's own cost, without
    extracting photos or scanning a gallery. The index is left as it was."""
    with WriterLock(path).acquire():
        store = Store.open(path)
        source = Distractors(base, kinds_of(store.manifest["methods"]), groups, seed=1)
        first = len(store.images) - len(base.images)  # the writer's state is read before the clock starts
        started = time.perf_counter()
        added = add_distractors(store, source, count, first, progress=False)
        derive(store)
        store.commit()
        add_s = time.perf_counter() - started
        started = time.perf_counter()
        for name in added:
            del store.images[name]
        store.commit()
        store.remove_unused()
        return add_s, time.perf_counter() - started


def features_for(method: str) -> str:
    """The method whose features a scale index for `method` holds: hybrid's serve regional too."""
    return "hybrid" if method == "regional" else method


def scale_index_dir(dataset, images: int, vectors: str, method: str = "hybrid") -> Path:
    key = hashlib.sha256(str(dataset.root.resolve()).encode()).hexdigest()[:10]
    suffix = "" if features_for(method) == "hybrid" else f"-{method}"
    return backbones.cache_dir() / "scale" / f"{dataset.name}-{key}-{images}-{vectors}{suffix}"


def base_index(dataset, method: str, progress: bool = True) -> Store:
    """The committed state of the set's own index (as `spotit eval` makes it) with `method`'s features."""
    base = eval_index(dataset, features_for(method), backbones.DEFAULT_BACKBONE)
    base.update(progress=progress)
    return base.store.reload()


def build(root, images: int, index_dir=None, vectors: str = "auto", method: str = "hybrid", seed: int = 0,
          progress: bool = True) -> Path:
    """The scale index of the set at `root` holding `images` photos with `method`'s features (made once,
    then reused)."""
    dataset = load_dataset(root)
    methods = [features_for(method)]
    base_store = base_index(dataset, method, progress)
    if images <= len(base_store.images):
        raise SpotitError(f"--images {images} must exceed the {len(base_store.images)} photos of {dataset.name}'s gallery")
    path = Path(index_dir or scale_index_dir(dataset, images, vectors, method)).absolute()
    # what the scale index was made from: the base's shards and learned parts (a no-op update commits too)
    made = {"base": str(base_store.root), "base_shards": base_store.manifest["next_shard"],
            "base_learned": (base_store.learned or {}).get("version"), "images": images, "seed": seed, "vectors": vectors,
            "calibration": "unrelated"}
    if Store.exists(path):
        try:
            manifest = Store.open(path).manifest
            if manifest.get("scale") == made and manifest.get("methods") == methods:
                return path
        except SpotitError:
            pass
    check_index_folder(path)
    path.mkdir(parents=True, exist_ok=True)
    with WriterLock(path).acquire():
        previous = Store(path, Store.open(path).manifest, {}) if Store.exists(path) else None
        settings = {**{key: base_store.manifest.get(key) for key in SETTINGS}, "methods": methods}
        store = Store.create(path, {**settings, "vectors": vectors}, previous=previous)
        store.remove_unused()
        store.manifest["next_shard"] = max(store.manifest["next_shard"], base_store.manifest["next_shard"])
        store.shard_dir.mkdir(parents=True, exist_ok=True)
        for shard in base_store.live_shards():  # shards are immutable: linked, not copied, where the disk allows
            target = store.shard_dir / shard
            try:
                os.link(base_store.shard_dir / shard, target)
            except OSError:
                shutil.copy2(base_store.shard_dir / shard, target)
        for name, entry in base_store.images.items():
            store.images[name] = dict(entry)
        store.commit()
        source = Distractors(base_store, kinds_of(methods), related_groups(dataset, base_store.names()), seed)
        add_distractors(store, source, images - len(base_store.images), progress=progress)
        derive(store, progress)
        store.manifest["scale"] = made
        store.manifest["scale_noise"] = source.noise
        store.commit()
        store.remove_unused()
    return path


def exact_global_scores(snap, vector: np.ndarray) -> np.ndarray:
    """Every photo's float32 cosine similarity to `vector`, a shard at a time (the whole gallery in float32
    would not fit in memory at a million photos)."""
    out = np.empty(len(snap.names), np.float32)
    for shard, members in snap.store.placements().items():
        positions, rows = zip(*members)
        out[list(positions)] = snap.store.shards.read_rows(shard, "global")[list(rows)].astype(np.float32) @ vector
    return out


def shortlist_recall(index: Index, dataset, queries, method: str, k: int = 100) -> float:
    """Share of the exact search's top-k photos that the index's vector search also ranks in its top k, over
    `queries`: for cnn, float32 cosine similarity; else the best region similarity over the query's views."""
    snap = index.snapshot()
    found = []
    if method == "cnn":
        extract, search = index.features.get("global"), snap.global_vectors()
        for query in queries:
            image = load_image(query.path)
            for x, y, w, h in query.boxes or [(0, 0, image.shape[1], image.shape[0])]:
                vector = extract(image[y : y + h, x : x + w])
                truth = set(np.argsort(-exact_global_scores(snap, vector))[:k].tolist())
                approx = set(np.argsort(-search.scores(vector, k))[:k].tolist())
                found.append(len(truth & approx) / k)
        return float(np.mean(found))
    approximate, whitening = snap.regions()
    exact = snap.exact_regions(approximate.per_image)
    extract = index.features.get("regions")
    conf = rerank.confs[index.search_conf]
    for query in queries:
        image = load_image(query.path)
        crops = [image[y : y + h, x : x + w] for x, y, w, h in query.boxes] or [image]
        for crop in crops:
            vectors = extract.query(crop, max(image.shape[:2]), rerank.query_views(conf, bool(query.boxes)))
            if whitening is not None:
                vectors = whitening(vectors)
            truth = set(np.argsort(-exact.scores(vectors).max(axis=0))[:k].tolist())
            approx = set(np.argsort(-approximate.scores(vectors).max(axis=0))[:k].tolist())
            found.append(len(truth & approx) / k)
    return float(np.mean(found))


def peak_rss() -> int:
    """This process's peak resident memory in bytes: the kernel's high-water mark of its own address space
    (getrusage's maximum would also count the parent's memory before exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(root, index_dir, method: str = "hybrid", max_queries: int | None = None, top: int = 1000,
            recall: bool = False, progress: bool = True) -> dict:
    """Run the set's queries against the scale index in this process: quality, latency, memory, open time."""
    dataset = load_dataset(root)
    started = time.perf_counter()
    index = Index.open(index_dir)
    first = dataset.queries[0]
    index.search(first.path, first.boxes, method=method, top=10)
    open_s = time.perf_counter() - started
    result = run_queries(dataset, index, method, max_queries, progress, top=top, keep=is_distractor)
    seconds = result.pop("query_seconds")
    result.update(images=len(index), open_s=open_s, top=top,
                  vectors=(global_kind(index.manifest.get("vectors", "auto"), len(index)) if method == "cnn"
                           else index.manifest["learned"]["vectors"]),
                  query_s_max=float(np.max(seconds)),
                  rss_bytes=peak_rss(),
                  index_bytes_per_image=index.store.size_bytes() / len(index))
    if recall:
        from .evaluate import sample_queries

        result["recall_at_100"] = shortlist_recall(index, dataset, sample_queries(dataset.queries, max_queries),
                                                          method)
    return result


def scale(root, images: int, index_dir=None, vectors: str = "auto", method: str = "hybrid",
          max_queries: int | None = None, top: int = 1000, recall: bool = False, progress: bool = True) -> dict:
    """`spotit bench scale`: build (or reuse) the scale index, then measure it in a fresh process."""
    started = time.perf_counter()
    if method not in METHODS:
        raise SpotitError(f"unknown method {method!r} for a scale run; choose {', '.join(METHODS)}")
    path = build(root, images, index_dir, vectors, method, progress=progress)
    build_s = time.perf_counter() - started
    command = [sys.executable, "-m", "spotit.evaluation.scale", str(root), str(path), "--method", method, "--top", str(top)]
    command += (["--max-queries", str(max_queries)] if max_queries else []) + (["--recall"] if recall else [])
    command += [] if progress else ["--quiet"]
    child = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if child.returncode != 0:
        raise SpotitError(f"the measuring process failed (exit {child.returncode}); run `{' '.join(command)}` to see why")
    result = json.loads(child.stdout.strip().splitlines()[-1])
    dataset = load_dataset(root)
    base = base_index(dataset, method, progress=False)
    add_s, remove_s = time_add_and_remove(path, base, related_groups(dataset, base.names()))
    result.update(index=str(path), build_s=build_s, add_1000_s=add_s, remove_1000_s=remove_s)
    return result


def format_scale(result: dict) -> str:
    lines = [f"{result['dataset']} + distractors: {result['images']:,} photos ({result['method']}, vectors "
             f"{result['vectors']}, {result['queries']} queries, ranked to {result['top']})",
             f"  mAP {result['map']:.4f}  P@10 {result['p@10']:.4f}" + (f"  N-S {result['ns']:.3f}" if result["ns"] else ""),
             f"  query {result['query_s_median'] * 1000:.0f} ms median, {result['query_s_p95'] * 1000:.0f} ms p95; "
             f"open to first answer {result['open_s']:.1f} s; peak memory {result['rss_bytes'] / 2**30:.2f} GiB; "
             f"{result['index_bytes_per_image'] / 1024:.1f} KiB per photo",
             f"  adding 1,000 photos {result['add_1000_s']:.2f} s, removing them {result['remove_1000_s']:.2f} s "
             "(written, derived, committed; no extraction)"]
    if "recall_at_100" in result:
        lines.append(f"  vector shortlist recall@100 against exact search: {result['recall_at_100']:.3f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    """`python -m spotit.evaluation.scale DATASET INDEX`: the measuring half of `spotit bench scale`, printing JSON."""
    parser = argparse.ArgumentParser(prog="python -m spotit.evaluation.scale")
    parser.add_argument("dataset", type=Path)
    parser.add_argument("index", type=Path)
    parser.add_argument("--method", default="hybrid")
    parser.add_argument("--max-queries", type=int)
    parser.add_argument("--top", type=int, default=1000)
    parser.add_argument("--recall", action="store_true")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    try:
        result = measure(args.dataset, args.index, args.method, args.max_queries, args.top, args.recall,
                         progress=not args.quiet)
    except SpotitError as exc:
        print(f"spotit: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
