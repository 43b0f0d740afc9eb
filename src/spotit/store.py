"""On-disk index storage: a catalogue (SQLite, or Milvus) plus HDF5 feature shards, all written atomically.

Layout of an index folder:
    catalogue.db         the committed state (catalogue.py): settings, and for every indexed photo its file
                         stamp and where its features are; its `"kind": "spotit-index"` marks the folder
    catalogue.milvus.json    instead of catalogue.db: where in Milvus the catalogue is, for a folder that
                         several machines share (cluster/milvus_catalogue.py)
    shards/NNNNNN.h5     features of a batch of images: `names`, one dataset per dense feature kind
                         (one row per name), and one group per local feature kind holding the ragged
                         `offsets` (n+1), `keypoints` (total, 4) and `descriptors` (total, 128)
    shards/NNNNNN.wL.npy     derived: the shard's region descriptors whitened by learned parts L (int8 codes;
                         NNNNNN.sL.npy: a scale per region)
    shards/NNNNNN.cL.npy     derived: the same as faiss IVF-PQ codes, when the vector index is approximate
    learned-L.npz        the learned parts of commit L: the regions' whitening (and learned-L.faiss: the
                         trained, empty vector index); learned again only when the gallery doubles or halves
    vectors-G.faiss      the approximate vector index of commit G's shards in one file, which searches map;
                         written again when a quarter of the photos are in shards added since
    write.lock           held (flock) by the one process allowed to change the index

Files are immutable once written: a writer adds new shards, then commits the catalogue transaction that
points to them. A reader therefore always holds one committed state. Files that no commit points to any
more are deleted only by the writer, after its commit; a reader that finds one gone knows the index moved
on, and reloads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from . import vectors
from .catalogue import FILE as CATALOGUE_FILE, SIDE_FILES, Changed, Columns, Images, catalogue_at, catalogue_for, in_order, make_current
from .errors import SpotitError
from .fileio import TEMPORARY_PREFIX, FileArray, atomic_path, atomic_write_bytes
from .local_features import LocalFeatures
from .lock import LOCK_FILE

FORMAT = 2
KIND = "spotit-index"
MANIFEST = "manifest.json"  # the JSON state of spotit 0.1 and of format 1: read only to say "rebuild"
SHARD_NAME = re.compile(r"(\d{6})\.h5")
DERIVED_NAME = re.compile(r"(?:regions-whitened|learned|vectors|globals)-(\d+)\.(?:npz|faiss)")  # the first: format 1's
SHARD_DERIVED_NAME = re.compile(r"(\d{6})\.[wsc](\d+)\.npy")
LEGACY_DERIVED = "regions-whitened.npz"  # spotit 0.1's name
TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r".+\.tmp")  # fileio.atomic_path's, left by a killed writer


class SnapshotGone(SpotitError):
    """A file of the state this reader holds was removed by a writer's later commit: reload and retry."""


def read_manifest(root: Path) -> dict | None:
    """The committed state of a spotit index at `root` (of an older format: its JSON manifest), or None
    when `root` holds no spotit index."""
    catalogue = catalogue_at(root)
    if catalogue.exists():
        state = catalogue.state()
        return state if isinstance(state, dict) and state.get("kind") == KIND else None
    return read_json_manifest(root / MANIFEST)


def read_json_manifest(path: Path) -> dict | None:
    """The JSON manifest that spotit 0.1 and format 1 wrote, or None when `path` is not one."""
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    if not isinstance(manifest, dict):
        return None
    if manifest.get("kind") == KIND or is_legacy(manifest):
        return manifest
    return None


def is_legacy(manifest: dict) -> bool:
    """A manifest of spotit 0.1, which wrote no "kind"."""
    return (manifest.get("format") == 1 and manifest.get("spotit_version") == "0.1.0" and "kind" not in manifest
            and isinstance(manifest.get("images"), dict) and isinstance(manifest.get("feature_settings"), dict))


def check_index_folder(root: Path, locked: bool = False) -> None:
    """Refuse to make an index in a place holding anything but a spotit index: spotit writes only where it owns.

    Before the write lock is taken (`locked` False), another spotit's creation may be half done: its lock
    beside a catalogue that holds no state yet. The writer that waits for it checks again under the lock."""
    if root.exists() and not root.is_dir():
        raise SpotitError(f"--index {root} is a file; give a folder for the index")
    if not root.is_dir() or read_manifest(root) is not None:
        return
    names = {p.name: p for p in root.iterdir()}
    creating = not locked and LOCK_FILE in names and is_our_lock(names[LOCK_FILE])
    if any(not (ours(path) or (creating and name in (CATALOGUE_FILE, *SIDE_FILES))) for name, path in names.items()):
        raise SpotitError(
            f"{root} is not a spotit index and is not empty; give a new or empty folder as --index "
            f"(spotit never writes among other files)"
        )


def ours(path: Path) -> bool:
    """A write lock or temporary file of spotit's: what a creation in progress (or a refused one) leaves."""
    return bool(TEMPORARY_NAME.fullmatch(path.name)) or (path.name == LOCK_FILE and is_our_lock(path))


def is_our_lock(path: Path) -> bool:
    """Whether `path` is spotit's write lock: empty (released) or naming its holder as spotit writes it."""
    try:
        text = path.read_text()
        return not text or isinstance(json.loads(text).get("pid"), int)
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False


class Store:
    """One committed state of an index folder; a writer changes `manifest` (settings) and `images`, then commits."""

    def __init__(self, root: Path, manifest: dict, images: dict | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.catalogue = catalogue_at(self.root)
        self.legacy = is_legacy(manifest)  # made by spotit 0.1: its derived file has the old name
        self._images = Images(images) if images is not None else None
        self._columns: Columns | None = None
        self._placements: dict[str, list[tuple[int, int]]] | None = None

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, root: str | os.PathLike) -> bool:
        return read_manifest(Path(root)) is not None

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Store":
        root = Path(root)
        manifest = read_manifest(root)
        if manifest is None:
            if root.is_dir() and ((root / MANIFEST).is_file() or catalogue_at(root).exists()):
                raise SpotitError(f"{root} holds a {MANIFEST} or catalogue that is not a spotit index's")
            if root.is_dir() and any(not ours(path) for path in root.iterdir()):  # a gallery given for its index, say
                raise SpotitError(f"no index at {root}, a folder of other files: give the folder that `spotit "
                                  f"index` wrote the index to, or index this one with `spotit index {root} "
                                  f"--index NEW_FOLDER`")
            raise SpotitError(f"no index at {root}: build one with `spotit index GALLERY --index {root}`")
        if manifest.get("format") != FORMAT:
            raise SpotitError(
                f"index at {root} was made by spotit {manifest.get('spotit_version', '?')} in another format; "
                f"rebuild it with `spotit index GALLERY --index {root} --rebuild`"
            )
        return cls(root, manifest)

    def changed(self) -> bool:
        """Whether a writer has committed since this state was read."""
        return self.catalogue.generation() != self.manifest.get("generation")

    def reload(self) -> "Store":
        """The latest committed state (a new Store; this one keeps its snapshot)."""
        return Store.open(self.root)

    def _of_this_state(self, read):
        try:
            return read(self.manifest["generation"])
        except Changed:
            raise SnapshotGone(f"the catalogue {self.catalogue} holds a newer commit") from None

    @property
    def images(self) -> Images:
        """photo name -> {shard, row, size, mtime_ns, width, height[, stale]} (read on first use)."""
        if self._images is None:
            self._images = self._of_this_state(self.catalogue.images)
        return self._images

    def columns(self) -> Columns:
        """Every photo as arrays, in catalogue order: what a search process holds of the catalogue."""
        if self._columns is None:
            columns = self._of_this_state(self.catalogue.columns)
            read = columns.stamps_of  # read later, maybe after a writer's commit: that too is SnapshotGone
            columns.stamps_of = lambda: self._of_this_state(lambda _generation: read())
            self._columns = columns
        return self._columns

    @classmethod
    def create(cls, root: str | os.PathLike, settings: dict, previous: "Store | None" = None,
               catalogue: str | None = None) -> "Store":
        """A new, empty state with `settings`; over a `previous` one, its numbering goes on, so that no
        file name of the previous state is reused and its files can be told apart and removed. `catalogue`
        ("sqlite" or a Milvus URI) moves the catalogue there."""
        from . import __version__

        root = Path(root)
        counters = {k: previous.manifest.get(k, 0) for k in ("next_shard", "generation")} if previous else {}
        manifest = {"kind": KIND, "format": FORMAT, "spotit_version": __version__, "next_shard": 0, "generation": 0,
                    **counters, **settings, "skipped": {}, "whitened": None}
        manifest["generation"] += 1
        target = catalogue_for(root, catalogue)
        target.create(manifest)
        make_current(root, target)
        store = cls(root, manifest, {})
        store.legacy = previous is not None and previous.legacy
        return store

    # ---- writing -------------------------------------------------------------------------------
    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    def commit(self) -> None:
        """Publish the in-memory manifest as the index's state (writer only, under the write lock)."""
        images = self.images  # read (if not yet) before the generation moves on
        self.manifest["kind"] = KIND
        self.manifest["generation"] = self.manifest.get("generation", 0) + 1
        self.catalogue.commit(self.manifest, images)
        self._columns = self._placements = None

    def own_files(self) -> list[Path]:
        """Every file spotit made in this folder, told by its name and number: a shard numbered below the
        next shard, derived arrays of a past commit, spotit's temporary files, the JSON manifest of an
        older format it replaced. Nothing else is ever deleted (SQLite's own files neither)."""
        generation, next_shard = self.manifest.get("generation", 0), self.manifest.get("next_shard", 0)

        def ours(folder: Path, name: str) -> bool:
            if TEMPORARY_NAME.fullmatch(name):
                return True
            if folder == self.shard_dir:
                if match := SHARD_DERIVED_NAME.fullmatch(name):
                    return int(match[1]) < next_shard and int(match[2]) <= generation + 1
                return bool((match := SHARD_NAME.fullmatch(name)) and int(match[1]) < next_shard)
            if name == MANIFEST:
                return read_json_manifest(folder / name) is not None
            match = DERIVED_NAME.fullmatch(name)
            return bool(match and int(match[1]) <= generation + 1) or (name == LEGACY_DERIVED and self.legacy)

        files = []
        for folder in (self.root, self.shard_dir):
            if folder.is_dir():
                files += [p for p in folder.iterdir() if p.is_file() and p.name not in SIDE_FILES and ours(folder, p.name)]
        return files

    def remove_unused(self) -> None:
        """Delete spotit's files that the committed manifest no longer points to (writer only, after commit)."""
        shards = {entry["shard"] for entry in self.images.values()}
        used = shards | set(self.learned_files()) | {self.manifest.get("global_base", {}).get("file")}
        if self.learned:
            used |= {self.derived_path(shard, kind).name for shard in shards for kind in "wsc"}
        for path in self.own_files():
            if path.name not in used:
                path.unlink(missing_ok=True)
        if self.shard_dir.is_dir() and not any(self.shard_dir.iterdir()):
            self.shard_dir.rmdir()

    def write_shard(self, names: list[str], features: dict[str, np.ndarray | list[LocalFeatures]]) -> str:
        """Write the features of `names` to a new shard; returns its file name. The manifest is not changed.

        `features` maps a feature kind to a dense array with one row per name, or to a list of
        LocalFeatures, stored ragged as `KIND/offsets`, `KIND/keypoints`, `KIND/descriptors` (and
        `KIND/rows` when some are shared).
        """
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.manifest['next_shard']:06d}.h5"
        self.manifest["next_shard"] += 1
        with atomic_path(self.shard_dir / name) as tmp, h5py.File(tmp, "w") as out:
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

    # ---- reading -------------------------------------------------------------------------------
    def placements(self) -> dict[str, list[tuple[int, int]]]:
        """shard file -> [(position in catalogue order, row)] for the live entries of that shard."""
        by_shard: dict[str, list[tuple[int, int]]] = {}
        if self._images is None:  # a reader: the columns it holds, grouped once (a million photos take a second)
            if self._placements is None:
                columns = self.columns()
                for i, (shard, row) in enumerate(zip(columns.shard.tolist(), columns.row.tolist())):
                    by_shard.setdefault(columns.shards[shard], []).append((i, row))
                self._placements = by_shard
            return self._placements
        for i, name in enumerate(self.names()):  # a writer: its images, as changed so far
            entry = self._images[name]
            by_shard.setdefault(entry["shard"], []).append((i, entry["row"]))
        return by_shard

    def names(self) -> list[str]:
        """Every photo's name, in catalogue order."""
        return self.columns().names if self._images is None else in_order(self._images)

    def entry(self, name: str, position: int | None = None) -> dict:
        """The catalogue entry of a photo (by its position in catalogue order, where known)."""
        if self._images is None and position is not None:
            return self.columns().entry(position)
        return self.images[name]

    def _gone_or(self, path: Path, exc: Exception) -> SpotitError:
        """A file of this state that cannot be read: superseded by a writer's commit, or really damaged."""
        if self.changed():
            return SnapshotGone(f"{path} was replaced by a newer commit")
        return SpotitError(f"index file {path} is unreadable ({exc}); rebuild with `spotit index GALLERY --rebuild`")

    def _read(self, shard: str):
        path = self.shard_dir / shard
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise self._gone_or(path, exc) from None

    def _missing(self, kind: str) -> SpotitError:
        return SpotitError(f"index at {self.root} holds no {kind} features; run `spotit index` with a method that needs them")

    def load_dense(self, kind: str) -> tuple[list[str], np.ndarray]:
        """Names of all indexed images (catalogue order) and their dense features of `kind`, row for row."""
        names = self.names()
        out = None
        for shard, members in sorted(self.placements().items()):
            with self._read(shard) as data:
                if kind not in data:
                    raise self._missing(kind)
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
        names = self.names()
        for shard, members in sorted(self.placements().items()):
            with self._read(shard) as data:
                if kind not in data:
                    raise self._missing(kind)
                offsets, keypoints, descriptors = (data[kind][k][()] for k in ("offsets", "keypoints", "descriptors"))
                slots = data[kind]["rows"][()] if "rows" in data[kind] else None
            for position, row in members:
                row = row if slots is None else slots[row]
                a, b = offsets[row], offsets[row + 1]
                features[names[position]] = LocalFeatures(keypoints[a:b], descriptors[a:b])
        return features

    def local_reader(self, kind: str) -> "LocalReader":
        return LocalReader(self, kind)

    def shard_rows(self) -> dict[str, int]:
        """Total rows per shard file, live or not (for compaction)."""
        totals = {}
        for shard in self.placements():
            with self._read(shard) as data:
                totals[shard] = len(data["names"])
        return totals

    # ---- learned parts and what is derived with them ------------------------------------------
    @property
    def learned(self) -> dict | None:
        """{"version", "photos", "vectors"}: the learned parts in use and how many photos they were learned from."""
        return self.manifest.get("learned")

    def learned_files(self) -> list[str]:
        if not self.learned:
            return []
        version = self.learned["version"]
        base = [self.learned["base"]["file"]] if self.learned.get("base") else []
        return [f"learned-{version}.npz"] + ([f"learned-{version}.faiss"] if self.learned["vectors"] == "ivfpq" else []) + base

    def next_learned_version(self) -> int:
        """The version new learned parts take: the generation they will be committed with, so readers of the
        previous state keep theirs."""
        return self.manifest.get("generation", 0) + 1

    def write_learned(self, version: int, arrays: dict[str, np.ndarray], index_bytes: np.ndarray | None) -> None:
        import io

        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.root / f"learned-{version}.npz", buffer.getvalue())
        if index_bytes is not None:
            atomic_write_bytes(self.root / f"learned-{version}.faiss", index_bytes.tobytes())

    def read_learned(self) -> tuple[dict[str, np.ndarray], bytes | None]:
        """The arrays of the learned parts in use, and the trained vector index's bytes (if approximate)."""
        files = self.learned_files()
        try:
            with np.load(self.root / files[0], allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
            index = (self.root / files[1]).read_bytes() if len(files) > 1 else None
        except FileNotFoundError as exc:
            raise self._gone_or(self.root / files[0], exc) from None
        except (OSError, ValueError) as exc:
            raise SpotitError(f"learned parts {files[0]} of {self.root} are unreadable ({exc}); "
                              f"rebuild with `spotit index GALLERY --rebuild`") from None
        return arrays, index

    def write_vector_base(self, name: str, index_bytes: np.ndarray) -> None:
        atomic_write_bytes(self.root / name, index_bytes.tobytes())

    def read_vector_base(self):
        """The vector index's base file, mapped (searches read only the cells they probe), or None."""
        base = self.learned.get("base")
        if not base:
            return None, set()
        import faiss

        path = self.root / base["file"]
        if not path.is_file():
            raise self._gone_or(path, FileNotFoundError(path))
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), set(base["shards"])

    def write_global_base(self, name: str, index) -> None:
        import faiss

        with atomic_path(self.root / name) as tmp:
            faiss.write_index(index, str(tmp))

    def read_global_base(self):
        """The cnn method's base file, mapped (its codes are paged in by the searches), and its shards with
        their rows, in file order; or (None, [])."""
        base = self.manifest.get("global_base")
        if not base:
            return None, []
        import faiss

        path = self.root / base["file"]
        if not path.is_file():
            raise self._gone_or(path, FileNotFoundError(path))
        return (faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY),
                list(zip(base["shards"], base["rows"])))

    def derived_path(self, shard: str, kind: str, version: int | None = None) -> Path:
        """A shard's derived file of learned `version`: kind "w" and "s" (whitened regions: codes, scales) or
        "c" (vector index codes)."""
        version = self.learned["version"] if version is None else version
        return self.shard_dir / f"{shard.removesuffix('.h5')}.{kind}{version}.npy"

    def write_derived(self, shard: str, version: int, whitened: np.ndarray, codes: np.ndarray | None) -> None:
        """Write a shard's derived files; the whitened codes ("w") last: their presence says all are there."""
        import io

        quantised, scales = vectors.quantise(whitened)
        for kind, array in (("c", codes), ("s", scales), ("w", quantised)):
            if array is None:
                continue
            buffer = io.BytesIO()
            np.save(buffer, array)
            atomic_write_bytes(self.derived_path(shard, kind, version), buffer.getvalue())

    def has_derived(self, shard: str) -> bool:
        """Whether every derived file of a shard that the learned parts in use call for is there."""
        kinds = "wsc" if self.learned["vectors"] == "ivfpq" else "ws"
        return all(self.derived_path(shard, kind).is_file() for kind in kinds)

    def read_whitened(self, shard: str) -> vectors.QuantisedRows:
        """A shard's whitened regions (rows, per_image, D), read from the file row by row."""
        arrays = []
        for kind in "ws":
            path = self.derived_path(shard, kind)
            try:
                arrays.append(FileArray.of_npy(path) if kind == "w" else np.load(path))
            except FileNotFoundError as exc:
                raise self._gone_or(path, exc) from None
            except (OSError, ValueError) as exc:
                raise SpotitError(f"index file {path} is unreadable ({exc}); rebuild with "
                                  f"`spotit index GALLERY --rebuild`") from None
        return vectors.QuantisedRows(*arrays)

    def read_codes(self, shard: str) -> np.ndarray:
        """A shard's regions as the vector index's codes (uint8, one row per region)."""
        path = self.derived_path(shard, "c")
        try:
            return np.load(path)
        except FileNotFoundError as exc:
            raise self._gone_or(path, exc) from None
        except (OSError, ValueError) as exc:
            raise SpotitError(f"index file {path} is unreadable ({exc}); rebuild with `spotit index GALLERY --rebuild`") from None

    def live_shards(self) -> list[str]:
        """The shard files that hold a photo of this state."""
        if self._images is None:  # a reader: every shard its columns name holds one of their photos
            return sorted(self.columns().shards)
        return sorted(self.placements())

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
        with self._read(shard) as data:
            if kind not in data:
                raise self._missing(kind)
            return data[kind].shape

    def read_rows(self, shard: str, kind: str, rows=None) -> np.ndarray:
        """The dense `kind` features of a shard's `rows` (increasing, each once; all rows when None)."""
        with self._read(shard) as data:
            if kind not in data:
                raise self._missing(kind)
            return data[kind][()] if rows is None else data[kind][list(rows)]

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


class LocalReader:
    """Reads the local features of single images on demand (re-ranking needs only a shortlist).

    Shards store their arrays contiguous and uncompressed, so each photo's rows are read straight from the
    file (fileio.FileArray): microseconds where an h5py read costs a third of a millisecond."""

    def __init__(self, store: "Store", kind: str):
        self.store, self.kind = store, kind
        self._shards: dict[str, tuple] = {}

    def _open(self, shard: str) -> tuple:
        with self.store._read(shard) as data:
            if self.kind not in data:
                raise self.store._missing(self.kind)
            group = data[self.kind]
            arrays = [group["offsets"][()], group["rows"][()] if "rows" in group else None]
            for key in ("keypoints", "descriptors"):
                dataset = group[key]
                offset = dataset.id.get_offset()  # None when empty or not stored contiguously
                try:
                    arrays.append(FileArray(self.store.shard_dir / shard, dataset.dtype, offset, dataset.shape))
                except TypeError:
                    arrays.append(dataset[()])
        return tuple(arrays)

    def __call__(self, image: str, position: int | None = None) -> LocalFeatures:
        entry = self.store.entry(image, position)
        if entry["shard"] not in self._shards:
            self._shards[entry["shard"]] = self._open(entry["shard"])
        offsets, slots, keypoints, descriptors = self._shards[entry["shard"]]
        row = entry["row"] if slots is None else slots[entry["row"]]
        a, b = offsets[row], offsets[row + 1]
        try:
            return LocalFeatures(np.asarray(keypoints[a:b]), np.asarray(descriptors[a:b]))
        except FileNotFoundError as exc:  # removed by a later commit: the search retries on it
            raise self.store._gone_or(self.store.shard_dir / entry["shard"], exc) from None
