"""On-disk index storage: a JSON manifest plus HDF5 feature shards, all written atomically.

Layout of an index folder:
    manifest.json      settings, and for every indexed image its file stamp and where its features are
    shards/NNNNNN.h5   features of a batch of images: `names`, `global` (n, d), and the ragged
                       local features `kp_offsets` (n+1), `keypoints` (total, 4), `descriptors` (total, 128)

A shard is written under a temporary name and renamed; the manifest that points to it is replaced the
same way afterwards. An interrupted run therefore leaves the previous manifest and finished shards intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .errors import SpotitError
from .local_features import LocalFeatures

FORMAT = 1
MANIFEST = "manifest.json"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Store:
    def __init__(self, root: Path, manifest: dict):
        self.root = Path(root)
        self.manifest = manifest

    # ---- opening -------------------------------------------------------------------------------
    @classmethod
    def exists(cls, root: str | os.PathLike) -> bool:
        return (Path(root) / MANIFEST).is_file()

    @classmethod
    def open(cls, root: str | os.PathLike) -> "Store":
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise SpotitError(f"no index at {root}: build one with `spotit index GALLERY --index {root}`")
        try:
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise SpotitError(f"index manifest {path} is unreadable ({exc}); rebuild with `spotit index GALLERY --rebuild`") from None
        if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
            made_by = manifest.get("spotit_version", "an unknown version") if isinstance(manifest, dict) else "?"
            raise SpotitError(
                f"index at {root} was made by spotit {made_by} in another format; "
                f"rebuild it with `spotit index GALLERY --index {root} --rebuild`"
            )
        return cls(root, manifest)

    @classmethod
    def create(cls, root: str | os.PathLike, settings: dict) -> "Store":
        from . import __version__

        root = Path(root)
        manifest = {"format": FORMAT, "spotit_version": __version__, **settings, "next_shard": 0, "images": {}, "skipped": {}}
        store = cls(root, manifest)
        store.commit()
        return store

    # ---- writing -------------------------------------------------------------------------------
    @property
    def shard_dir(self) -> Path:
        return self.root / "shards"

    def commit(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self.root / MANIFEST, json.dumps(self.manifest, indent=1, sort_keys=True).encode())

    def remove_orphans(self) -> None:
        """Delete shard files that no manifest entry points to (left by an interrupted run)."""
        if not self.shard_dir.is_dir():
            return
        used = {entry["shard"] for entry in self.manifest["images"].values()}
        for path in self.shard_dir.iterdir():
            if path.name not in used:
                path.unlink()

    def write_shard(self, names: list[str], global_vectors: np.ndarray | None, local: list[LocalFeatures] | None) -> str:
        """Write the features of `names` to a new shard; returns its file name. The manifest is not changed."""
        self.shard_dir.mkdir(parents=True, exist_ok=True)
        name = f"{self.manifest['next_shard']:06d}.h5"
        self.manifest["next_shard"] += 1
        handle, tmp = tempfile.mkstemp(dir=self.shard_dir, prefix=name, suffix=".tmp")
        os.close(handle)
        try:
            with h5py.File(tmp, "w") as out:
                out.create_dataset("names", data=np.array(names, dtype=object), dtype=h5py.string_dtype())
                if global_vectors is not None:
                    out.create_dataset("global", data=global_vectors.astype(np.float32))
                if local is not None:
                    counts = [len(f) for f in local]
                    out.create_dataset("kp_offsets", data=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
                    out.create_dataset("keypoints", data=np.concatenate([f.keypoints for f in local] + [np.zeros((0, 4), np.float32)]))
                    out.create_dataset("descriptors", data=np.concatenate([f.descriptors for f in local] + [np.zeros((0, 128), np.uint8)]))
            os.replace(tmp, self.shard_dir / name)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return name

    # ---- reading -------------------------------------------------------------------------------
    def _shards(self) -> dict[str, list[tuple[str, int]]]:
        """shard file -> [(image name, row)] for the live entries of that shard."""
        by_shard: dict[str, list[tuple[str, int]]] = {}
        for image, entry in self.manifest["images"].items():
            by_shard.setdefault(entry["shard"], []).append((image, entry["row"]))
        return by_shard

    def _read(self, shard: str):
        path = self.shard_dir / shard
        try:
            return h5py.File(path, "r")
        except OSError as exc:
            raise SpotitError(f"index shard {path} is unreadable ({exc}); rebuild with `spotit index GALLERY --rebuild`") from None

    def load_global(self) -> tuple[list[str], np.ndarray]:
        """Names of all indexed images (sorted) and their global descriptors, row for row."""
        names, blocks = [], []
        for shard, members in sorted(self._shards().items()):
            with self._read(shard) as data:
                if "global" not in data:
                    raise SpotitError(f"index at {self.root} holds no CNN features; rebuild with --method cnn or all")
                matrix = data["global"][()]
            rows = [row for _, row in members]
            names.extend(image for image, _ in members)
            blocks.append(matrix[rows])
        if not names:
            return [], np.zeros((0, 1), np.float32)
        order = np.argsort(names, kind="stable")
        return [names[i] for i in order], np.concatenate(blocks)[order]

    def load_local(self) -> dict[str, LocalFeatures]:
        """Local features of every indexed image."""
        features: dict[str, LocalFeatures] = {}
        for shard, members in sorted(self._shards().items()):
            with self._read(shard) as data:
                if "descriptors" not in data:
                    raise SpotitError(f"index at {self.root} holds no SIFT features; rebuild with --method sift or all")
                offsets = data["kp_offsets"][()]
                keypoints = data["keypoints"][()]
                descriptors = data["descriptors"][()]
            for image, row in members:
                a, b = offsets[row], offsets[row + 1]
                features[image] = LocalFeatures(keypoints[a:b], descriptors[a:b])
        return features

    def shard_rows(self) -> dict[str, int]:
        """Total rows per shard file, live or not (for compaction)."""
        totals = {}
        for shard in self._shards():
            with self._read(shard) as data:
                totals[shard] = len(data["names"])
        return totals

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())
