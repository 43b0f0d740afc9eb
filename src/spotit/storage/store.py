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

from ..errors import SpotitError
from ..fileio import TEMPORARY_PREFIX
from .catalogue import FILE as CATALOGUE_FILE, SIDE_FILES, Catalogue, Changed, Columns, Images, in_order
from .derived_files import DerivedFiles
from .lock import LOCK_FILE
from .shards import ShardFiles

FORMAT = 2
KIND = "spotit-index"
MANIFEST = "manifest.json"  # the JSON state of spotit 0.1 and of format 1: read only to say "rebuild"
SHARD_NAME = re.compile(r"(\d{6})\.h5")
DERIVED_NAME = re.compile(r"(?:regions-whitened|learned|vectors|globals)-(\d+)\.(?:npz|faiss)")  # the first: format 1's
SHARD_DERIVED_NAME = re.compile(r"(\d{6})\.[wsc](\d+)\.npy")
LEGACY_DERIVED = "regions-whitened.npz"  # spotit 0.1's name
TEMPORARY_NAME = re.compile(re.escape(TEMPORARY_PREFIX) + r".+\.tmp")  # fileio.atomic_path's, left by a killed writer


def catalogue_at(root: str | os.PathLike):
    """The catalogue of the index folder `root`: the SQLite one inside it, unless the folder points to one in
    Milvus (an index that several machines share: cluster/milvus_catalogue.py)."""
    from ..cluster.milvus_catalogue import POINTER, MilvusCatalogue  # pymilvus is imported only when used

    return MilvusCatalogue.at(Path(root)) if (Path(root) / POINTER).is_file() else Catalogue(root)


def catalogue_for(root: str | os.PathLike, where: str | None):
    """The catalogue a new state of the folder `root` goes to: where it is now, or `where` ("sqlite", or a
    Milvus URI) if given; it becomes the folder's with `make_current` once it holds that state."""
    current = catalogue_at(root)
    if where is None or where == describe(current):
        return current
    if where == "sqlite":
        return Catalogue(root)
    from ..cluster.milvus_catalogue import MilvusCatalogue

    wanted = MilvusCatalogue.new(Path(root), where)
    return current if wanted.uri == getattr(current, "uri", None) else wanted


def describe(catalogue) -> str:
    """"sqlite", or the Milvus URI that holds the catalogue."""
    return getattr(catalogue, "uri", "sqlite")


def make_current(root: str | os.PathLike, catalogue) -> None:
    """Point the folder `root` to `catalogue` (which holds a committed state) and remove the one it replaces."""
    current = catalogue_at(root)
    if isinstance(catalogue, Catalogue):
        if not isinstance(current, Catalogue):
            current.path.unlink()
            current.drop()
        return
    if getattr(current, "prefix", None) == catalogue.prefix:
        return
    catalogue.point()
    if isinstance(current, Catalogue):
        for name in (CATALOGUE_FILE, *SIDE_FILES):
            (Path(root) / name).unlink(missing_ok=True)
    else:
        current.drop()


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
    """One committed state of an index folder: its settings (`manifest`) and photos (`images`) from the
    catalogue, and the files they point to: `shards` (features) and `derived_files` (what searches derive from them).
    A writer changes `manifest` and `images`, then commits."""

    def __init__(self, root: Path, manifest: dict, images: dict | None = None):
        self.root = Path(root)
        self.manifest = manifest
        self.catalogue = catalogue_at(self.root)
        self.legacy = is_legacy(manifest)  # made by spotit 0.1: its derived file has the old name
        self._images = Images(images) if images is not None else None
        self._columns: Columns | None = None
        self._placements: dict[str, list[tuple[int, int]]] | None = None
        self.shards = ShardFiles(self)
        self.derived_files = DerivedFiles(self)

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
        from .. import __version__

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
        used = shards | set(self.derived_files.learned_files()) | {self.manifest.get("global_base", {}).get("file")}
        if self.learned:
            used |= {self.derived_files.path(shard, kind).name for shard in shards for kind in "wsc"}
        for path in self.own_files():
            if path.name not in used:
                path.unlink(missing_ok=True)
        if self.shard_dir.is_dir() and not any(self.shard_dir.iterdir()):
            self.shard_dir.rmdir()

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

    def live_shards(self) -> list[str]:
        """The shard files that hold a photo of this state."""
        if self._images is None:  # a reader: every shard its columns name holds one of their photos
            return sorted(self.columns().shards)
        return sorted(self.placements())

    def names(self) -> list[str]:
        """Every photo's name, in catalogue order."""
        return self.columns().names if self._images is None else in_order(self._images)

    def entry(self, name: str, position: int | None = None) -> dict:
        """The catalogue entry of a photo (by its position in catalogue order, where known)."""
        if self._images is None and position is not None:
            return self.columns().entry(position)
        return self.images[name]

    def unreadable(self, path: Path, exc: Exception) -> SpotitError:
        """A file of this state that cannot be read: superseded by a writer's commit, or really damaged."""
        if self.changed():
            return SnapshotGone(f"{path} was replaced by a newer commit")
        return SpotitError(f"index file {path} is unreadable ({exc}); rebuild with `spotit index GALLERY --rebuild`")

    # ---- learned parts and what is derived with them ------------------------------------------
    @property
    def learned(self) -> dict | None:
        """{"version", "photos", "vectors"}: the learned parts in use and how many photos they were learned from."""
        return self.manifest.get("learned")

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
