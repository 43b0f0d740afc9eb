"""The catalogue in Milvus, for an index that several machines share: SQLite's write-ahead log needs memory
shared between its readers, so `catalogue.db` serves one machine only. The index folder (shards, derived
files, the write lock) lives on a shared file system; its file `catalogue.milvus.json` says where the
catalogue is, and each machine reads it there.

Milvus has no transactions, so a commit never changes a row; it adds rows, then names them committed:
- `<prefix>_photos`: one row per photo entry, keyed by the photo's name and the generation that wrote it;
- `<prefix>_deaths`: the generation in which an entry was replaced or removed, under the entry's key;
- `<prefix>_heads`: the committed state (JSON, in parts), written last: the newest head is the commit.
A reader of generation G sees the entries born by G and not dead by G, whatever a writer adds meanwhile.
A writer that stopped before its head was written leaves rows no head names; the next commit deletes them
first. Entries dead for `KEEP` generations are deleted; a reader that slow is told to read again."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from ..errors import SpotitError
from ..fileio import atomic_write_bytes
from ..storage.catalogue import NO_DATE, Changed, Columns, Images, columns_of, decode, encode, images_of, row_of
from . import public
from .milvus import client, failures, normalise_uri

POINTER = "catalogue.milvus.json"
KEEP = 32  # generations a dead entry stays readable: a reader of the catalogue is never that many commits behind
PART = 60000  # characters of state per head row (Milvus' VARCHAR holds 65,535 bytes)
BATCH = 5000
_DUMMY = [0.0, 0.0]  # Milvus wants a vector field in every collection; these collections are only queried
_PHOTO_FIELDS = ["key", "born", "shard", "row", "size", "mtime_ns", "width", "height", "taken", "stale"]


def folder_id(root: Path) -> int:
    """What tells the index folder from a copy of it: its inode number, which a shared file system (NFS,
    CephFS, Lustre) shows alike on every machine, wherever it is mounted."""
    return os.stat(root).st_ino


def key_of(name: str, born: int) -> str:
    """A photo entry's key: its name's bytes in hex (any file name, in catalogue order) and its generation."""
    return f"{encode(name).hex()}:{born}"


def name_of(key: str) -> bytes:
    return bytes.fromhex(key.partition(":")[0])


class MilvusCatalogue:
    """The catalogue interface of catalogue.Catalogue, kept in Milvus at `uri` under collections `prefix`_*."""

    def __init__(self, root: Path, uri: str, prefix: str):
        self.path = Path(root) / POINTER
        self.uri, self.prefix = uri, prefix
        self.photos, self.deaths, self.heads = (f"{prefix}_{part}" for part in ("photos", "deaths", "heads"))
        self._born: dict[str, int] = {}  # the generation of each live entry of the state this writer read

    def __str__(self) -> str:
        return f"Milvus at {public(self.uri)} ({self.prefix})"

    @classmethod
    def at(cls, root: Path) -> "MilvusCatalogue":
        """The catalogue that the folder `root` points to."""
        path = Path(root) / POINTER
        try:
            pointer = json.loads(path.read_text())
            uri, prefix, folder = pointer["uri"], pointer["prefix"], pointer["folder"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise SpotitError(f"cannot read {path}, which says where the catalogue is: {exc}") from None
        if folder != folder_id(root):
            # its catalogue was not copied with it: writing there would change the original's state
            raise SpotitError(f"{root} is a copy of an index whose catalogue is in Milvus ({public(uri)}); copies "
                              f"of such an index do not work: open the original folder, or build a new index")
        return cls(root, uri, prefix)

    @classmethod
    def new(cls, root: Path, uri: str) -> "MilvusCatalogue":
        """A catalogue for the folder `root` in Milvus at `uri` (its collections are made by `create`)."""
        return cls(root, normalise_uri(uri), f"spotit_catalogue_{secrets.token_hex(6)}")

    def point(self) -> None:
        """Make the folder point to this catalogue (after `create` filled it)."""
        pointer = {"uri": self.uri, "prefix": self.prefix, "folder": folder_id(self.path.parent)}
        atomic_write_bytes(self.path, json.dumps(pointer).encode())

    @property
    def client(self):
        return client(self.uri)

    def exists(self) -> bool:
        return self.path.is_file()

    # ---- writing ---------------------------------------------------------------------------------
    def _make_collections(self) -> None:
        from pymilvus import DataType

        for name, fields in ((self.photos, [("born", DataType.INT64), ("shard", DataType.VARCHAR)] +
                              [(f, DataType.INT64) for f in ("row", "size", "mtime_ns", "width", "height", "taken")] +
                              [("stale", DataType.BOOL)]),
                             (self.deaths, [("died", DataType.INT64)]),
                             (self.heads, [("generation", DataType.INT64), ("part", DataType.INT64),
                                           ("value", DataType.VARCHAR)])):
            if self.client.has_collection(name):
                continue
            schema = self.client.create_schema(auto_id=False, enable_dynamic_field=False)
            schema.add_field("key", DataType.VARCHAR, is_primary=True, max_length=16400)  # 4,096-byte names
            for field, kind in fields:
                schema.add_field(field, kind, **({"max_length": 65535} if kind == DataType.VARCHAR else {}))
            schema.add_field("v", DataType.FLOAT_VECTOR, dim=len(_DUMMY))
            params = self.client.prepare_index_params()
            params.add_index("v", index_type="FLAT", metric_type="L2")
            self.client.create_collection(name, schema=schema, index_params=params, consistency_level="Strong")
            self.client.load_collection(name)

    def create(self, state: dict) -> None:
        """A new, empty catalogue holding `state`: every entry of an earlier state dies in its generation."""
        with failures(f"creating the catalogue in {self}"):
            self._make_collections()
            head = self._head()
            self._born = {} if head is None else {decode(name_of(key)): born for key, born in self._live(head[0])}
            images = Images(dict.fromkeys(self._born, {}))
            images.clear()
            self._commit(state, images)

    def commit(self, state: dict, images: Images) -> None:
        """Write `state` and the photos of `images` changed since the last commit, then name them committed."""
        with failures(f"writing the catalogue in {self}"):
            self._commit(state, images)
        images.changed.clear()

    def _commit(self, state: dict, images: Images) -> None:
        generation = int(state["generation"])
        self._forget_after(generation - 1)  # what a writer that stopped before its head left behind
        born, deaths = [], []
        for name in images.changed:
            if name in self._born:
                deaths.append({"key": key_of(name, self._born[name]), "died": generation, "v": _DUMMY})
            entry = images.get(name)
            if entry is not None:
                row = dict(zip(_PHOTO_FIELDS, (key_of(name, generation), generation, *row_of(name, entry)[1:])))
                born.append({**row, "shard": row["shard"] or "", "stale": bool(row["stale"]),
                             **{f: int(row[f] or 0) for f in ("size", "mtime_ns", "width", "height")},
                             "taken": NO_DATE if row["taken"] is None else int(row["taken"]), "v": _DUMMY})
        for collection, rows in ((self.photos, born), (self.deaths, deaths)):
            for start in range(0, len(rows), BATCH):
                self.client.insert(collection, rows[start:start + BATCH])
        text = json.dumps({**state, "_horizon": generation - KEEP}, sort_keys=True)
        parts = [text[i:i + PART] for i in range(0, len(text), PART)] or [""]
        # the first part, written last, is the commit
        for part in [*range(1, len(parts)), 0]:
            self.client.insert(self.heads, [{"key": f"{generation}:{part}", "generation": generation, "part": part,
                                             "value": parts[part], "v": _DUMMY}])
        for name in images.changed:
            if name in images:
                self._born[name] = generation
            else:
                self._born.pop(name, None)
        self._delete_dead(generation - KEEP)

    def _forget_after(self, generation: int) -> None:
        self.client.delete(self.photos, filter=f"born > {generation}")
        self.client.delete(self.deaths, filter=f"died > {generation}")
        self.client.delete(self.heads, filter=f"generation > {generation}")

    def _delete_dead(self, horizon: int) -> None:
        dead = [row["key"] for row in self._query(self.deaths, f"died <= {horizon}", ["key"])]
        for start in range(0, len(dead), BATCH):
            self.client.delete(self.photos, ids=dead[start:start + BATCH])
        self.client.delete(self.deaths, filter=f"died <= {horizon}")
        self.client.delete(self.heads, filter=f"generation <= {horizon}")

    # ---- reading ---------------------------------------------------------------------------------
    def _query(self, collection: str, where: str, fields: list[str]) -> list[dict]:
        found = []
        iterator = self.client.query_iterator(collection, batch_size=BATCH, filter=where, output_fields=fields)
        try:
            while batch := iterator.next():
                found.extend(batch)
        finally:
            iterator.close()
        return found

    def _head(self) -> tuple[int, dict] | None:
        """The newest committed generation and its state, or None for an empty catalogue."""
        firsts = self.client.query(self.heads, filter="part == 0", output_fields=["generation"])
        if not firsts:
            return None
        generation = max(row["generation"] for row in firsts)
        parts = sorted(self.client.query(self.heads, filter=f"generation == {generation}",
                                         output_fields=["part", "value"]), key=lambda row: row["part"])
        return generation, json.loads("".join(row["value"] for row in parts))

    def state(self) -> dict | None:
        if not self.exists():
            return None
        with failures(f"reading the catalogue in {self}"):
            head = self._head()
        if head is None:
            return None
        head[1].pop("_horizon", None)
        return head[1]

    def generation(self) -> int | None:
        state = self.state()
        return None if state is None else state.get("generation")

    def _live(self, generation: int) -> list[tuple[str, int]]:
        """(key, born) of the entries live in `generation`."""
        dead = {row["key"] for row in self._query(self.deaths, f"died <= {generation}", ["key"])}
        return [(row["key"], row["born"]) for row in self._query(self.photos, f"born <= {generation}", ["key", "born"])
                if row["key"] not in dead]

    def _rows(self, generation: int) -> list[tuple]:
        """The catalogue rows of `generation`, in catalogue order; Changed once they may have been deleted."""
        with failures(f"reading the catalogue in {self}"):
            dead = {row["key"] for row in self._query(self.deaths, f"died <= {generation}", ["key"])}
            rows = [row for row in self._query(self.photos, f"born <= {generation}", _PHOTO_FIELDS)
                    if row["key"] not in dead]
            head = self._head()
        if head is None or head[1].get("_horizon", 0) > generation or head[0] < generation:
            raise Changed
        self._born = {decode(name_of(row["key"])): row["born"] for row in rows}
        return sorted(((name_of(r["key"]), r["shard"], r["row"], r["size"], r["mtime_ns"], r["width"], r["height"],
                        None if r["taken"] == NO_DATE else r["taken"], int(r["stale"])) for r in rows),
                      key=lambda r: r[0])

    def images(self, generation: int) -> Images:
        return images_of(self._rows(generation))

    def columns(self, generation: int) -> Columns:
        return columns_of(self._rows(generation))

    def drop(self) -> None:
        """Remove the collections (the folder no longer points here)."""
        with failures(f"dropping the catalogue in {self}"):
            for name in (self.photos, self.deaths, self.heads):
                if self.client.has_collection(name):
                    self.client.drop_collection(name)
