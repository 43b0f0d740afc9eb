"""Where an index keeps what it derives from its features (derived.py makes it), and reading it back.

    learned-L.npz / learned-L.faiss   the learned parts of commit L (whitening; trained vector index)
    vectors-G.faiss, globals-G.faiss  the vector index's and the cnn method's base files
    shards/NNNNNN.{w,s,c}L.npy        per shard: whitened regions (codes, scales), vector index codes
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from .. import vectors
from ..errors import SpotitError
from ..fileio import FileArray, atomic_path, atomic_write_bytes


class DerivedFiles:
    """The learned parts and derived arrays of one state of an index folder."""

    def __init__(self, store):
        """`store`: the state (store.Store) whose files these are."""
        self.store = store

    @property
    def root(self) -> Path:
        return self.store.root

    def learned_files(self) -> list[str]:
        learned = self.store.learned
        if not learned:
            return []
        version = learned["version"]
        base = [learned["base"]["file"]] if learned.get("base") else []
        return [f"learned-{version}.npz"] + ([f"learned-{version}.faiss"] if learned["vectors"] == "ivfpq" else []) + base

    def next_version(self) -> int:
        """The version new learned parts take: the generation they will be committed with, so readers of the
        previous state keep theirs."""
        return self.store.manifest.get("generation", 0) + 1

    def write_learned(self, version: int, arrays: dict[str, np.ndarray], index_bytes: np.ndarray | None) -> None:
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
            raise self.store.unreadable(self.root / files[0], exc) from None
        except (OSError, ValueError) as exc:
            raise SpotitError(f"learned parts {files[0]} of {self.root} are unreadable ({exc}); "
                              f"rebuild with `spotit index GALLERY --rebuild`") from None
        return arrays, index

    def write_vector_base(self, name: str, index_bytes: np.ndarray) -> None:
        atomic_write_bytes(self.root / name, index_bytes.tobytes())

    def read_vector_base(self):
        """The vector index's base file, mapped (searches read only the cells they probe), or None."""
        base = self.store.learned.get("base")
        if not base:
            return None, set()
        import faiss

        path = self.root / base["file"]
        if not path.is_file():
            raise self.store.unreadable(path, FileNotFoundError(path))
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY), set(base["shards"])

    def write_global_base(self, name: str, index) -> None:
        import faiss

        with atomic_path(self.root / name) as tmp:
            faiss.write_index(index, str(tmp))

    def read_global_base(self):
        """The cnn method's base file, mapped (its codes are paged in by the searches), and its shards with
        their rows, in file order; or (None, [])."""
        base = self.store.manifest.get("global_base")
        if not base:
            return None, []
        import faiss

        path = self.root / base["file"]
        if not path.is_file():
            raise self.store.unreadable(path, FileNotFoundError(path))
        return (faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY),
                list(zip(base["shards"], base["rows"])))

    def path(self, shard: str, kind: str, version: int | None = None) -> Path:
        """A shard's derived file of learned `version`: kind "w" and "s" (whitened regions: codes, scales) or
        "c" (vector index codes)."""
        version = self.store.learned["version"] if version is None else version
        return self.store.shard_dir / f"{shard.removesuffix('.h5')}.{kind}{version}.npy"

    def write(self, shard: str, version: int, whitened: np.ndarray, codes: np.ndarray | None) -> None:
        """Write a shard's derived files; the whitened codes ("w") last: their presence says all are there."""
        quantised, scales = vectors.quantise(whitened)
        for kind, array in (("c", codes), ("s", scales), ("w", quantised)):
            if array is None:
                continue
            buffer = io.BytesIO()
            np.save(buffer, array)
            atomic_write_bytes(self.path(shard, kind, version), buffer.getvalue())

    def has(self, shard: str) -> bool:
        """Whether every derived file of a shard that the learned parts in use call for is there."""
        kinds = "wsc" if self.store.learned["vectors"] == "ivfpq" else "ws"
        return all(self.path(shard, kind).is_file() for kind in kinds)

    def read_whitened(self, shard: str) -> vectors.QuantisedRows:
        """A shard's whitened regions (rows, per_image, D), read from the file row by row."""
        return vectors.QuantisedRows(self._read(self.path(shard, "w"), FileArray.of_npy),
                                     self._read(self.path(shard, "s"), np.load))

    def read_codes(self, shard: str) -> np.ndarray:
        """A shard's regions as the vector index's codes (uint8, one row per region)."""
        return self._read(self.path(shard, "c"), np.load)

    def _read(self, path: Path, load):
        """load(path); a missing file went with a newer commit (or is lost), any other failure is damage."""
        try:
            return load(path)
        except FileNotFoundError as exc:
            raise self.store.unreadable(path, exc) from None
        except (OSError, ValueError) as exc:
            raise SpotitError(f"index file {path} is unreadable ({exc}); rebuild with `spotit index GALLERY --rebuild`") from None
