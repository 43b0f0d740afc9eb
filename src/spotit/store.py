"""On-disk index storage: a JSON manifest plus HDF5 feature shards, all written atomically.

Layout of an index folder:
    manifest.json        the committed state: settings, and for every indexed image its file stamp and
                         where its features are; `"kind": "spotit-index"` marks the folder as spotit's
    shards/NNNNNN.h5     features of a batch of images: `names`, one dataset per dense feature kind
                         (one row per name), and one group per local feature kind holding the ragged
                         `offsets` (n+1), `keypoints` (total, 4) and `descriptors` (total, 128)
    regions-whitened-G.npz   derived: the whitening learned at commit G and the whitened region matrix
    write.lock           held (flock) by the one process allowed to change the index

Files are immutable once written: a writer adds new shards, then replaces the manifest that points to
them (write, then rename). A reader therefore always holds one committed state. Files that no manifest
points to any more are deleted only by the writer, after its commit; a reader that finds one gone knows
the index moved on, and reloads.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import h5py
import numpy as np

from .errors import SpotitError
from .fileio import TEMPORARY_PREFIX, atomic_path, atomic_write_bytes
from .local_features import LocalFeatures
from .lock import LOCK_FILE

FORMAT = 1
KIND = "spotit-index"
MANIFEST = "manifest.json"
SHARD_NAME = re.compile(r"(\d{6})\.h5")
DERIVED_NAME = re.compile(r"regions-whitened-(\d+)\.npz")
LEGACY_DERIVED = "regions-whitened.npz"  # spotit 0.1's name
TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r".+\.tmp")  # fileio.atomic_path's, left by a killed writer


class SnapshotGone(SpotitError):
    """A file of the state this reader holds was removed by a writer's later commit: reload and retry."""


def read_manifest(root: Path) -> dict | None:
    """The manifest of a spotit index at `root`, or None when `root` holds no spotit index."""
    try:
        manifest = json.loads((root / MANIFEST).read_text())
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


def check_index_folder(root: Path) -> None:
    """Refuse to make an index in a place holding anything but a spotit index: spotit writes only where it owns."""
    if root.exists() and not root.is_dir():
        raise SpotitError(f"--index {root} is a file; give a folder for the index")
    # a write lock and temporary files are what a creation in progress (or a refused one) leaves
    if root.is_dir() and read_manifest(root) is None and \
            any(not (TEMPORARY_NAME.fullmatch(p.name) or (p.name == LOCK_FILE and is_our_lock(p))) for p in root.iterdir()):
        raise SpotitError(
            f"{root} is not a spotit index and is not empty; give a new or empty folder as --index "
            f"(spotit never writes among other files)"
        )


def is_our_lock(path: Path) -> bool:
    """Whether `path` is spotit's write lock: empty (released) or naming its holder as spotit writes it."""
    try:
        text = path.read_text()
        return not text or isinstance(json.loads(text).get("pid"), int)
    except (OSError, ValueError, UnicodeDecodeError, AttributeError):
        return False


def manifest_signature(root: Path) -> tuple | None:
    """Changes whenever a commit replaces the manifest (a rename gives it a new inode)."""
    try:
        stat = (root / MANIFEST).stat()
    except OSError:
        return None
    return (stat.st_ino, stat.st_mtime_ns, stat.st_size)


class Store:
    def __init__(self, root: Path, manifest: dict, signature: tuple | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.signature = signature
        self.legacy = is_legacy(manifest)  # made by spotit 0.1: its derived file has the old name

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, root: str | os.PathLike) -> bool:
        return read_manifest(Path(root)) is not None

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Store":
        root = Path(root)
        for _ in range(5):  # a commit between the stat and the read: take the newer one
            signature = manifest_signature(root)
            manifest = read_manifest(root)
            if signature == manifest_signature(root):
                break
        if manifest is None:
            if root.is_dir() and (root / MANIFEST).is_file():
                raise SpotitError(f"{root} holds a {MANIFEST} that is not a spotit index's")
            raise SpotitError(f"no index at {root}: build one with `spotit index GALLERY --index {root}`")
        if manifest.get("format") != FORMAT:
            raise SpotitError(
                f"index at {root} was made by spotit {manifest.get('spotit_version', '?')} in another format; "
                f"rebuild it with `spotit index GALLERY --index {root} --rebuild`"
            )
        return cls(root, manifest, signature)

    def changed(self) -> bool:
        """Whether a writer has committed since this state was read."""
        return manifest_signature(self.root) != self.signature

    def reload(self) -> "Store":
        """The latest committed state (a new Store; this one keeps its snapshot)."""
        return Store.open(self.root)

    @classmethod
    def create(cls, root: str | os.PathLike, settings: dict, previous: "Store | None" = None) -> "Store":
        """A new, empty state with `settings`; over a `previous` one, its numbering goes on, so that no
        file name of the previous state is reused and its files can be told apart and removed."""
        from . import __version__

        root = Path(root)
        counters = {k: previous.manifest.get(k, 0) for k in ("next_shard", "generation")} if previous else {}
        manifest = {"kind": KIND, "format": FORMAT, "spotit_version": __version__, "next_shard": 0, "generation": 0,
                    **counters, **settings, "images": {}, "skipped": {}, "whitened": None}
        store = cls(root, manifest)
        store.legacy = previous is not None and previous.legacy
        store.commit()
        return store

    # ---- writing -------------------------------------------------------------------------------
    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    def commit(self) -> None:
        """Publish the in-memory manifest as the index's state (writer only, under the write lock)."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest["kind"] = KIND
        self.manifest["generation"] = self.manifest.get("generation", 0) + 1
        atomic_write_bytes(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())
        self.signature = manifest_signature(self.root)

    def own_files(self) -> list[Path]:
        """Every file spotit made in this folder, told by its name and number: a shard numbered below the
        next shard, derived arrays of a past commit, spotit's temporary files. Nothing else is ever deleted."""
        generation, next_shard = self.manifest.get("generation", 0), self.manifest.get("next_shard", 0)

        def ours(folder: Path, name: str) -> bool:
            if TEMPORARY_NAME.fullmatch(name):
                return True
            if folder == self.shard_dir:
                return bool((match := SHARD_NAME.fullmatch(name)) and int(match[1]) < next_shard)
            match = DERIVED_NAME.fullmatch(name)
            return bool(match and int(match[1]) <= generation + 1) or (name == LEGACY_DERIVED and self.legacy)

        files = []
        for folder in (self.root, self.shard_dir):
            if folder.is_dir():
                files += [p for p in folder.iterdir() if p.is_file() and ours(folder, p.name)]
        return files

    def remove_unused(self) -> None:
        """Delete spotit's files that the committed manifest no longer points to (writer only, after commit)."""
        used = {entry["shard"] for entry in self.manifest["images"].values()} | {self.manifest.get("whitened")}
        for path in self.own_files():
            if path.name not in used:
                path.unlink(missing_ok=True)
        if self.shard_dir.is_dir() and not any(self.shard_dir.iterdir()):
            self.shard_dir.rmdir()

    def write_shard(self, names: list[str], features: dict[str, np.ndarray | list[LocalFeatures]]) -> str:
        """Write the features of `names` to a new shard; returns its file name. The manifest is not changed.

        `features` maps a feature kind to a dense array with one row per name, or to a list of
        LocalFeatures, stored ragged as `KIND/offsets`, `KIND/keypoints`, `KIND/descriptors`.
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
                counts = [len(f) for f in data]
                group.create_dataset("offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
                group.create_dataset("keypoints", data=np.concatenate([f.keypoints for f in data] + [np.zeros((0, 4), np.float32)]))
                group.create_dataset("descriptors", data=np.concatenate([f.descriptors for f in data] + [np.zeros((0, 128), np.uint8)]))
        return name

    # ---- reading -------------------------------------------------------------------------------
    def _shards(self) -> dict[str, list[tuple[str, int]]]:
        """shard file -> [(image name, row)] for the live entries of that shard."""
        by_shard: dict[str, list[tuple[str, int]]] = {}
        for image, entry in self.manifest["images"].items():
            by_shard.setdefault(entry["shard"], []).append((image, entry["row"]))
        return by_shard

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
        """Names of all indexed images (sorted) and their dense features of `kind`, row for row."""
        names, blocks = [], []
        for shard, members in sorted(self._shards().items()):
            with self._read(shard) as data:
                if kind not in data:
                    raise self._missing(kind)
                matrix = data[kind][()]
            names.extend(image for image, _ in members)
            blocks.append(matrix[[row for _, row in members]])
        if not names:
            return [], np.zeros((0, 1), np.float32)
        order = np.argsort(names, kind="stable")
        return [names[i] for i in order], np.concatenate(blocks)[order]

    def load_local(self, kind: str) -> dict[str, LocalFeatures]:
        """Local features of `kind` of every indexed image."""
        features: dict[str, LocalFeatures] = {}
        for shard, members in sorted(self._shards().items()):
            with self._read(shard) as data:
                if kind not in data:
                    raise self._missing(kind)
                offsets, keypoints, descriptors = (data[kind][k][()] for k in ("offsets", "keypoints", "descriptors"))
            for image, row in members:
                a, b = offsets[row], offsets[row + 1]
                features[image] = LocalFeatures(keypoints[a:b], descriptors[a:b])
        return features

    def local_reader(self, kind: str) -> "LocalReader":
        return LocalReader(self, kind)

    def shard_rows(self) -> dict[str, int]:
        """Total rows per shard file, live or not (for compaction)."""
        totals = {}
        for shard in self._shards():
            with self._read(shard) as data:
                totals[shard] = len(data["names"])
        return totals

    def write_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> str:
        """Derived data as a new `.npz` beside the manifest (atomic); returns its file name for the manifest.

        The name carries the generation it will be committed with, so readers of the previous state keep theirs."""
        import io

        filename = f"{name}-{self.manifest.get('generation', 0) + 1}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        atomic_write_bytes(self.root / filename, buffer.getvalue())
        return filename

    def read_arrays(self, filename: str | None) -> dict[str, np.ndarray] | None:
        """Derived data named by the manifest; None when there is none (callers derive it in memory)."""
        if not filename:
            return None
        path = self.root / filename
        try:
            with np.load(path, allow_pickle=False) as data:
                return {key: data[key] for key in data.files}
        except FileNotFoundError as exc:
            raise self._gone_or(path, exc) from None
        except (OSError, ValueError):
            return None  # damaged derived data: derived again from the shards

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())


class LocalReader:
    """Reads the local features of single images on demand (re-ranking needs only a shortlist).

    Shards store their arrays contiguous and uncompressed, so each is mapped straight from the file:
    slicing a memory map costs microseconds where an h5py read costs a third of a millisecond."""

    def __init__(self, store: "Store", kind: str):
        self.store, self.kind = store, kind
        self._shards: dict[str, tuple] = {}

    def _open(self, shard: str) -> tuple:
        with self.store._read(shard) as data:
            if self.kind not in data:
                raise self.store._missing(self.kind)
            group = data[self.kind]
            arrays = [group["offsets"][()]]
            for key in ("keypoints", "descriptors"):
                dataset = group[key]
                offset = dataset.id.get_offset()  # None when empty or not stored contiguously
                try:
                    arrays.append(np.memmap(self.store.shard_dir / shard, dataset.dtype, "r", offset, dataset.shape))
                except (TypeError, ValueError, OSError):
                    arrays.append(dataset[()])
        return tuple(arrays)

    def __call__(self, image: str) -> LocalFeatures:
        entry = self.store.manifest["images"][image]
        if entry["shard"] not in self._shards:
            self._shards[entry["shard"]] = self._open(entry["shard"])
        offsets, keypoints, descriptors = self._shards[entry["shard"]]
        a, b = offsets[entry["row"]], offsets[entry["row"] + 1]
        return LocalFeatures(np.asarray(keypoints[a:b]), np.asarray(descriptors[a:b]))
